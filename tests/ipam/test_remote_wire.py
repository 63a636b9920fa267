"""The pool host's wire format (``actors.ipam.remote``): every forwarded request survives the trip unchanged."""

from __future__ import annotations

import json

import attrs
import outcome
import pytest

from actors.ipam.pool import Adopt, Allocate, Allocation, Inspect, PoolLedger, PoolMsg, Release, ReleaseIPs, Verify
from actors.ipam.remote import decode_message, decode_outcome, encode_message, encode_outcome
from actors.runtime.mailbox import Reply
from spider.addr import IPSet
from spider.pool import Owner, Record, Route

OWNER = Owner("uid-1", "eth0", "default", "pod-1", "ctr-1", "node-1", 1733500000.5)
RECORD = Record("default/pod-1", "uid-1", "eth0", "ctr-1", "node-1", 1733500000.5)


def messages() -> list[PoolMsg]:
    """One of each forwarded kind (built in a trio task: a request notes when it was queued)."""
    return [
        Allocate(OWNER, Reply[object].open(), IPSet(4, ((10, 20), (30, 30)))),  # type: ignore[arg-type]
        Allocate(OWNER, Reply[object].open()),  # type: ignore[arg-type]
        Release(("uid-1", "eth0"), "ctr-1", Reply[str | None].open()),
        ReleaseIPs((("10.0.0.1", "uid-1"), ("10.0.0.2", RECORD)), Reply[int].open()),
        Adopt("10.0.0.3", "uid-0", OWNER, Reply[bool].open()),
        Verify("10.0.0.4", ("uid-1", "eth0"), Reply[bool].open(), recorded_at="41"),
        Verify("10.0.0.4", ("uid-1", "eth0"), Reply[bool].open()),
    ]


def without_reply(msg: PoolMsg) -> dict[str, object]:
    return {k: v for k, v in attrs.asdict(msg, recurse=False).items() if k not in ("reply", "sent_at", "sender")}


KINDS = ("Allocate-avoiding", "Allocate", "Release", "ReleaseIPs", "Adopt", "Verify-at-a-version", "Verify")


@pytest.mark.parametrize("index", range(len(KINDS)), ids=KINDS)
async def test_every_forwarded_request_decodes_to_what_was_sent_from_the_node_that_sent_it(index: int) -> None:
    msg = messages()[index]
    back = decode_message(json.loads(json.dumps(encode_message(msg))), "node-7")
    assert type(back) is type(msg)
    assert without_reply(back) == without_reply(msg)
    assert back.sender == "node-7"  # type: ignore[union-attr]


async def test_a_snapshot_is_never_forwarded() -> None:
    # NB: a copy of a big ledger is not worth a round trip: the agent's own actor answers it
    with pytest.raises(ValueError, match="not forwarded"):
        encode_message(Inspect(Reply[PoolLedger].open()))


def allocate(**owner: object) -> dict[str, object]:
    return {"op": "allocate", "owner": {**attrs.asdict(OWNER), **owner}, "avoid": None}


def avoiding(version: object, *ranges: object) -> dict[str, object]:
    return {**allocate(), "avoid": {"version": version, "ranges": list(ranges)}}


MALFORMED = {
    "a look without its key": {"op": "verify", "ip": "10.0.0.1"},
    "a snapshot": {"op": "inspect"},
    "an allocation without owner": {"op": "allocate"},
    "a list": [],
    "a number": 5,
    "an owner that is a string": {**allocate(), "owner": "uid-1"},
    "a pod UID that is a number": allocate(pod_uid=5),
    "a pod UID that is a list": allocate(pod_uid=["uid-1"]),
    "a pod name of a megabyte": allocate(name="p" * 2**20),
    "a container ID over its bound": allocate(container_id="c" * 257),
    "a node that is null": allocate(node=None),
    "a stamp that is text": allocate(added_at="yesterday"),
    "a stamp that is true": allocate(added_at=True),
    "a stamp that is infinite": allocate(added_at=float("inf")),
    "an owner without its node": {**allocate(), "owner": {k: v for k, v in attrs.asdict(OWNER).items() if k != "node"}},
    "avoiding another family": avoiding(5, [1, 2]),
    "avoiding a family in text": avoiding("4", [1, 2]),
    "avoiding beyond IPv4": avoiding(4, [1, 2**32]),
    "avoiding a reversed range": avoiding(4, [9, 2]),
    "avoiding negative addresses": avoiding(6, [-1, 2]),
    "avoiding an infinite range": avoiding(4, [1, float("inf")]),
    "avoiding addresses in text": avoiding(4, ["1", "2"]),
    "avoiding a range of three": avoiding(4, [1, 2, 3]),
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_or_unknown_request_is_refused_as_malformed(raw: object) -> None:
    # NB: what an allocation would store (its owner) must be parseable by every reader of the pool, and bounded
    with pytest.raises((ValueError, KeyError, TypeError)):
        decode_message(raw)


async def test_an_allocation_comes_back_with_the_version_that_records_it_and_unknown_fields_left_out() -> None:
    allocation = Allocation("p", 4, "10.0.0.5/24", "10.0.0.1", (Route("0.0.0.0/0", "10.0.0.1"),), recorded_at="42")
    sent = json.loads(json.dumps(encode_outcome(outcome.Value(allocation))))
    msg = messages()[1]
    back = decode_outcome(msg, sent).unwrap()
    assert (back, back.recorded_at, back.fresh) == (allocation, "42", True)
    sent["value"]["sentBy"] = "a newer host"  # NB: a field this version does not know
    assert decode_outcome(msg, sent).unwrap().recorded_at == "42"
