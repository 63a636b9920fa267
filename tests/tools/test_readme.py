"""The README's "Calling the plugin by hand" runs as printed: its shell blocks, executed from the checkout's root,
answer the addresses its comments show and leave the store consistent."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ADDRESS = re.compile(r'"address":\s*"([^"]+)"')


def _by_hand_blocks() -> list[str]:
    """The ``sh`` blocks between "**Calling the plugin by hand**" and the next bold paragraph."""
    text = (ROOT / "README.md").read_text()
    start = text.index("**Calling the plugin by hand**")
    section = text[start : text.index("\n**", start + 1)]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def test_the_readme_shows_the_plugin_with_and_without_a_pod() -> None:
    blocks = _by_hand_blocks()
    assert len(blocks) == 2, "one block without a Pod object, one with"
    assert "mktemp -d" in blocks[0]
    calls = [line for block in blocks for line in block.splitlines() if line.startswith(".venv/bin/spider ")]
    for call in calls:  # nothing lands in system paths
        assert '"$D/' in call, call


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "spider").exists(), reason="needs the checkout's .venv (.ci/setup)")
@pytest.mark.skipif(Path(sys.prefix) != ROOT / ".venv", reason="the README's commands use the checkout's .venv")
def test_calling_the_plugin_by_hand_answers_what_the_readme_shows() -> None:
    script = "set -euo pipefail\n" + "\n".join(_by_hand_blocks())
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    comments = [line.split("#", 1)[1] for block in _by_hand_blocks() for line in block.splitlines() if "#" in line]
    shown = [address for comment in comments for address in ADDRESS.findall(comment)]
    assert ADDRESS.findall(done.stdout) == shown  # the plugin's answers (one line each, no newline) in order
    assert "consistent" in done.stdout
