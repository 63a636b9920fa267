"""``spider agent --max-pool-status-bytes``: a real agent process refuses the ADD that would pass the cap with
CNI 100 naming the pool and the cap, and the refused ADD changes nothing in the store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from actors.ipam.pool import DEFAULT_MAX_STATUS_BYTES
from actors.stores.sqlite import SqliteStore
from actors.tools.cli import build_parser
from actors.tools.manifests import apply
from spider.pool import PoolLedger
from tests.support import AgentProcess, cni_env, installed_shim, netconf, pod_args, pool_object, short_tmp

POOL = pool_object("capped", "10.30.0.0/24", ["10.30.0.10-10.30.0.19"])


async def stored(path: Path) -> list[Any]:
    """Every pool's status and every endpoint, as stored."""
    store = await SqliteStore.open(path)
    try:
        pools = [p.get("status") for p in (await store.list("SpiderIPPool")).items]
        return pools + [e.get("status") for e in (await store.list("SpiderEndpoint")).items]
    finally:
        await store.aclose()


async def status_bytes(path: Path) -> int:
    """What the pool's records take, as the cap counts it."""
    store = await SqliteStore.open(path)
    try:
        return PoolLedger.from_object(await store.get("SpiderIPPool", "capped")).status_bytes()
    finally:
        await store.aclose()


async def add(shim: Path, socket: Path, n: int) -> tuple[int, Any]:
    env = cni_env("ADD", f"ctr-{n}", "eth0", pod_args(f"pod-{n}", f"uid-{n}"))
    conf = netconf(socket, default_ipv4_ippool=["capped"])
    done = await trio.run_process(
        [str(shim)], stdin=json.dumps(conf).encode(), env=env, capture_stdout=True, check=False
    )
    out = done.stdout.strip()
    return done.returncode, (json.loads(out) if out else None)


async def test_the_agent_with_the_flag_refuses_past_the_cap_with_code_100_and_changes_nothing() -> None:
    with short_tmp() as d, trio.fail_after(90):
        store = await SqliteStore.open(d / "store.db")
        try:
            await apply(store, POOL)
        finally:
            await store.aclose()
        shim = installed_shim(d / "bin")
        uncapped = AgentProcess(d / "store.db", d / "a.sock", "node-a", d / "a.log")
        await trio.to_thread.run_sync(uncapped.start)
        try:
            code, first = await add(shim, uncapped.socket_path, 0)
        finally:
            await trio.to_thread.run_sync(uncapped.stop)
        assert code == 0, first
        one_record = (await status_bytes(d / "store.db")) + 1
        cap = one_record * 3 // 2  # room for the record held, not for a second one
        capped = AgentProcess(
            d / "store.db", d / "a.sock", "node-a", d / "a.log", ["--max-pool-status-bytes", str(cap)]
        )
        await trio.to_thread.run_sync(capped.start)
        try:
            before = await stored(d / "store.db")
            code, error = await add(shim, capped.socket_path, 1)
            after = await stored(d / "store.db")
            again = await add(shim, capped.socket_path, 0)  # the pod holding an address still gets it
        finally:
            await trio.to_thread.run_sync(capped.stop)
    assert code == 1
    assert error["code"] == 100
    assert "'capped'" in error["msg"]
    assert str(cap) in error["msg"]
    assert after == before
    assert again == (0, first)


def test_the_flag_defaults_to_one_mebibyte_and_says_so() -> None:
    parser = build_parser()
    assert parser.parse_args(["agent"]).max_pool_status_bytes == DEFAULT_MAX_STATUS_BYTES == 1 << 20
    assert parser.parse_args(["agent", "--max-pool-status-bytes", "4096"]).max_pool_status_bytes == 4096
    agent_parser = next(
        action.choices["agent"]
        for action in parser._actions
        if isinstance(action.choices, dict) and "agent" in action.choices
    )
    assert "default 1048576 = 1 MiB" in " ".join(agent_parser.format_help().split())
