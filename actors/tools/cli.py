"""``spider``: the command line for people (agent, apply, get, delete, check, init, ip, install-cni, demo,
loadtest).

Owns argument parsing, the output formats (tables with rich, ``-o json|yaml``) and exit codes; each command
is a thin call into the actors package.  Errors the user can fix are printed as one line and exit 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import trio
import yaml

from actors.ipam.pool import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_STATUS_BYTES
from actors.ipam.remote import DEFAULT_BUDGET as DEFAULT_POOL_HOST_BUDGET
from actors.ipam.remote import DEFAULT_POOL_HOST_PORT, DEFAULT_TOKEN_FILE
from actors.stores.port import Obj, Store
from actors.stores.retrying import DEFAULT_OUTAGE_BUDGET
from actors.stores.selection import KUBECONFIG_ENV, StoreSettings, open_store
from actors.stores.sqlite import default_store_path
from actors.stores.validating import ValidatingStore
from actors.tools.conf import add_config_path_argument, add_static_ip_switches, add_switch, load_conf, pick
from actors.tools.controller_args import GO_TRUE, add_controller_arguments, controller_settings
from actors.tools.launcher import install_cni
from actors.tools.manifests import apply, load_documents
from actors.tools.tables import console, print_table
from spider.cni import DEFAULT_SOCKET
from spider.errors import InvalidInput, SpiderError
from spider.kinds import kind_info
from spider.pool import ReservedIP


def _store_settings(args: argparse.Namespace) -> StoreSettings:
    """The store a command asked for: ``--kubeconfig``/``$SPIDER_KUBECONFIG`` or ``--in-cluster``, else ``--store``."""
    try:
        return StoreSettings.from_env(
            store_path=args.store,
            kubeconfig=getattr(args, "kubeconfig", None),
            in_cluster=getattr(args, "in_cluster", False) or None,
            context=getattr(args, "context", None),
        )
    except ValueError as exc:
        raise InvalidInput(reason=str(exc)) from None


async def _with_store(where: Path | StoreSettings, fn: Callable[[Store], Any], *, create: bool = False) -> Any:
    """``fn(store)`` on the store, closed afterwards.  Only commands that write objects (``apply``) create a
    missing embedded store; the others refuse it, so a mistyped ``--store`` is not a new, empty store."""
    settings = where if isinstance(where, StoreSettings) else StoreSettings(where)
    store = ValidatingStore(await open_store(settings, create=create))
    try:
        return await fn(store)
    finally:
        await store.aclose()


def _cmd_agent(args: argparse.Namespace) -> int:
    from actors.agent import AgentSettings, run_agent
    from actors.ipam.autopools import AutoPoolSettings
    from actors.ipam.service import IpamSettings

    conf = load_conf(args.config_path, "agent")
    kwargs: dict[str, Any] = {"store_path": args.store, "socket_path": pick(args.socket, conf, "ipamUnixSocketPath")}
    kwargs["socket_group"] = args.socket_group or None
    kwargs["release_cooldown"] = args.release_cooldown
    where = _store_settings(args)
    kwargs.update(kubeconfig=where.kubeconfig, in_cluster=where.in_cluster, context=where.context)
    kwargs["conflict_budget"] = args.conflict_budget
    if args.netlink_timeout is not None:
        kwargs["netlink_timeout"] = args.netlink_timeout
    kwargs["max_pool_status_bytes"] = args.max_pool_status_bytes or None
    kwargs["pool_idle_timeout"] = args.pool_idle_timeout or None
    kwargs["store_outage_budget"] = args.store_outage_budget
    kwargs["pool_host"] = not args.no_pool_host
    kwargs["pool_host_port"] = args.pool_host_port
    kwargs["pool_host_budget"] = args.pool_host_budget
    kwargs["pool_host_token_file"] = args.pool_host_token_file
    kwargs["controller_namespace"] = args.controller_namespace
    kwargs["controller_lease"] = args.controller_lease
    if args.pool_host:
        host, _, port = args.pool_host.rpartition(":")
        if not host or not port.isascii() or not port.isdecimal() or not 0 < int(port) < 65536:
            raise InvalidInput(reason=f"--pool-host must be HOST:PORT, not {args.pool_host!r}")
        kwargs["pool_host_address"] = (host.strip("[]"), int(port))
    kwargs["ipam"] = IpamSettings(
        enable_statefulset=pick(args.statefulset_ips, conf, "enableStatefulSet"),
        enable_kubevirt_static_ip=pick(args.kubevirt_ips, conf, "enableKubevirtStaticIP"),
        agent_namespace=args.agent_namespace,
        cluster_network=args.cluster_network,
        release_conflict_ips=os.environ.get("SPIDERPOOL_ENABLED_RELEASE_CONFLICT_IPS", "true").strip() in GO_TRUE,
        auto_pools=AutoPoolSettings.from_env(
            enable_spider_subnet=pick(args.spider_subnet, conf, "enableSpiderSubnet"),
            enable_auto_pool=pick(args.auto_pool, conf, "enableAutoPoolForApplication"),
            default_redundant=pick(args.auto_pool_redundant_ips, conf, "clusterSubnetAutoPoolDefaultRedundantIPNumber"),
        ),
    )
    if args.node:
        kwargs["node"] = args.node
    kwargs["host_netns"] = args.host_netns or None
    kwargs["metrics"] = _metrics_settings(args)
    kwargs["rdma_metrics"] = args.rdma_metrics
    trio.run(run_agent, AgentSettings(**kwargs))
    return 0


def _cmd_controller(args: argparse.Namespace) -> int:
    from actors.controller.main import run_controller

    settings = controller_settings(args, _store_settings(args), _metrics_settings(args))
    trio.run(run_controller, settings)
    return 0


def _cmd_apply(args: argparse.Namespace) -> int:
    out = console()

    async def run(store: Store) -> None:
        for target in args.filename:
            for obj in load_documents(target):
                outcome = await apply(store, obj)
                out.print(f"{obj['kind'].lower()}/{obj['metadata']['name']} {outcome}", highlight=False)

    trio.run(partial(_with_store, _store_settings(args), run, create=True))
    return 0


def _cmd_get(args: argparse.Namespace) -> int:
    info = kind_info(args.kind)

    async def run(store: Store) -> tuple[list[Obj], list[ReservedIP]]:
        reserved = [ReservedIP.from_object(o) for o in (await store.list("SpiderReservedIP")).items]
        if args.name:
            return [await store.get(info.kind, args.name, args.namespace if info.namespaced else "")], reserved
        namespace = None if args.all_namespaces or not info.namespaced else args.namespace
        if info.namespaced and not args.namespace_given:
            namespace = None  # the embedded store is small: show every namespace unless one is asked for
        return (await store.list(info.kind, namespace=namespace, label_selector=args.selector)).items, reserved

    items, reserved = trio.run(_with_store, _store_settings(args), run)
    if args.output == "json":
        print(json.dumps(items[0] if args.name else {"apiVersion": "v1", "kind": "List", "items": items}, indent=2))
    elif args.output == "yaml":
        print(
            yaml.safe_dump(
                items[0] if args.name else {"apiVersion": "v1", "kind": "List", "items": items},
                sort_keys=False,
            ),
            end="",
        )
    else:
        print_table(console(), info.kind, items, reserved)
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    info = kind_info(args.kind)

    async def run(store: Store) -> None:
        await store.delete(info.kind, args.name, args.namespace if info.namespaced else "")

    trio.run(_with_store, _store_settings(args), run)
    print(f"{info.kind.lower()}/{args.name} deleted")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from actors.ipam.check import check_store, print_report

    report = trio.run(_with_store, _store_settings(args), lambda store: check_store(store, reclaim=args.reclaim))
    print_report(console(), report)
    return 0 if report.resolved else 1  # NB: with --reclaim too: it once hid an address held twice from cron jobs


def _cmd_gc(args: argparse.Namespace) -> int:
    from actors.controller.gc import gc_command

    code: int = trio.run(_with_store, _store_settings(args), partial(gc_command, gap=args.gap))
    return code


def _cmd_install_cni(args: argparse.Namespace) -> int:
    host_bin_dir = Path(args.host_bin_dir) if args.host_bin_dir else None
    for path in install_cni(Path(args.bin_dir), args.python, args.self_contained, host_bin_dir):
        print(f"installed {path}")
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    from actors.tools.init import InitSettings, run_init

    settings = InitSettings.from_env(wait=args.wait_controller, lease=args.controller_lease)
    if args.controller_namespace:
        settings = settings.evolve(namespace=args.controller_namespace)
    init = partial(run_init, settings=settings)
    for outcome in trio.run(partial(_with_store, _store_settings(args), init, create=True)):
        print(outcome)
    return 0


def _cmd_ip(args: argparse.Namespace) -> int:
    from actors.tools.ip import find_address, print_holdings, print_released, release_address

    if args.ip_command == "show":
        holdings = trio.run(_with_store, _store_settings(args), lambda store: find_address(store, args.ip))
        if args.output == "json":
            import time

            print(json.dumps([h.to_json(time.time()) for h in holdings], indent=2))
        else:
            print_holdings(console(), args.ip, holdings)
        return 0 if holdings else 1
    released = trio.run(
        _with_store, _store_settings(args), lambda store: release_address(store, args.ip, force=args.force)
    )
    print_released(console(), released)
    return 0 if all(r.freed for r in released) else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from actors.tools.demo import run_demo

    return trio.run(run_demo, args.pods, args.keep)


def _cmd_loadtest(args: argparse.Namespace) -> int:
    from actors.tools.loadtest.report import run_command
    from actors.tools.loadtest.scenario import Comparison, Scenario

    if args.compare and args.compare_plugin:
        raise InvalidInput(reason="--compare and --compare-plugin exclude each other")
    if bool(args.compare_plugin) != bool(args.compare_config):
        raise InvalidInput(reason="--compare-plugin and --compare-config go together")
    try:
        scenario = Scenario(
            nodes=args.nodes,
            callers=args.callers,
            pool_size=args.pool_size,
            via=args.via,
            churn=args.churn,
            call_timeout=args.call_timeout,
            **({"pods": args.pods} | _subnet_scenario(args)),
        )
    except ValueError as exc:
        raise InvalidInput(reason=str(exc)) from None
    comparison = None
    if args.compare:
        comparison = Comparison.host_local()
    elif args.compare_plugin:
        comparison = Comparison.from_files(Path(args.compare_plugin), Path(args.compare_config))
    return run_command(
        scenario,
        comparison=comparison,
        kubeconfig=args.kubeconfig,
        context=args.context,
        json_to=args.json,
        plot_to=args.plot,
        keep=args.keep,
        controller=not args.no_controller,
        controller_args=args.controller_arg,
    )


def _subnet_scenario(args: argparse.Namespace) -> dict[str, Any]:
    """``loadtest --subnet-apps N --replicas R``: the SpiderSubnet scenario's fields (N x R pods), else none."""
    if not args.subnet_apps:
        return {}
    if args.kubeconfig or args.compare or args.compare_plugin:
        raise InvalidInput(reason="--subnet-apps runs on the embedded store, without --kubeconfig or a comparison")
    return {
        "apps": args.subnet_apps,
        "pods": args.subnet_apps * args.replicas,
        "redundant": args.redundant_ips,
        "wait_interval": args.wait_interval,
    }


