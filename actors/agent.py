"""``spider agent``: the per-node daemon, wired together.

Owns the agent's settings and its life cycle: open the store, start the supervisor that keeps the pool
actors, serve the API on the unix socket, and on SIGTERM or SIGINT drain in order (stop accepting, let
requests in flight finish within a grace period, stop the actors, close the store).  Wiring only: the logic
lives in ``actors.ipam``, ``actors.plugin`` and ``actors.api``.
"""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from actors.api import AgentApi
from actors.ipam import IpamService, IpamSettings, PoolRegistry
from actors.plugin import Plugin
from actors.sqlite import SqliteStore, default_store_path
from actors.store import Store
from actors.supervisor import Supervisor
from actors.validating import ValidatingStore
from spider.cni import DEFAULT_SOCKET

log = logging.getLogger(__name__)


@attrs.frozen
class AgentSettings:
    """How one agent runs."""

    store_path: Path = attrs.field(factory=default_store_path, converter=Path)
    """The embedded store file, shared by every agent and the CLI on this machine."""
    socket_path: Path = attrs.field(default=Path(DEFAULT_SOCKET), converter=Path)
    """Where the API listens; Spiderpool's default, which CNI configs name in ``ipam_unix_socket_path``."""
    node: str = attrs.field(factory=socket.gethostname)
    """The node this agent serves; pools' node affinity and endpoints use it."""
    grace: float = 30.0
    """Seconds requests in flight may take to finish after SIGTERM."""
    release_cooldown: float = 0.0
    """Seconds a released address rests before any pool reuses it (a pool's annotation overrides it); 0: at once."""
    ipam: IpamSettings = attrs.field(factory=IpamSettings)
    """StatefulSet / KubeVirt fixed IPs, Multus defaults (Spiderpool's configmap switches)."""


@asynccontextmanager
async def open_agent(settings: AgentSettings, store: Store | None = None) -> AsyncIterator[AgentApi]:
    """A running agent (API served, actors supervised) for the body of the ``async with``.

    Leaving the block drains it: no new connections, requests in flight finish, actors stop.
    """
    own_store = store is None
    if store is None:
        store = ValidatingStore(await SqliteStore.open(settings.store_path))
    try:
        async with trio.open_nursery() as actors:
            registry = PoolRegistry(store, Supervisor(actors), default_cooldown=settings.release_cooldown)
            ipam = IpamService(store, registry, settings.node, settings.ipam)
            api = AgentApi(ipam, Plugin(ipam), grace=settings.grace)
            async with trio.open_nursery() as server:
                await server.start(api.serve, settings.socket_path)
                try:
                    yield api
                finally:
                    api.stop_accepting()
            actors.cancel_scope.cancel(reason="agent stopped")
    finally:
        if own_store:
            with trio.CancelScope(shield=True):
                await store.aclose()


async def run_agent(settings: AgentSettings) -> None:
    """Serve until SIGTERM or SIGINT, then drain."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with open_agent(settings) as api:
            log.info(
                "agent for node %s serving %s (store %s)",
                settings.node,
                settings.socket_path,
                settings.store_path,
            )
            async for signum in signals:
                log.info("received %s; draining", signal.Signals(signum).name)
                break
            api.stop_accepting()
