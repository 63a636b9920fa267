"""Store outages against the fake API server: what the Kubernetes store raises while the server is away, the
retrying layer riding a restart out (requests and writes whose answer was lost), and ``spider agent`` processes
taking a burst of ADDs through an API server restart, shorter and longer than ``--store-outage-budget``."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.ipam.check import check_store
from actors.stores.kube import KubeSettings, KubeStore
from actors.stores.port import Conflict, Invalid, Obj, StoreUnreachable, meta
from actors.stores.retrying import RetryingStore
from actors.tools.manifests import apply
from spider.errors import StoreUnavailable
from tests.fakeapi import FakeApiServer, Fault, ServedInThread, served_in_thread
from tests.support import AgentProcess, cni_env, installed_shim, netconf, pod_args, pool_object, short_tmp

TIMEOUT = 30  # seconds; an absolute bound on each in-process test's I/O


def pool(name: str) -> Obj:
    return pool_object(name, "10.6.0.0/16", ["10.6.0.10-10.6.0.20"])


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeApiServer:
    server: FakeApiServer = await nursery.start(FakeApiServer().run)
    return server


@pytest.fixture
async def kube(fake: FakeApiServer, tmp_path: Path) -> AsyncIterator[KubeStore]:
    kubeconfig = fake.kubeconfig(tmp_path / "kubeconfig", token="t")
    store = await KubeStore.open(kubeconfig, settings=KubeSettings(watch_reconnect_budget=10))
    try:
        yield store
    finally:
        await store.aclose()


async def restart_after(fake: FakeApiServer, seconds: float) -> None:
    """An API server restart: down now, back on the same port with the same storage ``seconds`` later."""
    fake.go_down()
    await trio.sleep(seconds)
    await fake.come_up(restarted=True)


# --- what the Kubernetes store raises ---------------------------------------------------------------------------


async def test_an_api_server_that_is_down_is_unreachable(fake: FakeApiServer, kube: KubeStore) -> None:
    with trio.fail_after(TIMEOUT):
        fake.go_down()
        with pytest.raises(StoreUnreachable, match="get SpiderIPPool"):
            await kube.get("SpiderIPPool", "p")


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
async def test_an_overloaded_or_failing_api_server_is_unreachable(
    fake: FakeApiServer, kube: KubeStore, status: int
) -> None:
    with trio.fail_after(TIMEOUT):
        fake.faults.append(Fault(method="GET", status=status))
        with pytest.raises(StoreUnreachable, match=str(status)):
            await kube.list("SpiderIPPool")


async def test_a_refusal_is_unavailable_but_not_unreachable(fake: FakeApiServer, kube: KubeStore) -> None:
    with trio.fail_after(TIMEOUT):
        fake.faults.append(Fault(method="GET", status=403))
        with pytest.raises(StoreUnavailable) as caught:
            await kube.list("SpiderIPPool")
        assert not isinstance(caught.value, StoreUnreachable)


async def test_a_watch_from_a_version_the_server_cannot_parse_fails_at_once(
    fake: FakeApiServer, kube: KubeStore
) -> None:
    with trio.fail_after(TIMEOUT):
        events = kube.watch("SpiderIPPool", resource_version="not-a-version")
        async with contextlib.aclosing(events) as stream:  # type: ignore[type-var]
            with pytest.raises(Invalid, match='resourceVersion: Invalid value: "not-a-version"'):
                await stream.__anext__()
        watches = [target for _, target in fake.log if "watch=true" in target]
        assert len(watches) == 1, "no reconnecting to the same answer"
        assert fake.answers[500] == 1, "the fake answers it as kube-apiserver does: HTTP 500"


async def test_a_watch_from_now_started_during_an_outage_begins_when_the_server_is_back(
    fake: FakeApiServer, kube: KubeStore, nursery: trio.Nursery
) -> None:
    def listed() -> bool:  # the watch's "now": a one-item list of pools
        return any(m == "GET" and "spiderippools?limit=1" in t for m, t in fake.log)

    async def back_and_write() -> None:
        await trio.sleep(0.5)  # NB: the watch has failed to start a few times by now
        await fake.come_up()
        while not listed():  # noqa: ASYNC110  (the fake's request log has no event to wait on)
            await trio.sleep(0.01)
        await kube.create(pool("a"))

    with trio.fail_after(TIMEOUT):
        fake.go_down()
        events = kube.watch("SpiderIPPool")
        async with contextlib.aclosing(events) as stream:  # type: ignore[type-var]
            nursery.start_soon(back_and_write)
            event = await stream.__anext__()
            assert (event.type, meta(event.object)["name"]) == ("ADDED", "a")


# --- the retrying layer over the Kubernetes store --------------------------------------------------------------


async def test_requests_during_a_short_restart_wait_for_the_server_and_succeed(
    fake: FakeApiServer, kube: KubeStore, nursery: trio.Nursery
) -> None:
    store = RetryingStore(kube, outage_budget=8)
    with trio.fail_after(TIMEOUT):
        await store.create(pool("p"))
        fake.go_down()
        nursery.start_soon(lambda: restart_after(fake, 1.0))
        got = await store.get("SpiderIPPool", "p")
        written = await store.update_status({**got, "status": {"allocatedIPCount": 1}})
        assert written["status"] == {"allocatedIPCount": 1}


async def test_a_create_whose_answer_was_lost_is_answered_with_the_object_it_made(
    fake: FakeApiServer, kube: KubeStore
) -> None:
    store = RetryingStore(kube, outage_budget=8)
    with trio.fail_after(TIMEOUT):
        fake.faults.append(Fault(method="POST", drop=True, applied=True))
        made = await store.create(pool("p"))
        assert made["metadata"]["uid"] == (await kube.get("SpiderIPPool", "p"))["metadata"]["uid"]
        assert [m for m, _ in fake.log].count("POST") == 2


async def test_a_guarded_write_whose_answer_was_lost_is_a_conflict_and_a_lost_delete_is_done(
    fake: FakeApiServer, kube: KubeStore
) -> None:
    store = RetryingStore(kube, outage_budget=8)
    with trio.fail_after(TIMEOUT):
        made = await store.create(pool("p"))
        fake.faults.append(Fault(method="PUT", drop=True, applied=True))
        with pytest.raises(Conflict):
            await store.update_status({**made, "status": {"allocatedIPCount": 1}})
        assert (await kube.get("SpiderIPPool", "p"))["status"] == {"allocatedIPCount": 1}
        # NB: aiohttp itself sends a PUT or DELETE once more when a kept-alive connection drops: lose both answers
        fake.faults.append(Fault(method="DELETE", drop=True, applied=True, times=2))
        await store.delete("SpiderIPPool", "p")
        assert (await kube.list("SpiderIPPool")).items == []


async def test_a_lost_guarded_delete_of_an_object_with_finalizers_is_done_not_a_conflict(
    fake: FakeApiServer, kube: KubeStore
) -> None:
    # NB: the first try marks the object (a new resourceVersion), so the resend's precondition fails: a real
    # server answers 409 too (it checks preconditions before it looks at deletionTimestamp)
    store = RetryingStore(kube, outage_budget=8)
    with trio.fail_after(TIMEOUT):
        made = await store.create({**pool("p"), "metadata": {"name": "p", "finalizers": ["example.com/hold"]}})
        fake.faults.append(Fault(method="DELETE", drop=True, applied=True, times=2))
        await store.delete("SpiderIPPool", "p", resource_version=made["metadata"]["resourceVersion"])
        assert (await kube.get("SpiderIPPool", "p"))["metadata"]["deletionTimestamp"]
        other = await store.create(pool("q"))
        await store.update({**other, "metadata": {**other["metadata"], "labels": {"changed": "yes"}}})
        with pytest.raises(Conflict):  # NB: a real conflict stays one: changed meanwhile, and not being deleted
            await store.delete("SpiderIPPool", "q", resource_version=other["metadata"]["resourceVersion"])
        assert await kube.get("SpiderIPPool", "q")


async def test_a_restart_longer_than_the_budget_fails_with_code_11(fake: FakeApiServer, kube: KubeStore) -> None:
    store = RetryingStore(kube, outage_budget=0.5)
    with trio.fail_after(TIMEOUT):
        fake.go_down()
        with pytest.raises(StoreUnreachable, match="outage budget") as caught:
            await store.get("SpiderIPPool", "p")
        assert caught.value.cni_code == 11


# --- agents through an API server restart ----------------------------------------------------------------------

POOL = pool_object("shared", "10.40.0.0/24", ["10.40.0.1-10.40.0.200"])


class OneNode:
    """A fake API server in a thread, one ``spider agent --kubeconfig`` process on it, and the shim."""

    def __init__(self, d: Path, api: ServedInThread, budget: float | None) -> None:
        self.api = api
        self.kubeconfig = api.server.kubeconfig(d / "kubeconfig", token="agent")
        self.shim = installed_shim(d / "bin")
        flags = ["--kubeconfig", str(self.kubeconfig)]
        if budget is not None:
            flags += ["--store-outage-budget", str(budget)]
        self.agent = AgentProcess(d / "unused.db", d / "a.sock", "node-0", d / "a.log", flags)

    async def call(self, command: str, n: int) -> tuple[int, Any]:
        env = cni_env(command, f"ctr-{n}", "eth0", pod_args(f"pod-{n}", f"uid-{n}"))
        conf = netconf(self.agent.socket_path, default_ipv4_ippool=["shared"])
        done = await trio.run_process(
            [str(self.shim)], stdin=json.dumps(conf).encode(), env=env, capture_stdout=True, check=False
        )
        out = done.stdout.strip()
        return done.returncode, (json.loads(out) if out else None)

    async def burst_through_restart(
        self, command: str, pods: range, *, restart_after: int, down_for: float, concurrency: int = 10
    ) -> tuple[dict[int, tuple[int, Any, float, float]], float, float]:
        """``command`` for every pod, ``concurrency`` at once; once ``restart_after`` have answered, the API
        server goes down for ``down_for`` seconds.  Each pod's (code, answer, sent, answered), and when the
        server went down and came back (``trio.current_time()``)."""
        limiter = trio.CapacityLimiter(concurrency)
        results: dict[int, tuple[int, Any, float, float]] = {}
        enough = trio.Event()
        window: list[float] = []

        async def one(n: int) -> None:
            async with limiter:
                sent = trio.current_time()
                code, answer = await self.call(command, n)
                results[n] = (code, answer, sent, trio.current_time())
            if len(results) >= restart_after:
                enough.set()

        async def restart() -> None:
            await enough.wait()
            await trio.to_thread.run_sync(self.api.go_down)
            window.append(trio.current_time())
            await trio.sleep(down_for)
            await trio.to_thread.run_sync(functools.partial(self.api.come_up, restarted=True))
            window.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(restart)
            for n in pods:
                nursery.start_soon(one, n)
        return results, window[0], window[1]

    async def pool_and_endpoints(self) -> tuple[dict[str, Any], list[Obj], bool]:
        store = await KubeStore.open(self.kubeconfig)
        try:
            status = (await store.get("SpiderIPPool", "shared")).get("status") or {}
            endpoints = (await store.list("SpiderEndpoint")).items
            return status, endpoints, (await check_store(store)).consistent
        finally:
            await store.aclose()


@pytest.fixture
def node(request: pytest.FixtureRequest) -> Iterator[OneNode]:
    """``OneNode`` with ``--store-outage-budget`` the parameter (``None``: the default).  A plain fixture: the
    server's thread is stopped from outside trio."""
    with short_tmp() as d, served_in_thread(FakeApiServer(tokens={"agent"})) as api:
        one = OneNode(d, api, request.param)
        try:
            yield one
        finally:
            if one.agent.proc is not None:
                one.agent.stop()


