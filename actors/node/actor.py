"""NodeActor: the one task that changes the node's network state (links, addresses, routes, rules, neighbours,
sysctls, the pod-side nftables marking) for this agent.

Owns the node's netlink worker thread (``actors.node.netlink``) and a mailbox; other actors and the agent API ask it
by message through a ``NodeHandle`` and get the answer (or the domain error) back in their own task, as with
the pool actors.  Each message is one whole transaction in the worker thread: it observes the namespaces it
needs, asks the pure planner (``spider.coordinator``) what to change, and changes it, so no other request's
changes interleave with a half-read state.  Messages are served one at a time, in order.

``host_netns`` names the namespace that plays the host (default: the agent's own).  Tests and the demo pass a
namespace they made, so nothing here ever touches the machine's root namespace.

A pod's ``CNI_NETNS`` is checked before the worker thread ever sees it (``actors.node.netns_file``, in a
thread this actor can abandon, under ``netlink_timeout``): a missing path is ``NamespaceGone`` (CNI 3), a
FIFO, directory, device, plain file or other kind of namespace is ``InvalidEnvironment`` (CNI 4).  DEL goes
on without the pod's side when its namespace is no longer usable.  Every transaction is bounded by the same
timeout (``NetlinkTimeout``, CNI 11; the worker replaces a stuck thread and keeps serving).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from typing import Any

import attrs
import outcome
import trio

from actors.node import netlink, netns_file, parents
from actors.runtime.mailbox import Reply
from spider.coordinator.config import DEFAULT_FIRST_NIC
from spider.coordinator.errors import NamespaceGone
from spider.coordinator.mode import POD_VETH
from spider.coordinator.observed import NsView
from spider.coordinator.plan import (
    Plan,
    SetupSpec,
    TeardownSpec,
    check_setup,
    host_veth_name,
    plan_setup,
    plan_teardown,
)
from spider.errors import ActorUnavailable, InvalidEnvironment, SpiderError
from spider.ifacer import IfacerConf

log = logging.getLogger(__name__)


@attrs.frozen
class InspectPod:
    """Observe a pod's namespace (bringing ``ifname`` up first when ``set_up``)."""

    netns: str
    ifname: str
    set_up: bool
    reply: Reply[NsView]


@attrs.frozen
class InspectHost:
    """Observe the host namespace (with the source address it uses towards each of ``route_sources_for``)."""

    route_sources_for: tuple[str, ...]
    reply: Reply[NsView]


@attrs.frozen
class SetupPod:
    """The coordinator's ADD changes for one pod interface, planned and applied in one transaction."""

    netns: str
    spec: SetupSpec
    prev_ips: tuple[str, ...]
    reply: Reply[Plan]


@attrs.frozen
class CheckPod:
    """What is missing compared with a finished ADD (CNI CHECK)."""

    netns: str
    spec: SetupSpec
    reply: Reply[list[str]]


@attrs.frozen
class TeardownPod:
    """The coordinator's DEL: remove what ADD made on the host (and the pod's marking, if the pod remains)."""

    netns: str
    spec: TeardownSpec
    families: tuple[int, ...]
    reply: Reply[Plan]


@attrs.frozen
class OpenProbe:
    """A packet socket on ``ifname`` inside the pod's namespace, for ARP/NDP detection and announcements."""

    netns: str
    ifname: str
    ethertype: int
    reply: Reply[socket.socket]


@attrs.frozen
class EnsureParents:
    """ifacer: make sure the bond and VLAN parents exist on the host; answers the parent's name."""

    conf: IfacerConf
    reply: Reply[str | None]


NodeMsg = InspectPod | InspectHost | SetupPod | CheckPod | TeardownPod | OpenProbe | EnsureParents


@attrs.define
class NodeStatistics:
    """Counters for metrics and tests."""

    requests: int = 0
    failures: int = 0
    setups: int = 0
    teardowns: int = 0


