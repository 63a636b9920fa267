"""What only the Kubernetes store promises, checked against the fake API server in this test's trio run: the
asyncio bridge, REST paths of built-in kinds, error mapping and timeouts, credentials (token files, exec
plugins, in-cluster service accounts over TLS) and watches that outlive connections and API servers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from actors.stores.asyncio_thread import AsyncioThread
from actors.stores.informer import inform
from actors.stores.kube import KubeSettings, KubeStore
from actors.stores.port import Gone, Invalid, NotFound, Obj, WatchEvent, meta
from actors.stores.retrying import RetryingStore
from spider.errors import StoreUnavailable
from spider.kinds import SPIDER_API_VERSION, SPIDER_GROUP, SPIDER_VERSION
from tests.fakeapi import Cluster, FakeApiServer, Fault
from tests.stores.kube_backends import crd_documents, install_crds
from tests.support import pod_spec

TIMEOUT = 20  # seconds; an absolute bound on every test's I/O


def pool(name: str, **labels: str) -> Obj:
    return {
        "apiVersion": SPIDER_API_VERSION,
        "kind": "SpiderIPPool",
        "metadata": {"name": name, "labels": labels},
        "spec": {"subnet": "10.6.0.0/16", "ips": ["10.6.0.10-10.6.0.20"]},
    }


def endpoint(name: str) -> Obj:
    return {"apiVersion": SPIDER_API_VERSION, "kind": "SpiderEndpoint", "metadata": {"name": name}}


def summary(events: list[WatchEvent]) -> list[tuple[str, str]]:
    return [(e.type, meta(e.object)["name"]) for e in events]


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeApiServer:
    server: FakeApiServer = await nursery.start(FakeApiServer().run)
    return server


@contextlib.asynccontextmanager
async def client(fake: FakeApiServer, tmp_path: Path, **settings: Any) -> AsyncIterator[KubeStore]:
    kubeconfig = fake.kubeconfig(tmp_path / "kubeconfig", token="t")
    store = await KubeStore.open(kubeconfig, settings=KubeSettings(**settings))
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture
async def kube(fake: FakeApiServer, tmp_path: Path) -> AsyncIterator[KubeStore]:
    async with client(fake, tmp_path) as store:
        yield store


class Watcher:
    """A watch consumed by a background task, so the test can act while it runs."""

    def __init__(self, events: AsyncIterator[WatchEvent]) -> None:
        self.events, self.seen, self.arrived = events, list[WatchEvent](), trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with contextlib.aclosing(self.events) as events:  # type: ignore[type-var]
            async for event in events:
                self.seen.append(event)
                self.arrived.set()
                self.arrived = trio.Event()

    async def until(self, n: int) -> list[tuple[str, str]]:
        while len(self.seen) < n:
            await self.arrived.wait()
        return summary(self.seen)


async def watching(nursery: trio.Nursery, events: AsyncIterator[WatchEvent]) -> Watcher:
    watcher = Watcher(events)
    await nursery.start(watcher.run)
    return watcher


async def pools_from_now(nursery: trio.Nursery, kube: KubeStore) -> Watcher:
    """A watch of SpiderIPPools from the version of a list taken now."""
    start = await kube.list("SpiderIPPool")
    return await watching(nursery, kube.watch("SpiderIPPool", resource_version=start.resource_version))


def watch_requests(fake: FakeApiServer) -> list[str]:
    """The targets of every watch request the fake API server received, in order."""
    return [target for _, target in fake.log if "watch=true" in target]


def spider_pools(cluster: Cluster) -> Any:
    return cluster.resource(SPIDER_GROUP, SPIDER_VERSION, "spiderippools")


# --- the bridge ----------------------------------------------------------------------------------------------


async def test_the_bridge_returns_what_asyncio_coroutines_return_and_raises_what_they_raise() -> None:
    bridge = AsyncioThread()
    try:
        with trio.fail_after(TIMEOUT):

            async def double(x: int) -> int:
                await asyncio.sleep(0)
                return 2 * x

            async def fail() -> None:
                raise KeyError("nope")

            assert await bridge.run(double, 21) == 42
            with pytest.raises(KeyError):
                await bridge.run(fail)
    finally:
        await bridge.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await bridge.run(asyncio.sleep, 0)


@pytest.mark.parametrize("finishes_anyway", [False, True])
async def test_cancelling_the_trio_caller_cancels_the_asyncio_task(finishes_anyway: bool) -> None:
    # A value that arrives all the same (a watch's HTTP response, finished as the trio side gave up) goes to
    # on_abandon, so that someone closes it.
    bridge = AsyncioThread()
    seen: list[str] = []

    async def call() -> str:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen.append("cancelled")
            if finishes_anyway:
                return "response"
            raise
        return "never"

    try:
        with trio.fail_after(TIMEOUT):
            with trio.move_on_after(0.2) as scope:
                await bridge.run(call, on_abandon=seen.append)
            assert scope.cancelled_caught
            # NB: already, not eventually: the caller waited for it
            assert seen == (["cancelled", "response"] if finishes_anyway else ["cancelled"])
    finally:
        await bridge.aclose()


async def test_a_call_in_flight_when_the_bridge_closes_raises_closed_resource_error() -> None:
    bridge = AsyncioThread()
    raised: list[BaseException] = []

    async def waits() -> None:
        try:
            await bridge.run(asyncio.sleep, 3600)
        except trio.ClosedResourceError as exc:
            raised.append(exc)

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waits)
            await trio.sleep(0.1)
            await bridge.aclose()
    assert len(raised) == 1


async def test_asyncio_event_loops_still_work_in_trio_beside_the_store(kube: KubeStore) -> None:
    # pyroute2 makes its own asyncio loop in the thread that uses it; trio-asyncio broke that (DESIGN §9).
    with trio.fail_after(TIMEOUT):
        await kube.list("SpiderIPPool")
        loop = asyncio.new_event_loop()
        try:
            assert loop.run_until_complete(asyncio.sleep(0, result="ok")) == "ok"
        finally:
            loop.close()


# --- kinds and paths -------------------------------------------------------------------------------------------


async def test_built_in_kinds_use_the_core_and_group_paths_and_come_back_typed(
    fake: FakeApiServer, kube: KubeStore
) -> None:
    with trio.fail_after(TIMEOUT):
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web-0", "labels": {"app": "web"}},
            "spec": pod_spec(),
        }
        created = await kube.create(pod)
        assert meta(created)["namespace"] == "default"
        deploy = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "ns1"}}
        with pytest.raises(NotFound):  # NamespaceLifecycle: no objects in a namespace that does not exist
            await kube.create(deploy)
        await kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns1"}})
        await kube.create(deploy)
        pods = await kube.list("Pod", label_selector="app=web")
        assert [(p["apiVersion"], p["kind"], meta(p)["name"]) for p in pods.items] == [("v1", "Pod", "web-0")]
        deployments = await kube.list("Deployment", namespace="ns1")
        assert [(d["apiVersion"], d["kind"]) for d in deployments.items] == [("apps/v1", "Deployment")]
        assert (await kube.get("Namespace", "ns1"))["status"] == {"phase": "Active"}
        paths = {target.split("?")[0] for _, target in fake.log}
        assert {"/api/v1/namespaces/default/pods", "/apis/apps/v1/namespaces/ns1/deployments"} <= paths
        assert "/api/v1/pods" in paths  # a list across namespaces


async def test_lists_are_read_in_pages_at_one_version(fake: FakeApiServer, tmp_path: Path) -> None:
    async with client(fake, tmp_path, list_page_size=2) as kube:
        with trio.fail_after(TIMEOUT):
            for i in range(5):
                await kube.create(pool(f"p{i}"))
            before = len(fake.log)
            listing = await kube.list("SpiderIPPool")
            assert [meta(o)["name"] for o in listing.items] == [f"p{i}" for i in range(5)]
            requests = fake.log[before:]
            assert len(requests) == 3
            assert all("continue=" in target for _, target in requests[1:])
            assert int(listing.resource_version) == int(meta(listing.items[-1])["resourceVersion"])


# --- errors and timeouts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 503, 504])
async def test_throttling_and_server_errors_are_store_unavailable(
    fake: FakeApiServer, kube: KubeStore, status: int
) -> None:
    with trio.fail_after(TIMEOUT):
        fake.faults.append(Fault(method="GET", status=status))
        with pytest.raises(StoreUnavailable, match=str(status)):
            await kube.get("SpiderIPPool", "p")
        with pytest.raises(NotFound):  # the fault is spent
            await kube.get("SpiderIPPool", "p")


@pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning")  # NB: aiohttp's, over 1 MiB
@pytest.mark.parametrize(("size", "answer"), [(1_600_000, 500), (3_200_000, 413)])
async def test_an_object_too_large_to_store_is_invalid_at_once_not_an_outage_to_wait_out(
    fake: FakeApiServer, kube: KubeStore, size: int, answer: int
) -> None:
    with trio.fail_after(TIMEOUT):
        created = await kube.create(pool("p"))
        huge = dict(created, metadata=dict(meta(created), annotations={"notes": "x" * size}))
        with pytest.raises(Invalid, match="too large"):
            await RetryingStore(kube, outage_budget=60).update(huge)
        assert fake.answers[answer] == 1  # NB: asked once: a retry cannot make it fit
        assert await kube.get("SpiderIPPool", "p") == created


async def test_a_server_that_does_not_answer_times_out_as_store_unavailable(
    fake: FakeApiServer, tmp_path: Path
) -> None:
    async with client(fake, tmp_path, request_timeout=0.3) as kube:
        with trio.fail_after(TIMEOUT):
            fake.faults.append(Fault(method="PUT", hang=True))
            created = await kube.create(pool("p"))
            start = trio.current_time()
            with pytest.raises(StoreUnavailable, match="Timeout"):
                await kube.update_status(dict(created, status={"allocatedIPCount": 1}))
            assert trio.current_time() - start < 3


async def test_a_dropped_connection_is_store_unavailable(fake: FakeApiServer, kube: KubeStore) -> None:
    with trio.fail_after(TIMEOUT):
        fake.faults.append(Fault(method="POST", drop=True))
        with pytest.raises(StoreUnavailable):
            await kube.create(pool("p"))


async def test_an_api_server_that_is_down_is_store_unavailable(fake: FakeApiServer, kube: KubeStore) -> None:
    with trio.fail_after(TIMEOUT):
        await kube.create(pool("p"))
        fake.go_down()
        with pytest.raises(StoreUnavailable):
            await kube.get("SpiderIPPool", "p")
        await fake.come_up()
        assert meta(await kube.get("SpiderIPPool", "p"))["name"] == "p"


@pytest.mark.parametrize(
    ("environ", "proxied"),
    [
        ({"HTTP_PROXY": "http://{proxy}"}, True),
        ({"http_proxy": "http://{proxy}", "HTTP_PROXY": "http://127.0.0.1:9"}, True),  # lower case first
        ({"HTTP_PROXY": "http://{proxy}", "NO_PROXY": "example,kube.invalid"}, False),
        ({"HTTP_PROXY": "http://{proxy}", "no_proxy": ".invalid"}, False),
        ({"HTTPS_PROXY": "http://{proxy}"}, False),  # the API server here speaks plain HTTP
        ({}, False),
    ],
)
async def test_the_proxy_the_environment_names_is_used_unless_no_proxy_covers_the_server(
    fake: FakeApiServer, tmp_path: Path, environ: dict[str, str], proxied: bool
) -> None:
    # the API server's name does not resolve: only a proxy can reach it (the fake server serves absolute-form
    # requests as a forward proxy would pass them on)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        fake.kubeconfig(tmp_path / "direct", token="t").read_text().replace(fake.url, "http://kube.invalid:6443")
    )
    env = {k: v.format(proxy=f"{fake.host}:{fake.port}") for k, v in environ.items()}
    store = await KubeStore.open(kubeconfig, settings=KubeSettings(request_timeout=5), environ=env)
    try:
        with trio.fail_after(TIMEOUT):
            if proxied:
                with pytest.raises(NotFound):
                    await store.get("SpiderIPPool", "p")
            else:
                with pytest.raises(StoreUnavailable):
                    await store.get("SpiderIPPool", "p")
    finally:
        await store.aclose()


async def test_a_kubeconfig_that_cannot_be_read_is_store_unavailable_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    with trio.fail_after(TIMEOUT), pytest.raises(StoreUnavailable, match="kubeconfig"):
        await KubeStore.open(bad)


async def test_missing_crds_are_reported_and_installing_them_fixes_it(nursery: trio.Nursery, tmp_path: Path) -> None:
    fake: FakeApiServer = await nursery.start(FakeApiServer(Cluster.new(crds_installed=False)).run)
    async with client(fake, tmp_path) as kube:
        with trio.fail_after(TIMEOUT):
            with pytest.raises(NotFound):
                await kube.get("SpiderIPPool", "p")
            with pytest.raises(StoreUnavailable, match="CRDs"):
                await kube.list("SpiderIPPool")
            with pytest.raises(StoreUnavailable, match="CRDs"):
                await kube.create(pool("p"))
            await install_crds(kube, crd_documents())
            created = await kube.create(pool("p"))
            updated = await kube.update_status(dict(created, status={"allocatedIPCount": 1}))
            assert updated["status"] == {"allocatedIPCount": 1}
            assert (await kube.list("SpiderEndpoint", namespace="default")).items == []


async def test_custom_resources_come_back_with_the_defaults_of_their_crd_schema(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # a real API server answered a SpiderEndpoint status written without vlan with vlan: 0
    fake: FakeApiServer = await nursery.start(FakeApiServer(Cluster.new(crds_installed=False)).run)
    async with client(fake, tmp_path) as kube:
        with trio.fail_after(TIMEOUT):
            await install_crds(kube, crd_documents())
            status = {
                "current": {
                    "uid": "u1",
                    "node": "n1",
                    "ips": [{"interface": "eth0"}, {"interface": "net1", "vlan": 7}],
                },
                "ownerControllerType": "Pod",
                "ownerControllerName": "web",
            }
            created = await kube.create(
                dict(endpoint("web"), metadata={"name": "web", "namespace": "default"}, status=status)
            )
            assert [ip.get("vlan") for ip in created["status"]["current"]["ips"]] == [0, 7]
            got = await kube.get("SpiderEndpoint", "web", "default")
            assert got["status"] == created["status"]
            made = await kube.create(pool("p"))
            assert (made["spec"]["default"], made["spec"]["disable"]) == (False, False)


async def test_large_answers_are_asked_for_uncompressed_and_read_as_sent(fake: FakeApiServer, kube: KubeStore) -> None:
    # kube-apiserver gzips answers over 128 KiB for a client that accepts it, as aiohttp does by default: the
    # server's CPU and ours, for bytes that cost next to nothing to send
    records = {f"10.6.{i // 250}.{i % 250 + 1}": {"pod": f"ns/p-{i}", "podUid": f"u-{i:040d}"} for i in range(2000)}
    status = {"allocatedIPs": json.dumps(records), "allocatedIPCount": len(records)}
    with trio.fail_after(TIMEOUT):
        created = await kube.create(pool("big"))
        written = await kube.update_status(dict(created, status=status))
        assert written["status"] == status
        assert (await kube.get("SpiderIPPool", "big"))["status"] == status
        assert [o["status"] for o in (await kube.list("SpiderIPPool")).items] == [status]
    assert fake.gzipped == 0  # not the status write's answer, the read or the list
    assert fake.answers[200] >= 3


# --- credentials -------------------------------------------------------------------------------------------


async def test_a_token_file_is_read_again_when_it_changes(fake: FakeApiServer, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("one\n")
    fake.tokens = {"one"}
    store = await KubeStore.open(fake.kubeconfig(tmp_path / "kubeconfig", token_file=token))
    try:
        with trio.fail_after(TIMEOUT):
            await store.create(pool("p"))
            fake.tokens = {"two"}  # the issuer rotated it; the new one is written beside and renamed over
            (tmp_path / "token.new").write_text("two\n")
            (tmp_path / "token.new").replace(token)
            assert meta(await store.get("SpiderIPPool", "p"))["name"] == "p"
    finally:
        await store.aclose()


EXEC_PLUGIN = """\
import datetime, json, pathlib, sys
counter, lifetime = pathlib.Path(sys.argv[1]), float(sys.argv[2])
n = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(n))
status = {"token": f"exec-{n}"}
if lifetime >= 0:
    expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=lifetime)
    status["expirationTimestamp"] = expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential", "status": status}))
