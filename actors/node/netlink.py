"""The node's netlink edge: the only module that imports pyroute2.

Owns ``NetlinkWorker``, one dedicated OS thread that holds every netlink socket of the node and runs whole
transactions for the NodeActor: observe a namespace (links, addresses, routes, rules, neighbours), execute
a ``spider.coordinator`` plan (links, veth pairs, addresses, routes, policy rules, permanent neighbours,
sysctls through ``/proc/sys``, the nftables marking of replies), and open a packet socket inside a pod's
namespace.  ifacer's parents (``parents``) run in the same thread, through the session's socket.  No ``ip``
subprocess anywhere.

Why one thread (DESIGN §9): pyroute2 >= 0.9 runs a private asyncio loop per thread and its sockets belong to
the thread that made them; ``IPRoute(netns=...)`` forks a helper per socket (about 12 ms), while entering a
namespace from our own thread with ``setns`` costs about 2 ms.  ``trio.to_thread.run_sync`` may land on a new
thread each call, so the worker is a plain ``threading.Thread`` fed by a queue, answering through the trio
token.  ``setns`` changes the namespace of the calling thread only: the worker enters a pod's namespace for
one transaction and always returns to its home, the "host" namespace (the agent's own, or the one named by
``host_netns`` so tests and the demo never touch the machine's root namespace).

Nothing may wedge that thread: a pod's namespace is opened only once ``netns_file`` has seen that it is a
network namespace (a FIFO would block the open), and every transaction is bounded by a timeout, after which
a stuck thread is left behind and a fresh one takes over (``NetlinkWorker``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import attrs
import outcome
import trio
from pyroute2 import IPRoute
from pyroute2 import netns as pyroute2_netns
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.nftables.expressions import genex
from pyroute2.nftables.main import NFTables

from actors.node.netns_file import open_netns
from spider.coordinator.errors import InterfaceSetupFailed, NamespaceGone
from spider.coordinator.mode import POD_MARK_TABLE, POD_VETH
from spider.coordinator.observed import Address, Link, Neighbour, NsView, RouteEntry, RuleEntry, family_of
from spider.coordinator.ops import (
    MARK,
    NFT_TABLE,
    AddAddress,
    AddNeighbour,
    AddRoute,
    AddRule,
    AddVeth,
    CopyRoute,
    DelLink,
    DelNeighbours,
    DelRoutes,
    DelRule,
    DropRuleIfUnused,
    MarkReplies,
    MoveRoute,
    Op,
    SetLink,
    Sysctl,
    UnmarkReplies,
)
from spider.coordinator.plan import RULE_PRIORITY
from spider.errors import InvalidEnvironment, InvalidNetConf, TransientError

log = logging.getLogger(__name__)

T = TypeVar("T")

NETNS_DIR = "/var/run/netns"
IFF_UP = 0x1
IFF_BROADCAST = 0x2
NUD_PERMANENT = 0x80
RTN_UNICAST = 1
AF_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
_IGNORED = (errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL)
# nftables constants (linux/netfilter/nf_tables.h); pyroute2 encodes enum attributes by number.
_NFPROTO_INET = 1
_NFT_META_MARK = 3
_NFT_META_IIFNAME = 6
_NFT_CT_STATE = 0
_NFT_CT_MARK = 3
_NFT_CMP_EQ = 0
_NFT_CMP_NEQ = 1
_CT_STATE_NEW = 1 << 3
_MANGLE_PRIORITY = -150


def netns_path(name: str) -> str:
    """A namespace given by name (``ip netns`` style) or by path, as a path."""
    return name if "/" in name else f"{NETNS_DIR}/{name}"


def _fail(action: str, exc: NetlinkError | OSError) -> InterfaceSetupFailed:
    code = exc.code if isinstance(exc, NetlinkError) else exc.errno
    reason = os.strerror(code) if code else str(exc)
    return InterfaceSetupFailed(action=action, reason=reason)


@contextlib.contextmanager
def setup_errors(action: str) -> Iterator[None]:
    """What the kernel refuses in the body, as ``InterfaceSetupFailed`` of ``action`` (for code outside this
    module, which sees no pyroute2)."""
    try:
        yield
    except NetlinkError as exc:
        if exc.code == errno.EOPNOTSUPP:
            raise InterfaceSetupFailed(action=action, reason="this kernel cannot make that link type") from exc
        raise _fail(action, exc) from exc


# --- the thread ---------------------------------------------------------------------------------------------

NETLINK_TIMEOUT = 5.0
"""Seconds a transaction may run in the worker thread (a few milliseconds is usual) before its caller gets
``NetlinkTimeout`` and the thread is replaced."""


@attrs.define(auto_exc=True, kw_only=True)
class NetlinkTimeout(TransientError):
    """A netlink transaction did not finish in time (CNI 11): its thread was left to it and replaced."""

    action: str
    seconds: float

    def __str__(self) -> str:
        return f"{self.action} did not finish within {self.seconds:g} s; try again"


@attrs.define(eq=False)
class Session:
    """What a transaction gets inside the worker thread: the host's socket and a way into a pod."""

    home_fd: int
    host: IPRoute
    pod_fd: int | None = None
    """The namespace the thread is in while a transaction is ``entered`` in a pod."""

    @contextlib.contextmanager
    def entered(self, path: str) -> Iterator[IPRoute]:
        """Run the body inside the namespace at ``path`` with a socket there; always come home after.

        ``path`` is checked before it is opened (``netns_file.open_netns``): ``NamespaceGone`` when it is
        missing, ``InvalidEnvironment`` when it is anything but a network namespace, or the host's own (a pod's
        changes there would be made to the node: its ``veth0``, rules and marking).
        """
        fd = open_netns(path)
        try:
            mine, home = os.fstat(fd), os.fstat(self.home_fd)
            if (mine.st_dev, mine.st_ino) == (home.st_dev, home.st_ino):
                raise InvalidEnvironment(
                    variable="CNI_NETNS", reason=f"{path!r} is the node's own network namespace, not a pod's"
                )
            try:
                pyroute2_netns.setns(fd)
            except OSError as exc:
                raise InvalidEnvironment(
                    variable="CNI_NETNS", reason=f"{path!r} cannot be entered: {exc.strerror or exc}"
                ) from None
            self.pod_fd = fd
            try:
                ipr = IPRoute()
                try:
                    yield ipr
                finally:
                    ipr.close()
            finally:
                # NB: a thread stranded in a pod's namespace would make every later host change land there: if
                # coming home fails, that is a bug that must crash the agent, never a request error.
                self.pod_fd = None
                pyroute2_netns.setns(self.home_fd)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def at_home(self) -> Iterator[None]:
        """Step back into the host namespace for the body (for what is per thread, like ``/proc/sys/net``)."""
        if self.pod_fd is None:
            yield
            return
        pyroute2_netns.setns(self.home_fd)
        try:
            yield
        finally:
            pyroute2_netns.setns(self.pod_fd)


