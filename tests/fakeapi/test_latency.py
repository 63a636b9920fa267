"""The fake API server's latency model: concurrent requests wait concurrently, and a write is checked and
committed at the end of its wait, so two writes racing at one resourceVersion both wait and one loses; a write
whose version is already stale when it arrives is refused in the time of a read.

The server runs in the test's trio run on a ``MockClock`` that only moves when the test jumps it: a request
sleeping out its latency stays unanswered until the jump, whatever the machine's load, so nothing here
depends on wall time.  Clients speak HTTP/1.1 through h11, one connection per request.
"""

from __future__ import annotations

import json
from typing import Any

import h11
import pytest
import trio
import trio.testing

from spider.kinds import SPIDER_API_VERSION
from tests.fakeapi import Cost, FakeApiServer, LatencyModel
from tests.fakeapi.latency import MEASURED, VERBS

POOLS = "/apis/spiderpool.spidernet.io/v2beta1/spiderippools"


async def exchange(
    server: FakeApiServer, method: str, path: str, body: object = None, *more: tuple[str, str]
) -> tuple[int, dict[str, str], bytes]:
    """One request on a connection of its own, with headers ``more``: the answer's code, headers and body as
    sent (not decompressed)."""
    stream = await trio.open_tcp_stream(server.host, server.port)
    conn = h11.Connection(h11.CLIENT)
    data = b"" if body is None else json.dumps(body).encode()
    headers = [("Host", "fake"), ("Content-Type", "application/json"), ("Content-Length", str(len(data))), *more]
    async with stream:
        await stream.send_all(conn.send(h11.Request(method=method, target=path, headers=headers)) or b"")
        await stream.send_all(
            (conn.send(h11.Data(data=data)) if data else b"") + (conn.send(h11.EndOfMessage()) or b"")
        )
        code, answer_headers, received = 0, dict[str, str](), bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                code = event.status_code
                answer_headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                received += event.data
            elif isinstance(event, h11.EndOfMessage):
                return code, answer_headers, bytes(received)


async def call(
    server: FakeApiServer, method: str, path: str, body: object = None, accept: str = "application/json"
) -> tuple[int, Any]:
    """One request on a connection of its own: the answer's code and decoded JSON."""
    code, _, received = await exchange(server, method, path, body, ("Accept", accept))
    return code, json.loads(received)


def pool(name: str) -> dict[str, Any]:
    return {
        "apiVersion": SPIDER_API_VERSION,
        "kind": "SpiderIPPool",
        "metadata": {"name": name},
        "spec": {"subnet": "10.6.0.0/16", "ips": ["10.6.0.10-10.6.0.20"]},
    }


def slow(**costs_ms: float) -> LatencyModel:
    """A model where only the named request kinds take time (``updateStatus`` spelled ``update_status``)."""
    return LatencyModel({k.replace("update_status", "updateStatus"): Cost(v) for k, v in costs_ms.items()})


class Calls:
    """Requests run in the background; ``answers`` fills in as they are answered."""

    def __init__(self, nursery: trio.Nursery, server: FakeApiServer) -> None:
        self.nursery, self.server, self.answers = nursery, server, dict[str, tuple[int, Any]]()

    def start(self, label: str, method: str, path: str, body: object = None, accept: str = "application/json") -> None:
        async def one() -> None:
            self.answers[label] = await call(self.server, method, path, body, accept)

        self.nursery.start_soon(one)


async def served(nursery: trio.Nursery, latency: LatencyModel) -> FakeApiServer:
    server: FakeApiServer = await nursery.start(FakeApiServer(latency=latency).run)
    return server


async def settled() -> None:
    """Until every task waits: requests sent are received and sleeping out their latency, or answered."""
    await trio.testing.wait_all_tasks_blocked()


