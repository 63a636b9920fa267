"""Stored objects and annotations of a shape nobody expected (another writer's, an edit, a bit flip, a user's
annotation): each costs the object it is in, as a domain error or a value read as absent, never the process.

Each case here once escaped its decoder (``OverflowError``, ``RecursionError``, ``AttributeError``, a
``ValueError`` outside the caught ones) and stopped an agent's pool actor or a controller loop."""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from spider.addr import IPSet
from spider.autopool import desired_ip_count, subnet_claims
from spider.endpoint import Endpoint, readable
from spider.errors import InvalidInput, InvalidSpec
from spider.overlap import contested
from spider.pool import Owner, PoolLedger
from spider.reconcile import subnet_status
from spider.subnet import decode_controlled
from spider.validation import ip_version
from tests.support import pool_object

DEEP = "[" * 5000 + "]" * 5000
HUGE = int("1" + "0" * 400)


def stored(allocated: Any = None, released: Any = None) -> dict[str, Any]:
    obj = pool_object("p", "10.1.0.0/24", ["10.1.0.10-10.1.0.20"])
    obj["status"] = {k: v for k, v in (("allocatedIPs", allocated), ("releasedIPs", released)) if v is not None}
    return obj


def test_a_stamp_no_float_holds_is_read_as_no_stamp() -> None:
    allocated = f'{{"10.1.0.10":{{"pod":"d/p","podUid":"u","nic":"eth0","addedAt":{HUGE}}}}}'
    ledger = PoolLedger.from_object(stored(allocated))
    (record,) = ledger.records.values()
    assert record.added_at is None
    released = f'{{"10.1.0.11":{{"pod":"d/q","podUid":"v","releasedAt":{HUGE}}}}}'
    assert PoolLedger.from_object(stored(None, released)).released == {}, "only the reuse order depends on it"


def test_allocated_ips_nested_past_the_interpreter_s_limit_is_a_corrupt_pool() -> None:
    with pytest.raises(InvalidSpec, match=r"'status\.allocatedIPs' is corrupt"):
        PoolLedger.from_object(stored('{"10.1.0.10":' + DEEP + "}"))
    ledger = PoolLedger.from_object(stored())
    ledger.to_status()
    with pytest.raises(InvalidSpec, match="corrupt"):
        ledger.catch_up(stored('{"10.1.0.10":' + DEEP + "}"))
    assert PoolLedger.from_object(stored(None, DEEP)).released == {}


@pytest.mark.parametrize("entry", [[{"x": 1}], [5], "10.0.0.1", {"a": 1}, DEEP])
def test_controlled_pools_entries_that_are_no_ranges_are_dropped(entry: Any) -> None:
    raw = json.dumps({"pool-a": {"ips": entry}, "pool-b": {"ips": ["10.0.0.5"]}})
    assert set(decode_controlled(4, raw)) == {"pool-b"}
    assert decode_controlled(4, "[" * 5000) == {}
    subnet = {"metadata": {"name": "s"}, "spec": {"subnet": "10.0.0.0/24", "ips": ["10.0.0.1-10.0.0.9"]},
              "status": {"controlledIPPools": raw}}  # fmt: skip
    with contextlib.suppress(InvalidSpec):  # NB: a domain error names it; anything else stopped the reconciler
        subnet_status(subnet, [])


@pytest.mark.parametrize("number", ["²", "٣", "9" * 5000, "+" + "9" * 10])
def test_an_ip_number_that_is_no_small_decimal_is_wrong_input(number: str) -> None:
    with pytest.raises(InvalidInput, match="ippool-ip-number"):
        desired_ip_count(number, 2, 0)


def test_a_subnet_annotation_nested_past_the_limit_is_wrong_input() -> None:
    with pytest.raises(InvalidInput, match="not valid JSON"):
        subnet_claims({"ipam.spidernet.io/subnet": DEEP})


def test_a_subnet_without_ip_version_has_the_family_of_its_cidr() -> None:
    assert ip_version({"subnet": "fd00::/120"}) == 6
    assert ip_version({"ips": ["fd00::1-fd00::5"]}) == 6
    assert ip_version({"subnet": "10.0.0.0/24", "ipVersion": 4}) == 4
    assert ip_version({"ipVersion": "x"}) == 4


def test_an_ipv6_pool_overlapping_another_whole_allocates_past_the_overlap_at_once() -> None:
    wide = pool_object("wide", "fd00::/48", ["fd00::1-fd00:0:0:ffff:ffff:ffff:ffff:ffff"])
    narrow = pool_object("narrow", "fd00::/64", ["fd00::1-fd00::ffff:ffff:ffff:ffff"])
    ledger, other = PoolLedger.from_object(wide), PoolLedger.from_object(narrow)
    avoid = contested(ledger.pool, [other.pool])
    assert isinstance(avoid, IPSet)
    with deadline(5, "2**64 shared addresses were stepped over one by one"):
        first, _ = ledger.allocate(owner(1), avoid=avoid)
        second, _ = ledger.allocate(owner(2), avoid=avoid)
    assert ledger.address(first) == "fd00:0:0:1::/48"
    assert first not in avoid
    assert second == first + 1


def owner(n: int) -> Owner:
    return Owner(f"u{n}", "eth0", "d", f"p{n}", f"c{n}", "node")


@contextlib.contextmanager
def deadline(seconds: float, why: str) -> Iterator[None]:
    """Fail (``TimeoutError``) a pure computation that runs past ``seconds``, instead of hanging the suite."""

    def expired(*_: object) -> None:
        raise TimeoutError(why)

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize(
    "nic",
    [5, {"interface": "eth0", "vlan": "x"}, {"interface": "eth0", "routes": [{"gw": "10.0.0.1"}]}, {"routes": 7}],
)
def test_an_endpoint_of_another_shape_is_invalid_and_a_listing_reads_the_others(nic: Any) -> None:
    def endpoint(name: str, nics: list[Any]) -> dict[str, Any]:
        current = {"uid": f"uid-{name}", "node": "n", "ips": nics}
        return {"metadata": {"name": name, "namespace": "d"}, "status": {"current": current}}

    with pytest.raises(InvalidSpec, match="SpiderEndpoint 'odd'"):
        Endpoint.from_object(endpoint("odd", [nic]))
    good = endpoint("good", [{"interface": "eth0", "ipv4": "10.0.0.5/24", "ipv4Pool": "p", "vlan": 0}])
    parsed, errors = readable([endpoint("odd", [nic]), good])
    assert [e.name for e in parsed] == ["good"]
    assert [e.name for e in errors] == ["odd"]