async def started(node: OneNode) -> None:
    store = await KubeStore.open(node.kubeconfig)
    try:
        await apply(store, dict(POOL))
    finally:
        await store.aclose()
    await trio.to_thread.run_sync(node.agent.start)


@pytest.mark.slow
@pytest.mark.parametrize("node", [None], indirect=True)  # NB: the default budget
async def test_every_add_succeeds_through_an_api_server_restart_shorter_than_the_budget(node: OneNode) -> None:
    await started(node)
    with trio.fail_after(120):
        results, down, up = await node.burst_through_restart("ADD", range(60), restart_after=15, down_for=2.0)
    failed = {n: r[:2] for n, r in results.items() if r[0] != 0}
    assert not failed, list(failed.items())[:3]
    held = [n for n, (_, _, sent, answered) in results.items() if sent < down and answered > up]
    assert held, "no ADD was in flight across the outage; nothing was tested"
    addresses = {r[1]["ips"][0]["address"] for r in results.values()}
    assert len(addresses) == 60
    status, endpoints, consistent = await node.pool_and_endpoints()
    assert status["allocatedIPCount"] == 60
    assert len(endpoints) == 60
    assert consistent


@pytest.mark.slow
@pytest.mark.parametrize("node", [0.5], indirect=True)
async def test_adds_fail_with_code_11_through_a_longer_restart_and_dels_leave_nothing_behind(node: OneNode) -> None:
    await started(node)
    with trio.fail_after(120):
        results, _, _ = await node.burst_through_restart("ADD", range(60), restart_after=15, down_for=3.0)
    failed = {n: r[:2] for n, r in results.items() if r[0] != 0}
    assert failed, "every ADD succeeded; the outage did not outlast the budget"
    assert all(answer is not None and answer["code"] == 11 for _, answer in failed.values()), failed
    with trio.fail_after(120):
        deleted = {n: await node.call("DEL", n) for n in range(60)}
    assert all(code == 0 for code, _ in deleted.values()), deleted
    status, endpoints, consistent = await node.pool_and_endpoints()
    assert status.get("allocatedIPCount", 0) == 0
    assert json.loads(status.get("allocatedIPs") or "{}") == {}
    assert endpoints == []
    assert consistent
