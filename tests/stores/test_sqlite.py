"""What only the embedded SQLite store promises: processes sharing one file, its path, its failure modes."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from actors.stores.port import Gone, Invalid, NotFound, WatchEvent, meta
from actors.stores.sqlite import INLINE_READ_BYTES, SqliteStore, default_store_path
from spider.errors import StoreUnavailable
from spider.kinds import SPIDER_API_VERSION
from tests.stores.conftest import take

TIMEOUT = 10  # seconds
ROOT = Path(__file__).resolve().parents[2]

# Each worker opens the (possibly still missing) file, makes sure the counter exists, then does ``increments``
# read-modify-write cycles, retrying on Conflict as a PoolActor would.  It prints how many conflicts it saw.
WORKER = """
import sys, trio
from actors.stores.sqlite import SqliteStore
from actors.stores.port import AlreadyExists, Conflict

async def main(path, increments, atomic):
    conflicts = 0
    async with await SqliteStore.open(path) as store:
        try:
            counter = {"kind": "SpiderEndpoint", "metadata": {"name": "counter"}, "status": {"n": 0}}
            await store.create(counter)
        except AlreadyExists:
            pass
        try:
            await store.create({"kind": "SpiderIPPool", "metadata": {"name": "counter"}, "spec": {}})
        except AlreadyExists:
            pass
        for _ in range(increments):
            if atomic:  # the status of a pool, read-modified-written under the store's write lock
                await store.update_status_atomically(
                    "SpiderIPPool", "counter", lambda obj: {"n": (obj.get("status") or {}).get("n", 0) + 1}
                )
                continue
            while True:
                obj = await store.get("SpiderEndpoint", "counter")
                obj["status"]["n"] += 1
                try:
                    await store.update(obj)
                    break
                except Conflict:
                    conflicts += 1
    print(conflicts)

