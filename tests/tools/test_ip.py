"""``spider ip show`` and ``spider ip release``: who holds an address, and freeing it by hand (never from a live pod
unless forced)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio

from actors.stores.port import NotFound, Obj, PassThrough, Store
from actors.stores.sqlite import SqliteStore
from actors.tools import cli
from actors.tools.cli import main
from actors.tools.ip import find_address, release_address
from actors.tools.manifests import apply
from spider.endpoint import Endpoint, NicAllocation
from spider.errors import InvalidInput, StoreUnavailable
from spider.pool import PoolLedger
from tests.support import pool_object

ADDED_AT = time.time() - 600


async def holding(store: Store, pod: str = "web", uid: str = "uid-1", phase: str = "Running") -> None:
    """Pools v4 and v6; the pod holds 10.6.0.10 and fd00::10 on eth0, recorded in both pools and its endpoint."""
    await apply(store, pool_object("v4", "10.6.0.0/24", ["10.6.0.10-10.6.0.20"]))
    await apply(store, pool_object("v6", "fd00::/120", ["fd00::10-fd00::20"]))
    pod_obj = await store.create({"apiVersion": "v1", "kind": "Pod",
                                  "metadata": {"name": pod, "namespace": "default", "uid": uid},
                                  "spec": {"nodeName": "node-1"}})  # fmt: skip
    pod_obj["status"] = {"phase": phase}
    await store.update_status(pod_obj)
    uid = (await store.get("Pod", pod, "default"))["metadata"]["uid"]
    for name, ip in (("v4", "10.6.0.10"), ("v6", "fd00::10")):
        obj = await store.get("SpiderIPPool", name)
        record = {"pod": f"default/{pod}", "podUid": uid, "nic": "eth0", "containerID": "c1", "node": "node-1",
                  "addedAt": ADDED_AT}  # fmt: skip
        obj["status"] = {"allocatedIPs": json.dumps({ip: record}), "allocatedIPCount": 1}
        await store.update_status(obj)
    nic = NicAllocation("eth0", ipv4="10.6.0.10/24", ipv6="fd00::10/120", ipv4_pool="v4", ipv6_pool="v6",
                        container_id="c1")  # fmt: skip
    await store.create(Endpoint("default", pod, uid, "node-1", (nic,)).to_object())


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    sqlite = await SqliteStore.open(tmp_path / "store.db", create=True)
    try:
        yield sqlite
    finally:
        await sqlite.aclose()


async def records(store: Store, pool: str) -> dict[int, object]:
    return dict(PoolLedger.from_object(await store.get("SpiderIPPool", pool)).records)


async def test_show_names_the_pool_pod_uid_node_nic_and_since_when(store: Store) -> None:
    with trio.fail_after(10):
        await holding(store)
        [found] = await find_address(store, "10.6.0.10")
    assert found.record is not None
    assert (found.pool, found.record.pod, found.record.node, found.record.nic) == (
        "v4",
        "default/web",
        "node-1",
        "eth0",
    )
    assert found.record.added_at == pytest.approx(ADDED_AT, abs=0.01)
    assert found.nic is not None
    assert found.nic.interface == "eth0"
    assert (found.pod_state, found.live) == ("running", True)
    assert "s ago" in str(found.to_json(time.time())["since"])


async def test_show_says_an_address_of_a_pool_is_free_and_one_outside_every_pool_is_nowhere(store: Store) -> None:
    with trio.fail_after(10):
        await holding(store)
        [free] = await find_address(store, "10.6.0.11")
        assert (free.pool, free.record) == ("v4", None)
        assert await find_address(store, "192.0.2.1") == []
        with pytest.raises(InvalidInput, match="not an IP address"):
            await find_address(store, "nonsense")


async def test_release_refuses_a_live_holder_saying_why_and_changes_nothing(store: Store) -> None:
    with trio.fail_after(10):
        await holding(store)
        with pytest.raises(InvalidInput, match=r"default/web .* which is running.*--force"):
            await release_address(store, "10.6.0.10")
        assert len(await records(store, "v4")) == 1
        assert (await store.get("SpiderEndpoint", "web", "default"))["status"]["current"]["ips"][0]["ipv4"]


async def test_release_of_a_gone_pods_address_frees_the_record_and_fixes_the_endpoint(store: Store) -> None:
    with trio.fail_after(10):
        await holding(store)
        await store.delete("Pod", "web", "default")
        [released] = await release_address(store, "10.6.0.10")
        assert (released.freed, released.endpoint_fixed, released.holding.pod_state) == (True, True, "gone")
        assert await records(store, "v4") == {}
        assert (await store.get("SpiderIPPool", "v4"))["status"]["allocatedIPCount"] == 0
        [nic] = Endpoint.from_object(await store.get("SpiderEndpoint", "web", "default")).nics
        assert (nic.ipv4, nic.ipv6) == (None, "fd00::10/120")  # the other family stays
        await release_address(store, "fd00::10")
        with pytest.raises(NotFound):  # nothing left in it: the endpoint goes
            await store.get("SpiderEndpoint", "web", "default")


async def test_a_finished_pods_address_is_released_and_force_takes_a_live_ones(store: Store) -> None:
    with trio.fail_after(10):
        await holding(store, phase="Succeeded")
        [released] = await release_address(store, "10.6.0.10")
        assert (released.freed, released.holding.pod_state) == (True, "finished (Succeeded)")
        pod = await store.get("Pod", "web", "default")
        pod["status"] = {"phase": "Running"}
        await store.update_status(pod)
        [forced] = await release_address(store, "fd00::10", force=True)
        assert forced.freed
        assert await records(store, "v6") == {}


async def test_release_of_an_address_nobody_holds_says_so(store: Store) -> None:
    with trio.fail_after(10):
        await holding(store)
        with pytest.raises(InvalidInput, match="not allocated in any SpiderIPPool"):
            await release_address(store, "10.6.0.12")


def test_the_commands_print_the_holder_and_refuse_then_release(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "store.db"

    async def prepare() -> None:
        sqlite = await SqliteStore.open(path, create=True)
        try:
            await holding(sqlite)
        finally:
            await sqlite.aclose()

    trio.run(prepare)
    assert main(["ip", "show", "10.6.0.10", "--store", str(path), "-o", "json"]) == 0
    [shown] = json.loads(capsys.readouterr().out)
    assert (shown["pool"], shown["pod"], shown["node"], shown["nic"], shown["podState"]) == (
        "v4", "default/web", "node-1", "eth0", "running")  # fmt: skip
    assert main(["ip", "release", "10.6.0.10", "--store", str(path)]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["ip", "release", "10.6.0.10", "--store", str(path), "--force"]) == 0
    assert "released 10.6.0.10 in pool v4" in capsys.readouterr().out
    assert main(["ip", "show", "10.6.0.10", "--store", str(path)]) == 0
    assert "(free)" in capsys.readouterr().out


@attrs.define
class ReadOnly(PassThrough):
    """Credentials that may read but not write pool status (HTTP 403)."""

    inner: Store

    async def update_status(self, obj: Obj) -> Obj:
        raise StoreUnavailable(reason="forbidden: spiderippools/status")


async def test_a_release_the_store_refuses_is_its_error_not_a_group_and_changes_nothing(store: Store) -> None:
    # NB: raised inside the pool actor's nursery, it came out as an ExceptionGroup: a traceback from the CLI
    with trio.fail_after(10):
        await holding(store)
        await store.delete("Pod", "web", "default")
        with pytest.raises(StoreUnavailable, match="forbidden"):
            await release_address(ReadOnly(store), "10.6.0.10")
    assert len(await records(store, "v4")) == 1


def test_the_cli_says_what_a_nursery_raised_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refused(args: object) -> int:
        raise ExceptionGroup("from a nursery", [InvalidInput(reason="no")])

    monkeypatch.setattr(cli, "_cmd_check", refused)
    assert main(["check"]) == 1
    assert capsys.readouterr().err == "spider check: wrong input: no\n"
