"""``spider loadtest``: many pods on many simulated nodes against one store, timed and checked for correctness.

Owns the load-test scenario and its driver:
- ``Scenario``: N nodes (one real ``spider agent`` process each), M pods, P concurrent callers, the pool size
  (default exactly M addresses), the path (the installed CNI shim, or the agent API straight), churn;
- the address plan: one pool for our agents, and for a ``host-local`` comparison the same range cut into one
  slice per node (host-local cannot share a range between nodes), each node with its own data directory;
- the driver: P caller tasks take pods from one queue (pod ``i`` lives on node ``i mod N``); every call is
  timed, its outcome classified (address, or failure reason); with churn a fraction of the pods is deleted
  and re-created as new pods while the others are still being added;
- the correctness checks, computed from the replies and from the store: no address held by two pods at once,
  the store's records equal what the replies said, pool counts equal records (``actors.ipam.check``), nothing
  leaked after DEL; for host-local, no address file left in any node's data directory;
- the agents' own counters (writes, conflicts, batches) from ``GET /v1/spider/stats``, and their memory.
Reporting (table, JSON, plot) lives in ``actors.tools.loadreport``.  Load goes only to local unix sockets and
local processes; the addresses handed out are numbers in a pool, never used on any interface.
"""

from __future__ import annotations

import collections
import json
import math
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Literal, Protocol

import attrs
import h11
import trio

from actors.ipam.check import check_store
from actors.stores.port import NotFound, Store
from actors.stores.selection import StoreSettings, open_store
from actors.stores.validating import ValidatingStore
from actors.tools.launcher import install_cni
from actors.tools.manifests import apply
from spider.endpoint import KIND as ENDPOINT
from spider.endpoint import Endpoint
from spider.errors import SpiderError
from spider.pool import KIND as POOL
from spider.pool import PoolLedger

HOST_LOCAL = Path("/usr/lib/cni/host-local")
"""Debian's ``containernetworking-plugins`` host-local, the baseline of ``--compare host-local``."""
NAMESPACE = "default"
"""Namespace of the simulated pods: exists on every cluster, so a Kubernetes store needs nothing created."""
SUBNET_BASE = IPv4Address("10.233.0.0")
"""Where the pool's subnet starts.  Only numbers in a pool: nothing is ever sent to these addresses."""
NETWORK = "loadtest"
"""The CNI network name in every netconf (host-local keys its data directory by it)."""

Via = Literal["shim", "api"]
OpKind = Literal["add", "del", "churn-del", "churn-add"]


