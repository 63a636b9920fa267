"""``spider.addr``: IPSet against a ``set[int]`` model, and the parse errors users see."""

from __future__ import annotations

import ipaddress
import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spider.addr import IPSet, parse_ip, parse_network, parse_range
from tests.spider.strategies import IPNetwork, addresses_in, cidrs, expand, range_lists


@st.composite
def one_set(draw: st.DrawFn) -> tuple[IPNetwork, list[str]]:
    net = draw(cidrs())
    return net, draw(range_lists(net, max_size=5))


@st.composite
def two_sets(draw: st.DrawFn) -> tuple[IPNetwork, list[str], list[str]]:
    net = draw(cidrs())
    return net, draw(range_lists(net, max_size=5)), draw(range_lists(net, max_size=5))


def probes(net: IPNetwork) -> st.SearchStrategy[int]:
    """Addresses in ``net`` and just outside it."""
    return st.integers(int(net.network_address) - 2, int(net.broadcast_address) + 2)


# --- the set model -------------------------------------------------------------------------------------


@given(one_set())
def test_a_parsed_set_holds_exactly_the_listed_addresses(case: tuple[IPNetwork, list[str]]) -> None:
    net, texts = case
    assert set(IPSet.parse(net.version, texts)) == expand(texts)


@given(one_set())
def test_ranges_are_kept_sorted_merged_and_disjoint(case: tuple[IPNetwork, list[str]]) -> None:
    net, texts = case
    ranges = IPSet.parse(net.version, texts).ranges
    assert all(start <= end for start, end in ranges)
    assert all(a_end + 1 < b_start for (_, a_end), (b_start, _) in itertools.pairwise(ranges))


@given(one_set())
def test_len_counts_every_address_once(case: tuple[IPNetwork, list[str]]) -> None:
    net, texts = case
    assert len(IPSet.parse(net.version, texts)) == len(expand(texts))


@given(one_set())
def test_an_empty_set_is_falsy_and_any_other_is_truthy(case: tuple[IPNetwork, list[str]]) -> None:
    net, texts = case
    assert bool(IPSet.parse(net.version, texts)) == bool(texts)


@given(st.data())
def test_contains_agrees_with_the_model(data: st.DataObject) -> None:
    net, texts = data.draw(one_set())
    probe = data.draw(probes(net))
    assert (probe in IPSet.parse(net.version, texts)) == (probe in expand(texts))


def test_contains_is_false_for_anything_but_an_integer() -> None:
    s = IPSet.parse(4, ["10.0.0.1"])
    assert "10.0.0.1" not in s
    assert ipaddress.IPv4Address("10.0.0.1") not in s


@given(one_set())
def test_iteration_yields_every_member_in_ascending_order(case: tuple[IPNetwork, list[str]]) -> None:
    net, texts = case
    assert list(IPSet.parse(net.version, texts)) == sorted(expand(texts))


@given(st.data())
def test_iter_from_yields_the_members_at_or_above_the_start(data: st.DataObject) -> None:
    net, texts = data.draw(one_set())
    first = data.draw(probes(net))
    assert list(IPSet.parse(net.version, texts).iter_from(first)) == sorted(a for a in expand(texts) if a >= first)


@given(two_sets())
def test_union_agrees_with_the_model(case: tuple[IPNetwork, list[str], list[str]]) -> None:
    net, a, b = case
    result = IPSet.parse(net.version, a).union(IPSet.parse(net.version, b))
    assert set(result) == expand(a) | expand(b)
    assert result == IPSet.parse(net.version, a + b)


@given(two_sets())
def test_difference_agrees_with_the_model(case: tuple[IPNetwork, list[str], list[str]]) -> None:
    net, a, b = case
    result = IPSet.parse(net.version, a).difference(IPSet.parse(net.version, b))
    assert set(result) == expand(a) - expand(b)
    assert len(result) == len(expand(a) - expand(b))


@given(two_sets())
def test_intersection_agrees_with_the_model(case: tuple[IPNetwork, list[str], list[str]]) -> None:
    net, a, b = case
    result = IPSet.parse(net.version, a).intersection(IPSet.parse(net.version, b))
    assert set(result) == expand(a) & expand(b)


@given(two_sets())
def test_issubset_agrees_with_the_model(case: tuple[IPNetwork, list[str], list[str]]) -> None:
    net, a, b = case
    assert IPSet.parse(net.version, a).issubset(IPSet.parse(net.version, b)) == (expand(a) <= expand(b))
    assert IPSet.parse(net.version, a).issubset(IPSet.parse(net.version, a + b))


