"""The ledger's encoding caches (per-record JSON fragments, a held count, records reused on a re-read) give
exactly what encoding and decoding from scratch give, whatever happened to the ledger in between."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from spider.addr import IPSet
from spider.errors import PoolExhausted
from spider.pool import Owner, PoolLedger, decode_allocated, encode_allocated

POOL: dict[str, Any] = {
    "apiVersion": "spiderpool.spidernet.io/v2beta1",
    "kind": "SpiderIPPool",
    "metadata": {"name": "p", "resourceVersion": "1"},
    "spec": {"subnet": "10.9.0.0/27", "gateway": "10.9.0.1", "ips": ["10.9.0.2-10.9.0.30"]},
}

steps = st.lists(
    st.tuples(st.sampled_from(["allocate", "release", "refresh", "reserve"]), st.integers(0, 40), st.integers(0, 3)),
    max_size=60,
)


def owner(n: int, sandbox: int) -> Owner:
    return Owner(f"uid-{n}", "eth0", "ns", f"pod-{n}", f"ctr-{n}-{sandbox}", f"node-{sandbox}")


def brute_free(ledger: PoolLedger) -> int:
    return ledger.capacity - sum(1 for ip in ledger.records if ip in ledger.allocatable)


def play(ledger: PoolLedger, actions: list[tuple[str, int, int]]) -> None:
    for action, n, sandbox in actions:
        if action == "allocate":
            with contextlib.suppress(PoolExhausted):
                ledger.allocate(owner(n, sandbox))
        elif action == "release":
            ledger.release((f"uid-{n}", "eth0"))
        elif action == "refresh":  # a repeated ADD from another sandbox rewrites the record in place
            if ledger.lookup((f"uid-{n}", "eth0")) is not None:
                ledger.allocate(owner(n, sandbox + 1))
        else:
            first = ledger.pool.ips.ranges[0][0]
            ledger.set_reserved(IPSet.of(4, [first + n % 8, first + sandbox]))


@given(steps, steps)
def test_the_cached_status_is_the_status_encoded_from_scratch(before: list[Any], after: list[Any]) -> None:
    ledger = PoolLedger.from_object(POOL)
    play(ledger, before)
    ledger.to_status()  # fills the caches
    play(ledger, after)
    status = ledger.to_status()
    assert status.get("allocatedIPs") == encode_allocated(4, ledger.records)
    assert ledger.free == brute_free(ledger)
    assert status["freeIPCount"] == brute_free(ledger)


@given(steps, steps, steps)
def test_a_re_read_that_borrows_from_a_stale_ledger_decodes_exactly_the_stored_records(
    shared: list[Any], ours: list[Any], theirs: list[Any]
) -> None:
    base = PoolLedger.from_object(POOL)
    play(base, shared)
    stored = dict(POOL, status=base.to_status())
    stale = PoolLedger.from_object(stored)  # our agent's copy: encodes a batch that then loses the race
    play(stale, ours)
    stale.to_status()
    winner = PoolLedger.from_object(stored)  # another agent's batch is what got written
    play(winner, theirs)
    fresh = dict(POOL, status=winner.to_status())
    reread = PoolLedger.from_object(fresh, previous=stale)
    assert reread.records == decode_allocated(4, fresh["status"].get("allocatedIPs"))
    assert reread.to_status() == PoolLedger.from_object(fresh).to_status()
    assert reread.free == brute_free(reread)
