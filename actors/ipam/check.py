"""``spider check``: compare every pool's records with the SpiderEndpoints, and reclaim true leaks.

Owns the consistency rules between the two places an allocation is written (the pool status first, then the
endpoint; DESIGN §5.5):
- a pool record no endpoint accounts for is *reclaimable* (an agent died between the two writes, or a DEL
  was lost); it is freed only with ``reclaim``, only once no ADD can still answer it (older than
  ``spider.pool.RECLAIM_AFTER`` by its ``addedAt`` when the second scan starts, ``Record.may_be_in_flight``), only
  if it is seen in two scans ``grace`` seconds apart, only if no live Pod of its UID is stored (that pod may use
  the address while its endpoint says otherwise; its DEL, or GC once it is gone, frees it), and only if the pool
  actor finds exactly that record (holder, sandbox, stamp) at the moment of release: an ADD that refreshed it
  meanwhile keeps it;
- an endpoint entry whose pool no longer holds the address for that pod (or whose address is no address) is
  *dangling*; an endpoint of a shape the CRD does not give it is *unreadable*, and counts for nothing;
- an address recorded in two pools, or a count that disagrees with the records, is *inconsistent*.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import attrs
import trio
from rich.console import Console
from rich.table import Table

from actors.ipam.pool import PoolHandle, open_pool
from actors.stores.port import NotFound, Obj, Store
from spider.addr import int_to_ip, ip_to_int
from spider.endpoint import KIND as ENDPOINT
from spider.endpoint import Endpoint, readable
from spider.errors import InvalidInput, SpiderError
from spider.gc import GcSettings, deletion_deadline
from spider.pool import KIND as POOL
from spider.pool import RECLAIM_AFTER, PoolLedger, Record
from spider.workload import pod_not_alive


@attrs.frozen
class Finding:
    """One problem: what, where, and who is involved."""

    problem: str
    pool: str
    ip: str
    holder: str
    detail: str = ""


@attrs.frozen
class Report:
    """The outcome of a check."""

    pools: int
    records: int
    endpoints: int
    findings: tuple[Finding, ...]
    reclaimed: tuple[Finding, ...] = ()
    left_alone: tuple[Finding, ...] = ()
    """Reclaimable records ``reclaim`` did not free because their ADD may still be in flight (too young)."""
    held_by_live_pods: tuple[Finding, ...] = ()
    """Reclaimable records ``reclaim`` did not free because a live Pod of their UID is stored."""

    @property
    def consistent(self) -> bool:
        """No finding at all."""
        return not self.findings

    @property
    def resolved(self) -> bool:
        """No finding but those ``reclaim`` fixed (an address held twice, say, is never one)."""
        return all(f in self.reclaimed for f in self.findings)

    def of(self, problem: str) -> list[Finding]:
        """Findings of one kind."""
        return [f for f in self.findings if f.problem == problem]


async def _scan(store: Store) -> tuple[dict[str, PoolLedger], list[Endpoint], list[Finding]]:
    ledgers: dict[str, PoolLedger] = {}
    findings: list[Finding] = []
    for obj in (await store.list(POOL)).items:
        name = obj["metadata"]["name"]
        try:
            ledger = PoolLedger.from_object(obj)
        except SpiderError as exc:
            findings.append(Finding("invalid-pool", name, "", "", str(exc)))
            continue
        ledgers[name] = ledger
        count = (obj.get("status") or {}).get("allocatedIPCount", 0)
        if count != len(ledger.records):
            findings.append(
                Finding("count-mismatch", name, "", "", f"allocatedIPCount {count}, records {len(ledger.records)}")
            )
    endpoints, unreadable = readable((await store.list(ENDPOINT)).items)
    findings.extend(Finding("unreadable-endpoint", "", "", error.name, error.reason) for error in unreadable)
    return ledgers, endpoints, findings


def _unaccounted(ledgers: dict[str, PoolLedger], endpoints: list[Endpoint]) -> list[tuple[str, int, Record]]:
    """``(pool, address, record)`` of every record no endpoint of the same pod UID lists."""
    accounted = {
        (pool, ip, ep.uid)
        for ep in endpoints
        for entry in ep.nics
        for version, pool, address in entry.pools()
        if (ip := _value(address, version)) is not None
    }
    return [
        (name, ip, record)
        for name, ledger in ledgers.items()
        for ip, record in ledger.holders()
        if (name, ip, record.pod_uid) not in accounted
    ]


def _analyse(ledgers: dict[str, PoolLedger], endpoints: list[Endpoint], now: float) -> list[Finding]:
    findings: list[Finding] = []
    for ep in endpoints:
        for entry in ep.nics:
            for version, pool, address in entry.pools():
                ip = _value(address, version)  # NB: an address edited into nonsense is held by no record
                ledger = ledgers.get(pool)
                record = ledger.records.get(ip) if ledger and ip is not None else None
                if record is None or record.pod_uid != ep.uid:
                    findings.append(
                        Finding(
                            "dangling-endpoint",
                            pool,
                            address,
                            f"{ep.namespace}/{ep.name}",
                            f"interface {entry.interface}",
                        )
                    )
    for name, ip, record in _unaccounted(ledgers, endpoints):
        version = ledgers[name].pool.version
        findings.append(Finding("reclaimable", name, int_to_ip(ip, version), record.pod, _describe(record, now)))
    holders: dict[tuple[int, int], list[str]] = defaultdict(list)
    for name, ledger in ledgers.items():
        for ip, _record in ledger.holders():
            holders[(ledger.pool.version, ip)].append(name)
    for (version, ip), pools in holders.items():
        if len(pools) > 1:
            findings.append(
                Finding("held-twice", ",".join(pools), int_to_ip(ip, version), "", "one address, several pools")
            )
    return findings


def _value(address: str, version: int) -> int | None:
    """The address of an endpoint entry (``ip/prefix``) as a number, or ``None`` when it is none of ``version``."""
    try:
        return ip_to_int(address.partition("/")[0], version)
    except ValueError:
        return None


def _describe(record: Record, now: float) -> str:
    container = record.container_id[:12] or "-"
    added = "" if record.added_at is None else f" added {max(0.0, now - record.added_at):.0f} s ago"
    return f"uid {record.pod_uid} nic {record.nic or '-'} container {container} node {record.node or '-'}{added}"


async def check_store(
    store: Store, *, reclaim: bool = False, grace: float = 5.0, clock: Callable[[], float] = time.time
) -> Report:
    """Scan the store; with ``reclaim``, free reclaimable records no ADD can still answer, seen in two scans
    ``grace`` apart.  ``clock``: wall-clock seconds, what the records' ``addedAt`` is compared with."""
    now = clock()
    ledgers, endpoints, findings = await _scan(store)
    findings += _analyse(ledgers, endpoints, now)
    report = Report(len(ledgers), sum(len(x.records) for x in ledgers.values()), len(endpoints), tuple(findings))
    if not reclaim:
        return report
    leaks = {(pool, ip): record for pool, ip, record in _unaccounted(ledgers, endpoints)}
    report = attrs.evolve(report, left_alone=_in_flight(report, ledgers, leaks, now))
    candidates = {where: record for where, record in leaks.items() if not record.may_be_in_flight(now)}
    if not candidates:
        return report
    await trio.sleep(grace)  # a record some process is about to account for: seen twice, or left alone
    now = clock()  # NB: read before the endpoints: a record this old had its endpoint written before they are read
    ledgers, endpoints, _ = await _scan(store)
    confirmed: dict[str, list[tuple[int, Record]]] = defaultdict(list)
    live: set[tuple[str, str]] = set()
    for pool, ip, record in _unaccounted(ledgers, endpoints):
        if candidates.get((pool, ip)) != record or record.may_be_in_flight(now):
            continue
        if await _pod_alive(store, record, now):
            live.add((pool, int_to_ip(ip, ledgers[pool].pool.version)))
        else:
            confirmed[pool].append((ip, record))
    report = attrs.evolve(
        report, held_by_live_pods=tuple(f for f in report.of("reclaimable") if (f.pool, f.ip) in live)
    )
    freed: set[tuple[str, str]] = set()
    refused: list[SpiderError] = []

    async def free(handle: PoolHandle, ip: str, record: Record) -> None:
        try:
            if await handle.release_ips(((ip, record),)):  # NB: one by one, to know which; the actor batches them
                freed.add((handle.name, ip))
        except SpiderError as exc:  # NB: the store refused (no right to write status?): said once, not as a group
            refused.append(exc)

    async with trio.open_nursery() as actors:
        async with trio.open_nursery() as releases:
            for pool in sorted(confirmed):
                handle, actor = open_pool(pool, store)
                await actors.start(actor.run)
                for ip, record in confirmed[pool]:
                    releases.start_soon(free, handle, int_to_ip(ip, ledgers[pool].pool.version), record)
        actors.cancel_scope.cancel(reason="reclaim done")
    if refused:
        raise refused[0]
    reclaimed = tuple(f for f in report.of("reclaimable") if (f.pool, f.ip) in freed)
    return attrs.evolve(report, reclaimed=reclaimed)


