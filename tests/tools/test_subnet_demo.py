"""``actors.tools.subnet_demo``: the SpiderSubnet scene runs through every step on the embedded store."""

from __future__ import annotations

import io
from pathlib import Path

import trio
from rich.console import Console

from actors.tools.subnet_demo import run_subnet_demo


async def test_the_deployments_pool_appears_grows_shrinks_and_goes_with_it(tmp_path: Path) -> None:
    text = io.StringIO()
    with trio.fail_after(60):
        code = await run_subnet_demo(Console(file=text, width=200), tmp_path)
    out = text.getvalue()
    assert code == 0, out
    assert "10.220.0.10-10.220.0.12" in out  # replicas + 1: the subnet's three lowest addresses
    assert "10.220.0.10-10.220.0.14" in out  # scaled to 4: grown, the old ones kept
    assert "10.220.0.10-10.220.0.11" in out  # scaled to 1: the two the pods hold stay
    assert "0 of 90" in out  # the pool went, the subnet has every address back