trio.run(main, sys.argv[1], int(sys.argv[2]), sys.argv[3] == "atomic")
"""


def pool(name: str) -> dict[str, object]:
    return {"apiVersion": SPIDER_API_VERSION, "kind": "SpiderIPPool", "metadata": {"name": name}, "spec": {}}


@pytest.mark.parametrize("mode", ["optimistic", "atomic"])
async def test_processes_sharing_the_file_lose_no_update(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "fresh" / "store.db"  # NB: missing; the workers race to create it
    workers, increments = 4, 50
    outputs: list[str] = []

    async def worker() -> None:
        done = await trio.run_process(
            [sys.executable, "-c", WORKER, str(path), str(increments), mode],
            cwd=ROOT,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        outputs.append(done.stdout.decode().strip())

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(worker)
        async with await SqliteStore.open(path) as store:
            if mode == "atomic":
                final = await store.get("SpiderIPPool", "counter")
                assert final["status"]["n"] == workers * increments
                assert outputs == ["0"] * workers  # never a conflict
                return
            final = await store.get("SpiderEndpoint", "counter")
            assert final["status"]["n"] == workers * increments
            # The history replays every increment, in order, with strictly increasing versions.
            seen = await take(store.watch("SpiderEndpoint", resource_version="1"), 1 + 200)
    assert [e.type for e in seen] == ["ADDED"] + ["MODIFIED"] * (workers * increments)
    assert [e.object["status"]["n"] for e in seen] == list(range(workers * increments + 1))
    versions = [int(meta(e.object)["resourceVersion"]) for e in seen]
    assert versions == sorted(set(versions))
    assert len(outputs) == workers


async def test_a_watch_sees_writes_of_another_process(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    script = (
        "import sys, trio\n"
        "from actors.stores.sqlite import SqliteStore\n"
        "async def main():\n"
        "    async with await SqliteStore.open(sys.argv[1]) as s:\n"
        "        await s.create({'kind': 'SpiderIPPool', 'metadata': {'name': 'from-afar'}, 'spec': {}})\n"
        "trio.run(main)\n"
    )
    with trio.fail_after(TIMEOUT):
        async with await SqliteStore.open(path) as store:
            start = await store.list("SpiderIPPool")
            events = store.watch("SpiderIPPool", resource_version=start.resource_version)
            await trio.run_process([sys.executable, "-c", script, str(path)], cwd=ROOT, capture_stderr=True)
            seen = await take(events, 1)
    assert [(e.type, meta(e.object)["name"]) for e in seen] == [("ADDED", "from-afar")]


async def test_open_creates_directories_and_data_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "store.db"
    with trio.fail_after(TIMEOUT):
        async with await SqliteStore.open(path) as store:
            created = await store.create(pool("kept"))
        async with await SqliteStore.open(path) as store:
            assert await store.get("SpiderIPPool", "kept") == created
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_a_held_write_lock_turns_into_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with trio.fail_after(TIMEOUT):
        async with await SqliteStore.open(path, busy_timeout=0.2) as store:
            blocker = sqlite3.connect(path, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            try:
                with pytest.raises(StoreUnavailable, match="locked"):
                    await store.create(pool("blocked"))
                assert (await store.list("SpiderIPPool")).items == []  # readers are not blocked (WAL)
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            await store.create(pool("unblocked"))


async def test_writers_queue_on_the_lock_file_and_give_up_after_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with trio.fail_after(TIMEOUT):
        async with await SqliteStore.open(path, busy_timeout=0.2) as store:
            holder = os.open(f"{path}.lock", os.O_RDWR)
            fcntl.flock(holder, fcntl.LOCK_EX)  # another process is writing
            try:
                with pytest.raises(StoreUnavailable, match="busy"):
                    await store.create(pool("blocked"))
                assert (await store.list("SpiderIPPool")).items == []  # readers are not blocked
            finally:
                os.close(holder)
            await store.create(pool("unblocked"))


async def test_an_atomic_status_update_writes_once_or_not_at_all(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with await SqliteStore.open(tmp_path / "store.db") as store:
            created = await store.create(pool("p"))
            seen: list[str] = []

            def bump(stored: dict[str, object]) -> dict[str, object]:
                seen.append(meta(stored)["resourceVersion"])
                return {"n": 1}

            written = await store.update_status_atomically("SpiderIPPool", "p", bump)
            assert seen == [meta(created)["resourceVersion"]]  # it saw the stored object
            assert written["status"] == {"n": 1}
            assert await store.get("SpiderIPPool", "p") == written
            unchanged = await store.update_status_atomically("SpiderIPPool", "p", lambda stored: None)
            assert meta(unchanged)["resourceVersion"] == meta(written)["resourceVersion"]
            same = await store.update_status_atomically("SpiderIPPool", "p", lambda stored: {"n": 1})
            assert meta(same)["resourceVersion"] == meta(written)["resourceVersion"]  # no-op: no new version
            with pytest.raises(NotFound):
                await store.update_status_atomically("SpiderIPPool", "missing", bump)
            with pytest.raises(Invalid, match="no status subresource"):
                await store.update_status_atomically("SpiderEndpoint", "p", bump, "default")


async def test_a_file_that_is_not_a_store_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    path.write_bytes(b"certainly not SQLite" * 100)
    with trio.fail_after(TIMEOUT), pytest.raises(StoreUnavailable, match=r"store\.db"):
        await SqliteStore.open(path)


async def test_a_missing_file_is_unavailable_when_not_to_be_created_and_nothing_is_made(tmp_path: Path) -> None:
    path = tmp_path / "typo" / "store.db"
    with trio.fail_after(TIMEOUT), pytest.raises(StoreUnavailable, match=r"no store file at .*typo/store\.db"):
        await SqliteStore.open(path, create=False)
    assert not (tmp_path / "typo").exists()


async def test_an_existing_store_opens_without_creating(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with trio.fail_after(TIMEOUT):
        async with await SqliteStore.open(path) as store:
            await store.create(pool("kept"))
        async with await SqliteStore.open(path, create=False) as store:
            assert (await store.get("SpiderIPPool", "kept"))["spec"] == {}


@pytest.mark.parametrize("create", [True, False])
async def test_an_empty_file_is_not_a_store_and_is_left_alone(tmp_path: Path, create: bool) -> None:
    path = tmp_path / "store.db"
    path.touch()
    with trio.fail_after(TIMEOUT), pytest.raises(StoreUnavailable, match="is an empty file, not a store"):
        await SqliteStore.open(path, create=create)
    assert path.stat().st_size == 0


async def test_a_creator_killed_half_way_leaves_no_empty_file_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sqlite3.connect`` makes a 0-byte file and writes its first page later: a creator killed between the two
    once left a file every later start refused.  The file is made under another name and linked into place."""
    path = tmp_path / "store.db"

    def killed(*args: object) -> None:
        raise KeyboardInterrupt  # NB: stands in for SIGKILL at the worst moment: the new file is not yet in place

    monkeypatch.setattr(os, "link", killed)
    with trio.fail_after(TIMEOUT), pytest.raises(KeyboardInterrupt):
        await SqliteStore.open(path)
    monkeypatch.undo()
    assert not path.exists()
    with trio.fail_after(TIMEOUT):
        async with await SqliteStore.open(path) as store:
            await store.create(pool("kept"))
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".new")]  # nor the file made on the side


async def test_an_empty_file_another_process_is_creating_is_waited_for(tmp_path: Path) -> None:
    path, made = tmp_path / "store.db", tmp_path / "made.db"
    path.touch()  # NB: what a creator's sqlite3.connect leaves until it has written WAL mode
    lockfd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT)
    opened: list[SqliteStore] = []

    async def opener() -> None:
        opened.append(await SqliteStore.open(path))

    try:
        fcntl.flock(lockfd, fcntl.LOCK_EX)  # the creator holds the writers' lock while it initialises
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(opener)
                await trio.sleep(0.2)
                assert not opened  # waiting, neither refused nor opened
                async with await SqliteStore.open(made) as store:
                    await store.create(pool("from-the-creator"))
                os.replace(made, path)
                fcntl.flock(lockfd, fcntl.LOCK_UN)
        (store,) = opened
        async with store:
            assert (await store.get("SpiderIPPool", "from-the-creator"))["metadata"]["name"] == "from-the-creator"
    finally:
        os.close(lockfd)


