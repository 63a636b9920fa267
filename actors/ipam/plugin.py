"""The agent's side of the ``spiderpool`` CNI plugin: every verb, for every spec version.

Owns what the stdlib shim leaves to the agent: decoding the forwarded ``CNI_*`` environment and network
configuration (``spider.cni``), running ADD, DEL, CHECK, GC and STATUS against the ``IpamService``, and the
exact stdout and exit code the shim prints.  Errors become CNI error objects with the code of their class
(DESIGN §5.6); a request that fails validation changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import attrs
import trio

from actors.ipam.pool import decode_ledger
from actors.ipam.service import IpamService
from actors.stores.port import NotFound
from spider import cni
from spider.endpoint import KIND as ENDPOINT
from spider.endpoint import readable
from spider.errors import AgentUnavailable, CheckFailed, InvalidNetConf, SpiderError
from spider.ipam_request import AddRequest, DelRequest
from spider.pool import KIND as POOL

log = logging.getLogger(__name__)


@attrs.frozen
class PluginOutput:
    """What the shim prints and exits with."""

    exit_code: int
    stdout: bytes


def _ok(obj: Mapping[str, object]) -> PluginOutput:
    return PluginOutput(0, cni.render(obj))


def _fail(version: str, exc: SpiderError) -> PluginOutput:
    return PluginOutput(1, cni.render(cni.error_from(version, exc)))


@attrs.define
class Plugin:
    """Serves forwarded CNI invocations for one node."""

    ipam: IpamService

    async def handle(self, env: Mapping[str, str], stdin: bytes) -> PluginOutput:
        """Run one invocation; never raises a ``SpiderError`` (it becomes the CNI error output)."""
        try:
            request = cni.parse_request(env, stdin)
        except SpiderError as exc:
            return _fail(cni.version_hint(stdin), exc)
        try:
            match request.command:
                case "VERSION":
                    return _ok(cni.version_result(request.version))
                case "ADD":
                    return _ok(await self.add(request))
                case "DEL":
                    await self.delete(request)
                    return PluginOutput(0, b"")
                case "CHECK":
                    await self.check(request)
                    return PluginOutput(0, b"")
                case "GC":
                    await self.gc(request)
                    return PluginOutput(0, b"")
                case "STATUS":
                    await self.status(request)
                    return PluginOutput(0, b"")
        except SpiderError as exc:
            log.info("CNI %s %s/%s failed: %s", request.command, request.container_id, request.ifname, exc)
            return _fail(request.version, exc)
        raise AssertionError(f"unhandled CNI command {request.command!r}")

    async def add(self, request: cni.CniRequest) -> dict[str, object]:
        """Allocate and answer with this interface's addresses and routes only (reference §4.4)."""
        assert request.ipam is not None  # parse_request guarantees an ipam section for ADD
        results = await self.ipam.allocate(
            AddRequest(
                container_id=request.container_id,
                ifname=request.ifname,
                netns=request.netns,
                pod_namespace=request.pod_namespace or "default",
                pod_name=request.pod_name or request.container_id,
                pod_uid=request.pod_uid,
                default_ipv4_pools=request.ipam.default_ipv4_ippool,
                default_ipv6_pools=request.ipam.default_ipv6_ippool,
                clean_gateway=request.ipam.clean_gateway,
                network=request.network_name,
            )
        )
        mine = next((r for r in results if r.nic == request.ifname), None)
        if mine is None or not mine.allocations:
            raise InvalidNetConf(reason=f"no interface {request.ifname} IP allocation found")
        ips, routes = mine.to_api()
        return cni.format_result(
            request.version,
            [cni.IPConfig(ip["address"], ip.get("gateway")) for ip in ips],
            [cni.Route(r["dst"], r["gw"]) for r in routes],
        )

    def _del_request(self, request: cni.CniRequest) -> DelRequest:
        return DelRequest(
            container_id=request.container_id,
            ifname=request.ifname,
            pod_namespace=request.pod_namespace or "default",
            pod_name=request.pod_name or request.container_id,
            pod_uid=request.pod_uid,
        )

    async def delete(self, request: cni.CniRequest) -> None:
        """Release from stored state alone; nothing to release is success (DESIGN §5.3)."""
        await self.ipam.release(self._del_request(request))

    async def check(self, request: cni.CniRequest) -> None:
        """A real CHECK: the endpoint and every pool still agree on this sandbox's addresses."""
        name = request.pod_name or request.container_id
        endpoint = await self.ipam.endpoint(request.pod_namespace or "default", name)
        entry = endpoint.nic(request.ifname) if endpoint else None
        if endpoint is None or entry is None:
            raise CheckFailed(reason=f"no allocation recorded for {name!r} interface {request.ifname!r}")
        if entry.container_id and entry.container_id != request.container_id:
            raise CheckFailed(reason=f"interface {request.ifname!r} belongs to container {entry.container_id!r}")
        held = []
        for _version, pool, address in entry.pools():
            try:
                ledger = await decode_ledger(await self.ipam.store.get(POOL, pool))
            except NotFound:
                raise CheckFailed(reason=f"pool {pool!r} of {address} no longer exists") from None
            ip = ledger.parse(address.partition("/")[0])
            record = ledger.records.get(ip) if ip is not None else None
            if record is None or record.pod_uid != endpoint.uid:
                raise CheckFailed(reason=f"pool {pool!r} does not hold {address} for this pod any more")
            held.append(address)
        previous = request.prev_result or {}
        prev_ips = {str(ip.get("address")) for ip in previous.get("ips") or [] if isinstance(ip, dict)}
        if previous and not set(held) <= prev_ips:
            raise CheckFailed(reason=f"prevResult lists {sorted(prev_ips)}, the store holds {held}")

    async def gc(self, request: cni.CniRequest) -> None:
        """CNI GC: release this node's attachments of this network that the runtime no longer knows.

        Each attachment is released alone (its interface only): the same sandbox's attachments of other
        networks are not this GC's to judge (a DEL, by contrast, frees every NIC of the sandbox).
        """
        valid = set(request.valid_attachments or ())
        endpoints, unreadable = readable((await self.ipam.store.list(ENDPOINT)).items)
        for error in unreadable:
            log.warning("CNI GC: %s", error)
        for endpoint in endpoints:
            if endpoint.node != self.ipam.node:
                continue
            for entry in endpoint.nics:
                if entry.network != request.network_name or not entry.container_id:
                    continue
                if (entry.container_id, entry.interface) in valid:
                    continue
                log.info("CNI GC releases %s/%s %s", endpoint.namespace, endpoint.name, entry.interface)
                await self.ipam.release(
                    DelRequest(entry.container_id, entry.interface, endpoint.namespace, endpoint.name, endpoint.uid),
                    interfaces=frozenset({entry.interface}),
                )

    async def status(self, request: cni.CniRequest) -> None:
        """CNI STATUS: unavailable (50) when every default pool of a family in the config is exhausted."""
        if request.ipam is None:
            return
        for names in (request.ipam.default_ipv4_ippool, request.ipam.default_ipv6_ippool):
            plain = [n for n in names if not any(c in n for c in "*?[")]
            if not plain:
                continue
            with trio.move_on_after(5):
                free = await self.ipam.pool_free(plain)
                if free and not any(free.values()):
                    raise AgentUnavailable(reason=f"pools {plain} have no free address")