_STOP = object()


@attrs.define(eq=False)
class _Job:
    """One transaction on its way through a lane; ``deliver`` runs in the trio thread."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    done: trio.Event = attrs.field(factory=trio.Event)
    result: outcome.Outcome[Any] | None = None
    abandoned: bool = False
    """Its caller stopped waiting (cancelled, or timed out): nobody will take the result."""

    def deliver(self, result: outcome.Outcome[Any]) -> None:
        self.result = result
        self.done.set()
        if self.abandoned and isinstance(result, outcome.Value) and isinstance(result.value, socket.socket):
            result.value.close()  # an OpenProbe nobody waits for any more


class _Lane:
    """One worker thread, its queue and its session; retired (never fed again) when a transaction in it hangs.

    The worker feeds a lane one job at a time, so ``idle`` tells whether the thread is free.  A retired lane's
    thread finishes the transaction in hand (if it ever returns), drops the result and exits.
    """

    def __init__(self, host_netns: str | None, token: trio.lowlevel.TrioToken, name: str) -> None:
        self.host_netns = host_netns
        self.token = token
        self.jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.ready = threading.Event()
        self.startup_error: BaseException | None = None
        self.idle = trio.Event()
        self.idle.set()
        self.retired = False
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)

    def submit(self, job: _Job) -> None:
        self.idle = trio.Event()
        self.jobs.put(job)

    def retire(self) -> None:
        """Feed this lane nothing more; its thread exits once it is free."""
        if not self.retired:
            self.retired = True
            self.jobs.put(_STOP)

    def _finished(self, job: _Job, result: outcome.Outcome[Any]) -> None:
        job.deliver(result)
        self.idle.set()

    def _main(self) -> None:
        try:
            if self.host_netns is not None:
                # NB: O_NONBLOCK: a FIFO given as the host namespace must fail setns, not block here.
                fd = os.open(netns_path(self.host_netns), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                try:
                    pyroute2_netns.setns(fd)
                finally:
                    os.close(fd)
            home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            session = Session(home_fd, _host_socket())
        except BaseException as exc:  # reported to start(), which raises it in the agent
            self.startup_error = exc
            self.ready.set()
            return
        self.ready.set()
        try:
            while True:
                job = self.jobs.get()
                if job is _STOP:
                    return
                result = outcome.capture(job.fn, session, *job.args)
                with contextlib.suppress(trio.RunFinishedError):
                    self.token.run_sync_soon(self._finished, job, result)
        finally:
            session.host.close()
            os.close(home_fd)


class NetlinkWorker:
    """The thread that owns the node's netlink sockets; ``call`` runs one transaction in it.

    Transactions run one at a time, in the order they were submitted.  A caller that is cancelled while its
    transaction runs stops waiting, but the transaction itself completes: it is a whole unit, and the next one
    starts after it.

    Every transaction is bounded by ``timeout`` seconds.  A thread stuck in a syscall cannot be killed, so a
    transaction that overruns is left to its thread: the caller gets ``NetlinkTimeout`` (CNI 11), the thread
    is retired (it drops the late result and exits if the call ever returns) and the next call starts a fresh
    thread with fresh sockets.  The same happens when the transaction of a cancelled caller is still running
    ``timeout`` seconds after the next caller came.  Only then may two threads touch netlink at once: the
    stuck one, if it wakes up, finishes the one transaction it had.  ``replacements`` counts these.
    """

    def __init__(self, host_netns: str | None = None, *, timeout: float = NETLINK_TIMEOUT) -> None:
        self.host_netns = host_netns
        self.timeout = timeout
        self._lane: _Lane | None = None
        self._turn = trio.Lock()  # fair: callers take turns in the order they came
        self._lanes_opened = 0
        self._stopped = False
        self.transactions = 0
        self.replacements = 0

    async def start(self) -> None:
        """Start the thread and wait until it is in the host namespace with its socket open."""
        self._lane = await self._open_lane()

    def stop(self) -> None:
        """Let the thread finish the transaction in hand and exit; does not wait."""
        self._stopped = True
        if self._lane is not None:
            self._lane.retire()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(session, *args)`` in the worker thread and return its result (or raise its error).

        Raises ``NetlinkTimeout`` when the transaction does not finish within ``timeout`` seconds.
        """
        async with self._turn:
            lane = await self._free_lane()
            job = _Job(fn, args)
            lane.submit(job)
            self.transactions += 1
            try:
                with trio.move_on_after(self.timeout):
                    await job.done.wait()
            except BaseException:
                job.abandoned = True
                raise
            if job.result is None:
                job.abandoned = True
                action = f"the netlink transaction {_describe_fn(fn)}"
                self._retire(lane, action)
                raise NetlinkTimeout(action=action, seconds=self.timeout)
            return job.result.unwrap()  # type: ignore[no-any-return]

    async def _free_lane(self) -> _Lane:
        """The lane to feed: the current one once it is free, or a fresh one when it is retired or stays busy."""
        lane = self._lane
        if lane is None or self._stopped:
            raise RuntimeError("the netlink worker is not running")
        if not lane.retired and not lane.idle.is_set():
            # the transaction of a caller who stopped waiting still runs: it finishes first, within the bound
            with trio.move_on_after(self.timeout):
                await lane.idle.wait()
            if not lane.idle.is_set():
                self._retire(lane, "a transaction whose caller stopped waiting")
        if lane.retired:
            self._lane = await self._open_lane()
            self.replacements += 1
            return self._lane
        if not lane.thread.is_alive():
            raise RuntimeError("the netlink worker is not running")
        return lane

    def _retire(self, lane: _Lane, what: str) -> None:
        log.warning(
            "netlink thread %s: %s did not finish within %g s; leaving the thread to it and starting a fresh one",
            lane.thread.name,
            what,
            self.timeout,
        )
        lane.retire()

    async def _open_lane(self) -> _Lane:
        self._lanes_opened += 1
        name = "netlink" if self._lanes_opened == 1 else f"netlink-{self._lanes_opened}"
        lane = _Lane(self.host_netns, trio.lowlevel.current_trio_token(), name)
        lane.thread.start()
        try:
            with trio.move_on_after(self.timeout):
                await trio.to_thread.run_sync(lane.ready.wait, self.timeout, abandon_on_cancel=True)
        except BaseException:
            lane.retire()
            raise
        if not lane.ready.is_set():
            lane.retire()
            raise NetlinkTimeout(action=f"starting the netlink thread {name}", seconds=self.timeout)
        if lane.startup_error is not None:
            raise lane.startup_error
        return lane


