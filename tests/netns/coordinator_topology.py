"""A small underlay network in namespaces for the coordinator tests, and the runtime's side of a conflist.

``CoordinatorLab`` builds:

- a "host" namespace (the node): ``up0`` with the host's address ``10.77.0.2/24`` (and ``fd77::2/64``) is the
  macvlan parent; its peer ``sw-up0`` is a port of the bridge ``br0``, the underlay switch; ``10.96.0.10`` on
  the host's loopback plays a Kubernetes service the pod reaches through the host;
- a "router" namespace on the switch (``gw0``: ``10.77.0.1/24``, ``fd77::1/64``), the pods' gateway, which a
  test can also give a pod's address to make a conflict;
- pods, one namespace each.

``chain`` runs Debian's macvlan (in the host namespace, where its parent lives) and then our coordinator with
macvlan's result as ``prevResult``, as libcni runs a conflist; DEL runs them in reverse order.  The agent runs
in the test's trio run with ``host_netns`` set to the lab's host, so nothing touches the machine's own
namespace.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs

from actors.agent import AgentSettings, open_agent
from actors.controller.coordinator_sync import CoordinatorSyncSettings, sync_once
from actors.servers.agent_api import AgentApi
from actors.stores.sqlite import SqliteStore
from actors.tools.launcher import install_cni
from actors.tools.manifests import apply
from tests.netns.reachability import require_ping
from tests.support import PLUGIN_DIR, pod_args, run_plugin, short_tmp

HOST_V4 = "10.77.0.2"
HOST_V6 = "fd77::2"
GATEWAY_V4 = "10.77.0.1"
GATEWAY_V6 = "fd77::1"
SERVICE = "10.96.0.10"
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"


def kubeadm_config(pod: str = POD_CIDR, service: str = SERVICE_CIDR) -> dict[str, Any]:
    """``kube-system/kubeadm-config`` as kubeadm writes it: where the controller reads the cluster's CIDRs."""
    text = f"kind: ClusterConfiguration\nnetworking:\n  podSubnet: {pod}\n  serviceSubnet: {service}\n"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
        "data": {"ClusterConfiguration": text},
    }


def why_not() -> str | None:
    """Why these tests cannot run here, or ``None``."""
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) to make network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 ('ip') to build the test network"
    if not (PLUGIN_DIR / "macvlan").exists():
        return "needs Debian's containernetworking-plugins (/usr/lib/cni/macvlan)"
    probe = f"spcprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, check=False)
    if made.returncode != 0:
        return f"cannot make network namespaces here: {made.stderr.decode().strip()}"
    try:
        bridge = subprocess.run(
            ["ip", "-n", probe, "link", "add", "br0", "type", "bridge"], capture_output=True, check=False
        )
        if bridge.returncode != 0:
            return f"this kernel cannot make a bridge: {bridge.stderr.decode().strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], check=False)
    return None


def container_id(pod_ns: str) -> str:
    """A runtime-like container ID (64 hex digits): the host veth takes its first 11 characters."""
    return hashlib.sha256(pod_ns.encode()).hexdigest()


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    """Run ``ip`` (the tests' own tool for building and inspecting; product code never runs it)."""
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    return subprocess.run(argv, capture_output=True, check=check, text=True).stdout