async def test_the_latency_model_is_off_unless_asked_for(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    server: FakeApiServer = await nursery.start(FakeApiServer().run)
    assert not server.latency.enabled
    with trio.fail_after(10):  # NB: the mock clock never moves here: any wait at all would hang
        code, _ = await call(server, "POST", POOLS, pool("p"))
    assert code == 201


async def test_concurrent_writes_to_different_objects_wait_at_the_same_time(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    server = await served(nursery, slow(create=1000))
    calls = Calls(nursery, server)
    for name in ("a", "b", "c"):
        calls.start(name, "POST", POOLS, pool(name))
    await settled()
    assert calls.answers == {}  # all three are waiting out their latency
    mock_clock.jump(1.0)  # one latency: with one request served at a time, only the first would be done
    await settled()
    assert {label: code for label, (code, _) in calls.answers.items()} == {"a": 201, "b": 201, "c": 201}


async def test_two_writes_at_one_resource_version_both_wait_and_the_second_to_finish_gets_409(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    server = await served(nursery, slow(update_status=1000))
    _, created = await call(server, "POST", POOLS, pool("p"))
    calls = Calls(nursery, server)
    for agent in ("a", "b"):
        calls.start(agent, "PUT", f"{POOLS}/p/status", dict(created, status={"allocatedIPCount": 1 + len(agent)}))
    await settled()
    assert calls.answers == {}  # the loser is not refused up front: it pays the latency too
    mock_clock.jump(1.0)
    await settled()
    codes = sorted(code for code, _ in calls.answers.values())
    assert codes == [200, 409]
    assert server.served["updateStatus", 409] == 1


async def test_the_resource_version_is_checked_when_the_write_ends_not_when_it_arrives(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    server = await served(nursery, slow(update_status=1000))  # spec updates take no time
    _, created = await call(server, "POST", POOLS, pool("p"))
    calls = Calls(nursery, server)
    calls.start("status", "PUT", f"{POOLS}/p/status", dict(created, status={"allocatedIPCount": 1}))
    await settled()
    code, _ = await call(server, "PUT", f"{POOLS}/p", dict(created, spec={"subnet": "10.7.0.0/16"}))
    assert code == 200  # committed while the status write, sent at the same version, was still under way
    mock_clock.jump(1.0)
    await settled()
    assert calls.answers["status"][0] == 409


async def test_a_write_already_stale_when_it_arrives_is_refused_in_the_time_of_a_read(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    server = await served(nursery, slow(update_status=1000, get=10))
    _, created = await call(server, "POST", POOLS, pool("p"))
    winner = Calls(nursery, server)
    winner.start("first", "PUT", f"{POOLS}/p/status", dict(created, status={"allocatedIPCount": 1}))
    await settled()
    mock_clock.jump(1.0)
    await settled()
    assert winner.answers["first"][0] == 200
    late = Calls(nursery, server)  # NB: sent at the version the first write has already replaced
    late.start("stale", "PUT", f"{POOLS}/p/status", dict(created, status={"allocatedIPCount": 2}))
    await settled()
    assert late.answers == {}
    mock_clock.jump(0.01)  # a read's time, not the write's second: no etcd transaction is tried
    await settled()
    assert late.answers["stale"][0] == 409
    assert server.served["updateStatus", 409] == 1


async def test_a_read_is_answered_after_its_latency_and_does_not_hold_up_other_requests(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    server = await served(nursery, slow(get=1000))
    await call(server, "POST", POOLS, pool("p"))
    calls = Calls(nursery, server)
    calls.start("get", "GET", f"{POOLS}/p")
    await settled()
    code, listing = await call(server, "GET", POOLS)  # a list costs nothing in this model
    assert (code, [i["metadata"]["name"] for i in listing["items"]]) == (200, ["p"])
    assert calls.answers == {}
    mock_clock.jump(1.0)
    await settled()
    assert calls.answers["get"][0] == 200


METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"


async def test_a_metadata_only_read_answers_the_metadata_alone(nursery: trio.Nursery) -> None:
    server: FakeApiServer = await nursery.start(FakeApiServer().run)
    with trio.fail_after(10):
        _, created = await call(server, "POST", POOLS, pool("p"))
        assert await call(server, "GET", f"{POOLS}/p", accept=METADATA_ONLY) == (
            200,
            {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": created["metadata"]},
        )
        code, listing = await call(server, "GET", POOLS, accept=METADATA_ONLY.replace("Metadata;", "MetadataList;"))
        assert (code, listing["kind"], listing["items"][0]["metadata"]) == (
            200,
            "PartialObjectMetadataList",
            created["metadata"],
        )
        assert await call(server, "GET", f"{POOLS}/p", accept="application/json") == (200, created)
        code, missing = await call(server, "GET", f"{POOLS}/q", accept=METADATA_ONLY)
        assert (code, missing["kind"], missing["reason"]) == (404, "Status", "NotFound")
    assert (server.served["get (metadata)", 200], server.served["list (metadata)", 200]) == (1, 1)
    assert (server.served["get", 200], server.served["get (metadata)", 404]) == (1, 1)


async def test_a_metadata_only_read_takes_as_long_as_reading_the_whole_object(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    server = await served(nursery, LatencyModel({"get": Cost(0, 1000)}))  # 1 s per KiB of the object
    big = {**pool("p"), "spec": {**pool("p")["spec"], "ips": [f"10.6.{i // 250}.{i % 250}" for i in range(300)]}}
    await call(server, "POST", POOLS, big)  # about 4 KiB: a create costs nothing in this model
    calls = Calls(nursery, server)
    calls.start("meta", "GET", f"{POOLS}/p", accept=METADATA_ONLY)
    await settled()
    mock_clock.jump(2.0)  # the metadata alone is under 1 KiB
    await settled()
    assert calls.answers == {}
    mock_clock.jump(10.0)
    await settled()
    assert calls.answers["meta"][1]["kind"] == "PartialObjectMetadata"


def test_the_measured_model_reproduces_the_two_measured_pool_status_writes() -> None:
    model = LatencyModel.measured(jitter=0)
    record = 220  # bytes of one allocation record in a pool's status
    assert model.seconds("updateStatus", 1000 * record) * 1000 == pytest.approx(16, rel=0.05)
    assert model.seconds("updateStatus", 10 * record) * 1000 == pytest.approx(3, rel=0.05)
    assert model.seconds("get", 10 * record) < model.seconds("updateStatus", 10 * record)
    assert set(MEASURED) == set(VERBS)


def test_jitter_stays_within_its_bounds_and_the_same_seed_gives_the_same_delays() -> None:
    def delays(seed: int) -> list[float]:
        model = LatencyModel({"get": Cost(10.0)}, jitter=0.5, seed=seed)
        return [model.seconds("get", 0) for _ in range(200)]

    first = delays(7)
    assert first == delays(7)
    assert first != delays(8)
    assert all(0.005 <= d <= 0.015 for d in first)
    assert len(set(first)) > 100


@pytest.mark.parametrize(
    ("text", "update_status_ms", "jitter"),
    [
        ("off", None, 0.0),
        ("", None, 0.0),
        ("measured", 2.87, 0.2),
        ("measured*2", 5.74, 0.2),
        ('{"costs": {"updateStatus": [5, 0.1]}, "jitter": 0}', 5.0, 0.0),
        ('{"costs": {"get": 1}, "only": true}', None, 0.2),
    ],
)
def test_a_model_is_read_from_its_text_form(text: str, update_status_ms: float | None, jitter: float) -> None:
    model = LatencyModel.parse(text)
    cost = model.costs.get("updateStatus")
    assert (None if cost is None else pytest.approx(cost.base_ms)) == update_status_ms
    assert model.jitter == jitter


@pytest.mark.parametrize("text", ["fast", '{"costs": {"put": 1}}', "[1, 2]", '{"jitter": 1.5}'])
def test_a_model_that_makes_no_sense_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"latency model|unknown request kinds|jitter"):
        LatencyModel.parse(text)