def _describe_fn(fn: Callable[..., Any]) -> str:
    return repr(getattr(fn, "__name__", fn))


# --- observing ----------------------------------------------------------------------------------------------


def _kind(msg: Any) -> str:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    return str(kind or "")


def list_links(ipr: IPRoute) -> tuple[Link, ...]:
    out = []
    for msg in ipr.link("dump"):
        out.append(
            Link(
                index=msg["index"],
                name=msg.get_attr("IFLA_IFNAME"),
                mac=msg.get_attr("IFLA_ADDRESS") or "",
                up=bool(msg["flags"] & IFF_UP),
                kind=_kind(msg),
                peer_index=msg.get_attr("IFLA_LINK"),
                broadcast=bool(msg["flags"] & IFF_BROADCAST),
                mtu=msg.get_attr("IFLA_MTU") or 0,
                alias=msg.get_attr("IFLA_IFALIAS") or "",
                master=msg.get_attr("IFLA_MASTER") or None,
            )
        )
    return tuple(out)


def _host_socket() -> IPRoute:
    """The host's socket, checking dump requests strictly where the kernel can (Linux 4.20 and later): then the
    kernel filters a dump by table, so a node with tens of thousands of routes costs a DEL nothing."""
    try:
        return IPRoute(strict_check=True)
    except OSError as exc:  # NB: an older kernel lacks NETLINK_GET_STRICT_CHK; dumps are filtered here instead
        log.info("netlink strict checking is unavailable (%s): route dumps are filtered in the agent", exc)
        return IPRoute()


