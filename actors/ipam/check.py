"""``spider check``: compare every pool's records with the SpiderEndpoints, and reclaim true leaks.

Owns the consistency rules between the two places an allocation is written (the pool status first, then the
endpoint; DESIGN §5.5):
- a pool record no endpoint accounts for is *reclaimable* (an agent died between the two writes, or a DEL
  was lost); it is freed only with ``reclaim`` and only if it is seen in two scans ``grace`` seconds apart
  with the same holder and sandbox, and the pool actor re-checks the holder's UID at the moment of release;
- an endpoint entry whose pool no longer holds the address for that pod is *dangling*;
- an address recorded in two pools, or a count that disagrees with the records, is *inconsistent*.
"""

from __future__ import annotations

from collections import defaultdict

import attrs
import trio
from rich.console import Console
from rich.table import Table

from actors.ipam.pool import open_pool
from actors.stores.port import Store
from spider.addr import int_to_ip, ip_to_int
from spider.endpoint import KIND as ENDPOINT
from spider.endpoint import Endpoint
from spider.errors import SpiderError
from spider.pool import KIND as POOL
from spider.pool import PoolLedger, Record


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

    @property
    def consistent(self) -> bool:
        """No finding at all."""
        return not self.findings

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
    endpoints = [Endpoint.from_object(o) for o in (await store.list(ENDPOINT)).items]
    return ledgers, endpoints, findings


def _analyse(ledgers: dict[str, PoolLedger], endpoints: list[Endpoint]) -> list[Finding]:
    findings: list[Finding] = []
    accounted: dict[tuple[str, int], tuple[str, str]] = {}
    for ep in endpoints:
        for entry in ep.nics:
            for version, pool, address in entry.pools():
                ip = ip_to_int(address.partition("/")[0], version)
                accounted[(pool, ip)] = (ep.uid, entry.interface)
                ledger = ledgers.get(pool)
                record = ledger.records.get(ip) if ledger else None
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
    holders: dict[tuple[int, int], list[str]] = defaultdict(list)
    for name, ledger in ledgers.items():
        for ip, record in ledger.holders():
            holders[(ledger.pool.version, ip)].append(name)
            if accounted.get((name, ip), ("", ""))[0] != record.pod_uid:
                findings.append(
                    Finding("reclaimable", name, int_to_ip(ip, ledger.pool.version), record.pod, _describe(record))
                )
    for (version, ip), pools in holders.items():
        if len(pools) > 1:
            findings.append(
                Finding("held-twice", ",".join(pools), int_to_ip(ip, version), "", "one address, several pools")
            )
    return findings


def _describe(record: Record) -> str:
    container = record.container_id[:12] or "-"
    return f"uid {record.pod_uid} nic {record.nic or '-'} container {container} node {record.node or '-'}"


async def check_store(store: Store, *, reclaim: bool = False, grace: float = 5.0) -> Report:
    """Scan the store; with ``reclaim``, free reclaimable records seen in two scans ``grace`` apart."""
    ledgers, endpoints, findings = await _scan(store)
    findings += _analyse(ledgers, endpoints)
    report = Report(len(ledgers), sum(len(x.records) for x in ledgers.values()), len(endpoints), tuple(findings))
    if not reclaim or not report.of("reclaimable"):
        return report
    await trio.sleep(grace)  # an ADD in flight writes the pool first and the endpoint a moment later
    ledgers2, endpoints2, _ = await _scan(store)
    again = {(f.pool, f.ip, f.detail) for f in _analyse(ledgers2, endpoints2) if f.problem == "reclaimable"}
    confirmed = [f for f in report.of("reclaimable") if (f.pool, f.ip, f.detail) in again]
    reclaimed: list[Finding] = []
    async with trio.open_nursery() as nursery:
        for pool in sorted({f.pool for f in confirmed}):
            handle, actor = open_pool(pool, store)
            await nursery.start(actor.run)
            mine = [f for f in confirmed if f.pool == pool]
            version = ledgers2[pool].pool.version
            batch = tuple((f.ip, ledgers2[pool].records[ip_to_int(f.ip, version)].pod_uid) for f in mine)
            if await handle.release_ips(batch):
                reclaimed += mine
        nursery.cancel_scope.cancel(reason="reclaim done")
    return attrs.evolve(report, reclaimed=tuple(reclaimed))


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
