"""What one load test does and what it measured: the scenario, the address plan, the pods, the results.

Owns ``Scenario`` (N nodes, M pods, P callers, the pool size, the path, churn), the address plan (one pool for
our agents; for a ``host-local`` comparison the same range cut into one slice per node, since host-local cannot
share a range between nodes), ``PodRef`` (one incarnation of a simulated pod), ``Op`` (one timed call and its
outcome), ``Check`` (one correctness check), ``TargetRun`` (everything measured for one target) and
``Comparison`` (another IPAM plugin run through the same scenario).  Plain values: no I/O.
"""

from __future__ import annotations

import math
import random
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Literal

import attrs

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
    apps: int = 0
    """SpiderSubnet scenario (``actors.tools.loadtest.subnet``): this many Deployments share the pods evenly,
    each with an auto pool from one SpiderSubnet; 0: the single pool scenario."""
    redundant: int = 0
    """SpiderSubnet scenario: spare addresses of each application's pool (``--auto-pool-redundant-ips``)."""
    wait_interval: float = 0.1
    """SpiderSubnet scenario: seconds between an agent's looks for an application's pool
    (``SPIDERPOOL_WAIT_SUBNET_POOL_TIME_IN_SECOND``; Spiderpool's 2 s would measure the wait, not the work)."""
    wait_retries: int = 600
    """SpiderSubnet scenario: looks before an ADD gives up (``SPIDERPOOL_WAIT_SUBNET_POOL_MAX_RETRIES``)."""

    def __attrs_post_init__(self) -> None:
        if self.apps < 0 or self.redundant < 0:
            raise ValueError(f"apps and redundant must be at least 0, not {self.apps} and {self.redundant}")
        if self.apps and self.pods % self.apps:
            raise ValueError(f"{self.pods} pods cannot be shared evenly by {self.apps} applications")
        if self.apps and self.churn:
            raise ValueError("churn re-creates pods no application owns: not with applications")
        if self.wait_interval < 0 or self.wait_retries < 1:
            raise ValueError("wait_interval must be at least 0 and wait_retries at least 1")
        if self.pool_size is not None and self.pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, not {self.pool_size}")
        if self.addresses > 1 << 20:
            raise ValueError(f"pool_size {self.addresses} is more than the 1,048,576 a load test plans for")
        if self.via not in ("shim", "api"):
            raise ValueError(f"via must be 'shim' or 'api', not {self.via!r}")

    @property
    def addresses(self) -> int:
        """How many addresses the pool has (with applications: the SpiderSubnet; by default each application's
        replicas plus its spare ones)."""
        return self.pods + self.apps * self.redundant if self.pool_size is None else self.pool_size

    @property
    def replicas(self) -> int:
        """Pods per application (0 without applications)."""
        return self.pods // self.apps if self.apps else 0

    def app_of(self, index: int) -> int:
        """The application pod ``index`` belongs to (its ReplicaSet's Deployment)."""
        return index // self.replicas

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
class Check:
    """One correctness check: passed or not, and what was seen."""

    name: str
    ok: bool
    detail: str


@attrs.define
class TargetRun:
    """Everything measured for one target (our agents, or the comparison plugin)."""

    name: str
    ops: list[Op]
    phases: dict[str, tuple[float, float]]
    """Phase name -> (start, end) in seconds since the run started."""
    checks: list[Check]
    store: dict[str, dict[str, int]] = attrs.field(factory=dict)
    """Per phase: the agents' own pool actors' writes, conflicts, batches, requests (ours only)."""
    agents: list[dict[str, Any]] = attrs.field(factory=list)
    """Each agent's final statistics and memory (ours only)."""
    host: dict[str, dict[str, int]] = attrs.field(factory=dict)
    """Per phase: the pool host's (the controller's) pool actors' counters; empty when it reported none."""
    forwarded: dict[str, dict[str, int]] = attrs.field(factory=dict)
    """Per phase: requests the agents sent to the pool host, last looks it answered, calls, and requests that fell
    back to their own."""
    controller: dict[str, Any] = attrs.field(factory=dict)
    """Whether a controller ran, its Lease, whether it led, its memory (ours only)."""
    cleanup: list[str] = attrs.field(factory=list)
    """What cleaning up before and after the run removed or had to leave (ours only)."""
    cpu: dict[str, dict[str, float]] = attrs.field(factory=dict)
    """Per phase: CPU seconds of the plugins, agents, controller, load test and the rest of the machine
    (``actors.tools.loadtest.cpu``)."""

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
