"""``spider ip show IP`` and ``spider ip release IP``: one address, who holds it, and freeing it by hand.

Owns what Spiderpool's ``spiderpoolctl ip`` only stubs (reference §9):

- ``find_address``: every pool whose range has the address, the record holding it there (pod, UID, node,
  interface, sandbox, since when: ``addedAt``), the SpiderEndpoint entry that accounts for it, and whether
  the holder is a live pod (a Pod of that name and UID exists and has not finished);
- ``release_address``: refuses a live holder unless forced, saying why; frees the record through the pool's
  own ``PoolActor`` (so the write carries the pool's resourceVersion, and only that exact record is freed:
  one an ADD refreshed meanwhile is left alone); then removes the address from the holder's SpiderEndpoint
  (its interface entry goes when nothing is left in it, the endpoint when no entry is).
"""

from __future__ import annotations

import datetime
import time

import attrs
import outcome
import trio
from rich.console import Console
from rich.table import Table

from actors.ipam.check import vm_holding
from actors.ipam.pool import open_pool
from actors.stores.port import Conflict, NotFound, Obj, Store
from spider.addr import int_to_ip, ip_to_int, parse_ip
from spider.endpoint import KIND as ENDPOINT
from spider.endpoint import Endpoint, NicAllocation
from spider.errors import InvalidInput, SpiderError, StaleWrite
from spider.pool import KIND as POOL
from spider.pool import PoolLedger, Record

ENDPOINT_RETRIES = 5


@attrs.frozen
class Holding:
    """An address in one pool: its record (``None``: free there), the endpoint entry, the holder's state."""

    pool: str
    ip: str
    record: Record | None = None
    endpoint: Endpoint | None = None
    nic: NicAllocation | None = None
    pod_state: str = ""
    """``running``, ``pending``, ``terminating``, ``finished (Succeeded)``, ``gone``, ``replaced (UID ...)``."""

    @property
    def live(self) -> bool:
        """Whether the holder is a pod that still runs (or may): its address must not be taken from it."""
        return self.pod_state in ("running", "pending", "terminating")

    def to_json(self, now: float) -> dict[str, object]:
        """A JSON summary (``spider ip show -o json``)."""
        out: dict[str, object] = {"pool": self.pool, "ip": self.ip, "allocated": self.record is not None}
        if self.record is not None:
            r = self.record
            out.update(pod=r.pod, podUID=r.pod_uid, node=r.node, nic=r.nic, containerID=r.container_id,
                       since=_since(r.added_at, now), podState=self.pod_state)  # fmt: skip
        if self.endpoint is not None:
            out["endpoint"] = {"name": f"{self.endpoint.namespace}/{self.endpoint.name}", "uid": self.endpoint.uid,
                               "node": self.endpoint.node,
                               "interface": self.nic.interface if self.nic else None}  # fmt: skip
        return out


def _since(added_at: float | None, now: float) -> str:
    if added_at is None:
        return "unknown (no addedAt: written by Spiderpool or an older version)"
    stamp = datetime.datetime.fromtimestamp(added_at, datetime.UTC).isoformat(timespec="seconds")
    return f"{stamp} ({max(0.0, now - added_at):.0f} s ago)"


def _pod_state(pod: Obj | None, uid: str) -> str:
    if pod is None:
        return "gone"
    if str(pod["metadata"].get("uid", "")) != uid:
        return f"replaced (a pod of that name with UID {pod['metadata'].get('uid')})"
    phase = str((pod.get("status") or {}).get("phase") or "")
    if phase in ("Succeeded", "Failed"):
        return f"finished ({phase})"
    if pod["metadata"].get("deletionTimestamp"):
        return "terminating"
    return "running" if phase == "Running" else "pending"


async def _get(store: Store, kind: str, name: str, namespace: str = "") -> Obj | None:
    try:
        return await store.get(kind, name, namespace)
    except NotFound:
        return None


def _entry_for(endpoint: Endpoint, pool: str, ip: str) -> NicAllocation | None:
    for nic in endpoint.nics:
        for _version, nic_pool, address in nic.pools():
            if nic_pool == pool and address.partition("/")[0] == ip:
                return nic
    return None


async def find_address(store: Store, text: str) -> list[Holding]:
    """Every pool whose range has the address, with its holder there (if any)."""
    try:
        address = parse_ip(text)
    except ValueError as exc:
        raise InvalidInput(reason=str(exc)) from None
    ip = str(address)
    found = []
    for obj in (await store.list(POOL)).items:
        try:
            ledger = PoolLedger.from_object(obj)
        except SpiderError:
            continue
        if ledger.pool.version != address.version or address not in ledger.pool.subnet:
            continue
        value = ip_to_int(ip)
        record = ledger.records.get(value)
        if record is None:
            if value in ledger.pool.total:
                found.append(Holding(ledger.pool.name, ip))
            continue
        namespace, _, name = record.pod.partition("/")
        pod = await _get(store, "Pod", name, namespace) if name else None
        endpoint_obj = await _get(store, ENDPOINT, name, namespace) if name else None
        endpoint = Endpoint.from_object(endpoint_obj) if endpoint_obj is not None else None
        nic = _entry_for(endpoint, ledger.pool.name, ip) if endpoint is not None else None
        if endpoint is not None and endpoint.uid != record.pod_uid:
            nic = None
        state = _pod_state(pod, record.pod_uid)
        if pod is None and (vmi := await vm_holding(store, record)) is not None:  # NB: records name a VM's VMI
            state = "terminating" if (vmi.get("metadata") or {}).get("deletionTimestamp") else "running"
        found.append(Holding(ledger.pool.name, int_to_ip(value, address.version), record, endpoint, nic, state))
    return found


