"""``settle_heap``: what start-up made is out of the collector's sight; the agent and the controller settle their
heaps once they serve.  Settling freezes for good, so it runs in a process of its own here, and the entry points'
calls are intercepted (every test shares this interpreter)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from tests.controller.test_controller import settings as controller_settings
from tests.support import ROOT

TIMEOUT = 30


async def test_settling_leaves_later_full_collections_nothing_of_what_start_up_made() -> None:
    code = (
        "import gc, actors.agent, actors.controller.main, actors.stores.kube\n"
        "from actors.runtime.heap import settle_heap\n"
        "made = len(gc.get_objects())\n"
        "settle_heap()\n"
        "print(made, len(gc.get_objects()), gc.get_freeze_count())\n"
    )
    with trio.fail_after(TIMEOUT):
        done = await trio.run_process([sys.executable, "-c", code], capture_stdout=True, cwd=ROOT)
    made, left, frozen = map(int, done.stdout.split())
    assert made > 50_000  # modules, classes, kubernetes-asyncio's models: what each full pass walked before
    assert left < 100
    assert frozen > 50_000


def stop_when_called(calls: list[int]) -> Callable[[], None]:
    """A stand-in for ``settle_heap`` that notes the call and then sends SIGTERM, as the kubelet would."""

    def settle() -> None:
        calls.append(os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)

    return settle


async def test_the_agent_settles_its_heap_once_it_serves(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import actors.agent

    calls: list[int] = []
    monkeypatch.setattr(actors.agent, "settle_heap", stop_when_called(calls))
    settings = actors.agent.AgentSettings(
        store_path=tmp_path / "store.db", socket_path=tmp_path / "agent.sock", node="node-1", node_actor=False
    )
    with trio.fail_after(TIMEOUT):
        await actors.agent.run_agent(settings)
    assert calls == [os.getpid()]


async def test_the_controller_settles_its_heap_once_it_serves(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import actors.controller.main

    calls: list[int] = []
    monkeypatch.setattr(actors.controller.main, "settle_heap", stop_when_called(calls))
    settings = controller_settings(tmp_path, "a", "heap-test")
    with trio.fail_after(TIMEOUT):
        await actors.controller.main.run_controller(settings)
    assert calls == [os.getpid()]