def in_ns(netns: str, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    """Run a command inside a namespace."""
    return subprocess.run(
        ["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, check=False, timeout=timeout
    )


def ping(netns: str, target: str, *, source: str | None = None) -> bool:
    """One ping from a namespace, two seconds to answer; skips the test when ``ping`` is missing (a test that pings
    should also carry ``@needs_ping``, which skips it before it builds anything)."""
    require_ping()
    argv = ["ping", "-c", "1", "-W", "2", *(["-I", source] if source else []), target]
    return in_ns(netns, *argv).returncode == 0


@attrs.define
class CoordinatorLab:
    """The namespaces of one test, an agent serving them and the installed plugins."""

    tag: str
    dir: Path
    store: SqliteStore
    api: AgentApi
    socket: Path
    bin_dir: Path
    pods: list[str] = attrs.field(factory=list)

    @property
    def host(self) -> str:
        return f"sphost-{self.tag}"

    @property
    def router(self) -> str:
        return f"sprtr-{self.tag}"

    def pod(self) -> str:
        """A new, empty pod namespace."""
        name = f"sppod-{self.tag}-{len(self.pods)}"
        ip("netns", "add", name)
        ip("link", "set", "lo", "up", netns=name)
        self.pods.append(name)
        return name

    def overlay_eth0(self, pod_ns: str, address: str = "10.244.1.5") -> str:
        """Give the pod an ``eth0`` as Calico does (a veth to the host, /32, default via 169.254.1.1 answered by
        proxy ARP on the host side); returns the host side's name."""
        host_side = f"cali{pod_ns[-8:]}"
        ip("link", "add", host_side, "type", "veth", "peer", "name", "eth0", "netns", pod_ns, netns=self.host)
        ip("link", "set", host_side, "up", netns=self.host)
        in_ns(self.host, "sysctl", "-qw", f"net.ipv4.conf.{host_side}.proxy_arp=1")
        ip("route", "add", f"{address}/32", "dev", host_side, netns=self.host)
        ip("addr", "add", f"{address}/32", "dev", "eth0", netns=pod_ns)
        ip("link", "set", "eth0", "up", netns=pod_ns)
        ip("route", "add", "169.254.1.1", "dev", "eth0", "scope", "link", netns=pod_ns)
        ip("route", "add", "default", "via", "169.254.1.1", "dev", "eth0", netns=pod_ns)
        return host_side

    def add_host_routes(self, count: int) -> None:
        """``count`` /32 routes in the host's main table through the router, as a node that learns its fabric's
        routes by BGP has (one ``ip -batch``)."""
        with tempfile.NamedTemporaryFile("w", suffix=".batch") as batch:
            for i in range(count):
                batch.write(f"route add 172.{16 + i // 65536}.{i // 256 % 256}.{i % 256}/32 via {GATEWAY_V4} dev up0\n")
            batch.flush()
            ip("-batch", batch.name, netns=self.host)

    def add_host_neighbours(self, count: int) -> None:
        """``count`` permanent neighbour entries on the host's underlay interface, as a node on a large L2 segment
        has (one ``ip -batch``); their addresses are in 10.78.0.0/16, outside the lab's."""
        with tempfile.NamedTemporaryFile("w", suffix=".batch") as batch:
            for i in range(count):
                mac = f"02:00:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"
                batch.write(f"neigh add 10.78.{i // 256 % 256}.{i % 256} lladdr {mac} dev up0 nud permanent\n")
            batch.flush()
            ip("-batch", batch.name, netns=self.host)

    async def apply(self, *objs: dict[str, Any]) -> None:
        for obj in objs:
            await apply(self.store, obj)

    async def coordinator_synced(self, spec: dict[str, Any] | None = None) -> None:
        """A SpiderCoordinator named ``default`` and the kubeadm-config a cluster offers (service CIDR
        ``SERVICE_CIDR``), its status written by the controller's sync: Synced."""
        await apply(
            self.store,
            {
                "apiVersion": "spiderpool.spidernet.io/v2beta1",
                "kind": "SpiderCoordinator",
                "metadata": {"name": "default"},
                "spec": {"podCIDRType": "none", **(spec or {})},
            },
        )
        await apply(self.store, kubeadm_config(service=SERVICE_CIDR))
        await sync_once(self.store, CoordinatorSyncSettings(cni_config_dir=None))
        status = (await self.store.get("SpiderCoordinator", "default")).get("status") or {}
        if status.get("phase") != "Synced":
            raise AssertionError(f"the controller's sync left the SpiderCoordinator {status}")

    def macvlan_conf(self, version: str = "1.0.0", **ipam: Any) -> dict[str, Any]:
        return {
            "cniVersion": version,
            "name": "underlay",
            "type": "macvlan",
            "master": "up0",
            "mode": "bridge",
            "ipam": {"type": "spiderpool", "ipam_unix_socket_path": str(self.socket), **ipam},
        }

    def coordinator_conf(self, version: str = "1.0.0", **fields: Any) -> dict[str, Any]:
        return {
            "cniVersion": version,
            "name": "underlay",
            "type": "coordinator",
            "ipam_unix_socket_path": str(self.socket),
            **fields,
        }

    def env(self, command: str, pod_ns: str, ifname: str = "eth0", *, netns: str | None = None) -> dict[str, str]:
        return {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id(pod_ns),
            "CNI_NETNS": netns if netns is not None else f"/var/run/netns/{pod_ns}",
            "CNI_IFNAME": ifname,
            "CNI_ARGS": pod_args(f"pod-{pod_ns}", f"uid-{pod_ns}"),
            "CNI_PATH": f"{self.bin_dir}:{PLUGIN_DIR}",
        }

    async def macvlan(self, command: str, pod_ns: str, conf: dict[str, Any], ifname: str = "eth0") -> tuple[int, Any]:
        wrapper = self.dir / "macvlan-in-host"
        if not wrapper.exists():
            wrapper.write_text(f"#!/bin/sh\nexec ip netns exec {self.host} {PLUGIN_DIR}/macvlan\n")
            wrapper.chmod(0o755)
        return await run_plugin(wrapper, self.env(command, pod_ns, ifname), conf)

    async def coordinator(
        self, command: str, pod_ns: str, conf: dict[str, Any], ifname: str = "eth0", **env: str
    ) -> tuple[int, Any]:
        environment = {**self.env(command, pod_ns, ifname), **env}
        return await run_plugin(self.bin_dir / "coordinator", environment, conf)

    async def add(
        self,
        pod_ns: str,
        *,
        macvlan: dict[str, Any] | None = None,
        coordinator: dict[str, Any] | None = None,
        ifname: str = "eth0",
    ) -> tuple[int, Any]:
        """ADD of the conflist [macvlan + spiderpool, coordinator]; the first failure stops it."""
        mconf = macvlan or self.macvlan_conf()
        code, result = await self.macvlan("ADD", pod_ns, mconf, ifname)
        if code != 0:
            return code, result
        cconf = {**(coordinator or self.coordinator_conf(mconf["cniVersion"])), "prevResult": result}
        return await self.coordinator("ADD", pod_ns, cconf, ifname)

    async def delete(
        self,
        pod_ns: str,
        prev: Any = None,
        *,
        macvlan: dict[str, Any] | None = None,
        coordinator: dict[str, Any] | None = None,
    ) -> tuple[int, int]:
        """DEL of the conflist, in reverse order (coordinator, then macvlan), as libcni does."""
        mconf = macvlan or self.macvlan_conf()
        cconf = coordinator or self.coordinator_conf(mconf["cniVersion"])
        if prev is not None:
            cconf = {**cconf, "prevResult": prev}
            mconf = {**mconf, "prevResult": prev}
        first = (await self.coordinator("DEL", pod_ns, cconf))[0]
        second = (await self.macvlan("DEL", pod_ns, mconf))[0]
        return first, second


def build(tag: str) -> None:
    """The host, its switch and the router (see the module docstring)."""
    host, router = f"sphost-{tag}", f"sprtr-{tag}"
    ip("netns", "add", host)
    ip("netns", "add", router)
    ip("link", "set", "lo", "up", netns=host)
    ip("link", "set", "lo", "up", netns=router)
    ip("link", "add", "br0", "type", "bridge", netns=host)
    ip("link", "set", "br0", "up", netns=host)
    ip("link", "add", "up0", "type", "veth", "peer", "name", "sw-up0", netns=host)
    ip("link", "set", "sw-up0", "master", "br0", netns=host)
    ip("link", "add", "sw-gw0", "type", "veth", "peer", "name", "gw0", "netns", router, netns=host)
    ip("link", "set", "sw-gw0", "master", "br0", netns=host)
    for link in ("up0", "sw-up0", "sw-gw0"):
        ip("link", "set", link, "up", netns=host)
    ip("link", "set", "gw0", "up", netns=router)
    ip("addr", "add", f"{HOST_V4}/24", "dev", "up0", netns=host)
    ip("addr", "add", f"{HOST_V6}/64", "dev", "up0", "nodad", netns=host)
    ip("addr", "add", f"{SERVICE}/32", "dev", "lo", netns=host)
    ip("addr", "add", f"{GATEWAY_V4}/24", "dev", "gw0", netns=router)
    ip("addr", "add", f"{GATEWAY_V6}/64", "dev", "gw0", "nodad", netns=router)


@asynccontextmanager
async def coordinator_lab() -> AsyncIterator[CoordinatorLab]:
    """Namespaces, a store, an agent whose NodeActor treats the lab's host namespace as the host."""
    tag = uuid.uuid4().hex[:6]
    made: list[str] = [f"sphost-{tag}", f"sprtr-{tag}"]
    lab: CoordinatorLab | None = None
    try:
        build(tag)
        with short_tmp() as d:
            store = await SqliteStore.open(d / "store.db")
            settings = AgentSettings(
                store_path=d / "store.db", socket_path=d / "agent.sock", node="node-1", grace=5, host_netns=made[0]
            )
            try:
                async with open_agent(settings, store) as api:
                    bin_dir = d / "bin"
                    install_cni(bin_dir)
                    lab = CoordinatorLab(tag, d, store, api, settings.socket_path, bin_dir)
                    yield lab
            finally:
                await store.aclose()
    finally:
        for ns in [*(lab.pods if lab else []), *made]:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)  # noqa: ASYNC221


def kernel_link_local_route(route: dict[str, Any]) -> bool:
    """Whether ``route`` is one of the IPv6 routes the kernel keeps for each link by itself: ``fe80::/64``, the
    ``local`` route of the link's own ``fe80::`` address, its subnet-router anycast and the ``ff00::/8`` multicast
    route.

    They follow the links (which ``host_state`` compares) on the kernel's own schedule: the link-local address is
    made when the link's carrier comes up (after up to a second of link-watch delay) and its ``local`` route
    appears only once duplicate address detection is done, a second or more later.  A snapshot taken soon after
    ``build`` would otherwise miss routes a later one has, with nothing having changed but time.
    """
    if route.get("protocol") != "kernel":
        return False
    try:
        dst = ipaddress.ip_network(str(route.get("dst")), strict=False)
    except ValueError:  # "default", or a v4 route's "broadcast"/"local" spelling: not one of these
        return False
    return dst.version == 6 and (dst.is_link_local or dst.is_multicast)


def host_state(netns: str, pod_ips: tuple[str, ...] = ()) -> dict[str, Any]:
    """Links, routes of every table, rules and neighbours of a namespace, for before/after comparisons.

    Neighbours are the permanent ones and any for ``pod_ips``: others come and go with traffic the test does
    not control.  Routes leave out the kernel's own IPv6 link-local and multicast routes
    (``kernel_link_local_route``): they come with links, which are compared, but settle seconds after them.
    """

    def j(*args: str) -> Any:
        return json.loads(ip("-j", *args, netns=netns) or "[]")

    links = sorted(link["ifname"] for link in j("link"))
    routes = sorted(
        json.dumps(r, sort_keys=True)
        for family in ("-4", "-6")
        for r in j(family, "route", "show", "table", "all")
        if not kernel_link_local_route(r)
    )
    rules = sorted(json.dumps(r, sort_keys=True) for family in ("-4", "-6") for r in j(family, "rule"))
    neighbours = sorted(
        json.dumps(n, sort_keys=True) for n in j("neigh") if "PERMANENT" in n.get("state", []) or n["dst"] in pod_ips
    )
    return {"links": links, "routes": routes, "rules": rules, "neighbours": neighbours}
