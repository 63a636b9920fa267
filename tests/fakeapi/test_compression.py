"""Compression in the fake API server: an answer over 128 KiB is gzipped when the request's ``Accept-Encoding``
names gzip, as kube-apiserver does (aiohttp, and so our store, asks for it), and never otherwise."""

from __future__ import annotations

import gzip
import json
from typing import Any

import trio

from tests.fakeapi import FakeApiServer
from tests.fakeapi.server import GZIP_THRESHOLD
from tests.fakeapi.test_latency import POOLS, exchange, pool


def big_pool(name: str) -> dict[str, Any]:
    """A pool whose answer is over the threshold (its status carries a long ``allocatedIPs``)."""
    records = {f"10.6.{i // 250}.{i % 250 + 1}": {"pod": f"ns/pod-{i}", "podUid": f"uid-{i:040d}"} for i in range(2000)}
    return {**pool(name), "status": {"allocatedIPs": json.dumps(records)}}


async def test_a_large_answer_is_gzipped_for_a_client_that_accepts_it(nursery: trio.Nursery) -> None:
    server: FakeApiServer = await nursery.start(FakeApiServer().run)
    with trio.fail_after(10):
        code, _, created = await exchange(server, "POST", POOLS, pool("big"))
        assert code == 201
        stored = json.loads(created)
        status = big_pool("big")["status"]
        code, _, _ = await exchange(server, "PUT", f"{POOLS}/big/status", {**stored, "status": status})
        assert code == 200
        code, headers, body = await exchange(server, "GET", f"{POOLS}/big", None, ("Accept-Encoding", "gzip, deflate"))
        assert code == 200
        assert headers["content-encoding"] == "gzip"
        assert len(body) < GZIP_THRESHOLD
        assert json.loads(gzip.decompress(body))["status"] == status
        code, headers, body = await exchange(server, "GET", f"{POOLS}/big", None, ("Accept-Encoding", "deflate"))
        assert "content-encoding" not in headers
        assert json.loads(body)["status"] == status
        code, headers, body = await exchange(server, "GET", f"{POOLS}/big")  # no Accept-Encoding at all
        assert "content-encoding" not in headers
        assert len(body) > GZIP_THRESHOLD


async def test_a_small_answer_is_never_gzipped(nursery: trio.Nursery) -> None:
    server: FakeApiServer = await nursery.start(FakeApiServer().run)
    with trio.fail_after(10):
        await exchange(server, "POST", POOLS, pool("small"))
        code, headers, body = await exchange(server, "GET", f"{POOLS}/small", None, ("Accept-Encoding", "gzip"))
    assert code == 200
    assert "content-encoding" not in headers
    assert json.loads(body)["metadata"]["name"] == "small"
