"""The pool host's handler in process (no TLS, an in-memory store, trio's autojump clock): a batch's ``within``
limit, after which none of its requests is applied, however long it waited behind another batch's write or for
its TokenReview."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing

from actors.ipam.pool import Allocate, PoolRegistry
from actors.ipam.remote import BATCH_PATH, encode_message
from actors.runtime.mailbox import Reply
from actors.runtime.supervisor import Supervisor
from actors.servers.httpserver import Request, Response
from actors.servers.pool_host import MAX_CACHED_TOKENS, PoolHost
from spider.pool import KIND, Owner, PoolLedger
from tests.ipam.memory_store import MemoryStore, SlowWrites, delays
from tests.support import pool_object

USER = "system:serviceaccount:kube-system:spiderpool-agent"
POOL = pool_object("shared", "10.40.0.0/24", ["10.40.0.10-10.40.0.69"])


async def _review(token: str) -> str | None:
    return USER if token == "agent-token" else None


def batch(uid: str, **extra: Any) -> Request:
    """A forwarded batch of one allocation for pod ``uid``, with ``extra`` fields beside its messages."""
    allocate = Allocate(Owner(uid, "eth0", "default", uid, f"ctr-{uid}", "node-1"), Reply.open())
    body = {"sender": "node-1", "messages": [encode_message(allocate)], **extra}
    headers = {"authorization": "Bearer agent-token", "content-type": "application/json"}
    return Request("POST", f"{BATCH_PATH}shared", {}, headers, json.dumps(body).encode())


@pytest.fixture
async def host(nursery: trio.Nursery) -> tuple[PoolHost, MemoryStore]:
    """A leading host whose pool's first status write takes a second."""
    store = MemoryStore()
    await store.create(POOL)
    registry = PoolRegistry(SlowWrites(store, delays({"shared": [1.0]})), Supervisor(nursery))
    return PoolHost(_review, USER, registry), store


async def holders(store: MemoryStore) -> set[str]:
    return {r.pod_uid for r in PoolLedger.from_object(await store.get(KIND, "shared")).records.values()}


async def test_a_batch_that_waits_past_its_within_limit_is_answered_unapplied(
    autojump_clock: trio.testing.MockClock, host: tuple[PoolHost, MemoryStore]
) -> None:
    server, store = host
    answers: dict[str, Any] = {}

    async def send(uid: str, within: float) -> None:
        response = await server.handle(batch(uid, within=within))
        assert response.status == 200
        (answers[uid],) = json.loads(response.body)["results"]

    with trio.fail_after(60):
        async with trio.open_nursery() as agents:
            agents.start_soon(send, "first", 10.0)  # folded at once; its write takes a second
            await trio.sleep(0.1)
            agents.start_soon(send, "late", 0.25)  # waits for that write, past its 0.25 s
        answers["again"] = json.loads((await server.handle(batch("again", within=0.25))).body)["results"][0]
    assert answers["first"]["value"]["address"] == "10.40.0.10/24"
    assert answers["late"]["error"]["type"] == "RequestExpired"
    assert answers["late"]["error"]["cniCode"] == 11
    assert answers["again"]["value"]["address"] == "10.40.0.11/24", "a batch in time is applied"
    assert await holders(store) == {"first", "again"}


async def test_a_batch_without_a_limit_is_applied_whenever_it_is_folded(
    autojump_clock: trio.testing.MockClock, host: tuple[PoolHost, MemoryStore]
) -> None:
    server, store = host
    with trio.fail_after(60):
        async with trio.open_nursery() as agents:
            agents.start_soon(server.handle, batch("first"))
            await trio.sleep(0.1)
            agents.start_soon(server.handle, batch("older-agent"))  # an agent that sends no limit
    assert await holders(store) == {"first", "older-agent"}