def _table_of(msg: Any) -> int:
    return int(msg.get_attr("RTA_TABLE") or msg["table"])


def route_messages(ipr: IPRoute, family: int, table: int | None = None) -> list[Any]:
    """The kernel's routes of one family, of ``table`` only when given: a strictly checking socket has the kernel
    filter (each route sent costs about 70 us to parse here); to any other the kernel sends all, filtered here."""
    if table is None:
        return list(ipr.route("dump", family=family))
    # NB: a dump_filter of our own keeps pyroute2 from turning the table into a filter of its own, client side
    sent = ipr.route("dump", family=family, table=table, dump_filter=_every)
    return [msg for msg in sent if _table_of(msg) == table]


def neighbour_messages(ipr: IPRoute, links: Sequence[int] | None = None) -> list[Any]:
    """The kernel's neighbour entries, on the links of ``links`` (indexes) only when given: each link is asked for
    on its own (``NDA_IFINDEX``: a node on a large L2 segment holds tens of thousands of entries)."""
    if links is None:
        return list(ipr.neigh("dump"))
    found = []
    for index in dict.fromkeys(links):
        sent = ipr.neigh("dump", NDA_IFINDEX=index, dump_filter=_every)
        found += [msg for msg in sent if msg["ifindex"] == index]
    return found


def _every(msg: Any) -> bool:
    return True


def _cidr(addr: str | None, length: int) -> str | None:
    return None if addr is None else f"{addr}/{length}"


