"""``spider controller`` as real processes sharing one embedded store: a killed leader is replaced within the
lease duration, a SIGTERM'd one at once, and the new leader takes the pools over."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.stores.sqlite import SqliteStore
from tests.controller.support import eventually, pool
from tests.support import ROOT

LEASE, RENEW, RETRY = 2, 1.2, 0.2
SLACK = 1.5  # process start-up, polling and a busy CI machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ControllerProcess:
    """One ``spider controller`` process and its health port."""

    def __init__(self, store: Path, identity: str, log: Path) -> None:
        self.identity, self.port, self.log = identity, free_port(), log
        argv = [sys.executable, "-m", "actors", "controller", "--store", str(store), "--namespace", "default"]
        argv += ["--identity", identity, "--lease-duration", str(LEASE), "--renew-deadline", str(RENEW)]
        argv += ["--retry-period", str(RETRY), "--health-host", "127.0.0.1", "--health-port", str(self.port)]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)

    def info_sync(self) -> dict[str, Any] | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"controller {self.identity} exited: {self.log.read_text()[-2000:]}")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/v1/runtime/leader")
            info: dict[str, Any] = json.loads(conn.getresponse().read())
            return info
        except OSError:
            return None
        finally:
            conn.close()

    async def info(self) -> dict[str, Any] | None:
        return await trio.to_thread.run_sync(self.info_sync)

    def leads(self) -> Any:
        async def check() -> bool:
            info = await self.info()
            return bool(info and info["leading"])

        return check

    def stop(self, signum: int) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


@pytest.mark.slow
async def test_controller_processes_hand_over_the_lease_when_killed_and_when_stopped(tmp_path: Path) -> None:
    store_path = tmp_path / "store.db"
    running: list[ControllerProcess] = []
    try:
        with trio.fail_after(90):
            async with await SqliteStore.open(store_path) as store:
                running += [ControllerProcess(store_path, name, tmp_path / f"{name}.log") for name in ("a", "b")]

                async def someone_leads() -> bool:
                    infos = [await c.info() for c in running]
                    return sum(bool(i and i["leading"]) for i in infos) == 1

                await eventually(someone_leads, within=30)
                infos = [await c.info() or {} for c in running]
                leader = next(c for c, info in zip(running, infos, strict=True) if info.get("leading"))
                standby = next(c for c in running if c is not leader)
                await eventually(lambda: _knows(standby, leader.identity))

                killed = time.monotonic()
                leader.stop(signal.SIGKILL)  # no release: the standby must wait the lease out
                await eventually(standby.leads(), within=LEASE + 2 * RETRY + SLACK)
                took = time.monotonic() - killed
                assert LEASE - 2 * RETRY * 1.2 - 0.3 <= took <= LEASE + 2 * RETRY * 1.2 + SLACK

                await store.create(pool("p1"))  # the new leader maintains the pools

                async def maintained() -> bool:
                    obj = await store.get("SpiderIPPool", "p1")
                    return bool(obj["metadata"].get("finalizers")) and "totalIPCount" in (obj.get("status") or {})

                await eventually(maintained)

                third = ControllerProcess(store_path, "c", tmp_path / "c.log")
                running.append(third)
                await eventually(lambda: _knows(third, standby.identity), within=30)
                stopped = time.monotonic()
                assert standby.stop(signal.SIGTERM) == 0  # releases the Lease on the way out
                await eventually(third.leads(), within=LEASE)
                assert time.monotonic() - stopped < LEASE  # at once, not after a lease duration
                lease = await store.get("Lease", "spiderpool-controller-leases", "default")
                assert lease["spec"]["holderIdentity"] == "c"
                assert lease["spec"]["leaseTransitions"] == 2
    finally:
        for c in running:
            c.stop(signal.SIGKILL)


async def _knows(controller: ControllerProcess, leader: str) -> bool:
    info = await controller.info()
    return bool(info and info["leader"] == leader)