async def test_the_limit_counts_from_the_batch_s_arrival_a_slow_token_review_included(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    store = MemoryStore()
    await store.create(POOL)

    async def slow_review(token: str) -> str | None:
        await trio.sleep(2.5)  # the API server is slow: the very moment agents give up on the host
        return await _review(token)

    server = PoolHost(slow_review, USER, PoolRegistry(store, Supervisor(nursery)))
    with trio.fail_after(60):
        response = await server.handle(batch("late", within=1.0))
    (answer,) = json.loads(response.body)["results"]
    assert answer["error"]["type"] == "RequestExpired", "applied 1.5 s after the agent's limit"
    assert await holders(store) == set()
    response = await server.handle(batch("reviewed", within=1.0))  # NB: the verdict is cached now
    assert json.loads(response.body)["results"][0]["value"]["address"] == "10.40.0.10/24"


def raw_batch(*messages: dict[str, Any]) -> Request:
    body = json.dumps({"sender": "node-1", "within": 5.0, "messages": list(messages)}).encode()
    return Request("POST", f"{BATCH_PATH}shared", {}, {"authorization": "Bearer agent-token"}, body)


@pytest.mark.parametrize("text", ["not-an-ip", "2001:db8::1", "10.40.0.300"])
async def test_an_address_that_cannot_be_the_pool_s_frees_adopts_and_confirms_nothing(
    autojump_clock: trio.testing.MockClock, host: tuple[PoolHost, MemoryStore], text: str
) -> None:
    server, store = host
    with trio.fail_after(60):
        assert (await server.handle(batch("first"))).status == 200
        owner = json.loads(batch("second").body)["messages"][0]["owner"]
        response = await server.handle(
            raw_batch(
                {"op": "releaseIPs", "ips": [[text, "first"]]},
                {"op": "adopt", "ip": text, "previousUid": "first", "owner": owner},
                {"op": "verify", "ip": text, "key": ["first", "eth0"], "recordedAt": ""},
            )
        )
        assert response.status == 200
        assert [r["value"] for r in json.loads(response.body)["results"]] == [0, False, False]
        assert (await server.handle(batch("second"))).status == 200, "the host serves on"
    assert await holders(store) == {"first", "second"}


@pytest.mark.parametrize("address", [5, None, ["10.40.0.10"], "1" * 65])
async def test_an_address_that_is_not_text_is_refused_and_changes_nothing(
    host: tuple[PoolHost, MemoryStore], address: Any
) -> None:
    server, store = host
    response = await server.handle(raw_batch({"op": "releaseIPs", "ips": [[address, "first"]]}))
    assert response.status == 400
    assert await holders(store) == set()


@pytest.mark.parametrize("within", [-1, "1", True, None, float("inf"), 1e9, [1]])
async def test_a_malformed_limit_is_refused_and_changes_nothing(
    host: tuple[PoolHost, MemoryStore], within: Any
) -> None:
    server, store = host
    response = await server.handle(batch("x", within=within))
    if within is None:  # JSON null: no limit, as an older agent
        assert response.status == 200
        assert await holders(store) == {"x"}
    else:
        assert response.status == 400
        # NB: json.dumps sends inf as Infinity, which is no JSON number: refused as the body is read
        assert b"within" in response.body or b"Infinity is not a JSON number" in response.body
        assert await holders(store) == set()


async def test_an_added_at_too_large_for_a_float_is_a_malformed_batch(host: tuple[PoolHost, MemoryStore]) -> None:
    server, store = host
    text = json.loads(batch("x").body)
    text["messages"][0]["owner"]["added_at"] = 12345
    body = json.dumps(text).replace("12345", "1" + "0" * 400).encode()  # NB: once an OverflowError: a 500
    headers = {"authorization": "Bearer agent-token"}
    response = await server.handle(Request("POST", f"{BATCH_PATH}shared", {}, headers, body))
    assert response.status == 400
    assert await holders(store) == set()


async def test_a_batch_queued_when_the_host_steps_down_is_answered_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # NB: only the batch the actor held was answered: a queued one waited for ever, holding its connection
    store = MemoryStore()
    await store.create(POOL)
    answers: dict[str, Any] = {}
    with trio.fail_after(60):
        async with trio.open_nursery() as agents, trio.open_nursery() as hosted:
            server = PoolHost(
                _review, USER, PoolRegistry(SlowWrites(store, delays({"shared": [5.0]})), Supervisor(hosted))
            )

            async def send(uid: str) -> None:
                response = await server.handle(batch(uid, within=30.0))
                (answers[uid],) = json.loads(response.body)["results"]
                answers[uid]["at"] = trio.current_time()

            agents.start_soon(send, "first")  # folded at once; its write takes 5 s
            await trio.sleep(0.5)
            agents.start_soon(send, "queued")  # in the actor's mailbox behind that write
            await trio.sleep(0.5)
            server.registry = None  # the host steps down (Controller.lead): 421 from now on, its actors cancelled
            stepped_down = trio.current_time()
            hosted.cancel_scope.cancel()
    assert {uid: answer["error"]["type"] for uid, answer in answers.items()} == {
        "first": "ActorUnavailable",
        "queued": "ActorUnavailable",
    }
    assert max(answer["at"] for answer in answers.values()) == stepped_down
    assert await holders(store) == set()


def head(token: str) -> Request:
    return Request("POST", f"{BATCH_PATH}shared", {}, {"authorization": f"Bearer {token}"}, b"")


async def test_a_flood_of_made_up_tokens_does_not_push_out_the_agents_verdict() -> None:
    reviews: list[str] = []

    async def review(token: str) -> str | None:
        reviews.append(token)
        return await _review(token)

    server = PoolHost(review, USER)
    assert await server._authenticate(head("agent-token")) is None
    for n in range(MAX_CACHED_TOKENS + 10):  # NB: anyone on the host network can send these
        denied = await server._authenticate(head(f"made-up-{n}"))
        assert denied is not None
        assert denied.status == 401
    assert await server._authenticate(head("agent-token")) is None
    assert reviews.count("agent-token") == 1
    assert reviews.count("made-up-0") == 1


async def test_requests_with_one_new_token_share_one_review(autojump_clock: trio.testing.MockClock) -> None:
    reviews: list[str] = []

    async def review(token: str) -> str | None:
        reviews.append(token)
        await trio.sleep(0.2)  # an API server round trip
        return USER

    server = PoolHost(review, USER)
    denied: list[Response | None] = []

    async def authenticate() -> None:
        denied.append(await server._authenticate(head("agent-token")))

    async with trio.open_nursery() as nursery:
        for _ in range(20):  # a burst from every node right after the host started
            nursery.start_soon(authenticate)
    assert denied == [None] * 20
    assert reviews == ["agent-token"]
