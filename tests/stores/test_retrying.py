"""The retrying layer on its own (``actors.stores.retrying``), over a scripted in-memory store and trio's
autojump clock: what is retried, for how long, and what a write whose answer was lost turns into."""

from __future__ import annotations

import copy
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest
import trio

from actors.stores.port import (
    AlreadyExists,
    Conflict,
    Invalid,
    NotFound,
    Obj,
    ObjectList,
    StoreUnreachable,
    WatchEvent,
    key_of,
)
from actors.stores.retrying import MAX_PAUSE, RetryingStore
from spider.errors import StoreUnavailable

BUDGET = 8.0


@attrs.define(eq=False, slots=False)  # NB: slots=False: a test gives one an atomic status update
class ScriptedStore:
    """A tiny in-memory ``Store`` whose outages the test scripts: down until a time, or losing the answers
    of the next writes after applying them, or failing with a chosen error."""

    objects: dict[tuple[str, str, str], Obj] = attrs.Factory(dict)
    version: int = 0
    down_until: float = -1.0
    lost_answers: int = 0
    """The next writes are applied, then answered with ``StoreUnreachable``."""
    fail_with: Exception | None = None
    calls: list[str] = attrs.Factory(list)
    before_attempt: Callable[[str], None] | None = None

    def _enter(self, verb: str) -> None:
        self.calls.append(verb)
        if self.before_attempt is not None:
            self.before_attempt(verb)
        if self.fail_with is not None:
            raise self.fail_with
        if trio.current_time() < self.down_until:
            raise StoreUnreachable(reason=f"{verb}: ClientConnectorError: connection refused")

    def _answer_lost(self) -> None:
        if self.lost_answers > 0:
            self.lost_answers -= 1
            raise StoreUnreachable(reason="ServerDisconnectedError: the answer was lost")

    def _stamp(self, obj: Obj) -> Obj:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(obj)

    async def get(self, kind: str, name: str, namespace: str = "") -> Obj:
        await trio.sleep(0.001)
        self._enter("get")
        try:
            return copy.deepcopy(self.objects[kind, namespace, name])
        except KeyError:
            raise NotFound(kind=kind, name=name, namespace=namespace) from None

    async def list(
        self, kind: str, *, namespace: str | None = None, label_selector: str = "", field_selector: str = ""
    ) -> ObjectList:
        await trio.sleep(0.001)
        self._enter("list")
        items = [copy.deepcopy(o) for (k, _, _), o in self.objects.items() if k == kind]
        return ObjectList(items=items, resource_version=str(self.version))

    async def create(self, obj: Obj) -> Obj:
        await trio.sleep(0.001)
        self._enter("create")
        key = key_of(obj)
        if not key[2]:
            key = (key[0], key[1], f"generated-{self.version}")
        if key in self.objects:
            raise AlreadyExists(kind=key[0], name=key[2], namespace=key[1])
        stored = copy.deepcopy(obj)
        stored["metadata"].update(name=key[2], uid=f"uid-{self.version}")
        self.objects[key] = stored
        answer = self._stamp(stored)
        self._answer_lost()
        return answer

    async def update(self, obj: Obj) -> Obj:
        await trio.sleep(0.001)
        self._enter("update")
        key = key_of(obj)
        if key not in self.objects:
            raise NotFound(kind=key[0], name=key[2], namespace=key[1])
        sent = obj["metadata"].get("resourceVersion") or ""
        if sent and sent != self.objects[key]["metadata"]["resourceVersion"]:
            raise Conflict(kind=key[0], name=key[2], sent_version=sent)
        self.objects[key] = copy.deepcopy(obj)
        answer = self._stamp(self.objects[key])
        self._answer_lost()
        return answer

    async def update_status(self, obj: Obj) -> Obj:
        return await self.update(obj)

    async def delete(
        self, kind: str, name: str, namespace: str = "", *, resource_version: str = "", grace_seconds: int | None = None
    ) -> None:
        await trio.sleep(0.001)
        self._enter("delete")
        if (kind, namespace, name) not in self.objects:
            raise NotFound(kind=kind, name=name, namespace=namespace)
        del self.objects[kind, namespace, name]
        self._answer_lost()

    def watch(
        self, kind: str, *, namespace: str | None = None, label_selector: str = "", resource_version: str = ""
    ) -> AsyncIterator[WatchEvent]:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


def endpoint(name: str, **labels: str) -> Obj:
    return {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderEndpoint",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
    }


