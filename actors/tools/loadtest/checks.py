"""The correctness checks of a load test, computed from the replies and from the store.

Owns: no address held by two pods at once (from the replies alone), every call served (with a pool too small,
refused only for want of an address), the store's records equal what the replies said, pool counts equal
records (``actors.ipam.check``), nothing leaked after DEL (read once the agents drained: a call that timed out
on our side may still be written); for host-local, no address file left in any node's data directory.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address
from pathlib import Path

from actors.ipam.check import check_store
from actors.stores.port import Store
from actors.tools.loadtest.scenario import NAMESPACE, NETWORK, Check, Op, PodRef, Scenario
from spider.endpoint import KIND as ENDPOINT
from spider.endpoint import Endpoint
from spider.pool import KIND as POOL
from spider.pool import PoolLedger


def overlapping_holders(ops: Sequence[Op]) -> list[tuple[str, PodRef, PodRef]]:
    """Addresses held by two pods at once, judged from the replies alone.

    A pod surely holds its address from the moment its ADD answered until its first DEL that succeeded was
    sent (forever if none did: a DEL that failed or timed out may have freed nothing).  Two such intervals of
    one address that overlap mean the address was handed out twice.
    """
    granted: dict[tuple[int, int], Op] = {}
    released: dict[tuple[int, int], float] = {}
    for op in ops:
        key = (op.pod.index, op.pod.incarnation)
        if op.kind in ("add", "churn-add") and op.ok and op.address:
            granted[key] = op
        elif op.kind in ("del", "churn-del") and op.ok:
            released[key] = min(released.get(key, math.inf), op.start)
    by_address: dict[str, list[tuple[float, float, PodRef]]] = defaultdict(list)
    for key, op in granted.items():
        by_address[op.address].append((op.end, released.get(key, math.inf), op.pod))
    found = []
    for address, spans in by_address.items():
        spans.sort(key=lambda s: (s[0], s[1]))
        holder_end, holder = spans[0][1], spans[0][2]
        for start, end, pod in spans[1:]:
            if start < holder_end:
                found.append((address, holder, pod))
            if end > holder_end:
                holder_end, holder = end, pod
    return found


def check_no_double(ops: Sequence[Op]) -> Check:
    """No address is held by two pods at the same time (from the replies)."""
    twice = overlapping_holders(ops)
    granted = sum(1 for op in ops if op.kind in ("add", "churn-add") and op.ok)
    if not twice:
        return Check("no-address-twice", True, f"{granted} grants, every address held by one pod at a time")
    examples = ", ".join(f"{a} ({p.name}, {q.name})" for a, p, q in twice[:3])
    return Check("no-address-twice", False, f"{len(twice)} addresses held twice: {examples}")


EXHAUSTED = re.compile(r"^CNI 100: |no IP addresses available")
"""How a refusal for want of a free address reads (``Answer.reason``): CNI code 100 (``PoolExhausted``, ours and
Spiderpool's), or host-local's message (its plugin framework reports every error as code 999)."""


def check_served(scenario: Scenario, ops: Sequence[Op]) -> Check:
    """Every call answered as a correct IPAM answers it: each pod exactly one ADD answer; with an address
    for every pod, every ADD and DEL succeeded; with fewer (``--pool-size``), at least one ADD per address
    succeeded and the others were refused only for want of a free address, and every DEL succeeded."""
    adds = [op for op in ops if op.kind in ("add", "churn-add")]
    dels = [op for op in ops if op.kind in ("del", "churn-del")]
    problems = []
    answers = Counter(op.pod for op in adds)
    if len(answers) != sum(answers.values()):
        twice = [pod.name for pod, n in answers.items() if n > 1][:3]
        problems.append(f"{len(adds) - len(answers)} extra ADD answers (e.g. {twice})")
    refused = [op for op in adds if not op.ok]
    wanted = min(scenario.pods, scenario.addresses)
    if len(adds) - len(refused) < wanted:
        problems.append(f"{len(adds) - len(refused)} of {len(adds)} ADDs served, at least {wanted} expected")
    if scenario.addresses < scenario.pods:
        refused = [op for op in refused if not EXHAUSTED.search(op.reason)]
    failed = refused + [op for op in dels if not op.ok]
    if failed:
        reasons = Counter(op.reason for op in failed).most_common(2)
        problems.append(f"{len(failed)} of {len(ops)} failed: {reasons}")
    if problems:
        return Check("every-call-served", False, "; ".join(problems))
    if scenario.addresses < scenario.pods:
        spare = len(adds) - sum(op.ok for op in adds)
        detail = f"{len(ops)} calls; pool of {scenario.addresses} for {scenario.pods}: {spare} ADDs refused (exhausted)"
        return Check("every-call-served", True, detail)
    return Check("every-call-served", True, f"{len(ops)} calls, none failed")


async def pool_matches_replies(store: Store, pool: str, live: Mapping[int, PodRef], ops: Sequence[Op]) -> Check:
    """After the ADDs: the pool records exactly the live pods, each at the address its reply named."""
    told = {}
    for op in ops:
        if op.kind in ("add", "churn-add") and op.ok:
            told[op.pod.uid] = op.address
    ledger = PoolLedger.from_object(await store.get(POOL, pool))
    held = {rec.pod_uid: str(IPv4Address(ip)) for ip, rec in ledger.records.items()}
    wanted = {pod.uid: told[pod.uid] for pod in live.values()}
    if held == wanted:
        return Check("store-matches-replies", True, f"{len(held)} records, one per live pod, as answered")
    missing = sorted(set(wanted) - set(held))[:3]
    extra = sorted(set(held) - set(wanted))[:3]
    moved = sorted(u for u in set(held) & set(wanted) if held[u] != wanted[u])[:3]
    return Check(
        "store-matches-replies",
        False,
        f"{len(held)} records for {len(wanted)} live pods; missing {missing}, not live {extra}, moved {moved}",
    )


async def store_consistent(store: Store, pool: str, label: str) -> Check:
    """``spider check`` on our pool: counts equal records, no address twice, every record has its endpoint."""
    report = await check_store(store)
    mine = [f for f in report.findings if pool in f.pool.split(",")]
    if not mine:
        return Check(f"consistent-{label}", True, "pool counts equal records; pool and endpoints agree")
    kinds = Counter(f.problem for f in mine)
    return Check(f"consistent-{label}", False, f"{dict(kinds)}; e.g. {mine[0].ip} {mine[0].detail}")


async def nothing_leaked(store: Store, pool: str, run: str) -> Check:
    """After the DELs: no record left in the pool, count zero, no endpoint of our pods."""
    status = (await store.get(POOL, pool)).get("status") or {}
    records = len(PoolLedger.from_object(await store.get(POOL, pool)).records)
    endpoints = [
        ep.name
        for ep in map(Endpoint.from_object, (await store.list(ENDPOINT, namespace=NAMESPACE)).items)
        if ep.uid.startswith(run)
    ]
    count = status.get("allocatedIPCount", 0)
    if records == 0 and count == 0 and not endpoints:
        return Check("nothing-leaked", True, "pool empty (allocatedIPCount 0), no endpoint left")
    return Check("nothing-leaked", False, f"{records} records, allocatedIPCount {count}, endpoints {endpoints[:3]}")


def host_local_leaks(data_dirs: Sequence[Path]) -> Check:
    """After the DELs: no address file left in any node's host-local data directory."""
    left = []
    for d in data_dirs:
        net = d / NETWORK
        if net.is_dir():
            left += [p.name for p in net.iterdir() if p.name != "lock" and not p.name.startswith("last_reserved_ip")]
    if not left:
        return Check("nothing-leaked", True, f"no address file left in {len(data_dirs)} data directories")
    return Check("nothing-leaked", False, f"{len(left)} address files left, e.g. {left[:3]}")
