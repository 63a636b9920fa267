"""The agent's side of the ``coordinator`` and ``ifacer`` CNI plugins, and ``GET /v1/coordinator/config``.

Owns the verbs the stdlib shim (``cni/coordinator.py``) forwards: ADD, DEL, CHECK (plus VERSION, GC and
STATUS) for the coordinator, chained after the main CNI (macvlan), and for ifacer, which runs before it.
Each verb reads the cluster's SpiderCoordinator, merges it with the plugin configuration
(``spider.coordinator``), and asks the NodeActor for the netlink work; detection and announcements go
through ``actors.node.probing``.  On an address conflict or an unreachable gateway the pod's allocation is
released (``IpamService.release_ips``, as Spiderpool's ``DELETE /v1/ipam/ips``) and ADD fails with a clear
error.  DEL works without a SpiderCoordinator, without a configuration, and without the pod's namespace.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from actors.ipam.plugin import PluginOutput
from actors.ipam.service import IpamService
from actors.node import probing
from actors.node.actor import NodeHandle
from actors.runtime.turns import Turns
from actors.stores.port import NotFound
from spider import cni
from spider.coordinator.config import KIND, ClusterConfig, CoordinatorConf
from spider.coordinator.errors import AddressConflict, GatewayUnreachable, NamespaceGone
from spider.coordinator.mode import resolve_mode
from spider.coordinator.observed import family_of
from spider.coordinator.plan import SetupSpec, TeardownSpec, random_mac
from spider.coordinator.request import CoordinatorRequest, parse_request, plain_address
from spider.errors import CheckFailed, InvalidEnvironment, InvalidNetConf, SpiderError
from spider.ifacer import IfacerConf
from spider.ipam_request import DelRequest

log = logging.getLogger(__name__)


def _ok(obj: Mapping[str, Any]) -> PluginOutput:
    return PluginOutput(0, cni.render(obj))


def _fail(version: str, exc: SpiderError) -> PluginOutput:
    return PluginOutput(1, cni.render(cni.error_from(version, exc)))


@attrs.define
class Coordinator:
    """Serves the coordinator and ifacer plugins and the coordinator config API for one node."""

    ipam: IpamService
    node: NodeHandle
    random_bytes: Callable[[int], bytes] = os.urandom
    """Source of the veth pair's MAC addresses (tests make it deterministic)."""
    _sandboxes: Turns = attrs.field(factory=Turns)
    """One sandbox's ADD, CHECK and DEL take turns (a DEL must not tear down under a setup in progress)."""

    # --- GET /v1/coordinator/config ---------------------------------------------------------------------

    async def cluster_config(self, namespace: str, name: str) -> ClusterConfig:
        """Spiderpool's ``CoordinatorConfig`` for a pod: the Synced SpiderCoordinator plus the pod's
        default-route-NIC annotation.  A pod the store does not hold is fine (no annotation)."""
        coordinators = (await self.ipam.store.list(KIND)).items
        pod = None
        if namespace and name:
            try:
                pod = await self.ipam.store.get("Pod", name, namespace)
            except NotFound:
                pod = None
        return ClusterConfig.from_objects(coordinators, pod)

    # --- the plugins ------------------------------------------------------------------------------------

    async def handle(self, env: Mapping[str, str], stdin: bytes) -> PluginOutput:
        """One forwarded coordinator invocation; never raises a ``SpiderError``."""
        try:
            request = parse_request(env, stdin)
        except SpiderError as exc:
            return _fail(cni.version_hint(stdin), exc)
        try:
            match request.command:
                case "VERSION":
                    return _ok(cni.version_result(cni.version_hint(stdin) or None))
                case "ADD":
                    async with self._sandboxes.of(request.container_id):
                        return _ok(await self.add(request))
                case "DEL":
                    async with self._sandboxes.of(request.container_id):
                        await self.delete(request)
                case "CHECK":
                    async with self._sandboxes.of(request.container_id):
                        await self.check(request)
                case "GC" | "STATUS":
                    pass  # nothing of ours outlives DEL; the agent answering is the status
        except SpiderError as exc:
            log.info("coordinator %s %s/%s failed: %s", request.command, request.container_id, request.ifname, exc)
            return _fail(request.version, exc)
        return PluginOutput(0, b"")

    async def _conf(self, request: CoordinatorRequest, *, strict: bool) -> CoordinatorConf:
        """The merged configuration; with ``strict`` (ADD, CHECK) a missing or unsynced SpiderCoordinator fails
        the request, as in Spiderpool; otherwise (DEL) the defaults stand in."""
        try:
            cluster: ClusterConfig | None = await self.cluster_config(request.pod_namespace, request.pod_name)
        except SpiderError as exc:  # not ready, or an invalid SpiderCoordinator
            if strict:
                raise
            log.info("coordinator DEL without cluster config (%s): using the defaults", exc)
            cluster = None
        try:
            return CoordinatorConf.merge(request.conf, cluster)
        except InvalidNetConf:
            if strict:
                raise
            return CoordinatorConf.merge({}, cluster)  # DEL must clean up whatever the configuration says

    def _families(self, request: CoordinatorRequest) -> tuple[int, ...]:
        return tuple(sorted({ip.family for ip in request.prev_ips()}))

    async def _spec(self, request: CoordinatorRequest, conf: CoordinatorConf, *, set_up: bool) -> SetupSpec:
        pod = await self.node.inspect_pod(request.netns, request.ifname, set_up=set_up)
        decision = resolve_mode(conf.mode, request.ifname, conf.pod_default_cni_nic, pod)
        families = self._families(request)
        if not families:  # CHECK may come without prevResult: then the interface's own addresses decide
            families = tuple(sorted({a.family for a in pod.addresses_of(request.ifname)})) or (4,)
        raw = self.random_bytes(12)
        return SetupSpec(
            conf=conf,
            decision=decision,
            ifname=request.ifname,
            container_id=request.container_id,
            families=families,
            pod_veth_mac=random_mac(raw[:6]),
            host_veth_mac=random_mac(raw[6:]),
        )

    async def add(self, request: CoordinatorRequest) -> dict[str, Any]:
        """Tune the pod's interface as Spiderpool's coordinator does; answers with ``prevResult`` unchanged."""
        conf = await self._conf(request, strict=True)
        result = dict(request.prev_result or {})
        result["cniVersion"] = request.version
        if conf.mode == "disable":
            return result
        spec = await self._spec(request, conf, set_up=True)
        ips = request.prev_ips()
        try:
            await probing.detect(
                self.node,
                request.netns,
                request.ifname,
                ips,
                conflict=conf.detect_ip_conflict,
                gateway=conf.detect_gateway,
                options=conf.detect_options,
            )
        except (AddressConflict, GatewayUnreachable) as exc:
            # The address must not stay with this pod: release what its sandbox holds, then fail so the
            # runtime retries (Spiderpool's plugin calls DELETE /v1/ipam/ips the same way).
            with trio.CancelScope(shield=True):
                freed = await self.ipam.release_ips(
                    DelRequest(
                        request.container_id,
                        "",
                        request.pod_namespace or "default",
                        request.pod_name or request.container_id,
                        request.pod_uid,
                    )
                )
            log.warning("ADD %s/%s: %s; released %s", request.pod_namespace, request.pod_name, exc, freed)
            raise
        try:
            plan = await self.node.setup_pod(request.netns, spec, [ip.ip for ip in ips])
        except BaseException:
            # Leave nothing half-made on the host; the runtime's DEL would do the same, but may never come.
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await self._teardown(request, conf)
            raise
        try:
            await probing.announce(self.node, request.netns, request.ifname, plan.pod_ips)
        except SpiderError as exc:  # an announcement is a courtesy to the switches, never a reason to fail
            log.warning("announcing %s on %s failed: %s", plan.pod_ips, request.ifname, exc)
        log.info(
            "coordinator ADD %s/%s %s: %s mode, host veth %s, host addresses %s, %d changes",
            request.pod_namespace,
            request.pod_name,
            request.ifname,
            spec.decision.mode,
            plan.host_veth,
            list(plan.host_ips),
            len(plan.ops),
        )
        return result

    async def _pod_ips(self, request: CoordinatorRequest) -> tuple[tuple[str, ...], bool]:
        """The pod's addresses on this interface from every source DEL has: ``prevResult``, the interface
        itself (if the namespace remains) and the SpiderEndpoint.  Also: whether the namespace exists."""
        ips = [ip.ip for ip in request.prev_ips()]
        exists = False
        if request.netns:
            try:
                pod = await self.node.inspect_pod(request.netns, request.ifname)
                exists = True
                ips += [a.ip for a in pod.addresses_of(request.ifname)]
            except (NamespaceGone, InvalidEnvironment):
                exists = False
        if request.pod_name:
            endpoint = await self.ipam.endpoint(request.pod_namespace or "default", request.pod_name)
            entry = endpoint.nic(request.ifname) if endpoint else None
            if entry is not None and (not entry.container_id or entry.container_id == request.container_id):
                ips += [a.partition("/")[0] for a in (entry.ipv4, entry.ipv6) if a]
        # NB: DEL checks no prevResult (CNI asks it to succeed): text that names no plain address is dropped, or
        # netlink refused it and the DEL failed for good
        plain = [address for ip in ips if (address := plain_address(ip)) is not None]
        return tuple(dict.fromkeys(plain)), exists

    async def _teardown(self, request: CoordinatorRequest, conf: CoordinatorConf) -> None:
        ips, exists = await self._pod_ips(request)
        spec = TeardownSpec(conf=conf, container_id=request.container_id, pod_ips=ips, netns_exists=exists)
        families = tuple(sorted({family_of(ip) for ip in ips})) or (4, 6)
        plan = await self.node.teardown_pod(request.netns, spec, families)
        if plan.foreign_owner:
            log.warning(
                "DEL %s left host veth %s: it belongs to %r", request.container_id, plan.host_veth, plan.foreign_owner
            )

    async def delete(self, request: CoordinatorRequest) -> None:
        """Remove on the host everything ADD made, also when the pod's namespace is already gone."""
        conf = await self._conf(request, strict=False)
        if conf.mode == "disable":
            return
        await self._teardown(request, conf)

    async def check(self, request: CoordinatorRequest) -> None:
        """CNI CHECK: the host veth, the host's route, rule and neighbour for each address are in place."""
        conf = await self._conf(request, strict=True)
        if conf.mode == "disable":
            return
        spec = await self._spec(request, conf, set_up=False)
        problems = await self.node.check_pod(request.netns, spec)
        if problems:
            raise CheckFailed(reason="; ".join(problems))

    # --- ifacer -----------------------------------------------------------------------------------------

    async def handle_ifacer(self, env: Mapping[str, str], stdin: bytes) -> PluginOutput:
        """One forwarded ifacer invocation: ADD makes the parents, DEL keeps them (as Spiderpool)."""
        try:
            request = parse_request(env, stdin, chained=False)
        except SpiderError as exc:
            return _fail(cni.version_hint(stdin), exc)
        try:
            match request.command:
                case "VERSION":
                    return _ok(cni.version_result(cni.version_hint(stdin) or None))
                case "ADD":
                    parent = await self.node.ensure_parents(IfacerConf.from_json(request.conf))
                    log.info("ifacer ADD %s: parent %s is ready", request.container_id, parent)
                    result = dict(request.prev_result or {}) or cni.format_result(request.version, [], [])
                    result["cniVersion"] = request.version
                    return _ok(result)
                case "CHECK":
                    conf = IfacerConf.from_json(request.conf)
                    host = await self.node.inspect_host()
                    missing = [n for n in (conf.parent,) if n and host.link(n) is None]
                    if missing:
                        raise CheckFailed(reason=f"parent interface {missing[0]!r} is missing on the node")
                case _:
                    pass  # DEL: interfaces made for pods stay (Spiderpool's ifacer never removes them)
        except SpiderError as exc:
            log.info("ifacer %s failed: %s", request.command, exc)
            return _fail(request.version, exc)
        return PluginOutput(0, b"")