@attrs.frozen
class NodeHandle:
    """The only thing other tasks hold; every method is one request to the NodeActor."""

    _mailbox: trio.MemorySendChannel[NodeMsg]

    async def inspect_pod(self, netns: str, ifname: str, *, set_up: bool = False) -> NsView:
        """The pod's links and addresses (``NamespaceGone`` when the namespace is gone)."""
        reply = Reply[NsView].open()
        await self._send(InspectPod(netns, ifname, set_up, reply))
        return await reply.wait()

    async def inspect_host(self, route_sources_for: Sequence[str] = ()) -> NsView:
        """The host namespace's links and addresses."""
        reply = Reply[NsView].open()
        await self._send(InspectHost(tuple(route_sources_for), reply))
        return await reply.wait()

    async def setup_pod(self, netns: str, spec: SetupSpec, prev_ips: Sequence[str]) -> Plan:
        """Apply the coordinator's ADD; returns the plan that was executed."""
        reply = Reply[Plan].open()
        await self._send(SetupPod(netns, spec, tuple(prev_ips), reply))
        return await reply.wait()

    async def check_pod(self, netns: str, spec: SetupSpec) -> list[str]:
        """What is missing compared with a finished ADD (empty when everything is in place)."""
        reply = Reply[list[str]].open()
        await self._send(CheckPod(netns, spec, reply))
        return await reply.wait()

    async def teardown_pod(self, netns: str, spec: TeardownSpec, families: Sequence[int] = (4, 6)) -> Plan:
        """Apply the coordinator's DEL; returns the plan that was executed."""
        reply = Reply[Plan].open()
        await self._send(TeardownPod(netns, spec, tuple(families), reply))
        return await reply.wait()

    async def open_probe(self, netns: str, ifname: str, ethertype: int) -> socket.socket:
        """A raw packet socket on the pod's interface; the caller owns (and closes) it."""
        reply = Reply[socket.socket].open()
        await self._send(OpenProbe(netns, ifname, ethertype, reply))
        return await reply.wait()

    async def ensure_parents(self, conf: IfacerConf) -> str | None:
        """ifacer's ADD: the VLAN and bond parents exist and are up; returns the parent's name."""
        reply = Reply[str | None].open()
        await self._send(EnsureParents(conf, reply))
        return await reply.wait()

    async def _send(self, msg: NodeMsg) -> None:
        try:
            await self._mailbox.send(msg)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ActorUnavailable(actor="node") from None