async def test_events_beyond_the_retention_are_gone(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with await SqliteStore.open(tmp_path / "store.db", event_retention=3) as store:
            first = await store.create(pool("p0"))
            for i in range(1, 5):
                await store.create(pool(f"p{i}"))
            with pytest.raises(Gone):
                await take(store.watch("SpiderIPPool", resource_version="1"), 1)
            rv = meta(first)["resourceVersion"]
            with pytest.raises(Gone):
                await take(store.watch("SpiderIPPool", resource_version=rv), 1)
            listing = await store.list("SpiderIPPool")
            oldest_kept = str(int(listing.resource_version) - 3)
            seen = await take(store.watch("SpiderIPPool", resource_version=oldest_kept), 3)
            assert [meta(e.object)["name"] for e in seen] == ["p2", "p3", "p4"]


async def test_big_events_are_pruned_by_size_so_the_file_stays_bounded(tmp_path: Path) -> None:
    big = "x" * 20_000  # a stand-in for a large pool's allocatedIPs
    with trio.fail_after(TIMEOUT):
        async with await SqliteStore.open(tmp_path / "store.db", event_budget=100_000) as store:
            obj = await store.create(pool("big"))
            first = meta(obj)["resourceVersion"]
            for i in range(30):
                obj["status"] = {"allocatedIPs": f"{big}{i}"}
                obj = await store.update_status(obj)
            kept = sqlite3.connect(tmp_path / "store.db").execute("SELECT sum(length(body)) FROM events").fetchone()[0]
            assert kept <= 100_000
            with pytest.raises(Gone):
                await take(store.watch("SpiderIPPool", resource_version=first), 1)
            before_last = str(int(meta(obj)["resourceVersion"]) - 1)
            (event,) = await take(store.watch("SpiderIPPool", resource_version=before_last), 1)
            assert event.object["status"]["allocatedIPs"].endswith("29")


async def test_a_watch_far_behind_catches_up_in_order(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with await SqliteStore.open(tmp_path / "store.db") as store:
            for i in range(1200):
                await store.create(pool(f"p{i}"))
            seen = await take(store.watch("SpiderIPPool", resource_version="1"), 1200)
            assert [meta(e.object)["name"] for e in seen] == [f"p{i}" for i in range(1200)]


async def test_a_closed_store_refuses_calls_and_ends_watches(tmp_path: Path) -> None:
    failures: list[BaseException] = []

    async def watcher(events: AsyncIterator[WatchEvent]) -> None:
        try:
            async for _ in events:
                pass
        except trio.ClosedResourceError as exc:
            failures.append(exc)

    with trio.fail_after(TIMEOUT):
        store = await SqliteStore.open(tmp_path / "store.db")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher, store.watch("SpiderIPPool"))
            await trio.sleep(0.1)
            await store.aclose()
        await store.aclose()  # idempotent
        with pytest.raises(trio.ClosedResourceError):
            await store.get("SpiderIPPool", "x")
    assert len(failures) == 1


def test_default_store_path_prefers_the_environment() -> None:
    assert default_store_path({"SPIDER_STORE": "/tmp/s.db"}, euid=0) == Path("/tmp/s.db")


def test_default_store_path_for_root_is_var_lib() -> None:
    assert default_store_path({}, euid=0) == Path("/var/lib/spider/store.db")


def test_default_store_path_for_users_follows_xdg() -> None:
    assert default_store_path({"XDG_STATE_HOME": "/xdg"}, euid=1000) == Path("/xdg/spider/store.db")
    assert default_store_path({}, euid=1000) == Path("~/.local/state/spider/store.db").expanduser()


async def test_small_and_big_objects_read_back_whole(tmp_path: Path) -> None:
    # small ones are read in the trio thread, big ones (past INLINE_READ_BYTES) in a worker thread
    with trio.fail_after(TIMEOUT):
        async with await SqliteStore.open(tmp_path / "store.db") as store:
            small = await store.create(pool("small"))
            big = await store.create(pool("big"))
            big["status"] = {"allocatedIPs": "x" * (INLINE_READ_BYTES * 2)}
            big = await store.update_status(big)
            assert await store.get("SpiderIPPool", "small") == small
            assert await store.get("SpiderIPPool", "big") == big
            with pytest.raises(NotFound):
                await store.get("SpiderIPPool", "missing")
        with pytest.raises(trio.ClosedResourceError):
            await store.get("SpiderIPPool", "small")