def pod(name: str, node: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": {"n": node}}


async def stored(inner: ScriptedStore, obj: Obj) -> Obj:
    return await inner.create(copy.deepcopy(obj))


# --- what is retried, and for how long -------------------------------------------------------------------------


async def test_a_request_during_an_outage_shorter_than_the_budget_waits_and_succeeds(autojump_clock: Any) -> None:
    inner = ScriptedStore()
    await stored(inner, pod("p", "n1"))
    inner.down_until = trio.current_time() + 5.0
    store = RetryingStore(inner, outage_budget=BUDGET)
    got = await store.get("Pod", "p", "default")
    assert got["spec"] == {"n": "n1"}
    assert trio.current_time() >= inner.down_until
    assert inner.calls.count("get") > 2, "it tried again, more than once"
    assert store.unreachable_since is None, "the answer ended the outage"


async def test_an_outage_longer_than_the_budget_fails_with_store_unreachable_after_the_budget(
    autojump_clock: Any,
) -> None:
    inner = ScriptedStore(down_until=1e9)
    store = RetryingStore(inner, outage_budget=BUDGET)
    start = trio.current_time()
    with pytest.raises(StoreUnreachable, match="outage budget of 8 s") as caught:
        await store.get("Pod", "p", "default")
    waited = trio.current_time() - start
    assert BUDGET <= waited <= BUDGET + 0.1  # virtual time: it does not sleep past the budget
    assert caught.value.cni_code == 11
    pauses = len(inner.calls) - 1
    assert 8 <= pauses <= 40, "backed off: neither a hot loop nor one long sleep"


async def test_backoff_pauses_stay_under_a_second_so_requests_resume_soon_after_the_store_returns(
    autojump_clock: Any,
) -> None:
    inner = ScriptedStore()
    await stored(inner, pod("p", "n1"))
    tries: list[float] = []
    inner.before_attempt = lambda verb: tries.append(trio.current_time())
    inner.down_until = trio.current_time() + 6.0
    await RetryingStore(inner, outage_budget=BUDGET).get("Pod", "p", "default")
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert max(gaps) <= MAX_PAUSE * 1.5 + 0.01
    assert tries[-1] - inner.down_until <= MAX_PAUSE * 1.5 + 0.01


@pytest.mark.parametrize(
    "error",
    [
        StoreUnavailable(reason="HTTP 403 Forbidden"),
        Invalid(kind="Pod", name="p", reason="bad"),
        Conflict(kind="Pod", name="p", sent_version="3"),
    ],
    ids=["forbidden", "invalid", "conflict"],
)
async def test_an_error_that_waiting_does_not_fix_is_raised_at_once(autojump_clock: Any, error: Exception) -> None:
    inner = ScriptedStore(fail_with=error)
    start = trio.current_time()
    with pytest.raises(type(error)):
        await RetryingStore(inner, outage_budget=BUDGET).update(pod("p", "n1"))
    assert inner.calls == ["update"]
    assert trio.current_time() - start < 0.1


async def test_a_request_that_arrives_after_the_outage_outlasted_the_budget_tries_once_and_fails(
    autojump_clock: Any,
) -> None:
    inner = ScriptedStore(down_until=1e9)
    store = RetryingStore(inner, outage_budget=BUDGET)
    with pytest.raises(StoreUnreachable):
        await store.get("Pod", "first", "default")
    inner.calls.clear()
    start = trio.current_time()
    with pytest.raises(StoreUnreachable):
        await store.get("Pod", "second", "default")
    assert inner.calls == ["get"]
    assert trio.current_time() - start < 0.1


async def test_once_the_store_answers_the_next_outage_gets_a_whole_budget_again(autojump_clock: Any) -> None:
    inner = ScriptedStore(down_until=1e9)
    store = RetryingStore(inner, outage_budget=BUDGET)
    with pytest.raises(StoreUnreachable):
        await store.get("Pod", "p", "default")
    inner.down_until = -1.0
    with pytest.raises(NotFound):  # an answer: the store is back
        await store.get("Pod", "p", "default")
    inner.down_until = trio.current_time() + BUDGET - 1
    with pytest.raises(NotFound):
        await store.get("Pod", "p", "default")


async def test_a_budget_of_zero_fails_at_once(autojump_clock: Any) -> None:
    inner = ScriptedStore(down_until=1e9)
    with pytest.raises(StoreUnreachable):
        await RetryingStore(inner, outage_budget=0).list("Pod")
    assert inner.calls == ["list"]


# --- writes whose answer was lost ------------------------------------------------------------------------------


async def test_a_create_whose_answer_was_lost_answers_with_the_object_it_made(autojump_clock: Any) -> None:
    inner = ScriptedStore(lost_answers=1)
    store = RetryingStore(inner, outage_budget=BUDGET)
    made = await store.create(endpoint("e", app="web"))
    assert made["metadata"]["uid"]
    assert made["metadata"]["labels"] == {"app": "web"}
    assert inner.calls == ["create", "create", "get"]
    assert list(inner.objects) == [("SpiderEndpoint", "default", "e")]


async def test_a_create_that_meets_another_writers_object_after_an_outage_is_already_exists(
    autojump_clock: Any,
) -> None:
    inner = ScriptedStore()
    others = endpoint("e", app="other")

    def another_writer_meanwhile(verb: str) -> None:
        if verb == "create" and inner.calls.count("create") == 1:
            inner.down_until = trio.current_time() + 1  # this try fails, unapplied ...
            inner.objects["SpiderEndpoint", "default", "e"] = inner._stamp(copy.deepcopy(others))  # ... and this wins

    inner.before_attempt = another_writer_meanwhile
    with pytest.raises(AlreadyExists):
        await RetryingStore(inner, outage_budget=BUDGET).create(endpoint("e", app="web"))
    assert inner.objects["SpiderEndpoint", "default", "e"]["metadata"]["labels"] == {"app": "other"}


async def test_a_create_of_a_taken_name_without_an_outage_is_already_exists_without_a_read(
    autojump_clock: Any,
) -> None:
    inner = ScriptedStore()
    await stored(inner, endpoint("e"))
    inner.calls.clear()
    with pytest.raises(AlreadyExists):
        await RetryingStore(inner, outage_budget=BUDGET).create(endpoint("e"))
    assert inner.calls == ["create"]


async def test_a_create_that_leaves_the_name_to_the_store_is_never_retried(autojump_clock: Any) -> None:
    inner = ScriptedStore(lost_answers=1)
    obj = endpoint("")
    obj["metadata"]["generateName"] = "e-"
    with pytest.raises(StoreUnreachable):
        await RetryingStore(inner, outage_budget=BUDGET).create(obj)
    assert inner.calls == ["create"]
    assert len(inner.objects) == 1, "one object, not two"


async def test_a_guarded_update_whose_answer_was_lost_is_a_conflict_for_the_caller_to_reread(
    autojump_clock: Any,
) -> None:
    inner = ScriptedStore()
    current = await stored(inner, pod("p", "n1"))
    inner.lost_answers = 1
    with pytest.raises(Conflict):
        await RetryingStore(inner, outage_budget=BUDGET).update({**current, "spec": {"n": "n2"}})
    assert inner.objects["Pod", "default", "p"]["spec"] == {"n": "n2"}, "the first try was applied"


async def test_a_delete_whose_answer_was_lost_is_done(autojump_clock: Any) -> None:
    inner = ScriptedStore()
    await stored(inner, pod("p", "n1"))
    inner.lost_answers = 1
    await RetryingStore(inner, outage_budget=BUDGET).delete("Pod", "p", "default")
    assert inner.calls == ["create", "delete", "delete"]
    assert not inner.objects


async def test_a_delete_of_a_missing_object_is_not_found(autojump_clock: Any) -> None:
    with pytest.raises(NotFound):
        await RetryingStore(ScriptedStore(), outage_budget=BUDGET).delete("Pod", "p", "default")


async def test_an_atomic_status_update_is_retried_when_the_inner_store_has_one(autojump_clock: Any) -> None:
    inner = ScriptedStore()

    async def atomically(kind: str, name: str, change: Callable[[Obj], Obj | None], namespace: str = "") -> Obj:
        current = await inner.get(kind, name, namespace)
        current["status"] = change(current)
        return await inner.update_status(current)

    assert RetryingStore(inner).update_status_atomically is None
    inner.update_status_atomically = atomically  # type: ignore[attr-defined]
    await stored(inner, pod("p", "n1"))
    inner.down_until = trio.current_time() + 2
    store = RetryingStore(inner, outage_budget=BUDGET)
    assert store.update_status_atomically is not None
    written = await store.update_status_atomically("Pod", "p", lambda obj: {"phase": "Running"}, "default")
    assert written["status"] == {"phase": "Running"}