def _positive(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, not {value}")


def _fraction(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be between 0 and 1, not {value}")


@attrs.frozen
class Scenario:
    """What one load test does."""

    nodes: int = attrs.field(default=10, validator=_positive)
    """Simulated nodes: one ``spider agent`` process each."""
    pods: int = attrs.field(default=1000, validator=_positive)
    """Pods added (then deleted); pod ``i`` lives on node ``i mod nodes``."""
    callers: int = attrs.field(default=10, validator=_positive)
    """Concurrent callers (a container runtime's parallel CNI calls, over all nodes)."""
    pool_size: int | None = None
    """Addresses in the pool; ``None``: exactly one per pod (Spiderpool's own benchmark)."""
    via: Via = "shim"
    """``shim``: exec the installed CNI plugin, as a runtime does; ``api``: POST/DELETE ``/v1/ipam/ip``."""
    churn: float = attrs.field(default=0.0, validator=_fraction)
    """Fraction of the pods deleted and re-created as new pods while the others are still being added."""
    call_timeout: float = 120.0
    """Seconds one call may take before it counts as failed (``timeout``)."""

    def __attrs_post_init__(self) -> None:
        if self.pool_size is not None and self.pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, not {self.pool_size}")
        if self.addresses > 1 << 20:
            raise ValueError(f"pool_size {self.addresses} is more than the 1,048,576 a load test plans for")
        if self.via not in ("shim", "api"):
            raise ValueError(f"via must be 'shim' or 'api', not {self.via!r}")

    @property
    def addresses(self) -> int:
        """How many addresses the pool has."""
        return self.pods if self.pool_size is None else self.pool_size

    @property
    def churned(self) -> frozenset[int]:
        """The pods that are deleted and re-created: a fixed pseudo-random sample, so over nodes and time."""
        count = round(self.pods * self.churn)
        return frozenset(random.Random(self.pods).sample(range(self.pods), count))


@attrs.frozen
class Slice:
    """A contiguous run of addresses: the whole pool, or one node's share for host-local."""

    first: IPv4Address
    last: IPv4Address

    @property
    def size(self) -> int:
        """How many addresses it holds."""
        return int(self.last) - int(self.first) + 1


@attrs.frozen
class AddressPlan:
    """The subnet, its gateway, the pool's range, and each node's slice of it."""

    subnet: IPv4Network
    gateway: IPv4Address
    pool: Slice
    slices: tuple[Slice, ...]

    @classmethod
    def for_scenario(cls, scenario: Scenario, base: IPv4Address = SUBNET_BASE) -> AddressPlan:
        """The smallest subnet holding the pool plus network, gateway and broadcast; slices as even as can be."""
        size = scenario.addresses
        bits = max(2, math.ceil(math.log2(size + 3)))
        subnet = IPv4Network(f"{base}/{32 - bits}", strict=False)
        gateway = subnet.network_address + 1
        first = subnet.network_address + 2  # NB: host-local never hands out its gateway; neither do we
        pool = Slice(first, first + (size - 1))
        slices = []
        start = int(first)
        for node in range(scenario.nodes):
            share = size // scenario.nodes + (1 if node < size % scenario.nodes else 0)
            if share == 0:
                raise ValueError(f"{size} addresses cannot be cut into {scenario.nodes} non-empty slices")
            slices.append(Slice(IPv4Address(start), IPv4Address(start + share - 1)))
            start += share
        return cls(subnet, gateway, pool, tuple(slices))


@attrs.frozen
class PodRef:
    """One incarnation of a simulated pod (a churned pod comes back as a new pod: new name, UID, sandbox)."""

    index: int
    incarnation: int
    run: str

    @property
    def name(self) -> str:
        """The pod's name."""
        return f"lt-{self.index}" if self.incarnation == 0 else f"lt-{self.index}-r{self.incarnation}"

    @property
    def uid(self) -> str:
        """A UID unique to this run, pod and incarnation."""
        return f"{self.run}-{self.index:06d}-{self.incarnation}"

    @property
    def container_id(self) -> str:
        """The sandbox's container ID."""
        return f"{self.run}{self.index:08x}{self.incarnation:04x}"

    def node(self, nodes: int) -> int:
        """The node this pod lives on."""
        return self.index % nodes


@attrs.frozen
class Op:
    """One timed call and what came of it (times in seconds since the run started)."""

    kind: OpKind
    pod: PodRef
    node: int
    start: float
    end: float
    ok: bool
    address: str = ""
    reason: str = ""

    @property
    def latency(self) -> float:
        """Seconds from call to answer."""
        return self.end - self.start


@attrs.frozen
class Answer:
    """What a target said to one call."""

    ok: bool
    address: str = ""
    reason: str = ""


def _normalize(message: str) -> str:
    """A failure message without the numbers that differ per pod, so equal failures group together."""
    return re.sub(r"\d+", "N", message.strip())[:160]


def cni_answer(exit_code: int, stdout: bytes, stderr: bytes = b"") -> Answer:
    """Classify what a CNI plugin printed: the first address on success, ``CNI <code>: <msg>`` on failure."""
    try:
        doc = json.loads(stdout) if stdout.strip() else None
    except ValueError:
        doc = None
    if exit_code == 0:
        ips = doc.get("ips") if isinstance(doc, dict) else None
        if isinstance(ips, list) and ips and isinstance(ips[0], dict):
            return Answer(True, str(ips[0].get("address", "")).partition("/")[0])
        return Answer(True)
    if isinstance(doc, dict) and "code" in doc:
        return Answer(False, reason=f"CNI {doc.get('code')}: {_normalize(str(doc.get('msg', '')))}")
    detail = (stderr or stdout).decode("utf-8", "replace").strip().splitlines()
    return Answer(False, reason=f"exit {exit_code}: {_normalize(detail[-1] if detail else 'no output')}")


class Target(Protocol):
    """Something that gives simulated pods addresses: our agents, or another IPAM plugin."""

    name: str

    async def add(self, pod: PodRef, node: int) -> Answer: ...

    async def delete(self, pod: PodRef, node: int) -> Answer: ...


def pod_cni_args(pod: PodRef) -> str:
    """``CNI_ARGS`` as a kubelet passes them."""
    return (
        f"IgnoreUnknown=1;K8S_POD_NAMESPACE={NAMESPACE};K8S_POD_NAME={pod.name};"
        f"K8S_POD_INFRA_CONTAINER_ID={pod.container_id};K8S_POD_UID={pod.uid}"
    )


@attrs.define
class PluginTarget:
    """Exec a CNI IPAM plugin per call, as a container runtime does; one netconf per node."""

    name: str
    plugin: Path
    netconfs: Sequence[bytes]
    timeout: float = 120.0

    async def _call(self, command: str, pod: PodRef, node: int) -> Answer:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": pod.container_id,
            "CNI_NETNS": f"/var/run/netns/{pod.container_id}",  # never entered: IPAM plugins only pass it on
            "CNI_IFNAME": "eth0",
            "CNI_ARGS": pod_cni_args(pod),
            "CNI_PATH": str(self.plugin.parent),
        }
        with trio.move_on_after(self.timeout) as scope:
            done = await trio.run_process(
                [str(self.plugin)],
                stdin=self.netconfs[node],
                env=env,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        if scope.cancelled_caught:
            return Answer(False, reason="timeout")
        return cni_answer(done.returncode, done.stdout, done.stderr)

    async def add(self, pod: PodRef, node: int) -> Answer:
        """CNI ADD."""
        return await self._call("ADD", pod, node)

    async def delete(self, pod: PodRef, node: int) -> Answer:
        """CNI DEL."""
        return await self._call("DEL", pod, node)


class _ConnectionLost(Exception):
    """The agent closed a kept-alive connection; the request is sent again on a new one."""


@attrs.define
class AgentClient:
    """HTTP/1.1 with keep-alive over an agent's unix socket (h11): one connection, one request at a time."""

    path: Path
    _stream: trio.SocketStream | None = None
    _conn: h11.Connection | None = None

    async def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names) and body; a stale kept-alive connection is re-opened once."""
        for attempt in range(2):
            fresh = self._stream is None
            try:
                return await self._exchange(method, target, body)
            except (_ConnectionLost, trio.BrokenResourceError, h11.RemoteProtocolError):
                await self.aclose()
                if fresh or attempt:
                    raise
        raise AssertionError("unreachable")

    async def _exchange(self, method: str, target: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if self._stream is None:
            self._stream = await trio.open_unix_socket(str(self.path))
            self._conn = h11.Connection(h11.CLIENT)
        stream, conn = self._stream, self._conn
        assert conn is not None
        headers = [("Host", "spider-agent"), ("Content-Length", str(len(body)))]
        if body:
            headers.append(("Content-Type", "application/json"))
        data = conn.send(h11.Request(method=method, target=target, headers=headers))
        data += conn.send(h11.Data(data=body)) if body else b""
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)
        status, answer_headers, payload = 0, {}, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                chunk = await stream.receive_some(65536)
                if not chunk and status == 0:
                    raise _ConnectionLost
                conn.receive_data(chunk)
            elif isinstance(event, h11.Response):
                status = event.status_code
                answer_headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                payload += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise _ConnectionLost
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            await self.aclose()
        else:
            conn.start_next_cycle()
        return status, answer_headers, bytes(payload)

    async def aclose(self) -> None:
        """Close the connection (the next request opens a new one)."""
        if self._stream is not None:
            await self._stream.aclose()
        self._stream, self._conn = None, None


def api_answer(status: int, headers: Mapping[str, str], body: bytes) -> Answer:
    """Classify an agent API answer: ``IpamAddResponse`` on 200, else the JSON string and ``X-Cni-Code``."""
    if status == 200:
        doc = json.loads(body) if body else {}
        ips = doc.get("ips") if isinstance(doc, dict) else None
        return Answer(True, str(ips[0]["address"]).partition("/")[0] if ips else "")
    try:
        message = json.loads(body)
    except ValueError:
        message = body.decode("utf-8", "replace")
    code = headers.get("x-cni-code", "")
    return Answer(False, reason=f"{'CNI ' + code if code else f'HTTP {status}'}: {_normalize(str(message))}")


@attrs.define
class ApiTarget:
    """Spiderpool's agent API straight (``POST``/``DELETE /v1/ipam/ip``), a kept-alive connection per caller."""

    name: str
    sockets: Sequence[Path]
    pool: str
    timeout: float = 120.0
    _clients: dict[tuple[int, int], AgentClient] = attrs.field(factory=dict)

    def _client(self, node: int) -> AgentClient:
        key = (id(trio.lowlevel.current_task()), node)  # NB: one connection per caller task and node
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = AgentClient(self.sockets[node])
        return client

    async def _call(self, method: str, node: int, body: dict[str, Any]) -> Answer:
        client = self._client(node)
        with trio.move_on_after(self.timeout) as scope:
            try:
                status, headers, payload = await client.request(method, "/v1/ipam/ip", json.dumps(body).encode())
            except (OSError, trio.BrokenResourceError, h11.ProtocolError, _ConnectionLost) as exc:
                await client.aclose()
                return Answer(False, reason=f"connection: {_normalize(str(exc) or type(exc).__name__)}")
        if scope.cancelled_caught:
            await client.aclose()  # NB: the answer may still come; it must not be read as the next one's
            return Answer(False, reason="timeout")
        return api_answer(status, headers, payload)

    def _ids(self, pod: PodRef) -> dict[str, Any]:
        return {
            "containerID": pod.container_id,
            "ifName": "eth0",
            "podNamespace": NAMESPACE,
            "podName": pod.name,
            "podUID": pod.uid,
        }

    async def add(self, pod: PodRef, node: int) -> Answer:
        """``POST /v1/ipam/ip``."""
        body = {
            **self._ids(pod),
            "netNamespace": f"/var/run/netns/{pod.container_id}",
            "defaultIPv4IPPool": [self.pool],
        }
        return await self._call("POST", node, body)

    async def delete(self, pod: PodRef, node: int) -> Answer:
        """``DELETE /v1/ipam/ip``."""
        return await self._call("DELETE", node, self._ids(pod))

    async def aclose(self) -> None:
        """Close every kept-alive connection."""
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


Progress = Callable[[str, int], None]
"""``progress(phase, completed_calls)``: told after every call (the live progress bar)."""


@attrs.define
class Recorder:
    """Collects the ops of one target's run and tells the progress bar."""

    clock: Callable[[], float]
    progress: Progress
    ops: list[Op] = attrs.field(factory=list)

    async def call(
        self, kind: OpKind, phase: str, pod: PodRef, node: int, fn: Callable[[PodRef, int], Awaitable[Answer]]
    ) -> Op:
        """Time ``fn(pod, node)`` and record it."""
        start = self.clock()
        try:
            answer = await fn(pod, node)
        except (OSError, SpiderError) as exc:  # e.g. the plugin cannot be exec'd: a failure, not a crash
            answer = Answer(False, reason=f"{type(exc).__name__}: {_normalize(str(exc))}")
        op = Op(kind, pod, node, start, self.clock(), answer.ok, answer.address, answer.reason)
        self.ops.append(op)
        self.progress(phase, 1)
        return op


async def add_phase(scenario: Scenario, target: Target, recorder: Recorder, run: str) -> dict[int, PodRef]:
    """ADD every pod with ``callers`` concurrent callers; a churned pod, once added, is deleted and re-created
    as a new pod by the next free caller, ahead of the ADDs still waiting, so churn runs while the others
    allocate.  Returns the live pods."""
    churned = scenario.churned
    adds = collections.deque(PodRef(i, 0, run) for i in range(scenario.pods))
    ready: collections.deque[PodRef] = collections.deque()  # added churned pods, waiting for their churn
    unsettled = len(churned)  # churned pods whose churn has not been queued (or given up) yet
    changed = trio.Event()
    live: dict[int, PodRef] = {}

    def settle(pod: PodRef | None = None) -> None:
        nonlocal unsettled, changed
        unsettled -= 1
        if pod is not None:
            ready.append(pod)
        changed.set()
        changed = trio.Event()

    async def churn(pod: PodRef) -> None:
        node = pod.node(scenario.nodes)
        gone = await recorder.call("churn-del", "add", pod, node, target.delete)
        if gone.ok:
            del live[pod.index]
            again = attrs.evolve(pod, incarnation=pod.incarnation + 1)
            if (await recorder.call("churn-add", "add", again, node, target.add)).ok:
                live[pod.index] = again

    async def caller() -> None:
        while True:
            if ready:
                await churn(ready.popleft())
            elif adds:
                pod = adds.popleft()
                op = await recorder.call("add", "add", pod, pod.node(scenario.nodes), target.add)
                if op.ok:
                    live[pod.index] = pod
                if pod.index in churned:
                    settle(pod if op.ok else None)  # NB: a failed ADD leaves nothing to churn
            elif unsettled:
                await changed.wait()  # another caller's churned pod may still need us
            else:
                return

    async with trio.open_nursery() as nursery:
        for _ in range(min(scenario.callers, scenario.pods)):
            nursery.start_soon(caller)
    return live


async def del_phase(scenario: Scenario, target: Target, recorder: Recorder, live: Mapping[int, PodRef]) -> None:
    """DEL every live pod with ``callers`` concurrent callers."""
    send, receive = trio.open_memory_channel[PodRef](len(live))
    for index in sorted(live):
        send.send_nowait(live[index])
    send.close()

    async def caller() -> None:
        async for pod in receive:
            node = pod.node(scenario.nodes)
            await recorder.call("del", "del", pod, node, target.delete)

    async with trio.open_nursery() as nursery:
        for _ in range(max(1, min(scenario.callers, len(live)))):
            nursery.start_soon(caller)


# --- correctness checks ---------------------------------------------------------------------------------


@attrs.frozen
class Check:
    """One correctness check: passed or not, and what was seen."""

    name: str
    ok: bool
    detail: str


def overlapping_holders(ops: Sequence[Op]) -> list[tuple[str, PodRef, PodRef]]:
    """Addresses held by two pods at once, judged from the replies alone.

    A pod surely holds its address from the moment its ADD answered until its DEL was sent (forever if it
    never was).  Two such intervals of one address that overlap mean the address was handed out twice.
    """
    granted: dict[tuple[int, int], Op] = {}
    released: dict[tuple[int, int], float] = {}
    for op in ops:
        key = (op.pod.index, op.pod.incarnation)
        if op.kind in ("add", "churn-add") and op.ok and op.address:
            granted[key] = op
        elif op.kind in ("del", "churn-del"):
            released[key] = min(released.get(key, math.inf), op.start)
    by_address: dict[str, list[tuple[float, float, PodRef]]] = defaultdict(list)
    for key, op in granted.items():
        by_address[op.address].append((op.end, released.get(key, math.inf), op.pod))
    found = []
    for address, spans in by_address.items():
        spans.sort(key=lambda s: (s[0], s[1]))
        holder_end, holder = spans[0][1], spans[0][2]
        for start, end, pod in spans[1:]:
            if start < holder_end:
                found.append((address, holder, pod))
            if end > holder_end:
                holder_end, holder = end, pod
    return found


def check_no_double(ops: Sequence[Op]) -> Check:
    """No address is held by two pods at the same time (from the replies)."""
    twice = overlapping_holders(ops)
    granted = sum(1 for op in ops if op.kind in ("add", "churn-add") and op.ok)
    if not twice:
        return Check("no-address-twice", True, f"{granted} grants, every address held by one pod at a time")
    examples = ", ".join(f"{a} ({p.name}, {q.name})" for a, p, q in twice[:3])
    return Check("no-address-twice", False, f"{len(twice)} addresses held twice: {examples}")


def check_served(scenario: Scenario, ops: Sequence[Op]) -> Check:
    """Every ADD and DEL succeeded (only expected when the pool has an address for every pod)."""
    failed = [op for op in ops if not op.ok]
    if scenario.addresses < scenario.pods:
        return Check("every-call-served", True, f"not expected: pool of {scenario.addresses} for {scenario.pods}")
    if not failed:
        return Check("every-call-served", True, f"{len(ops)} calls, none failed")
    reasons = Counter(op.reason for op in failed).most_common(2)
    return Check("every-call-served", False, f"{len(failed)} of {len(ops)} failed: {reasons}")


async def pool_matches_replies(store: Store, pool: str, live: Mapping[int, PodRef], ops: Sequence[Op]) -> Check:
    """After the ADDs: the pool records exactly the live pods, each at the address its reply named."""
    told = {}
    for op in ops:
        if op.kind in ("add", "churn-add") and op.ok:
            told[op.pod.uid] = op.address
    ledger = PoolLedger.from_object(await store.get(POOL, pool))
    held = {rec.pod_uid: str(IPv4Address(ip)) for ip, rec in ledger.records.items()}
    wanted = {pod.uid: told[pod.uid] for pod in live.values()}
    if held == wanted:
        return Check("store-matches-replies", True, f"{len(held)} records, one per live pod, as answered")
    missing = sorted(set(wanted) - set(held))[:3]
    extra = sorted(set(held) - set(wanted))[:3]
    moved = sorted(u for u in set(held) & set(wanted) if held[u] != wanted[u])[:3]
    return Check(
        "store-matches-replies",
        False,
        f"{len(held)} records for {len(wanted)} live pods; missing {missing}, not live {extra}, moved {moved}",
    )


async def store_consistent(store: Store, pool: str, label: str) -> Check:
    """``spider check`` on our pool: counts equal records, no address twice, every record has its endpoint."""
    report = await check_store(store)
    mine = [f for f in report.findings if pool in f.pool.split(",")]
    if not mine:
        return Check(f"consistent-{label}", True, "pool counts equal records; pool and endpoints agree")
    kinds = Counter(f.problem for f in mine)
    return Check(f"consistent-{label}", False, f"{dict(kinds)}; e.g. {mine[0].ip} {mine[0].detail}")


async def nothing_leaked(store: Store, pool: str, run: str) -> Check:
    """After the DELs: no record left in the pool, count zero, no endpoint of our pods."""
    status = (await store.get(POOL, pool)).get("status") or {}
    records = len(PoolLedger.from_object(await store.get(POOL, pool)).records)
    endpoints = [
        ep.name
        for ep in map(Endpoint.from_object, (await store.list(ENDPOINT, namespace=NAMESPACE)).items)
        if ep.uid.startswith(run)
    ]
    count = status.get("allocatedIPCount", 0)
    if records == 0 and count == 0 and not endpoints:
        return Check("nothing-leaked", True, "pool empty (allocatedIPCount 0), no endpoint left")
    return Check("nothing-leaked", False, f"{records} records, allocatedIPCount {count}, endpoints {endpoints[:3]}")


def host_local_leaks(data_dirs: Sequence[Path]) -> Check:
    """After the DELs: no address file left in any node's host-local data directory."""
    left = []
    for d in data_dirs:
        net = d / NETWORK
        if net.is_dir():
            left += [p.name for p in net.iterdir() if p.name != "lock" and not p.name.startswith("last_reserved_ip")]
    if not left:
        return Check("nothing-leaked", True, f"no address file left in {len(data_dirs)} data directories")
    return Check("nothing-leaked", False, f"{len(left)} address files left, e.g. {left[:3]}")


# --- the agents ------------------------------------------------------------------------------------------


def rss_kib(pid: int) -> tuple[int, int]:
    """Resident set size now and at its peak (``VmRSS``, ``VmHWM``) in KiB; zeros when the process is gone."""
    now = peak = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    now = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1])
    except OSError:
        pass
    return now, peak


