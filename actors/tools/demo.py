"""``spider demo``: the whole product on one machine, no cluster, in about five seconds.

Owns the demo script: start a controller and an agent on a throw-away embedded store (the controller syncs the
SpiderCoordinator's status from a kubeadm-config, as in a cluster), apply ``deploy/examples/``, install the
``spiderpool`` plugin, make a "host" network namespace with a veth as the macvlan parent and one namespace per
pod, run Debian's ``macvlan`` plugin with our IPAM for each pod and then our ``coordinator`` chained after it
(exactly as a container runtime runs a conflist), print who got what, ping between the pods and from each pod
to its host (which a macvlan pod cannot reach without the coordinator's veth), then DEL everything and show the
pools are empty again.  Without root
(or without the Debian plugins) it runs the IPAM part through the real shim and says what it skipped; without
``ping`` (iputils-ping) it skips only the reachability step, says why, and still passes on the rest.  Last, the
SpiderSubnet scene (``actors.tools.subnet_demo``, on a store of its own): a Deployment's pool appears, scales
with it and goes with it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import attrs
import trio
from rich.console import Console
from rich.table import Table

from actors.agent import AgentSettings, open_agent
from actors.controller.coordinator_sync import CoordinatorSyncSettings
from actors.controller.main import ControllerSettings, open_controller
from actors.stores.port import Store
from actors.stores.sqlite import SqliteStore
from actors.stores.validating import ValidatingStore
from actors.tools.launcher import install_cni
from actors.tools.manifests import apply, load_documents
from actors.tools.subnet_demo import run_subnet_demo
from actors.tools.tables import console, print_table
from spider.pool import ReservedIP

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "deploy" / "examples"
PLUGIN_DIR = Path("/usr/lib/cni")
HOST_NS = "spider-demo-host"
PARENT = "sdemo0"
HOST_ADDRESS = "10.210.0.2"
"""The host's own address on the underlay (demo-v4's subnet, outside its range): what the pods ping."""


@attrs.frozen
class DemoPod:
    """One simulated pod: its network namespace and the identity the runtime passes in CNI_ARGS."""

    name: str
    uid: str
    netns: str
    dual_stack: bool = False

    @property
    def container_id(self) -> str:
        return f"demo{self.uid}"


def can_make_interfaces() -> str | None:
    """Why real interfaces cannot be made here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return "not running as root"
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    if not (PLUGIN_DIR / "macvlan").exists():
        return f"{PLUGIN_DIR}/macvlan is missing (apt-get install containernetworking-plugins)"
    return None


def why_no_ping() -> str | None:
    """Why the pods' reachability cannot be checked here, or ``None``.  ``ip netns exec`` finds ``ping`` on this
    ``PATH``; iputils-ping is a package of its own, which a machine with iproute2 may well lack."""
    if shutil.which("ping") is None:
        return "'ping' is not installed: apt-get install iputils-ping"
    return None


async def _pings(netns: str, target: str) -> bool:
    """One ping from a namespace, two seconds to answer."""
    argv = ["ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "2", target]
    return (await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)).returncode == 0


async def _ping_step(out: Console, pods: list[DemoPod], results: dict[str, dict[str, Any]]) -> int:
    """Ping around the ring of pods, then from each pod to its host; returns how many got no reply."""
    failures = 0
    for src, dst in zip(pods, pods[1:] + pods[:1], strict=True):
        target = next(a for a in _addresses(results[dst.name]) if ":" not in a).partition("/")[0]
        ok = await _pings(Path(src.netns).name, target)
        failures += not ok
        out.print(f"  {src.name} -> {dst.name} ({target}): " + ("[green]reachable[/]" if ok else "[red]no reply[/]"))
    for src in pods:  # through the coordinator's veth: macvlan alone never reaches its parent's host
        ok = await _pings(Path(src.netns).name, HOST_ADDRESS)
        failures += not ok
        out.print(f"  {src.name} -> host ({HOST_ADDRESS}): " + ("[green]reachable[/]" if ok else "[red]no reply[/]"))
    return failures


async def _ip(*args: str, check: bool = True) -> str:
    done = await trio.run_process(["ip", *args], capture_stdout=True, capture_stderr=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.decode().strip()}")
    return done.stdout.decode()