def observe(
    ipr: IPRoute,
    route_sources_for: Sequence[str] = (),
    *,
    routes: bool = True,
    rules: bool = True,
    neighbours: bool = True,
    route_table: int | None = None,
    neighbour_links: Sequence[int] | None = None,
) -> NsView:
    """What the coordinator looks at in one namespace (the one ``ipr`` was opened in).

    Links and addresses always; routes (of ``route_table`` only, when given), rules and neighbours (of the
    links of ``neighbour_links`` only, when given) when asked: a node's tables can be large, and most
    transactions need none of them.
    """
    links = list_links(ipr)
    names = {link.index: link.name for link in links}
    addresses = tuple(
        Address(
            link=names.get(msg["index"], str(msg["index"])),
            ip=msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS"),
            prefix=msg["prefixlen"],
            scope=msg["scope"],
        )
        for msg in ipr.addr("dump")
    )
    found_routes = []
    for family in (socket.AF_INET, socket.AF_INET6) if routes else ():
        for msg in route_messages(ipr, family, route_table):
            if msg["type"] != RTN_UNICAST:
                continue
            multipath = msg.get_attr("RTA_MULTIPATH") or []
            found_routes.append(
                RouteEntry(
                    family=4 if family == socket.AF_INET else 6,
                    table=_table_of(msg),
                    dst=_cidr(msg.get_attr("RTA_DST"), msg["dst_len"]),
                    oif=names.get(msg.get_attr("RTA_OIF")),
                    gateway=msg.get_attr("RTA_GATEWAY"),
                    scope=msg["scope"],
                    src=msg.get_attr("RTA_PREFSRC"),
                    proto=msg["proto"],
                    priority=msg.get_attr("RTA_PRIORITY"),
                    multipath_oifs=tuple(names.get(hop["oif"], "") for hop in multipath),
                    multipath_gateways=tuple(hop.get_attr("RTA_GATEWAY") for hop in multipath),
                )
            )
    found_rules = []
    for family in (socket.AF_INET, socket.AF_INET6) if rules else ():
        for msg in ipr.rule("dump", family=family):
            found_rules.append(
                RuleEntry(
                    family=4 if family == socket.AF_INET else 6,
                    table=msg.get_attr("FRA_TABLE") or msg["table"],
                    priority=msg.get_attr("FRA_PRIORITY"),
                    src=_cidr(msg.get_attr("FRA_SRC"), msg["src_len"]),
                    dst=_cidr(msg.get_attr("FRA_DST"), msg["dst_len"]),
                    fwmark=msg.get_attr("FRA_FWMARK"),
                )
            )
    found_neighbours = tuple(
        Neighbour(
            link=names.get(msg["ifindex"], str(msg["ifindex"])),
            ip=msg.get_attr("NDA_DST"),
            mac=msg.get_attr("NDA_LLADDR"),
            permanent=bool(msg["state"] & NUD_PERMANENT),
        )
        for msg in (neighbour_messages(ipr, neighbour_links) if neighbours else ())
        if msg.get_attr("NDA_DST")
    )
    sources = {}
    for ip in route_sources_for:
        with contextlib.suppress(NetlinkError, OSError):  # NB: OSError: text inet_pton refuses
            found = ipr.route("get", dst=ip)
            if found and found[0].get_attr("RTA_PREFSRC"):
                sources[ip] = found[0].get_attr("RTA_PREFSRC")
    return NsView(links, addresses, tuple(found_routes), tuple(found_rules), found_neighbours, sources)


# --- executing ----------------------------------------------------------------------------------------------


def index_of(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise InterfaceSetupFailed(action=f"looking up interface {name!r}", reason="no such interface")
    return int(found[0])


def _route_spec(route: RouteEntry, table: int, names: Mapping[str, int]) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "family": AF_FAMILY[route.family],
        "dst": route.destination,
        "table": table,
        "scope": route.scope,
        "proto": route.proto,
    }
    if route.oif:
        spec["oif"] = names[route.oif]
    if route.gateway:
        spec["gateway"] = route.gateway
    if route.src:
        spec["prefsrc"] = route.src
    if route.priority is not None:
        spec["priority"] = route.priority
    if route.multipath_oifs:
        spec["multipath"] = [
            {"oif": names[oif], **({"gateway": gw} if gw else {})}
            for oif, gw in zip(route.multipath_oifs, route.multipath_gateways, strict=False)
        ]
    return spec


def _rule_spec(rule: RuleEntry) -> dict[str, Any]:
    spec: dict[str, Any] = {"family": AF_FAMILY[rule.family], "table": rule.table}
    if rule.priority is not None:
        spec["priority"] = rule.priority
    if rule.fwmark:
        spec["fwmark"] = rule.fwmark
    for key, cidr in (("src", rule.src), ("dst", rule.dst)):
        if cidr:
            ip, _, length = cidr.partition("/")
            spec[key] = ip
            spec[f"{key}_len"] = int(length)
    return spec


def _existing_rules(ipr: IPRoute, family: int) -> list[RuleEntry]:
    return [
        RuleEntry(
            family=family,
            table=msg.get_attr("FRA_TABLE") or msg["table"],
            priority=msg.get_attr("FRA_PRIORITY"),
            src=_cidr(msg.get_attr("FRA_SRC"), msg["src_len"]),
            dst=_cidr(msg.get_attr("FRA_DST"), msg["dst_len"]),
            fwmark=msg.get_attr("FRA_FWMARK"),
        )
        for msg in ipr.rule("dump", family=AF_FAMILY[family])
    ]


def write_sysctl(key: str, value: int) -> None:
    """Write one sysctl of the namespace the calling thread is in (``/proc/sys/net`` is per thread's netns)."""
    if ".." in key.split("/"):
        raise ValueError(f"bad sysctl key {key!r}")
    with open(f"/proc/sys/{key}", "w") as f:
        f.write(f"{value}\n")


def _nft_cmp(op: int, data: bytes) -> list[dict[str, Any]]:
    return [genex("cmp", {"sreg": 1, "op": op, "data": {"attrs": [("NFTA_DATA_VALUE", data)]}})]