@attrs.define
class NodeActor:
    """Owns the node's network changes; run it with ``nursery.start(actor.run)``."""

    mailbox: trio.MemoryReceiveChannel[NodeMsg]
    host_netns: str | None = None
    """The namespace playing the host: a name under /var/run/netns or a path; ``None`` is the agent's own."""
    netlink_timeout: float = netlink.NETLINK_TIMEOUT
    """Seconds one transaction (or one check of a ``CNI_NETNS``) may take before the request fails with CNI 11."""
    stats: NodeStatistics = attrs.field(factory=NodeStatistics)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the netlink thread, then serve the mailbox until every handle is closed or we are cancelled."""
        worker = netlink.NetlinkWorker(self.host_netns, timeout=self.netlink_timeout)
        await worker.start()
        try:
            task_status.started()
            async for msg in self.mailbox:
                self.stats.requests += 1
                try:
                    result = await self._serve(worker, msg)
                except SpiderError as exc:
                    self.stats.failures += 1
                    log.info("node request %s failed: %s", type(msg).__name__, exc)
                    msg.reply.error(exc)
                except BaseException:
                    msg.reply.error(ActorUnavailable(actor="node"))  # NB: nobody may wait forever
                    raise
                else:
                    msg.reply.resolve(outcome.Value(result))
        finally:
            worker.stop()

    async def _serve(self, worker: netlink.NetlinkWorker, msg: NodeMsg) -> Any:
        match msg:
            case InspectPod(netns=netns, ifname=ifname, set_up=set_up):
                await self._check_netns(netns)
                return await worker.call(netlink.inspect_pod, netns, ifname, set_up)
            case InspectHost(route_sources_for=sources):
                return await worker.call(netlink.inspect_host, sources)
            case SetupPod(netns=netns, spec=spec, prev_ips=prev_ips):
                self.stats.setups += 1
                await self._check_netns(netns)
                return await worker.call(_setup, netns, spec, prev_ips)
            case CheckPod(netns=netns, spec=spec):
                await self._check_netns(netns)
                return await worker.call(_check, netns, spec)
            case TeardownPod(netns=netns, spec=spec, families=families):
                self.stats.teardowns += 1
                if spec.netns_exists and netns and not await self._netns_usable(netns):
                    netns = ""  # the host side is cleaned all the same; the pod's side went or never was
                return await worker.call(_teardown, netns, spec, families)
            case OpenProbe(netns=netns, ifname=ifname, ethertype=ethertype):
                await self._check_netns(netns)
                return await worker.call(netlink.open_packet_socket, netns, ifname, ethertype)
            case EnsureParents(conf=conf):
                return await worker.call(parents.ensure_parents, conf)
        raise AssertionError(f"unhandled message {msg!r}")

    async def _check_netns(self, netns: str) -> None:
        """Raise unless ``netns`` is a network namespace; the check runs in a thread left behind if it hangs."""
        with trio.move_on_after(self.netlink_timeout) as waited:
            await trio.to_thread.run_sync(netns_file.check_netns, netns, abandon_on_cancel=True)
        if waited.cancelled_caught:
            raise netlink.NetlinkTimeout(action=f"examining CNI_NETNS {netns!r}", seconds=self.netlink_timeout)

    async def _netns_usable(self, netns: str) -> bool:
        try:
            await self._check_netns(netns)
        except (NamespaceGone, InvalidEnvironment) as exc:
            log.info("DEL goes on without the pod's namespace: %s", exc)
            return False
        return True


# The transactions below run in the worker thread; they only combine netlink steps with pure planning.


def _setup(session: netlink.Session, netns: str, spec: SetupSpec, prev_ips: Sequence[str]) -> Plan:
    plans: list[Plan] = []

    def plan_for(pod: NsView, host: NsView) -> Sequence[Any]:
        plans.append(plan_setup(spec, pod, host))
        return plans[0].ops

    netlink.run_in_pod(session, netns, plan_for, prev_ips)
    return plans[0]


def _check(session: netlink.Session, netns: str, spec: SetupSpec) -> list[str]:
    with session.entered(netns) as ipr:
        pod = netlink.observe(ipr)
    # NB: the host's neighbours only on what can be the pod's host veth: the peers of its veth0 and (overlay) of its
    # eth0 when that is a veth (a macvlan's link is its parent, whose neighbours can be many), and the veth of its name
    pod_veths = [link for link in (pod.link(POD_VETH), pod.link(DEFAULT_FIRST_NIC)) if link and link.kind == "veth"]
    peers = [link.peer_index for link in pod_veths if link.peer_index]
    named = session.host.link_lookup(ifname=host_veth_name(spec.container_id))
    host = netlink.observe(session.host, route_table=spec.conf.host_rule_table, neighbour_links=[*peers, *named])
    return check_setup(spec, pod, host)


def _teardown(session: netlink.Session, netns: str, spec: TeardownSpec, families: Sequence[int]) -> Plan:
    plans: list[Plan] = []

    def plan_for(host: NsView, pod_peers: Sequence[int]) -> Sequence[Any]:
        plans.append(plan_teardown(spec, host, pod_peers))
        return plans[0].ops

    netlink.run_teardown(session, netns if spec.netns_exists else "", plan_for, spec.conf.host_rule_table, families)
    return plans[0]


def open_node(
    host_netns: str | None = None, *, buffer: int = 64, netlink_timeout: float = netlink.NETLINK_TIMEOUT
) -> tuple[NodeHandle, NodeActor]:
    """A handle and its actor; the mailbox outlives any one ``run()``, so handles survive restarts."""
    send, recv = trio.open_memory_channel[NodeMsg](buffer)
    return NodeHandle(send), NodeActor(recv, host_netns, netlink_timeout)
