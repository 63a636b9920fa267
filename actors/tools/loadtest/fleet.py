"""The simulated nodes: one real ``spider agent`` process each, on one store, and how to talk to them.

Owns ``AgentFleet`` (starting the agents, waiting until each is healthy, reading their counters and memory,
stopping them), ``AgentClient`` (HTTP/1.1 with keep-alive over an agent's unix socket), the pool the agents
allocate from, opening the store and cleaning up after a run (the scratch directory; the pool on a Kubernetes
store).  Load goes only to local unix sockets and local processes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any

import attrs
import h11
import trio

from actors.stores.port import NotFound, Store
from actors.stores.selection import StoreSettings, open_store
from actors.stores.validating import ValidatingStore
from actors.tools.loadtest.scenario import AddressPlan
from spider.errors import SpiderError
from spider.pool import KIND as POOL


class ConnectionLost(Exception):
    """The agent closed a kept-alive connection; the request is sent again on a new one."""


@attrs.define
class AgentClient:
    """HTTP/1.1 with keep-alive over an agent's unix socket (h11): one connection, one request at a time."""

    path: Path
    _stream: trio.SocketStream | None = None
    _conn: h11.Connection | None = None

    async def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names) and body; a stale kept-alive connection is re-opened once."""
        for attempt in range(2):
            fresh = self._stream is None
            try:
                return await self._exchange(method, target, body)
            except (ConnectionLost, trio.BrokenResourceError, h11.RemoteProtocolError):
                await self.aclose()
                if fresh or attempt:
                    raise
        raise AssertionError("unreachable")

    async def _exchange(self, method: str, target: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if self._stream is None:
            self._stream = await trio.open_unix_socket(str(self.path))
            self._conn = h11.Connection(h11.CLIENT)
        stream, conn = self._stream, self._conn
        assert conn is not None
        headers = [("Host", "spider-agent"), ("Content-Length", str(len(body)))]
        if body:
            headers.append(("Content-Type", "application/json"))
        data = conn.send(h11.Request(method=method, target=target, headers=headers))
        data += conn.send(h11.Data(data=body)) if body else b""
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)
        status, answer_headers, payload = 0, {}, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                chunk = await stream.receive_some(65536)
                if not chunk and status == 0:
                    raise ConnectionLost
                conn.receive_data(chunk)
            elif isinstance(event, h11.Response):
                status = event.status_code
                answer_headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                payload += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionLost
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            await self.aclose()
        else:
            conn.start_next_cycle()
        return status, answer_headers, bytes(payload)

    async def aclose(self) -> None:
        """Close the connection (the next request opens a new one)."""
        if self._stream is not None:
            await self._stream.aclose()
        self._stream, self._conn = None, None


def rss_kib(pid: int) -> tuple[int, int]:
    """Resident set size now and at its peak (``VmRSS``, ``VmHWM``) in KiB; zeros when the process is gone."""
    now = peak = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    now = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1])
    except OSError:
        pass
    return now, peak


@attrs.define
class AgentFleet:
    """One ``spider agent`` process per simulated node, on one store."""

    dir: Path
    nodes: int
    store: StoreSettings
    processes: list[trio.Process] = attrs.field(factory=list)

    def socket(self, node: int) -> Path:
        """Node ``node``'s agent socket."""
        return self.dir / f"node-{node}.sock"

    def command(self, node: int) -> list[str]:
        """The agent's command line."""
        cmd = [sys.executable, "-m", "actors", "agent", "--socket", str(self.socket(node))]
        cmd += ["--node", f"node-{node}", "--store", str(self.store.store_path)]
        if self.store.kubeconfig is not None:
            cmd += ["--kubeconfig", str(self.store.kubeconfig)]
            if self.store.context:
                cmd += ["--context", self.store.context]
        return cmd

    async def start(self, patience: float = 120.0) -> None:
        """Start every agent, then wait until each answers ``/v1/ipam/healthy``."""
        env = {k: v for k, v in os.environ.items() if k != "SPIDER_KUBECONFIG"}
        for node in range(self.nodes):
            log = (self.dir / f"node-{node}.log").open("ab")
            try:
                proc = await trio.lowlevel.open_process(
                    self.command(node), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
                )
            finally:
                log.close()
            self.processes.append(proc)
        with trio.fail_after(patience):
            for node, proc in enumerate(self.processes):
                while True:
                    if proc.poll() is not None:
                        tail = (self.dir / f"node-{node}.log").read_text(errors="replace")[-1500:]
                        raise RuntimeError(f"agent of node-{node} exited with {proc.returncode}:\n{tail}")
                    try:
                        client = AgentClient(self.socket(node))
                        status, _, _ = await client.request("GET", "/v1/ipam/healthy")
                        await client.aclose()
                        if status == 200:
                            break
                    except (OSError, trio.BrokenResourceError, ConnectionLost):
                        pass
                    await trio.sleep(0.05)

    async def statistics(self) -> list[dict[str, Any]]:
        """Every agent's ``GET /v1/spider/stats`` with its memory (KiB) added."""
        out = []
        for node, proc in enumerate(self.processes):
            client = AgentClient(self.socket(node))
            try:
                status, _, body = await client.request("GET", "/v1/spider/stats")
            finally:
                await client.aclose()
            stats = json.loads(body) if status == 200 else {"pools": {}}
            stats["rss_kib"], stats["peak_rss_kib"] = rss_kib(proc.pid)
            out.append(stats)
        return out

    async def stop(self, grace: float = 30.0) -> None:
        """SIGTERM every agent, wait for it to drain; SIGKILL what is still there after ``grace``."""
        for proc in self.processes:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(grace):
            for proc in self.processes:
                await proc.wait()
        for proc in self.processes:
            if proc.returncode is None:
                proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()


def store_totals(before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """The pool actors' counters summed over every agent and pool, as differences ``after - before``."""

    def total(snapshot: Sequence[Mapping[str, Any]]) -> Counter[str]:
        out: Counter[str] = Counter()
        for agent in snapshot:
            for stats in agent.get("pools", {}).values():
                for key in ("requests", "batches", "writes", "conflicts"):
                    out[key] += int(stats.get(key, 0))
        return out

    diff = total(after) - total(before)
    largest = max(
        (int(s.get("largest_batch", 0)) for agent in after for s in agent.get("pools", {}).values()), default=0
    )
    return {k: diff.get(k, 0) for k in ("requests", "batches", "writes", "conflicts")} | {"largest_batch": largest}


def pool_object(name: str, plan: AddressPlan) -> dict[str, Any]:
    """The SpiderIPPool our agents allocate from."""
    return {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": POOL,
        "metadata": {"name": name, "labels": {"spider.io/loadtest": "true"}},
        "spec": {
            "subnet": str(plan.subnet),
            "gateway": str(plan.gateway),
            "ips": [f"{plan.pool.first}-{plan.pool.last}" if plan.pool.size > 1 else str(plan.pool.first)],
        },
    }


@contextmanager
def work_dir(keep: bool) -> Iterator[Path]:
    """A scratch directory with a short path (unix socket paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="spider-lt-", dir="/tmp"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


@asynccontextmanager
async def opened_store(settings: StoreSettings) -> AsyncIterator[Store]:
    """The run's store, validating as the CLI's does, closed even when the run is cancelled."""
    store = ValidatingStore(await open_store(settings))
    try:
        yield store
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()


async def delete_pool(store: Store, pool: str) -> None:
    """Remove the load test's pool from a Kubernetes store (an embedded one is thrown away whole)."""
    with suppress(NotFound, SpiderError):
        await store.delete(POOL, pool)