def mark_rules(dev: str, mark: int) -> list[list[list[dict[str, Any]]]]:
    """The three nftables rules of Spiderpool's iptables mangle rules (reference §5.3 step 10), as expressions:

    - prerouting: ``iifname <dev> ct state new meta mark set <mark>``;
    - prerouting: ``meta mark <mark> ct mark set meta mark`` (CONNMARK --save-mark);
    - output (a ``route`` chain, so the kernel re-routes marked replies): ``meta mark set ct mark``.
    """
    u32 = struct.Struct("=I").pack  # marks and ct state are host byte order registers
    name = dev.encode().ljust(16, b"\0")
    return [
        [
            [genex("meta", {"dreg": 1, "key": _NFT_META_IIFNAME})],
            _nft_cmp(_NFT_CMP_EQ, name),
            [genex("ct", {"dreg": 1, "key": _NFT_CT_STATE})],
            [
                genex(
                    "bitwise",
                    {
                        "sreg": 1,
                        "dreg": 1,
                        "len": 4,
                        "mask": {"attrs": [("NFTA_DATA_VALUE", u32(_CT_STATE_NEW))]},
                        "xor": {"attrs": [("NFTA_DATA_VALUE", u32(0))]},
                    },
                )
            ],
            _nft_cmp(_NFT_CMP_NEQ, u32(0)),
            [genex("immediate", {"dreg": 1, "data": {"attrs": [("NFTA_DATA_VALUE", u32(mark))]}})],
            [genex("meta", {"key": _NFT_META_MARK, "sreg": 1})],
        ],
        [
            [genex("meta", {"dreg": 1, "key": _NFT_META_MARK})],
            _nft_cmp(_NFT_CMP_EQ, u32(mark)),
            [genex("ct", {"key": _NFT_CT_MARK, "sreg": 1})],
        ],
        [
            [genex("ct", {"dreg": 1, "key": _NFT_CT_MARK})],
            [genex("meta", {"key": _NFT_META_MARK, "sreg": 1})],
        ],
    ]


def _nft_tables(nft: NFTables) -> set[str]:
    return {msg.get_attr("NFTA_TABLE_NAME") for msg in nft.get_tables() if msg["nfgen_family"] == _NFPROTO_INET}


def set_mark_rules(dev: str, mark: int) -> None:
    """(Re)create the pod's marking table in the calling thread's namespace, atomically replacing an old one."""
    nft = NFTables(nfgen_family=_NFPROTO_INET)
    try:
        if NFT_TABLE in _nft_tables(nft):
            nft.table("del", name=NFT_TABLE)
        nft.table("add", name=NFT_TABLE)
        nft.chain(
            "add", table=NFT_TABLE, name="prerouting", hook="prerouting", type="filter", priority=_MANGLE_PRIORITY
        )
        nft.chain("add", table=NFT_TABLE, name="output", hook="output", type="route", priority=_MANGLE_PRIORITY)
        pre, save, restore = mark_rules(dev, mark)
        nft.rule("add", table=NFT_TABLE, chain="prerouting", expressions=pre)
        nft.rule("add", table=NFT_TABLE, chain="prerouting", expressions=save)
        nft.rule("add", table=NFT_TABLE, chain="output", expressions=restore)
    finally:
        nft.close()


def drop_mark_rules() -> None:
    """Remove the pod's marking table from the calling thread's namespace, if there is one."""
    nft = NFTables(nfgen_family=_NFPROTO_INET)
    try:
        if NFT_TABLE in _nft_tables(nft):
            nft.table("del", name=NFT_TABLE)
    finally:
        nft.close()


def execute(session: Session, ops: Sequence[Op], pod: IPRoute | None) -> None:
    """Run a plan's operations in order; the first refused change stops it with ``InterfaceSetupFailed``.

    ``pod`` is the socket of the pod's namespace (the thread is inside it while this runs), or ``None`` when
    the plan touches the host only.
    """
    for op in ops:
        ipr = session.host if op.side == "host" else pod
        if ipr is None:
            raise AssertionError(f"{op!r} needs the pod's namespace")
        try:
            _execute_one(session, ipr, op)
        except NetlinkError as exc:
            raise _fail(_describe(op), exc) from exc
        except OSError as exc:
            raise _fail(_describe(op), exc) from exc
        except struct.error as exc:  # NB: a value its netlink field cannot carry: the configuration's fault
            raise InvalidNetConf(reason=f"{_describe(op)}: a value does not fit its netlink field ({exc})") from exc


def _describe(op: Op) -> str:
    name = type(op).__name__
    fields = ", ".join(f"{k}={v!r}" for k, v in attrs.asdict(op, recurse=False).items() if k != "side")
    return f"{name}({fields}) in the {op.side} namespace"