@attrs.frozen
class Released:
    """What ``release_address`` did in one pool."""

    holding: Holding
    freed: bool
    endpoint_fixed: bool
    why: str = ""


async def release_address(store: Store, text: str, *, force: bool = False) -> list[Released]:
    """Free the address in every pool that records it; ``InvalidInput`` (nothing changed) when no pool does, or
    when a holder is a live pod and not ``force``."""
    holdings = [h for h in await find_address(store, text) if h.record is not None]
    if not holdings:
        raise InvalidInput(reason=f"{text} is not allocated in any SpiderIPPool")
    live = [h for h in holdings if h.live]
    if live and not force:
        h = live[0]
        assert h.record is not None
        raise InvalidInput(
            reason=f"{h.ip} is held in pool {h.pool} by pod {h.record.pod} (UID {h.record.pod_uid}), which is "
            f"{h.pod_state}: releasing it would let another pod get the same address; delete the pod, or use --force"
        )
    out = []
    for holding in holdings:
        assert holding.record is not None
        handle, actor = open_pool(holding.pool, store)
        async with trio.open_nursery() as nursery:
            await nursery.start(actor.run)
            # NB: the answer, or the store's refusal, is taken out of the nursery as it is (not as a group)
            answer = await outcome.acapture(handle.release_ips, ((holding.ip, holding.record),))
            nursery.cancel_scope.cancel(reason="released")
        if answer.unwrap() != 1:
            out.append(Released(holding, False, False, "its record changed meanwhile (a new ADD?): left alone"))
            continue
        fixed = await _drop_from_endpoint(store, holding)
        out.append(Released(holding, True, fixed))
    return out


async def _drop_from_endpoint(store: Store, holding: Holding) -> bool:
    """Remove the address from the holder's SpiderEndpoint; whether anything was changed."""
    assert holding.record is not None
    namespace, _, name = holding.record.pod.partition("/")
    endpoint: Endpoint | None = None
    for _ in range(ENDPOINT_RETRIES):
        obj = await _get(store, ENDPOINT, name, namespace)
        if obj is None:
            return False
        endpoint = Endpoint.from_object(obj)
        nic = _entry_for(endpoint, holding.pool, holding.ip)
        if endpoint.uid != holding.record.pod_uid or nic is None:
            return False
        if nic.ipv4 and nic.ipv4_pool == holding.pool and nic.ipv4.partition("/")[0] == holding.ip:
            kept = attrs.evolve(nic, ipv4=None, ipv4_pool=None, ipv4_gateway=None)
        else:
            kept = attrs.evolve(nic, ipv6=None, ipv6_pool=None, ipv6_gateway=None)
        fixed = endpoint.with_nic(kept) if kept.pools() else endpoint.without_nic(nic.interface)
        try:
            if fixed.nics:
                await store.update(fixed.to_object())
            else:
                unfinalized = fixed.to_object()
                unfinalized["metadata"]["finalizers"] = []
                written = await store.update(unfinalized)
                await store.delete(ENDPOINT, name, namespace, resource_version=written["metadata"]["resourceVersion"])
            return True
        except Conflict:
            await trio.sleep(0.05)
        except NotFound:
            return False
    version = endpoint.resource_version if endpoint is not None else ""
    raise StaleWrite(kind=ENDPOINT, name=f"{namespace}/{name}", sent_version=version)


def print_holdings(out: Console, text: str, holdings: list[Holding], now: float | None = None) -> None:
    """``spider ip show``'s table."""
    now = time.time() if now is None else now
    if not holdings:
        out.print(f"{text} is in no SpiderIPPool", highlight=False)
        return
    table = Table("POOL", "IP", "POD", "UID", "NODE", "NIC", "SINCE", "POD STATE", "ENDPOINT", box=None,
                  header_style="bold")  # fmt: skip
    for h in holdings:
        if h.record is None:
            table.add_row(h.pool, h.ip, "(free)", "", "", "", "", "", "")
            continue
        r = h.record
        endpoint = "(none)" if h.endpoint is None else f"{h.endpoint.namespace}/{h.endpoint.name}"
        if h.endpoint is not None and h.nic is None:
            endpoint += " (does not list it)"
        table.add_row(h.pool, h.ip, r.pod, r.pod_uid, r.node or (h.endpoint and h.endpoint.node) or "-",
                      r.nic or (h.nic.interface if h.nic else "-"), _since(r.added_at, now), h.pod_state,
                      endpoint)  # fmt: skip
    out.print(table)


def print_released(out: Console, released: list[Released]) -> None:
    """``spider ip release``'s report, one line per pool."""
    for r in released:
        h = r.holding
        assert h.record is not None
        if not r.freed:
            out.print(f"{h.ip} in pool {h.pool}: not released, {r.why}", highlight=False)
            continue
        endpoint = "; removed from its SpiderEndpoint" if r.endpoint_fixed else ""
        out.print(f"released {h.ip} in pool {h.pool} (was {h.record.pod}, UID {h.record.pod_uid}, "
                  f"{h.pod_state}){endpoint}", highlight=False)  # fmt: skip