@attrs.define
class AgentFleet:
    """One ``spider agent`` process per simulated node, on one store."""

    dir: Path
    nodes: int
    store: StoreSettings
    processes: list[trio.Process] = attrs.field(factory=list)

    def socket(self, node: int) -> Path:
        """Node ``node``'s agent socket."""
        return self.dir / f"node-{node}.sock"

    def command(self, node: int) -> list[str]:
        """The agent's command line."""
        cmd = [sys.executable, "-m", "actors", "agent", "--socket", str(self.socket(node))]
        cmd += ["--node", f"node-{node}", "--store", str(self.store.store_path)]
        if self.store.kubeconfig is not None:
            cmd += ["--kubeconfig", str(self.store.kubeconfig)]
            if self.store.context:
                cmd += ["--context", self.store.context]
        return cmd

    async def start(self, patience: float = 120.0) -> None:
        """Start every agent, then wait until each answers ``/v1/ipam/healthy``."""
        env = {k: v for k, v in os.environ.items() if k != "SPIDER_KUBECONFIG"}
        for node in range(self.nodes):
            log = (self.dir / f"node-{node}.log").open("ab")
            try:
                proc = await trio.lowlevel.open_process(
                    self.command(node), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
                )
            finally:
                log.close()
            self.processes.append(proc)
        with trio.fail_after(patience):
            for node, proc in enumerate(self.processes):
                while True:
                    if proc.poll() is not None:
                        tail = (self.dir / f"node-{node}.log").read_text(errors="replace")[-1500:]
                        raise RuntimeError(f"agent of node-{node} exited with {proc.returncode}:\n{tail}")
                    try:
                        client = AgentClient(self.socket(node))
                        status, _, _ = await client.request("GET", "/v1/ipam/healthy")
                        await client.aclose()
                        if status == 200:
                            break
                    except (OSError, trio.BrokenResourceError, _ConnectionLost):
                        pass
                    await trio.sleep(0.05)

    async def statistics(self) -> list[dict[str, Any]]:
        """Every agent's ``GET /v1/spider/stats`` with its memory (KiB) added."""
        out = []
        for node, proc in enumerate(self.processes):
            client = AgentClient(self.socket(node))
            try:
                status, _, body = await client.request("GET", "/v1/spider/stats")
            finally:
                await client.aclose()
            stats = json.loads(body) if status == 200 else {"pools": {}}
            stats["rss_kib"], stats["peak_rss_kib"] = rss_kib(proc.pid)
            out.append(stats)
        return out

    async def stop(self, grace: float = 30.0) -> None:
        """SIGTERM every agent, wait for it to drain; SIGKILL what is still there after ``grace``."""
        for proc in self.processes:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(grace):
            for proc in self.processes:
                await proc.wait()
        for proc in self.processes:
            if proc.returncode is None:
                proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()


