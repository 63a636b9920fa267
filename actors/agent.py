"""``spider agent``: the per-node daemon, wired together.

Owns the agent's settings and its life cycle: claim the unix socket (refusing a path another agent serves),
open the store, start the supervisor that keeps the pool actors (and, with an API server store, the forwarder
that sends pool writes to the controller's pool host: ``actors.ipam.remote``), serve the API on the socket, and
on SIGTERM or SIGINT drain in order (stop accepting, let requests in flight finish within a grace period, stop the
actors, close the store).  Wiring only: the logic lives in ``actors.ipam`` (the IPAM service, the plugin's
verbs) and ``actors.servers.agent_api``; the NodeActor (``actors.node``) owns the node's network changes for
the coordinator.
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

from actors.ipam.autopools import ActorRanges, AutoPools
from actors.ipam.plugin import Plugin
from actors.ipam.pool import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_STATUS_BYTES, PoolRegistry
from actors.ipam.remote import (
    DEFAULT_BUDGET,
    DEFAULT_CA_CONFIGMAP,
    DEFAULT_LEASE,
    DEFAULT_POOL_HOST_PORT,
    DEFAULT_TOKEN_FILE,
    HostLocator,
    PoolForwarder,
    ServiceAccountToken,
)
from actors.ipam.service import IpamService, IpamSettings
from actors.ipam.subnet import SubnetRegistry
from actors.node.actor import open_node
from actors.node.coordinating import Coordinator
from actors.node.netlink import NETLINK_TIMEOUT, netns_path
from actors.node.rdma import RdmaCollector, pods_by_address
from actors.runtime.heap import settle_heap
from actors.runtime.supervisor import Supervisor
from actors.servers.agent_api import AgentApi, close_unix_listener, open_unix_listener
from actors.servers.httpserver import READ_TIMEOUT
from actors.servers.metrics import AGENT_PORT, AgentMetrics, MetricsServer, MetricsSettings
from actors.stores.port import Store
from actors.stores.retrying import DEFAULT_OUTAGE_BUDGET, RetryingStore
from actors.stores.selection import StoreSettings, open_store
from actors.stores.sqlite import default_store_path
from actors.stores.validating import ValidatingStore
from spider.cni import DEFAULT_SOCKET
from spider.errors import InvalidInput

log = logging.getLogger(__name__)


@attrs.frozen
class AgentSettings:
    """How one agent runs."""

    store_path: Path = attrs.field(factory=default_store_path, converter=Path)
    """The embedded store file, shared by every agent and the CLI on this machine."""
    socket_path: Path = attrs.field(default=Path(DEFAULT_SOCKET), converter=Path)
    """Where the API listens; Spiderpool's default, which CNI configs name in ``ipam_unix_socket_path``."""
    socket_group: str | None = None
    """A group (name or gid) whose members may use the socket too (mode 0660); ``None``: mode 0600, owner only."""
    node: str = attrs.field(factory=socket.gethostname)
    """The node this agent serves; pools' node affinity and endpoints use it."""
    grace: float = 30.0
    """Seconds requests in flight may take to finish after SIGTERM."""
    read_timeout: float = READ_TIMEOUT
    """Seconds a client may take to send one request on the socket; an idle connection is closed after it."""
    release_cooldown: float = 0.0
    """Seconds a released address rests before any pool reuses it (a pool's annotation overrides it); 0: at once."""
    ipam: IpamSettings = attrs.field(factory=IpamSettings)
    """StatefulSet / KubeVirt fixed IPs, Multus defaults (Spiderpool's configmap switches)."""
    host_netns: str | None = None
    """The network namespace the NodeActor treats as the host (a name under /var/run/netns, or a path); ``None``
    is the agent's own.  Tests and the demo name one they made, so nothing touches the machine's namespace."""
    node_actor: bool = True
    """Run the NodeActor, which serves the coordinator and ifacer plugins and ``GET /v1/coordinator/config``."""
    kubeconfig: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    """Keep objects on the Kubernetes API server this kubeconfig names instead of the embedded store."""
    in_cluster: bool = False
    """Keep objects on the API server of the cluster the agent runs in (its service account)."""
    context: str | None = None
    """The kubeconfig context (default: its current one)."""
    netlink_timeout: float = NETLINK_TIMEOUT
    """Seconds one netlink transaction (a pod's interface setup, a host read) may take before it fails with
    CNI 11 and its worker thread is replaced."""
    conflict_budget: float = 20.0
    """Seconds a pool write may keep losing races to other agents before the request fails with CNI 11."""
    max_pool_status_bytes: int | None = DEFAULT_MAX_STATUS_BYTES
    """The most a pool's status (its records) may take; an allocation past it fails with CNI 100 naming the
    pool and the cap, before etcd refuses the object (1.5 MiB).  ``None``: no cap."""
    pool_idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT
    """Seconds a pool actor may go without a request before it stops and frees its ledger; ``None``: never."""
    store_outage_budget: float = DEFAULT_OUTAGE_BUDGET
    """Seconds a request waits through a store outage (an API server restart) before it fails with CNI 11;
    well inside the runtime's CNI timeout.  0: fail at once."""
    pool_host: bool = True
    """With an API server store, send pool writes to the controller's pool host (``actors.ipam.remote``)."""
    pool_host_port: int = DEFAULT_POOL_HOST_PORT
    """The controllers' ``--pool-host-port``."""
    pool_host_budget: float = DEFAULT_BUDGET
    """Seconds a forwarded batch may take (connect and answer) before the agent serves it itself."""
    pool_host_token_file: Path = attrs.field(default=DEFAULT_TOKEN_FILE, converter=Path)
    """The ServiceAccount token shown to the pool host (read again when it changes); none: no forwarding."""
    controller_namespace: str = ""
    """Where the controllers' Lease and CA ConfigMap live; empty: the agent's namespace (``ipam``)."""
    controller_lease: str = DEFAULT_LEASE
    ca_configmap: str = DEFAULT_CA_CONFIGMAP
    pool_host_address: tuple[str, int] | None = None
    """The pool host's address, instead of the Lease holder's Pod IP (a controller outside the cluster)."""
    metrics: MetricsSettings = attrs.field(factory=lambda: MetricsSettings(port=AGENT_PORT))
    """``GET /metrics`` on port 5711 (``actors.servers.metrics``); off unless enabled, as Spiderpool's."""
    rdma_metrics: bool = False
    """Add the node's RDMA counters to ``GET /metrics`` (``SPIDERPOOL_ENABLED_RDMA_METRIC``; ``actors.node.rdma``)."""

    @property
    def forwards(self) -> bool:
        """Whether pool writes go to the pool host: asked for, and the store is an API server."""
        return self.pool_host and (self.kubeconfig is not None or self.in_cluster)

    @property
    def store(self) -> StoreSettings:
        """Which store the agent opens."""
        return StoreSettings(self.store_path, self.kubeconfig, self.in_cluster, self.context)