async def run_plugin(
    plugin: Path,
    command: str,
    conf: dict[str, Any],
    pod: DemoPod,
    *,
    bin_dir: Path,
    in_netns: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """Exec a CNI plugin as a runtime does: environment, config on stdin, result on stdout."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": pod.container_id,
        "CNI_NETNS": pod.netns,
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod.name};K8S_POD_UID={pod.uid}",
        "CNI_PATH": f"{bin_dir}:{PLUGIN_DIR}",
    }
    argv = [str(plugin)] if in_netns is None else ["ip", "netns", "exec", in_netns, str(plugin)]
    done = await trio.run_process(
        argv, stdin=json.dumps(conf).encode(), capture_stdout=True, capture_stderr=True, env=env, check=False
    )
    out = done.stdout.decode().strip()
    return done.returncode, (json.loads(out) if out else {})


KUBEADM_CONFIG = """kind: ClusterConfiguration
networking:
  podSubnet: 10.244.0.0/16
  serviceSubnet: 10.96.0.0/12
"""
"""What a kubeadm cluster's ``kube-system/kubeadm-config`` says of its networks: the controller reads it."""


async def _coordinator(store: Store) -> None:
    """The default SpiderCoordinator and the kubeadm-config a cluster would have; the controller syncs it."""
    await apply(
        store,
        {
            "apiVersion": "spiderpool.spidernet.io/v2beta1",
            "kind": "SpiderCoordinator",
            "metadata": {"name": "default"},
            "spec": {"podCIDRType": "none", "mode": "auto"},
        },
    )
    await apply(
        store,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
            "data": {"ClusterConfiguration": KUBEADM_CONFIG},
        },
    )


async def _wait_synced(out: Console, store: Store, patience: float = 10.0) -> None:
    """Wait (bounded) until the controller has synced the coordinator; says what it wrote."""
    with trio.move_on_after(patience):
        while True:
            status = (await store.get("SpiderCoordinator", "default")).get("status") or {}
            if status.get("phase"):
                out.print(
                    f"  spidercoordinator/default {status['phase']} by the controller: overlayPodCIDR "
                    f"{status.get('overlayPodCIDR')}, serviceCIDR {status.get('serviceCIDR')}",
                    highlight=False,
                )
                return
            await trio.sleep(0.05)
    out.print("[red]the controller did not sync the SpiderCoordinator[/]")


def _addresses(result: dict[str, Any]) -> list[str]:
    return [str(ip["address"]) for ip in result.get("ips", [])]


async def _pods_table(store: Store, pods: list[DemoPod], results: dict[str, dict[str, Any]]) -> Table:
    table = Table("POD", "INTERFACE", "IP", "POOL", "GATEWAY", box=None, header_style="bold")
    for pod in pods:
        ep = await store.get("SpiderEndpoint", pod.name, "default")
        for nic in ep["status"]["current"]["ips"]:
            for family in ("ipv4", "ipv6"):
                if nic.get(family):
                    table.add_row(
                        pod.name,
                        nic["interface"],
                        nic[family],
                        nic[f"{family}Pool"],
                        nic.get(f"{family}Gateway", ""),
                    )
    return table


async def _show_pools(out: Console, store: Store, title: str) -> None:
    out.rule(title)
    reserved = [ReservedIP.from_object(o) for o in (await store.list("SpiderReservedIP")).items]
    print_table(out, "SpiderIPPool", (await store.list("SpiderIPPool")).items, reserved)