def _execute_one(session: Session, ipr: IPRoute, op: Op) -> None:
    match op:
        case AddVeth():
            if session.host.link_lookup(ifname=op.host_name):
                # NB: never take it over: it is the veth of another live pod whose container ID starts with the
                # same 11 characters (a veth of a dead sandbox went with its namespace).
                raise InterfaceSetupFailed(
                    action=f"creating the veth pair {op.pod_name}/{op.host_name}",
                    reason=f"host interface {op.host_name!r} already exists",
                )
            ipr.link(
                "add",
                ifname=op.pod_name,
                kind="veth",
                address=op.pod_mac,
                mtu=op.mtu,
                peer={"ifname": op.host_name, "net_ns_fd": session.home_fd, "address": op.host_mac, "mtu": op.mtu},
            )
            ipr.link("set", index=index_of(ipr, op.pod_name), state="up")
            session.host.link("set", index=index_of(session.host, op.host_name), state="up", ifalias=op.host_alias)
        case SetLink():
            index = index_of(ipr, op.name)
            if op.mac is not None:
                ipr.link("set", index=index, address=op.mac)
            if op.txqlen is not None:
                ipr.link("set", index=index, txqlen=op.txqlen)
            if op.up is not None:
                ipr.link("set", index=index, state="up" if op.up else "down")
        case DelLink():
            found = ipr.link_lookup(ifname=op.name)
            if found:
                _ignore_missing(ipr.link, "del", index=found[0])
        case AddAddress():
            ip, _, length = op.address.partition("/")
            try:
                ipr.addr("add", index=index_of(ipr, op.link), address=ip, prefixlen=int(length))
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
        case AddRoute():
            spec: dict[str, Any] = {
                "family": AF_FAMILY[family_of(op.dst)],
                "dst": op.dst,
                "oif": index_of(ipr, op.dev),
                "table": op.table,
                "scope": op.scope,
            }
            if op.gateway:
                spec["gateway"] = op.gateway
            if op.src:
                spec["prefsrc"] = op.src
            ipr.route("replace", **spec)
        case DelRoutes():
            oif = ipr.link_lookup(ifname=op.dev) if op.dev else None
            ip, _, length = op.dst.partition("/")
            for msg in route_messages(ipr, AF_FAMILY[family_of(op.dst)], op.table):
                if msg["dst_len"] != int(length):
                    continue
                if msg.get_attr("RTA_DST") != ip or (oif is not None and msg.get_attr("RTA_OIF") not in oif):
                    continue
                # NB: the kernel matches scope and protocol too: pyroute2's defaults would miss a link route.
                spec = {"family": msg["family"], "dst": op.dst, "table": op.table, "scope": msg["scope"]}
                spec |= {"proto": msg["proto"], "oif": msg.get_attr("RTA_OIF")}
                if msg.get_attr("RTA_GATEWAY"):
                    spec["gateway"] = msg.get_attr("RTA_GATEWAY")
                _ignore_missing(ipr.route, "del", **spec)
        case MoveRoute() | CopyRoute():
            names = {link.name: link.index for link in list_links(ipr)}
            if isinstance(op, MoveRoute):
                _ignore_missing(ipr.route, "del", **_route_spec(op.route, op.route.table, names))
            ipr.route("replace", **_route_spec(op.route, op.table, names))
        case AddRule():
            if not any(op.rule.same(r) for r in _existing_rules(ipr, op.rule.family)):
                ipr.rule("add", **_rule_spec(op.rule))
        case DelRule():
            for existing in _existing_rules(ipr, op.rule.family):
                if op.rule.same(existing):
                    _ignore_missing(ipr.rule, "del", **_rule_spec(existing))
        case DropRuleIfUnused():
            used = bool(route_messages(ipr, AF_FAMILY[op.rule.family], op.rule.table))
            if not used:
                for existing in _existing_rules(ipr, op.rule.family):
                    if op.rule.same(existing) and existing.src is None and existing.dst is None:
                        _ignore_missing(ipr.rule, "del", **_rule_spec(existing))
        case AddNeighbour():
            ipr.neigh(
                "replace",
                family=AF_FAMILY[family_of(op.ip)],
                dst=op.ip,
                lladdr=op.mac,
                ifindex=index_of(ipr, op.dev),
                state=NUD_PERMANENT,
            )
        case DelNeighbours():
            # NB: one delete per device rather than a dump of the neighbour table: a node on a large L2 segment
            # holds tens of thousands of entries (about 120 us each to parse here), and far fewer devices
            family = AF_FAMILY[family_of(op.ip)]
            for link in list_links(ipr):
                if op.dev is not None and link.name != op.dev:
                    continue
                _ignore_missing(ipr.neigh, "del", family=family, dst=op.ip, ifindex=link.index)
        case Sysctl() if op.side == "host":
            with session.at_home():
                write_sysctl(op.key, op.value)
        case Sysctl():
            write_sysctl(op.key, op.value)
        case MarkReplies():
            set_mark_rules(op.dev, op.mark)
        case UnmarkReplies():
            drop_mark_rules()
        case _:
            raise AssertionError(f"unhandled operation {op!r}")


