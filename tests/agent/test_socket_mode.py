"""The agent's socket lets in only its owner (mode 0600), or a group given with ``--socket-group`` (0660),
whatever the process's umask, and a socket whose mode cannot be set is never served."""

from __future__ import annotations

import grp
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from actors.agent import AgentSettings, open_agent
from actors.servers.agent_api import close_unix_listener, open_unix_listener
from actors.stores.sqlite import SqliteStore
from actors.tools.cli import build_parser
from spider.errors import SocketUnusable
from tests.support import http_call, short_tmp

TIMEOUT = 20


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """Run with ``mask`` as the process's umask (0: a socket bound plainly would be 0777)."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path: Path) -> int:
    info = os.lstat(path)
    assert stat.S_ISSOCK(info.st_mode)
    return stat.S_IMODE(info.st_mode)


async def test_the_socket_is_mode_0600_even_under_an_open_umask() -> None:
    with short_tmp() as d, trio.fail_after(TIMEOUT), umask(0):
        listener = await open_unix_listener(d / "agent.sock")
        try:
            assert mode_of(d / "agent.sock") == 0o600
            assert os.lstat(d / "agent.sock").st_uid == os.getuid()
        finally:
            close_unix_listener(listener)


async def test_a_replaced_stale_socket_gets_the_same_mode() -> None:
    with short_tmp() as d, trio.fail_after(TIMEOUT), umask(0):
        stale = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await stale.bind(os.fspath(d / "agent.sock"))  # bound, never listening: nobody answers on it
        stale.close()
        assert mode_of(d / "agent.sock") == 0o777
        listener = await open_unix_listener(d / "agent.sock")
        try:
            assert mode_of(d / "agent.sock") == 0o600
        finally:
            close_unix_listener(listener)


@pytest.mark.parametrize("by", ["gid", "name"])
async def test_a_socket_group_makes_it_0660_owned_by_that_group(by: str) -> None:
    gid = os.getgid()  # NB: a group this (unprivileged) test may give a file it owns
    group = str(gid) if by == "gid" else grp.getgrgid(gid).gr_name
    with short_tmp() as d, trio.fail_after(TIMEOUT), umask(0):
        listener = await open_unix_listener(d / "agent.sock", group=group)
        try:
            assert mode_of(d / "agent.sock") == 0o660
            assert os.lstat(d / "agent.sock").st_gid == gid
        finally:
            close_unix_listener(listener)


async def test_an_unknown_socket_group_is_refused_before_anything_is_made() -> None:
    with short_tmp() as d, trio.fail_after(TIMEOUT):
        with pytest.raises(SocketUnusable, match="no group 'no-such-group-here'"):
            await open_unix_listener(d / "agent.sock", group="no-such-group-here")
        assert not (d / "agent.sock").exists()


async def test_a_socket_whose_mode_cannot_be_set_is_refused_and_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    def ignored(path: object, mode: int, **kwargs: object) -> None:
        pass  # as on a filesystem that keeps whatever mode the umask gave

    monkeypatch.setattr(os, "chmod", ignored)
    with short_tmp() as d, trio.fail_after(TIMEOUT), umask(0o022):
        with pytest.raises(SocketUnusable, match="its mode is 0755, not 0600"):
            await open_unix_listener(d / "agent.sock")
        assert not (d / "agent.sock").exists()


async def test_the_agent_serves_on_a_0660_socket_with_its_socket_group() -> None:
    with short_tmp() as d, trio.fail_after(TIMEOUT):
        settings = AgentSettings(
            store_path=d / "store.db",
            socket_path=d / "agent.sock",
            node="node-1",
            socket_group=str(os.getgid()),
            node_actor=False,
        )
        async with await SqliteStore.open(d / "store.db") as store, open_agent(settings, store):
            assert mode_of(d / "agent.sock") == 0o660
            status, _, _ = await http_call(d / "agent.sock", "GET", "/v1/ipam/healthy")
            assert status == 200


@pytest.mark.parametrize(("argv", "group"), [([], None), (["--socket-group", "cni"], "cni")])
def test_spider_agent_passes_its_socket_group_to_the_agent(
    argv: list[str], group: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import actors.agent

    seen: list[AgentSettings] = []

    async def run_agent(settings: AgentSettings) -> None:
        seen.append(settings)

    monkeypatch.setattr(actors.agent, "run_agent", run_agent)
    args = build_parser().parse_args(["agent", *argv])
    assert args.func(args) == 0
    assert [s.socket_group for s in seen] == [group]