async def _pod_alive(store: Store, record: Record, now: float) -> bool:
    """Whether the Pod the record names is stored with the record's UID and alive (``pod_not_alive``), or,
    with no Pod of that name, a KubeVirt VM's VMI of that name is (``vm_holding``).  A terminating pod is
    alive until its grace period (and the GC's delay) is over: its containers still run with the address, as
    the controller's GC judges it (``spider.gc.deletion_deadline``)."""
    namespace, _, name = record.pod.partition("/")
    try:
        pod = await store.get("Pod", name, namespace)
    except NotFound:
        return await vm_holding(store, record) is not None
    if (pod.get("metadata") or {}).get("uid") != record.pod_uid:
        return False
    why = pod_not_alive(pod)
    if why == "terminating":
        deadline = deletion_deadline(pod, GcSettings())
        return deadline is None or deadline > now
    return why is None


async def vm_holding(store: Store, record: Record) -> Obj | None:
    """The KubeVirt VMI a record names, if stored: a VM's records name its VMI, not a launcher pod, and while it
    is there one of its launcher pods may run the VM with the address, whatever UID the record carries (after a
    failed live migration, the gone target's)."""
    namespace, _, name = record.pod.partition("/")
    try:
        return await store.get("VirtualMachineInstance", name, namespace) if name else None
    except (NotFound, InvalidInput):  # NB: InvalidInput: a store that does not know the kind has no VM
        return None