"""


def exec_kubeconfig(fake: FakeApiServer, d: Path, lifetime: float) -> tuple[Path, Path]:
    plugin, counter = d / "plugin.py", d / "runs"
    plugin.write_text(EXEC_PLUGIN)
    return fake.kubeconfig(
        d / "kubeconfig", exec_argv=[sys.executable, str(plugin), str(counter), str(lifetime)]
    ), counter


async def test_an_exec_plugin_without_expiry_runs_once_and_again_after_a_401(
    fake: FakeApiServer, tmp_path: Path
) -> None:
    kubeconfig, runs = exec_kubeconfig(fake, tmp_path, lifetime=-1)
    fake.tokens = {"exec-1"}
    store = await KubeStore.open(kubeconfig)
    try:
        with trio.fail_after(TIMEOUT):
            for i in range(3):
                await store.create(pool(f"p{i}"))
            assert runs.read_text() == "1"
            fake.tokens = {"exec-2"}  # the credential was revoked: 401, run the plugin, send again
            assert len((await store.list("SpiderIPPool")).items) == 3
            assert runs.read_text() == "2"
    finally:
        await store.aclose()


async def test_an_exec_plugin_runs_again_before_its_credential_expires(fake: FakeApiServer, tmp_path: Path) -> None:
    kubeconfig, runs = exec_kubeconfig(fake, tmp_path, lifetime=5)  # NB: inside the 10 s refresh margin
    store = await KubeStore.open(kubeconfig)
    try:
        with trio.fail_after(TIMEOUT):
            for i in range(3):
                await store.create(pool(f"p{i}"))
            assert int(runs.read_text()) >= 3
    finally:
        await store.aclose()


async def test_in_cluster_config_speaks_tls_with_the_service_account_and_follows_its_rotation(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    fake: FakeApiServer = await nursery.start(FakeApiServer(ssl_context=server_tls, tokens={"sa-1"}).run)
    account = tmp_path / "serviceaccount"
    account.mkdir()
    ca.cert_pem.write_to_path(str(account / "ca.crt"))
    (account / "token").write_text("sa-1")
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(fake.port)}
    store = await KubeStore.open(in_cluster=True, settings=KubeSettings(service_account_dir=account), environ=env)
    try:
        with trio.fail_after(TIMEOUT):
            assert store.server == f"https://127.0.0.1:{fake.port}"
            await store.create(pool("p"))
            fake.tokens = {"sa-2"}  # kubelet rotated the projected token
            (account / "token.new").write_text("sa-2")
            os.replace(account / "token.new", account / "token")
            assert meta(await store.get("SpiderIPPool", "p"))["name"] == "p"
    finally:
        await store.aclose()


# --- watches -------------------------------------------------------------------------------------------------


async def test_a_watch_survives_an_outage_of_the_network_and_misses_nothing(
    fake: FakeApiServer, kube: KubeStore, nursery: trio.Nursery
) -> None:
    with trio.fail_after(TIMEOUT):
        watcher = await pools_from_now(nursery, kube)
        await kube.create(pool("a"))
        await watcher.until(1)
        fake.go_down()
        # Written while this client could not connect (through another API server, as it were).
        fake.cluster.create(spider_pools(fake.cluster), "", pool("b"))
        await fake.come_up()  # NB: the same server, its watch cache whole: the watch resumes where it was
        # NB: as the agents write, riding out the outage: a request may meet a kept-alive connection the
        # outage closed before this client noticed (then StoreUnreachable, and RetryingStore tries again)
        writer = RetryingStore(kube, outage_budget=8)
        await writer.create(pool("c"))
        await writer.delete("SpiderIPPool", "a")
        assert await watcher.until(4) == [("ADDED", "a"), ("ADDED", "b"), ("ADDED", "c"), ("DELETED", "a")]
        await trio.sleep(0.2)
        assert len(watcher.seen) == 4  # nothing twice


async def test_an_informer_lists_again_after_an_api_server_restart_and_misses_nothing(
    fake: FakeApiServer, kube: KubeStore, nursery: trio.Nursery
) -> None:
    known: dict[str, str] = {}  # name -> the last event's type, as a cache built from lists and events keeps it
    lists: list[int] = []

    def on_list(items: list[Obj]) -> None:
        lists.append(len(items))
        known.clear()
        known.update({meta(o)["name"]: "LISTED" for o in items})

    def on_event(event: WatchEvent) -> None:
        if event.type in ("ADDED", "MODIFIED", "DELETED"):
            known[meta(event.object)["name"]] = event.type

    async def until(want: dict[str, str]) -> None:
        while {n: t for n, t in known.items() if t != "DELETED"}.keys() != want.keys():  # noqa: ASYNC110
            await trio.sleep(0.01)

    with trio.fail_after(TIMEOUT):
        informer = functools.partial(
            inform, on_list=on_list, on_event=on_event, resync_period=3600, delay=lambda _: 0.05
        )
        nursery.start_soon(informer, kube, "SpiderIPPool")
        await kube.create(pool("a"))
        await until({"a": ""})
        fake.go_down()
        fake.cluster.create(spider_pools(fake.cluster), "", pool("b"))  # through another API server, as it were
        fake.cluster.delete(spider_pools(fake.cluster), "", "a", {})
        await fake.come_up(restarted=True)  # its watch cache starts at the newest version: the informer's is gone
        await RetryingStore(kube, outage_budget=8).create(pool("c"))
        await until({"b": "", "c": ""})
        assert len(lists) == 2, lists  # NB: listed once more, after the watch's 410


@pytest.mark.parametrize("status", [410, 400])
async def test_an_informer_whose_every_watch_is_refused_backs_off_between_lists(
    fake: FakeApiServer, kube: KubeStore, status: int
) -> None:
    lists: list[float] = []
    fake.faults.append(Fault(method="GET", path_contains="spiderippools", watch=True, status=status, times=10**9))
    informer = functools.partial(
        inform,
        on_list=lambda _: lists.append(trio.current_time()),
        on_event=lambda _: None,
        resync_period=3600,
        delay=lambda n: min(0.05 * 2**n, 1.0),
    )
    with trio.move_on_after(2.5):
        await informer(kube, "SpiderIPPool")
    assert 2 <= len(lists) <= 10, f"{len(lists)} lists in 2.5 s"  # NB: once ~300, back to back after each 410


async def test_a_watch_goes_on_across_the_servers_watch_timeouts(
    fake: FakeApiServer, kube: KubeStore, nursery: trio.Nursery
) -> None:
    fake.max_watch_seconds = 0.2
    with trio.fail_after(TIMEOUT):
        watcher = await pools_from_now(nursery, kube)
        for i in range(6):
            await kube.create(pool(f"p{i}"))
            await trio.sleep(0.1)
        assert await watcher.until(6) == [("ADDED", f"p{i}") for i in range(6)]
        watches = watch_requests(fake)
        assert len(watches) >= 3


async def test_a_server_that_ends_every_watch_at_once_is_not_asked_again_in_a_hot_loop(
    fake: FakeApiServer, kube: KubeStore, nursery: trio.Nursery
) -> None:
    fake.max_watch_seconds = 0
    with trio.fail_after(TIMEOUT):
        watcher = await pools_from_now(nursery, kube)
        await trio.sleep(1.5)
        watches = watch_requests(fake)
        assert 2 <= len(watches) <= 12  # backing off up to a second apart, not hundreds
        fake.max_watch_seconds = 1800
        await kube.create(pool("late"))
        assert await watcher.until(1) == [("ADDED", "late")]  # and it goes on once the server behaves


async def test_bookmarks_let_a_quiet_watch_resume_after_its_history_is_compacted(
    fake: FakeApiServer, kube: KubeStore, nursery: trio.Nursery
) -> None:
    fake.bookmark_interval = 0.05
    with trio.fail_after(TIMEOUT):
        start = await kube.list("SpiderIPPool")
        events = kube.watch("SpiderIPPool", label_selector="team=a", resource_version=start.resource_version)
        watcher = await watching(nursery, events)
        for i in range(2):  # another kind's writes: no bookmark of a pool watch carries their versions
            await kube.create(endpoint(f"e{i}"))
        for i in range(3):  # another team's pools move the pools' version on; this watch sees no event
            await kube.create(pool(f"b{i}", team="b"))
        head = fake.cluster.rv
        await trio.sleep(0.5)  # a few bookmarks, the last at the version of "b2"
        fake.go_down()
        fake.cluster.compact()  # the watch's own start version is gone now
        await fake.come_up()
        await kube.create(pool("after", team="a"))
        assert await watcher.until(1) == [("ADDED", "after")]
        resumed = watch_requests(fake)[-1]
        assert f"resourceVersion={head}&" in resumed + "&"


async def test_a_watch_that_must_resume_from_a_compacted_version_raises_gone(
    fake: FakeApiServer, kube: KubeStore
) -> None:
    fake.bookmark_interval = 3600.0  # no bookmark moves the watch on
    with trio.fail_after(TIMEOUT):
        start = await kube.list("SpiderIPPool")
        events = kube.watch("SpiderIPPool", resource_version=start.resource_version)
        async with contextlib.aclosing(events) as stream:  # type: ignore[type-var]
            await kube.create(pool("a"))
            assert (await stream.__anext__()).type == "ADDED"
            fake.go_down()
            fake.cluster.create(spider_pools(fake.cluster), "", pool("b"))
            fake.cluster.compact()
            await fake.come_up()
            with pytest.raises(Gone):
                await stream.__anext__()


async def test_a_watch_gives_up_after_its_reconnect_budget(fake: FakeApiServer, tmp_path: Path) -> None:
    async with client(fake, tmp_path, watch_reconnect_budget=0.5) as kube:
        with trio.fail_after(TIMEOUT):
            start = await kube.list("SpiderIPPool")
            events = kube.watch("SpiderIPPool", resource_version=start.resource_version)
            async with contextlib.aclosing(events) as stream:  # type: ignore[type-var]
                await kube.create(pool("a"))
                await stream.__anext__()
                fake.go_down()
                with pytest.raises(StoreUnavailable):
                    await stream.__anext__()


async def test_an_error_event_other_than_410_makes_the_watch_reconnect(
    fake: FakeApiServer, kube: KubeStore, nursery: trio.Nursery
) -> None:
    with trio.fail_after(TIMEOUT):
        fake.faults.append(Fault(method="GET", watch=True, status=500))
        watcher = await pools_from_now(nursery, kube)
        await kube.create(pool("a"))
        assert await watcher.until(1) == [("ADDED", "a")]


async def test_a_watch_of_a_store_that_is_closed_ends_instead_of_hanging(fake: FakeApiServer, tmp_path: Path) -> None:
    kubeconfig = fake.kubeconfig(tmp_path / "kubeconfig")
    store = await KubeStore.open(kubeconfig)
    with trio.fail_after(TIMEOUT):
        try:
            start = await store.list("SpiderIPPool")
            events = store.watch("SpiderIPPool", resource_version=start.resource_version)
            async with contextlib.aclosing(events) as stream:  # type: ignore[type-var]
                await store.create(pool("a"))
                await stream.__anext__()
                await store.aclose()
                with pytest.raises(trio.ClosedResourceError):
                    await stream.__anext__()
        finally:
            await store.aclose()