@asynccontextmanager
async def open_agent(settings: AgentSettings, store: Store | None = None) -> AsyncIterator[AgentApi]:
    """A running agent (API served, actors supervised) for the body of the ``async with``.

    Leaving the block drains it: no new connections, requests in flight finish, actors stop.  Raises
    ``SocketUnusable`` before anything starts when another agent serves the socket or the path cannot be one.
    """
    if settings.host_netns is not None and not await trio.Path(netns_path(settings.host_netns)).exists():
        raise InvalidInput(reason=f"host network namespace {settings.host_netns!r} does not exist")
    listener = await open_unix_listener(settings.socket_path, group=settings.socket_group)
    own_store = store is None
    try:
        if store is None:
            store = ValidatingStore(RetryingStore(await open_store(settings.store), settings.store_outage_budget))
    except BaseException:
        close_unix_listener(listener)
        raise
    try:
        async with trio.open_nursery() as actors:
            registry = PoolRegistry(
                store,
                Supervisor(actors),
                default_cooldown=settings.release_cooldown,
                conflict_budget=settings.conflict_budget,
                max_status_bytes=settings.max_pool_status_bytes,
                idle_timeout=settings.pool_idle_timeout,
            )
            if settings.forwards:  # one writer per pool in the cluster; our own actors when it does not answer
                locator = HostLocator(
                    store,
                    settings.controller_namespace or settings.ipam.agent_namespace,
                    port=settings.pool_host_port,
                    lease=settings.controller_lease,
                    ca_configmap=settings.ca_configmap,
                    fixed=settings.pool_host_address,
                )
                token = ServiceAccountToken(settings.pool_host_token_file)
                forwarder = PoolForwarder(
                    registry, locator, token, budget=settings.pool_host_budget, sender=settings.node
                )
                await actors.start(forwarder.run)
                registry.route = forwarder
            subnets = SubnetRegistry(store, Supervisor(actors))  # NB: third-party applications' auto pools
            auto_pools = AutoPools(store, settings.ipam.auto_pools, ActorRanges(store, subnets))
            ipam = IpamService(store, registry, settings.node, settings.ipam, auto_pools=auto_pools)
            coordinator = None
            if settings.node_actor:  # the node's netlink owner, for the coordinator and ifacer plugins
                node, node_actor = open_node(settings.host_netns, netlink_timeout=settings.netlink_timeout)
                await Supervisor(actors).start("node", node_actor.run)
                coordinator = Coordinator(ipam, node)
            api = AgentApi(
                ipam, Plugin(ipam), grace=settings.grace, read_timeout=settings.read_timeout, coordinator=coordinator
            )
            if settings.metrics.enabled:  # NB: under the actors' nursery: cancelled with them at the end
                api.metrics = AgentMetrics(api, debug=settings.metrics.debug)
                metrics = MetricsServer(api.metrics.render, settings.metrics, name="agent metrics")
                await actors.start(metrics.serve)
                api.metrics_port = metrics.port
                if settings.rdma_metrics:
                    rdma = RdmaCollector(settings.node, pods_by_ip=pods_by_address(store, settings.node))
                    await actors.start(rdma.serve)
                    api.metrics.add_source(rdma.samples)
            async with trio.open_nursery() as server:
                await server.start(api.serve, listener)
                try:
                    yield api
                finally:
                    api.stop_accepting()
            actors.cancel_scope.cancel(reason="agent stopped")
    finally:
        close_unix_listener(listener)  # NB: only when it never served (a failed start); serving cleans up itself
        if own_store:
            with trio.CancelScope(shield=True):
                await store.aclose()


async def run_agent(settings: AgentSettings) -> None:
    """Serve until SIGTERM or SIGINT, then drain."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with open_agent(settings) as api:
            settle_heap()
            log.info(
                "agent for node %s serving %s (store %s)",
                settings.node,
                settings.socket_path,
                settings.store.describe(),
            )
            async for signum in signals:
                log.info("received %s; draining", signal.Signals(signum).name)
                break
            api.stop_accepting()