@given(one_set())
def test_to_strings_parses_back_to_an_equal_set(case: tuple[IPNetwork, list[str]]) -> None:
    net, texts = case
    s = IPSet.parse(net.version, texts)
    assert IPSet.parse(net.version, s.to_strings()) == s


def test_to_strings_writes_single_addresses_and_ranges_as_spiderpool_does() -> None:
    s = IPSet.parse(4, ["10.0.0.7", "10.0.0.1-10.0.0.3", "10.0.0.4"])
    assert s.to_strings() == ["10.0.0.1-10.0.0.4", "10.0.0.7"]


def test_to_strings_writes_ipv6_in_compressed_form() -> None:
    assert IPSet.parse(6, ["fd00:0:0::0a-fd00::000b"]).to_strings() == ["fd00::a-fd00::b"]


@given(st.data())
def test_of_builds_a_set_from_single_addresses(data: st.DataObject) -> None:
    net = data.draw(cidrs())
    addresses = data.draw(st.lists(addresses_in(net), max_size=8))
    assert set(IPSet.of(net.version, addresses)) == set(addresses)


@given(cidrs())
def test_from_network_covers_the_whole_cidr_network_and_broadcast_included(net: IPNetwork) -> None:
    s = IPSet.from_network(net)
    assert len(s) == net.num_addresses
    assert int(net.network_address) in s
    assert int(net.broadcast_address) in s


# --- parse errors --------------------------------------------------------------------------------------

BAD_RANGES = [
    pytest.param(4, "10.0.0.1 - 10.0.0.2", "spaces", id="spaces-around-dash"),
    pytest.param(4, " 10.0.0.1", "spaces", id="leading-space"),
    pytest.param(4, "10.0.0.1 ", "spaces", id="trailing-space"),
    pytest.param(4, "10.0.0.1-\t10.0.0.2", "spaces", id="tab"),
    pytest.param(4, "10.0.0.9-10.0.0.1", "starts after it ends", id="reversed"),
    pytest.param(4, "fd00::1", "IPv4", id="ipv6-in-ipv4-pool"),
    pytest.param(6, "10.0.0.1", "IPv6", id="ipv4-in-ipv6-pool"),
    pytest.param(4, "10.0.0.1-fd00::1", "IPv4", id="mixed-families"),
    pytest.param(4, "10.0.0.1-10.0.0.x", "not an IP address", id="garbage-end"),
    pytest.param(4, "10.0.0.256", "not an IP address", id="octet-out-of-range"),
    pytest.param(4, "10.0.0.1-", "not an IP address", id="missing-end"),
    pytest.param(4, "10.0.0.0/24", "not an IP address", id="cidr-is-not-a-range"),
    pytest.param(4, "", "not an IP address", id="empty"),
    pytest.param(6, "fd00::1%eth0", "zone", id="zoned"),
]


@pytest.mark.parametrize(("version", "text", "why"), BAD_RANGES)
def test_a_bad_range_raises_value_error_naming_the_entry(version: int, text: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)) as info:
        parse_range(text, version)
    assert repr(text) in str(info.value)


def test_parse_names_the_first_bad_entry_of_a_list() -> None:
    with pytest.raises(ValueError, match=re.escape("'10.0.0.9-10.0.0.1'")):
        IPSet.parse(4, ["10.0.0.1", "10.0.0.9-10.0.0.1", "bogus"])


def test_a_non_canonical_cidr_is_rejected_with_the_canonical_form_suggested() -> None:
    with pytest.raises(ValueError, match=re.escape("please change it to '10.0.0.0/24'")):
        parse_network("10.0.0.1/24")


@pytest.mark.parametrize(
    ("text", "version", "why"),
    [
        pytest.param("10.0.0.0/33", None, "is not a CIDR", id="prefix-too-long"),
        pytest.param("10.0.0.0", 6, "is not an IPv6 CIDR", id="wrong-family"),
        pytest.param("banana", None, "is not a CIDR", id="garbage"),
        pytest.param("fd00::%eth0/64", None, "has a zone", id="zoned"),  # NB: Go's net.ParseCIDR takes none
        pytest.param(" 10.0.0.0/24", None, "is not a CIDR", id="leading-space"),
    ],
)
def test_a_bad_cidr_raises_value_error_naming_it(text: str, version: int | None, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)) as info:
        parse_network(text, version)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        pytest.param("fd00::1%eth0", "has a zone", id="zoned"),  # NB: Go's net.ParseIP takes none; ipaddress does
        pytest.param("fe80::1%1", "has a zone", id="numeric-zone"),
        pytest.param(" 10.0.0.1", "is not an IP address", id="leading-space"),
    ],
)
def test_a_bad_address_raises_value_error_naming_it(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)) as info:
        parse_ip(text)
    assert repr(text) in str(info.value)