def _with_metrics(p: argparse.ArgumentParser, port: int) -> None:
    """``--metrics``, ``--debug-metrics``, ``--metrics-host``, ``--metrics-port`` (``actors.servers.metrics``)."""
    p.add_argument(
        "--metrics",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("SPIDERPOOL_ENABLED_METRIC", "").strip() in GO_TRUE,
        help="serve Prometheus metrics on GET /metrics (default: $SPIDERPOOL_ENABLED_METRIC, else off)",
    )
    p.add_argument(
        "--debug-metrics",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("SPIDERPOOL_ENABLED_DEBUG_METRIC", "").strip() in GO_TRUE,
        help="add the spiderpool_debug_* metrics (default: $SPIDERPOOL_ENABLED_DEBUG_METRIC, else off)",
    )
    p.add_argument(
        "--metrics-host",
        default=os.environ.get("POD_IP", ""),
        help="address of the metrics port (default: $POD_IP, else every address; '' for every address)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=os.environ.get("SPIDERPOOL_METRIC_HTTP_PORT", str(port)),
        help=f"TCP port of GET /metrics (default %(default)s: $SPIDERPOOL_METRIC_HTTP_PORT, else {port})",
    )


def _metrics_settings(args: argparse.Namespace) -> Any:
    from actors.servers.metrics import MetricsSettings

    return MetricsSettings(
        enabled=args.metrics, debug=args.debug_metrics, host=args.metrics_host or None, port=args.metrics_port
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``spider`` argument parser; every option's help says its default."""
    store_default = default_store_path()
    parser = argparse.ArgumentParser(prog="spider", description="Spiderpool-compatible underlay IPAM, in Python.")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more logging: -v info, -vv debug (default %(default)s: warnings; agent and controller log info)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do")

    def with_store(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--store",
            type=Path,
            default=store_default,
            help="embedded store file (default %(default)s: $SPIDER_STORE, else /var/lib/spider/store.db for root, "
            "else under $XDG_STATE_HOME)",
        )

    def with_kube(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--kubeconfig",
            type=Path,
            default=None,
            help=f"use the Kubernetes API server this kubeconfig names instead of the embedded store "
            f"(default ${KUBECONFIG_ENV}, else the embedded store)",
        )
        p.add_argument("--context", default=None, help="kubeconfig context (default: its current one)")
        p.add_argument(
            "--in-cluster",
            action="store_true",
            help="use the cluster this pod runs in (its service account) instead of the embedded store",
        )

    p = sub.add_parser("agent", help="run the node agent (serves the CNI plugin and the agent API)")
    with_store(p)
    with_kube(p)
    add_config_path_argument(p)
    p.add_argument(
        "--conflict-budget",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="seconds a pool write may keep losing races to other agents before ADD fails with CNI 11 "
        "(default %(default)g)",
    )
    p.add_argument(
        "--netlink-timeout",
        type=float,
        metavar="SECONDS",
        help="seconds one netlink transaction may take before it fails with CNI 11 and its worker thread "
        "is replaced (default 5)",
    )
    p.add_argument(
        "--max-pool-status-bytes",
        type=int,
        default=DEFAULT_MAX_STATUS_BYTES,
        metavar="BYTES",
        help="the most a pool's records may take; an ADD past it fails with CNI 100 naming the pool and the cap, "
        "before etcd refuses the object (1.5 MiB); use a SpiderSubnet for bigger address spaces "
        "(default %(default)d = 1 MiB; 0: no cap)",
    )
    p.add_argument(
        "--pool-idle-timeout",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT,
        metavar="SECONDS",
        help="seconds a pool actor may go without a request before it stops and frees its ledger "
        "(default %(default)g; 0: never)",
    )
    p.add_argument(
        "--store-outage-budget",
        type=float,
        default=DEFAULT_OUTAGE_BUDGET,
        metavar="SECONDS",
        help="seconds a request waits through a store outage (an API server restart) before it fails with "
        "CNI 11 (default %(default)g; 0: at once)",
    )
    p.add_argument(
        "--socket",
        type=Path,
        default=None,
        help=f"unix socket the agent serves (default: conf.yml's ipamUnixSocketPath, else {DEFAULT_SOCKET})",
    )
    p.add_argument(
        "--socket-group",
        default="",
        metavar="GROUP",
        help="group (name or gid) whose members may use the socket: mode 0660 (default: none, mode 0600)",
    )
    p.add_argument("--node", default="", help="node name (default: this host's name)")
    p.add_argument(
        "--release-cooldown",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="rest released addresses this long before reuse, oldest first (default %(default)g: reuse at once)",
    )
    add_static_ip_switches(p)
    add_switch(
        p,
        "spider-subnet",
        "enableSpiderSubnet",
        on="serve SpiderSubnet annotations; the wait for an application's pool is "
        "$SPIDERPOOL_WAIT_SUBNET_POOL_MAX_RETRIES (25) looks $SPIDERPOOL_WAIT_SUBNET_POOL_TIME_IN_SECOND (2) apart",
        off="ignore SpiderSubnet annotations",
    )
    add_switch(
        p,
        "auto-pool",
        "enableAutoPoolForApplication",
        on="serve SpiderSubnet annotations from each application's pool",
        off="refuse SpiderSubnet annotations",
    )
    p.add_argument(
        "--auto-pool-redundant-ips",
        type=int,
        default=None,
        metavar="N",
        help="spare addresses of an application's pool when it sets no ippool-ip-number; must match the "
        "controller's (default: conf.yml's clusterSubnetAutoPoolDefaultRedundantIPNumber, else 0, Spiderpool's)",
    )
    p.add_argument(
        "--namespace",
        dest="agent_namespace",
        default=os.environ.get("SPIDERPOOL_NAMESPACE", "kube-system"),
        help="the agent's namespace: where multusName entries without one live "
        "(default %(default)s: $SPIDERPOOL_NAMESPACE, else kube-system)",
    )
    p.add_argument(
        "--cluster-network",
        default=os.environ.get("MULTUS_CLUSTER_NETWORK", ""),
        help="Multus' cluster network for eth0 (default '%(default)s': $MULTUS_CLUSTER_NETWORK, else none)",
    )
    p.add_argument(
        "--host-netns",
        default="",
        metavar="NAME",
        help="network namespace the coordinator treats as the host, a name or a path (default: the agent's own)",
    )
    p.add_argument(
        "--no-pool-host",
        action="store_true",
        help="with --kubeconfig/--in-cluster, write pools from this agent instead of sending the writes to the "
        "leading controller's pool host (default: send them, and write here only when it does not answer)",
    )
    p.add_argument(
        "--pool-host-port",
        type=int,
        default=DEFAULT_POOL_HOST_PORT,
        help="the controllers' pool-host port (default %(default)s)",
    )
    p.add_argument(
        "--pool-host-budget",
        type=float,
        default=DEFAULT_POOL_HOST_BUDGET,
        metavar="SECONDS",
        help="seconds a forwarded batch may take, connect and answer, before this agent writes it itself "
        "(default %(default)g)",
    )
    p.add_argument(
        "--pool-host-token-file",
        type=Path,
        default=DEFAULT_TOKEN_FILE,
        help="ServiceAccount token shown to the pool host, read again when it changes (default %(default)s; "
        "missing: nothing is forwarded)",
    )
    p.add_argument(
        "--controller-namespace",
        default="",
        help="namespace of the controllers' Lease and the spiderpool-ca ConfigMap (default: --namespace)",
    )
    p.add_argument(
        "--controller-lease",
        default="spiderpool-controller-leases",
        help="the controllers' Lease, whose holder hosts the pools (default %(default)s)",
    )
    p.add_argument(
        "--pool-host",
        default="",
        metavar="HOST:PORT",
        help="the pool host's address instead of the Lease holder's Pod IP, for a controller outside the "
        "cluster (default: from the Lease)",
    )
    _with_metrics(p, 5711)
    p.add_argument(
        "--rdma-metrics",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("SPIDERPOOL_ENABLED_RDMA_METRIC", "").strip() in GO_TRUE,
        help="add the rdma_* metrics of the node's RDMA devices, with --metrics (default: "
        "$SPIDERPOOL_ENABLED_RDMA_METRIC, else off)",
    )
    p.set_defaults(func=_cmd_agent)

    p = sub.add_parser("controller", help="run the controller (Lease leader: pool status and finalizers; webhook)")
    with_store(p)
    with_kube(p)
    add_controller_arguments(p)
    _with_metrics(p, 5721)
    p.set_defaults(func=_cmd_controller)

    p = sub.add_parser("apply", help="create or update objects from YAML/JSON files or directories")
    with_store(p)
    with_kube(p)
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        help="file, directory (its *.yaml, *.yml, *.json; not its subdirectories) or - for stdin; repeatable",
    )
    p.set_defaults(func=_cmd_apply)

    p = sub.add_parser("get", help="list or show objects")
    with_store(p)
    with_kube(p)
    p.add_argument("kind", help="kind or alias: sp (SpiderIPPool), se, sr, pod, ns, node, ...")
    p.add_argument("name", nargs="?", default="", help="the object to show (default: list every one of KIND)")
    p.add_argument(
        "-n",
        "--namespace",
        default=None,
        help="namespace of a namespaced KIND (default: every namespace when listing, 'default' for NAME)",
    )
    p.add_argument("-A", "--all-namespaces", action="store_true", help="list every namespace (what no -n does)")
    p.add_argument("-l", "--selector", default="", help="label selector, e.g. app=web,tier!=db (default: every object)")
    p.add_argument(
        "-o", "--output", choices=("table", "json", "yaml"), default="table", help="output format (default %(default)s)"
    )
    p.set_defaults(func=_cmd_get)

    p = sub.add_parser("delete", help="delete an object")
    with_store(p)
    with_kube(p)
    p.add_argument("kind", help="kind or alias, as for get")
    p.add_argument("name", help="the object's name")
    p.add_argument("-n", "--namespace", default="default", help="namespace of a namespaced KIND (default %(default)s)")
    p.set_defaults(func=_cmd_delete)

    p = sub.add_parser("check", help="compare pools with endpoints; report (and with --reclaim free) leaks")
    with_store(p)
    with_kube(p)
    p.add_argument("--reclaim", action="store_true", help="free pool records no endpoint accounts for")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("gc", help="one IP GC scan-all now, with the controller's rules: look at every pool "
                       "record, wait one trace gap, look again, release only what both looks found releasable; "
                       "print why")  # fmt: skip
    with_store(p)
    with_kube(p)
    p.add_argument("--gap", type=float, default=None, metavar="SECONDS",
                   help="seconds between the two looks (default $SPIDERPOOL_GC_TRACE_POD_GAP_DURATION, "
                   "else 5)")  # fmt: skip
    p.set_defaults(func=_cmd_gc)

    p = sub.add_parser("install-cni", help="install the CNI plugin binaries (spiderpool, coordinator, ifacer)")
    p.add_argument("--bin-dir", default="/opt/cni/bin", help="directory the plugins go to (default %(default)s)")
    p.add_argument(
        "--python", default=sys.executable, help="interpreter the plugins run with (default %(default)s, this one)"
    )
    p.add_argument(
        "--self-contained",
        action="store_true",
        help="copy this Python's runtime into a sub-folder of --bin-dir and run the plugins with it: the node "
        "needs no python3 (default: off, the plugins run with --python)",
    )
    p.add_argument(
        "--host-bin-dir",
        default=None,
        help="where the node sees --bin-dir, when installing through a mount (default: --bin-dir)",
    )
    p.set_defaults(func=_cmd_install_cni)

    p = sub.add_parser(
        "init",
        help="create the default SpiderCoordinator, subnets and pools from $SPIDERPOOL_INIT_* (once; a second "
        "run changes nothing)",
    )
    with_store(p)
    with_kube(p)
    p.add_argument(
        "--wait-controller",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="wait this long for a leading controller first (default %(default)g; 0: do not wait)",
    )
    p.add_argument(
        "--controller-namespace",
        default="",
        help="namespace of the controllers' Lease (default: $SPIDERPOOL_NAMESPACE, else kube-system)",
    )
    p.add_argument(
        "--controller-lease",
        default="spiderpool-controller-leases",
        help="the controllers' Lease (default %(default)s)",
    )
    p.set_defaults(func=_cmd_init)

    p = sub.add_parser("ip", help="show who holds an address, or release it by hand")
    ip_sub = p.add_subparsers(dest="ip_command", required=True, metavar="SUBCOMMAND", help="show or release")
    q = ip_sub.add_parser("show", help="which pool, pod, UID, node, interface and since when")
    with_store(q)
    with_kube(q)
    q.add_argument("ip", help="the address")
    q.add_argument("-o", "--output", choices=("table", "json"), default="table", help="output (default %(default)s)")
    q = ip_sub.add_parser("release", help="free an address whose pod is gone (its pool record and endpoint entry)")
    with_store(q)
    with_kube(q)
    q.add_argument("ip", help="the address")
    q.add_argument(
        "-f", "--force", action="store_true", help="release it even from a live pod (default: refuse, saying why)"
    )
    p.set_defaults(func=_cmd_ip)

    p = sub.add_parser("demo", help="start an agent, give real macvlan pods addresses, show them, clean up")
    p.add_argument("--pods", type=int, default=3, help="pods to start (default %(default)s)")
    p.add_argument("--keep", action="store_true", help="leave the namespaces and store behind for a look")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "loadtest",
        help="N agent processes, M pods, P callers: ADD all, DEL all; times, store writes, correctness checks",
    )
    p.add_argument(
        "--nodes", type=int, default=10, help="simulated nodes, one agent process each (default %(default)s)"
    )
    p.add_argument("--pods", type=int, default=1000, help="pods (default %(default)s)")
    p.add_argument("--callers", type=int, default=10, help="concurrent CNI calls over all nodes (default %(default)s)")
    p.add_argument("--pool-size", type=int, default=None, help="addresses in the pool (default: one per pod)")
    p.add_argument(
        "--via",
        choices=("shim", "api"),
        default="shim",
        help="the installed CNI plugin, or the agent API straight (default %(default)s)",
    )
    p.add_argument(
        "--churn",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="delete and re-create this fraction of the pods during ADD (default %(default)g)",
    )
    p.add_argument(
        "--call-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="time one call may take before it counts as failed (default %(default)g)",
    )
    p.add_argument(
        "--subnet-apps",
        type=int,
        default=0,
        metavar="N",
        help="SpiderSubnet scenario: N Deployments of --replicas pods (instead of --pods), each from its own auto "
        "pool of one SpiderSubnet, with spider controller running; embedded store only (default %(default)s: off)",
    )
    p.add_argument(
        "--replicas", type=int, default=20, help="with --subnet-apps: pods per Deployment (default %(default)s)"
    )
    p.add_argument(
        "--redundant-ips",
        type=int,
        default=0,
        metavar="N",
        help="with --subnet-apps: spare addresses per application's pool (default %(default)s)",
    )
    p.add_argument(
        "--wait-interval",
        type=float,
        default=0.1,
        metavar="SECONDS",
        help="with --subnet-apps: the agents' SPIDERPOOL_WAIT_SUBNET_POOL_TIME_IN_SECOND (default %(default)g)",
    )
    p.add_argument(
        "--kubeconfig", type=Path, default=None, help="run against this API server (default: a throw-away store)"
    )
    p.add_argument("--context", default=None, help="kubeconfig context (default: its current one)")
    p.add_argument(
        "--no-controller",
        action="store_true",
        help="with --kubeconfig, start no controller: measures the agents' fallback without the pool host "
        "(default: a controller runs, as in a cluster; the embedded store never has one)",
    )
    p.add_argument(
        "--controller-arg",
        action="append",
        default=[],
        metavar="OPTION",
        help="an option for the controller the run starts, as given, e.g. --controller-arg=--pool-host-linger=0.02 "
        "(repeatable; default: none)",
    )
    p.add_argument(
        "--compare", choices=("host-local",), default=None, help="run the scenario through host-local too (default: no)"
    )
    p.add_argument(
        "--compare-plugin", default="", metavar="PATH", help="another IPAM plugin to run it through (default: none)"
    )
    p.add_argument(
        "--compare-config",
        default="",
        metavar="FILE",
        help="its netconf, ${NODE}, ${NODE_INDEX}, ${DIR} filled in (default: none; needed with --compare-plugin)",
    )
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help="write the report as JSON to FILE, or to stdout without FILE or with - (default: a table only)",
    )
    p.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="FILE.png",
        help="draw a timeline and an ADD latency histogram (default: none)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (store, agent logs)")
    p.set_defaults(func=_cmd_loadtest)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spider`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "namespace", "x") is None:
        args.namespace, args.namespace_given = "default", False
    else:
        args.namespace_given = True
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    if args.command in ("agent", "controller"):
        level = min(level, logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.func(args)
        return code
    except (SpiderError, OSError) as exc:
        print(f"spider {args.command}: {exc}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:  # NB: from a nursery: what the user can fix is said, the rest is a bug
        told, rest = group.split((SpiderError, OSError))
        if told is None or rest is not None:
            raise
        for leaf in _leaves(told):
            print(f"spider {args.command}: {leaf}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions of a group, its nested groups' too."""
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


if __name__ == "__main__":
    sys.exit(main())
