"""The coordinator plugin's first look at ``CNI_NETNS``: for ADD and CHECK, a path ``stat`` shows is a FIFO,
directory, socket or device is refused with CNI 4 without asking the agent; anything else (a file, a missing
path) and every DEL go to the agent, which checks thoroughly.  The agent here is a socket nobody listens on, so
a forwarded request shows as CNI 11."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cni import coordinator

PLUGIN = Path(__file__).resolve().parents[2] / "cni" / "coordinator.py"
NOBODY = "/tmp/sp-nobody-listens-here.sock"
PREV = {"cniVersion": "1.0.0", "ips": [{"address": "10.6.0.20/24"}]}
STDIN = json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "coordinator", "ipam_unix_socket_path": NOBODY})


@pytest.fixture
def fifo(tmp_path: Path) -> str:
    path = tmp_path / "netns"
    os.mkfifo(path)
    return str(path)


def run(command: str, netns: str, plugin: str = "coordinator") -> tuple[int, dict[str, Any]]:
    environ = {
        b"CNI_COMMAND": command.encode(),
        b"CNI_CONTAINERID": b"c1",
        b"CNI_NETNS": netns.encode(),
        b"CNI_IFNAME": b"eth0",
    }
    out = io.BytesIO()
    code = coordinator.main(environ, STDIN.encode(), out, plugin)
    return code, json.loads(out.getvalue())


@pytest.mark.parametrize("command", ["ADD", "CHECK"])
def test_a_fifo_is_refused_by_the_plugin_with_invalid_environment(fifo: str, command: str) -> None:
    code, error = run(command, fifo)
    assert code == 1
    assert error["code"] == 4
    assert error["msg"] == f"environment variable CNI_NETNS {fifo!r} is a FIFO (named pipe), not a network namespace"


@pytest.mark.parametrize(("path", "what"), [("/dev/null", "a character device"), ("/", "a directory")])
def test_a_device_or_a_directory_is_refused_by_the_plugin(path: str, what: str) -> None:
    code, error = run("ADD", path)
    assert (code, error["code"]) == (1, 4)
    assert f"is {what}, not a network namespace" in error["msg"]


@pytest.mark.parametrize("path", ["/proc/self/status", "/var/run/netns/sp-no-such-pod", "/proc/self/ns/mnt"])
def test_what_a_stat_cannot_judge_is_left_to_the_agent(path: str) -> None:
    code, error = run("ADD", path)
    assert (code, error["code"]) == (1, 11)
    assert NOBODY in error["details"]


def test_del_with_a_fifo_still_reaches_the_agent_to_clean_the_host(fifo: str) -> None:
    assert run("DEL", fifo)[1]["code"] == 11


def test_ifacer_never_enters_the_pod_and_does_not_look(fifo: str) -> None:
    assert run("ADD", fifo, plugin="ifacer")[1]["code"] == 11


def test_the_installed_plugin_answers_a_fifo_at_once(fifo: str) -> None:
    done = subprocess.run(
        [sys.executable, "-IS", str(PLUGIN)],
        input=STDIN.encode(),
        env={"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": fifo, "CNI_IFNAME": "eth0"},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert json.loads(done.stdout)["code"] == 4
