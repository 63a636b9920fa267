"""The ledger's encoding caches (per-record JSON fragments, a held count, records reused on a re-read, a
catch-up in place) give exactly what encoding and decoding from scratch give, whatever happened to the ledger
in between."""

from __future__ import annotations

import contextlib
import json
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
            ledger.release((f"uid-{n}", "eth0"), now=float(n + sandbox))
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


def assert_same(ledger: PoolLedger, decoded: PoolLedger) -> None:
    assert ledger.records == decoded.records
    assert ledger.released == decoded.released
    assert ledger.to_status() == decoded.to_status()
    assert ledger.free == brute_free(ledger)
    for n in range(41):
        assert ledger.lookup((f"uid-{n}", "eth0")) == decoded.lookup((f"uid-{n}", "eth0"))
    with contextlib.suppress(PoolExhausted):  # and the next allocation is the same address
        assert ledger.allocate(owner(99, 0))[0] == decoded.allocate(owner(99, 0))[0]


def as_written_by(status: dict[str, Any], foreign: bool) -> dict[str, Any]:
    """The status as we write it, or (``foreign``) as another writer might: same JSON, other spacing."""
    if not foreign:
        return status
    out = dict(status)
    for field in ("allocatedIPs", "releasedIPs"):
        if field in out:
            out[field] = json.dumps(json.loads(out[field]))
    return out


@given(steps, steps, steps, steps, st.booleans())
def test_catching_up_with_a_newer_stored_pool_gives_what_decoding_it_gives(
    shared: list[Any], ours: list[Any], theirs: list[Any], more: list[Any], foreign: bool
) -> None:
    base = PoolLedger.from_object(POOL)
    play(base, shared)
    stored = dict(POOL, status=base.to_status())
    mine = PoolLedger.from_object(stored).catch_up(stored)  # our agent's copy, its caches filled
    play(mine, ours)  # a batch of ours, written or lost: either way the store moves on without it
    mine.to_status()
    theirs_ledger = PoolLedger.from_object(stored)
    play(theirs_ledger, theirs)
    fresh = dict(POOL, status=as_written_by(theirs_ledger.to_status(), foreign))
    caught = mine.catch_up(fresh)
    assert caught is mine  # same spec: levelled in place
    assert_same(caught, PoolLedger.from_object(fresh, caught.reserved))
    play(theirs_ledger, more)
    fresher = dict(POOL, status=as_written_by(theirs_ledger.to_status(), foreign))
    caught = caught.catch_up(fresher)
    assert_same(caught, PoolLedger.from_object(fresher, caught.reserved))


def test_catching_up_across_a_spec_change_decodes_afresh() -> None:
    ledger = PoolLedger.from_object(POOL)
    ledger.allocate(owner(1, 0))
    narrower = {**POOL, "spec": {**POOL["spec"], "ips": ["10.9.0.2-10.9.0.29"]}, "status": ledger.to_status()}
    caught = ledger.catch_up(narrower)
    assert caught is not ledger
    assert caught.capacity == ledger.capacity - 1
    assert caught.records == ledger.records


def test_catching_up_with_a_write_that_moved_only_server_owned_metadata_is_levelled_in_place() -> None:
    """A real API server restamps ``managedFields`` (its ``time``, to the second) and the version on every status
    write; neither is anything ``IPPool.from_object`` reads, so the catch-up stays in place."""
    managed = [{"manager": "spider", "operation": "Update", "subresource": "status", "time": "2026-12-07T05:00:00Z"}]
    ledger = PoolLedger.from_object({**POOL, "metadata": {**POOL["metadata"], "managedFields": managed}})
    ledger.allocate(owner(1, 0))
    later = [dict(managed[0], time="2026-12-07T05:00:01Z")]
    written = {**POOL, "metadata": {"name": "p", "resourceVersion": "2", "managedFields": later}}
    caught = ledger.catch_up({**written, "status": ledger.to_status()})
    assert caught is ledger
    assert caught.records == PoolLedger.from_object({**written, "status": ledger.to_status()}).records


def stored_pool(allocated: str, released: object = None) -> dict[str, Any]:
    status: dict[str, Any] = {"allocatedIPs": allocated}
    if released is not None:
        status["releasedIPs"] = released
    return {**POOL, "status": status}


SPIDERPOOL_TWO = '{"10.9.0.2":{"pod":"ns/a","podUid":"u"},"10.9.0.3":{"pod":"ns/a","podUid":"u"}}'
SPIDERPOOL_ONE = '{"10.9.0.3":{"pod":"ns/a","podUid":"u"}}'


def test_a_caught_up_ledger_finds_an_owner_with_two_nicless_records_where_a_decoded_one_does() -> None:
    # Spiderpool writes no nic: one pod with two addresses in a pool has two records of one owner key
    for before, after in ((SPIDERPOOL_TWO, SPIDERPOOL_ONE), (SPIDERPOOL_ONE, SPIDERPOOL_TWO)):
        ledger = PoolLedger.from_object(stored_pool(before))
        ledger.to_status()
        caught = ledger.catch_up(stored_pool(after))
        decoded = PoolLedger.from_object(stored_pool(after))
        assert caught.lookup(("u", "eth0")) == decoded.lookup(("u", "eth0")) is not None
        assert caught.release(("u", "eth0")) == decoded.release(("u", "eth0"))


def test_an_address_stored_twice_is_read_as_json_reads_it() -> None:
    ledger = PoolLedger.from_object(stored_pool('{"10.9.0.2":{"pod":"ns/a","podUid":"ua"}}'))
    ledger.to_status()
    twice = '{"10.9.0.2":{"pod":"ns/b","podUid":"ub"},"10.9.0.2":{"pod":"ns/a","podUid":"ua"}}'
    assert_same(ledger.catch_up(stored_pool(twice)), PoolLedger.from_object(stored_pool(twice)))


def test_released_ips_that_are_not_a_json_string_are_ignored_as_when_decoding() -> None:
    ledger = PoolLedger.from_object(stored_pool('{"10.9.0.2":{"pod":"ns/a","podUid":"ua"}}'))
    odd = stored_pool('{"10.9.0.2":{"pod":"ns/a","podUid":"ua"}}', {"10.9.0.5": {"pod": "ns/x", "podUid": "x"}})
    assert ledger.catch_up(odd).released == PoolLedger.from_object(odd).released == {}