def store_totals(before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """The pool actors' counters summed over every agent and pool, as differences ``after - before``."""

    def total(snapshot: Sequence[Mapping[str, Any]]) -> Counter[str]:
        out: Counter[str] = Counter()
        for agent in snapshot:
            for stats in agent.get("pools", {}).values():
                for key in ("requests", "batches", "writes", "conflicts"):
                    out[key] += int(stats.get(key, 0))
        return out

    diff = total(after) - total(before)
    largest = max(
        (int(s.get("largest_batch", 0)) for agent in after for s in agent.get("pools", {}).values()), default=0
    )
    return {k: diff.get(k, 0) for k in ("requests", "batches", "writes", "conflicts")} | {"largest_batch": largest}


# --- one run ---------------------------------------------------------------------------------------------


@attrs.define
class TargetRun:
    """Everything measured for one target (our agents, or the comparison plugin)."""

    name: str
    ops: list[Op]
    phases: dict[str, tuple[float, float]]
    """Phase name -> (start, end) in seconds since the run started."""
    checks: list[Check]
    store: dict[str, dict[str, int]] = attrs.field(factory=dict)
    """Per phase: the pool actors' writes, conflicts, batches, requests (ours only)."""
    agents: list[dict[str, Any]] = attrs.field(factory=list)
    """Each agent's final statistics and memory (ours only)."""

    @property
    def ok(self) -> bool:
        """Every check passed."""
        return all(c.ok for c in self.checks)


@attrs.frozen
class Comparison:
    """Another IPAM plugin run through the same scenario: ``host-local`` or a plugin with its config."""

    name: str
    plugin: Path
    config: bytes | None = None
    """The netconf (``${NODE}``, ``${NODE_INDEX}``, ``${DIR}`` are replaced per node); ``None``: host-local's."""

    @classmethod
    def host_local(cls, plugin: Path = HOST_LOCAL) -> Comparison:
        """Debian's host-local, each node with its own slice and data directory."""
        return cls("host-local", plugin)

    @classmethod
    def from_files(cls, plugin: Path, config: Path) -> Comparison:
        """Any IPAM plugin and a netconf file for it."""
        return cls(plugin.name, plugin, config.read_bytes())


def host_local_netconfs(plan: AddressPlan, data_dirs: Sequence[Path]) -> list[bytes]:
    """One netconf per node: host-local on that node's slice, with that node's data directory."""
    out = []
    for piece, data_dir in zip(plan.slices, data_dirs, strict=True):
        ipam = {
            "type": "host-local",
            "ranges": [
                [
                    {
                        "subnet": str(plan.subnet),
                        "rangeStart": str(piece.first),
                        "rangeEnd": str(piece.last),
                        "gateway": str(plan.gateway),
                    }
                ]
            ],
            "dataDir": str(data_dir),
        }
        conf = {"cniVersion": "1.0.0", "name": NETWORK, "type": "macvlan", "ipam": ipam}
        out.append(json.dumps(conf).encode())
    return out


def templated_netconfs(template: bytes, nodes: int, work: Path) -> list[bytes]:
    """A user's netconf per node, with ``${NODE}``, ``${NODE_INDEX}`` and ``${DIR}`` filled in."""
    out = []
    for node in range(nodes):
        text = template.decode()
        for key, value in (("${NODE_INDEX}", str(node)), ("${NODE}", f"node-{node}"), ("${DIR}", str(work))):
            text = text.replace(key, value)
        out.append(text.encode())
    return out


def pool_object(name: str, plan: AddressPlan) -> dict[str, Any]:
    """The SpiderIPPool our agents allocate from."""
    return {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": POOL,
        "metadata": {"name": name, "labels": {"spider.io/loadtest": "true"}},
        "spec": {
            "subnet": str(plan.subnet),
            "gateway": str(plan.gateway),
            "ips": [f"{plan.pool.first}-{plan.pool.last}" if plan.pool.size > 1 else str(plan.pool.first)],
        },
    }


@contextmanager
def work_dir(keep: bool) -> Iterator[Path]:
    """A scratch directory with a short path (unix socket paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="spider-lt-", dir="/tmp"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


@asynccontextmanager
async def _opened(settings: StoreSettings) -> AsyncIterator[Store]:
    store = ValidatingStore(await open_store(settings))
    try:
        yield store
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()


@attrs.define
class LoadTest:
    """One ``spider loadtest`` run: our agents, then (optionally) a comparison, on the same scenario."""

    scenario: Scenario
    dir: Path
    kubeconfig: Path | None = None
    context: str | None = None
    progress: Callable[[str, str, int], None] = lambda target, phase, total: None
    """``progress(target, phase, total)`` announces a phase; ``advance(target, phase)`` ticks it."""
    advance: Callable[[str, str], None] = lambda target, phase: None
    run_id: str = attrs.field(factory=lambda: secrets.token_hex(4))

    @property
    def store_settings(self) -> StoreSettings:
        """The embedded store in the work directory, or the API server the kubeconfig names."""
        return StoreSettings(self.dir / "store.db", self.kubeconfig, context=self.context)

    def _recorder(self, target: str, t0: float) -> Recorder:
        def progress(phase: str, _: int) -> None:
            self.advance(target, phase)

        return Recorder(lambda: trio.current_time() - t0, progress)

    async def run_ours(self) -> TargetRun:
        """Our agents through the whole scenario, with the store checked after ADD and after DEL."""
        scenario, plan = self.scenario, AddressPlan.for_scenario(self.scenario)
        pool = f"loadtest-{self.run_id}"
        settings = self.store_settings
        async with _opened(settings) as store:
            await apply(store, pool_object(pool, plan))
            fleet = AgentFleet(self.dir, scenario.nodes, settings)
            target: Target
            api: ApiTarget | None = None
            if scenario.via == "shim":
                shim = install_cni(self.dir / "bin")[0]
                conf = [
                    json.dumps(
                        {
                            "cniVersion": "1.0.0",
                            "name": NETWORK,
                            "type": "macvlan",
                            "ipam": {
                                "type": "spiderpool",
                                "ipam_unix_socket_path": str(fleet.socket(n)),
                                "default_ipv4_ippool": [pool],
                            },
                        }
                    ).encode()
                    for n in range(scenario.nodes)
                ]
                target = PluginTarget("spiderpool", shim, conf, scenario.call_timeout)
            else:
                target = api = ApiTarget("spiderpool", [fleet.socket(n) for n in range(scenario.nodes)], pool)
                api.timeout = scenario.call_timeout
            try:
                await fleet.start()
                t0 = trio.current_time()
                recorder = self._recorder("spiderpool", t0)
                checks: list[Check] = []
                phases: dict[str, tuple[float, float]] = {}
                snapshots = [await fleet.statistics()]

                self.progress("spiderpool", "add", scenario.pods + 2 * len(scenario.churned))
                start = recorder.clock()
                live = await add_phase(scenario, target, recorder, self.run_id)
                phases["add"] = (start, recorder.clock())
                snapshots.append(await fleet.statistics())
                checks.append(await pool_matches_replies(store, pool, live, recorder.ops))
                checks.append(await store_consistent(store, pool, "after-add"))

                self.progress("spiderpool", "del", len(live))
                start = recorder.clock()
                await del_phase(scenario, target, recorder, live)
                phases["del"] = (start, recorder.clock())
                snapshots.append(await fleet.statistics())
                checks.append(await nothing_leaked(store, pool, self.run_id))
                checks.append(await store_consistent(store, pool, "after-del"))
            finally:
                if api is not None:
                    await api.aclose()
                with trio.CancelScope(shield=True):
                    await fleet.stop()
                if settings.kubernetes:
                    with trio.CancelScope(shield=True):
                        await _delete_pool(store, pool)
        checks[:0] = [check_no_double(recorder.ops), check_served(scenario, recorder.ops)]
        run = TargetRun("spiderpool", recorder.ops, phases, checks, agents=snapshots[-1])
        run.store = {"add": store_totals(snapshots[0], snapshots[1]), "del": store_totals(snapshots[1], snapshots[2])}
        return run

    async def run_comparison(self, comparison: Comparison) -> TargetRun:
        """The same scenario through another IPAM plugin, exec'd per call with a netconf per node."""
        scenario = self.scenario
        work = self.dir / comparison.name
        work.mkdir(parents=True, exist_ok=True)
        data_dirs = [work / f"node-{n}" for n in range(scenario.nodes)]
        if comparison.config is None:
            netconfs = host_local_netconfs(AddressPlan.for_scenario(scenario), data_dirs)
        else:
            netconfs = templated_netconfs(comparison.config, scenario.nodes, work)
        target = PluginTarget(comparison.name, comparison.plugin, netconfs, scenario.call_timeout)
        t0 = trio.current_time()
        recorder = self._recorder(comparison.name, t0)
        phases: dict[str, tuple[float, float]] = {}
        self.progress(comparison.name, "add", scenario.pods + 2 * len(scenario.churned))
        start = recorder.clock()
        live = await add_phase(scenario, target, recorder, self.run_id)
        phases["add"] = (start, recorder.clock())
        self.progress(comparison.name, "del", len(live))
        start = recorder.clock()
        await del_phase(scenario, target, recorder, live)
        phases["del"] = (start, recorder.clock())
        checks = [check_no_double(recorder.ops), check_served(scenario, recorder.ops)]
        if comparison.config is None:
            checks.append(host_local_leaks(data_dirs))
        return TargetRun(comparison.name, recorder.ops, phases, checks)


async def _delete_pool(store: Store, pool: str) -> None:
    """Remove the load test's pool from a Kubernetes store (an embedded one is thrown away whole)."""
    with suppress(NotFound, SpiderError):
        await store.delete(POOL, pool)


def machine() -> dict[str, Any]:
    """Where a result was measured: host, cores, memory, CPU model, load, Python."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    with suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "host": os.uname().nodename,
        "cores": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "load": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "kernel": os.uname().release,
    }


async def run_loadtest(
    scenario: Scenario,
    directory: Path,
    *,
    comparison: Comparison | None = None,
    kubeconfig: Path | None = None,
    context: str | None = None,
    announce: Callable[[str, str, int], None] = lambda target, phase, total: None,
    advance: Callable[[str, str], None] = lambda target, phase: None,
) -> list[TargetRun]:
    """Our agents through the scenario, then the comparison plugin (if any) through the same one."""
    if comparison is not None and not comparison.plugin.is_file():
        raise FileNotFoundError(f"comparison plugin {comparison.plugin} does not exist")
    test = LoadTest(scenario, directory, kubeconfig, context, announce, advance)
    runs = [await test.run_ours()]
    if comparison is not None:
        runs.append(await test.run_comparison(comparison))
    return runs