def _in_flight(
    report: Report, ledgers: dict[str, PoolLedger], leaks: dict[tuple[str, int], Record], now: float
) -> tuple[Finding, ...]:
    """The reclaimable findings whose record an ADD may still answer."""
    young = {
        (pool, int_to_ip(ip, ledgers[pool].pool.version)) for (pool, ip), r in leaks.items() if r.may_be_in_flight(now)
    }
    return tuple(f for f in report.of("reclaimable") if (f.pool, f.ip) in young)


def print_report(console: Console, report: Report) -> None:
    """A summary line and a table of findings."""
    console.print(
        f"{report.pools} pools, {report.records} records, {report.endpoints} endpoints: "
        + ("consistent" if report.consistent else f"{len(report.findings)} findings"),
        highlight=False,
    )
    if report.findings:
        table = Table("PROBLEM", "POOL", "IP", "HOLDER", "DETAIL", box=None, header_style="bold")
        for f in report.findings:
            table.add_row(f.problem, f.pool, f.ip, f.holder, f.detail)
        console.print(table)
    if report.reclaimed:
        console.print(f"reclaimed {len(report.reclaimed)} addresses", highlight=False)
    if report.held_by_live_pods:
        console.print(
            f"left {len(report.held_by_live_pods)} alone: their pods are alive (their DEL, or GC once they are "
            "gone, frees them)",
            highlight=False,
        )
    if report.left_alone:
        console.print(
            f"left {len(report.left_alone)} alone: recorded less than {RECLAIM_AFTER:.0f} s ago, their ADD may "
            "still be in flight",
            highlight=False,
        )