def _ignore_missing(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except NetlinkError as exc:
        if exc.code not in _IGNORED:
            raise


# --- transactions (run in the worker thread) ----------------------------------------------------------------


def inspect_pod(session: Session, netns: str, ifname: str, set_up: bool) -> NsView:
    """Bring ``ifname`` up (when asked) and observe the pod's links and addresses."""
    with session.entered(netns) as ipr:
        if set_up:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                raise InvalidNetConf(
                    reason=f"interface {ifname!r} does not exist in the pod: is the main CNI before me?"
                )
            try:
                ipr.link("set", index=found[0], state="up")
            except NetlinkError as exc:
                raise _fail(f"setting {ifname!r} up", exc) from exc
        return observe(ipr, routes=False, rules=False, neighbours=False)


def inspect_host(session: Session, route_sources_for: Sequence[str] = ()) -> NsView:
    """The host namespace's links and addresses (a node's routes, rules and neighbours can be many)."""
    return observe(session.host, route_sources_for, routes=False, rules=False, neighbours=False)


def run_in_pod(
    session: Session, netns: str, plan_for: Callable[[NsView, NsView], Sequence[Op]], pod_ips_for_host: Sequence[str]
) -> tuple[NsView, NsView, Sequence[Op]]:
    """Observe the pod and the host, plan with ``plan_for(pod, host)`` and execute: one transaction.

    ``pod_ips_for_host`` are the addresses whose route source the host is asked for (``ip route get``); the
    pod's own addresses are added to them.
    """
    with session.entered(netns) as ipr:
        pod = observe(ipr, rules=False, neighbours=False)
        own = [a.ip for a in pod.addresses if a.link != "lo" and a.scope == 0]
        sources = list(dict.fromkeys([*pod_ips_for_host, *own]))
        host = observe(session.host, sources, routes=False, rules=False, neighbours=False)
        ops = plan_for(pod, host)
        execute(session, ops, ipr)
        return pod, host, ops


def run_teardown(
    session: Session,
    netns: str,
    plan_for: Callable[[NsView, Sequence[int]], Sequence[Op]],
    route_table: int,
    families: Sequence[int],
) -> None:
    """DEL's transaction, entering the pod's namespace once (when ``netns`` is given and still one): the host side
    of the pod's veths (``plan_for``'s second argument, host indexes), the host's changes, then the pod-side
    marking (nftables table, fwmark rules) once ``veth0`` is gone.  Without the namespace, the host's alone."""

    def on_host(peers: Sequence[int]) -> None:  # NB: the host's socket stays in the host, wherever the thread is
        host = observe(session.host, rules=False, neighbours=False, route_table=route_table)
        execute(session, plan_for(host, peers), None)

    if netns:
        try:
            with session.entered(netns) as ipr:
                pod = observe(ipr, routes=False, rules=False, neighbours=False)
                on_host([link.peer_index for link in pod.links if link.kind == "veth" and link.peer_index])
                if not ipr.link_lookup(ifname=POD_VETH):
                    drop_mark_rules()
                    marks = [r for f in families for r in _existing_rules(ipr, f) if r.fwmark == MARK]
                    for rule in marks:
                        if (rule.table, rule.priority) == (POD_MARK_TABLE, RULE_PRIORITY):
                            _ignore_missing(ipr.rule, "del", **_rule_spec(rule))
                return
        except (NamespaceGone, InvalidEnvironment):  # raised on entering only: the namespace went meanwhile
            pass
    on_host(())


def open_packet_socket(session: Session, netns: str, ifname: str, ethertype: int) -> socket.socket:
    """A raw packet socket bound to ``ifname`` inside the pod's namespace (it stays bound to that namespace)."""
    with session.entered(netns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype))
        try:
            sock.bind((ifname, ethertype))
        except OSError as exc:
            sock.close()
            raise _fail(f"opening a packet socket on {ifname!r}", exc) from exc
        return sock