async def run_demo(pod_count: int = 3, keep: bool = False) -> int:
    """The demo; returns the exit code."""
    out = console()
    why_not = can_make_interfaces()
    work = Path(tempfile.mkdtemp(prefix="spider-demo-"))
    bin_dir = work / "bin"
    install_cni(bin_dir)
    settings = AgentSettings(store_path=work / "store.db", socket_path=work / "agent.sock", node=socket.gethostname())
    store = ValidatingStore(await SqliteStore.open(settings.store_path))
    pods: list[DemoPod] = []
    failures = 0
    unchecked: str | None = None  # why the reachability step was skipped
    made_namespaces: list[str] = []
    try:
        out.rule("spider demo")
        out.print(
            f"store {settings.store_path}, agent socket {settings.socket_path}, node {settings.node}",
            highlight=False,
        )
        for obj in load_documents(str(EXAMPLES)):
            out.print(f"  {obj['kind']}/{obj['metadata']['name']} {await apply(store, obj)}", highlight=False)
        for i in range(1, pod_count + 1):  # the last pod asks for both families by annotation
            dual = i == pod_count and pod_count > 1
            annotations = {"ipam.spidernet.io/ippool": json.dumps({"ipv4": ["demo-v4"], "ipv6": ["demo-v6"]})}
            name = f"demo-pod-{i}"
            pod_obj = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": "default",
                    "annotations": annotations if dual else {},
                },
                "spec": {"nodeName": settings.node},
            }
            await apply(store, pod_obj)
            uid = (await store.get("Pod", name, "default"))["metadata"]["uid"]
            pods.append(DemoPod(name, uid, f"/var/run/netns/spider-demo-pod-{i}", dual_stack=dual))
        await _show_pools(out, store, "pools before")
        conf: dict[str, Any] = {
            "cniVersion": "1.0.0",
            "name": "spider-demo",
            "type": "macvlan",
            "master": PARENT,
            "mode": "bridge",
            "ipam": {"type": "spiderpool", "ipam_unix_socket_path": str(settings.socket_path)},
        }
        results: dict[str, dict[str, Any]] = {}
        if why_not is None:  # NB: the host namespace must exist before the agent's NodeActor enters it
            await _ip("netns", "add", HOST_NS)
            made_namespaces.append(HOST_NS)
            settings = attrs.evolve(settings, host_netns=HOST_NS)
            await _coordinator(store)
        coordinator: dict[str, Any] = {
            "cniVersion": "1.0.0",
            "name": "spider-demo",
            "type": "coordinator",
            "ipam_unix_socket_path": str(settings.socket_path),
        }
        controller = ControllerSettings(store_path=settings.store_path, identity="spider-demo", health_host="127.0.0.1",
                                        health_port=0, pool_host=False,
                                        coordinator=CoordinatorSyncSettings(cni_config_dir=None))  # fmt: skip
        async with open_controller(controller, store), open_agent(settings, store):
            if why_not is None:
                await _wait_synced(out, store)
                await _ip("-n", HOST_NS, "link", "add", PARENT, "type", "veth", "peer", "name", f"{PARENT}-peer")
                await _ip("-n", HOST_NS, "link", "set", PARENT, "up")
                await _ip("-n", HOST_NS, "link", "set", f"{PARENT}-peer", "up")
                for pod in pods:
                    ns = Path(pod.netns).name
                    await _ip("netns", "add", ns)
                    made_namespaces.append(ns)
                plugin, in_netns = PLUGIN_DIR / "macvlan", HOST_NS
                await _ip("-n", HOST_NS, "addr", "add", f"{HOST_ADDRESS}/24", "dev", PARENT)
                out.print(
                    f"[bold]ADD[/] {pod_count} pods: Debian macvlan (parent {PARENT}) with spiderpool IPAM, "
                    "then our coordinator (a veth to the host)"
                )
            else:
                conf["type"] = "spiderpool"
                plugin, in_netns = bin_dir / "spiderpool", None
                out.print(
                    f"[yellow]skipping real interfaces ({why_not})[/]: calling the spiderpool IPAM plugin directly"
                )
            for pod in pods:
                code, result = await run_plugin(plugin, "ADD", conf, pod, bin_dir=bin_dir, in_netns=in_netns)
                if code == 0 and why_not is None:  # chained: the coordinator gets macvlan's result
                    chained = {**coordinator, "prevResult": result}
                    code, result = await run_plugin(bin_dir / "coordinator", "ADD", chained, pod, bin_dir=bin_dir)
                if code != 0:
                    failures += 1
                    out.print(f"[red]ADD {pod.name} failed[/]: {result}")
                results[pod.name] = result
            out.print(await _pods_table(store, pods, results))
            if why_not is None and len(pods) > 1:
                out.rule("ping")
                unchecked = why_no_ping()
                if unchecked is None:
                    failures += await _ping_step(out, pods, results)
                else:
                    out.print(f"[yellow]skipping the reachability step ({unchecked})[/]: the rest of the demo runs")
            await _show_pools(out, store, "pools with the pods running")
            if not keep:
                out.rule("delete the pods, then DEL (as the kubelet does)")
                for pod in pods:
                    await store.delete("Pod", pod.name, "default")
                    if why_not is None:  # a conflist's DEL runs in reverse: the coordinator first
                        chained = {**coordinator, "prevResult": results[pod.name]}
                        code, result = await run_plugin(bin_dir / "coordinator", "DEL", chained, pod, bin_dir=bin_dir)
                        if code != 0:
                            failures += 1
                            out.print(f"[red]coordinator DEL {pod.name} failed[/]: {result}")
                    code, result = await run_plugin(plugin, "DEL", conf, pod, bin_dir=bin_dir, in_netns=in_netns)
                    if code != 0:
                        failures += 1
                        out.print(f"[red]DEL {pod.name} failed[/]: {result}")
                await _show_pools(out, store, "pools after DEL")
                left = sum(
                    (o.get("status") or {}).get("allocatedIPCount", 0) for o in (await store.list("SpiderIPPool")).items
                )
                if left:
                    failures += 1
                    out.print(f"[red]{left} addresses still allocated after DEL[/]")
    finally:
        await store.aclose()
        if not keep:
            for ns in reversed(made_namespaces):
                subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)  # noqa: ASYNC221
            shutil.rmtree(work, ignore_errors=True)
        else:
            out.print(f"kept {work} and namespaces {made_namespaces}", highlight=False)
    out.rule("SpiderSubnet: an application's own pool")
    subnet_store = None
    if keep:
        subnet_store = work / "subnet-demo"
        subnet_store.mkdir()
    if await run_subnet_demo(out, subnet_store) != 0:
        failures += 1
    passed = "[green]demo passed[/]" + (f" [yellow](reachability not checked: {unchecked})[/]" if unchecked else "")
    out.rule(passed if not failures else f"[red]{failures} problems[/]")
    return 0 if not failures else 1
