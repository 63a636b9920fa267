"""``spider controller``'s options and the ``ControllerSettings`` they make.

Owns the controller's own command-line surface: each option, its default (Spiderpool's environment variable
where Spiderpool has one, read when the parser is built) and how the parsed options become
``actors.controller.main.ControllerSettings``, with ``--config-path``'s conf.yml as the default of the
settings it has a key for (``actors.tools.conf``: flag > environment variable > file > built-in default).
``actors.tools.cli`` adds the options other commands share (store, kubeconfig, metrics) and runs the controller.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import attrs

from actors.ipam.pool import DEFAULT_MAX_STATUS_BYTES
from actors.ipam.remote import DEFAULT_POOL_HOST_PORT
from actors.stores.selection import StoreSettings
from actors.tools.conf import add_config_path_argument, add_static_ip_switches, add_switch, load_conf, pick
from spider.conf import SpiderpoolConf
from spider.errors import InvalidInput

GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
"""What Go's ``strconv.ParseBool`` takes for true: Spiderpool's switches (``SPIDERPOOL_ENABLED_METRIC``)."""


def env_switch(name: str, default: bool) -> bool:
    """Spiderpool's boolean environment variable ``name``: true when it is one of ``GO_TRUE``; ``default`` when
    unset."""
    value = os.environ.get(name)
    return default if value is None else value.strip() in GO_TRUE


def add_controller_arguments(p: argparse.ArgumentParser) -> None:
    """The ``spider controller`` options of its own (not the store's, the kubeconfig's or the metrics')."""
    add_config_path_argument(p)
    p.add_argument(
        "--namespace",
        dest="controller_namespace",
        default="",
        help="namespace of the Lease and webhook Secret (default: $SPIDERPOOL_POD_NAMESPACE, else the service "
        "account's)",
    )
    p.add_argument("--identity", default="", help="leader-election identity (default: <pod or host name>_<random>)")
    p.add_argument(
        "--lease-name",
        default="spiderpool-controller-leases",
        help="the Lease the replicas elect their leader with (default %(default)s)",
    )
    p.add_argument(
        "--lease-duration",
        type=int,
        default=15,
        metavar="SECONDS",
        help="how long a Lease holds without renewal before a standby may take it (default %(default)s)",
    )
    p.add_argument(
        "--renew-deadline",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long the leader keeps trying to renew before it steps down (default %(default)g)",
    )
    p.add_argument(
        "--retry-period",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="time between tries to take or renew the Lease (default %(default)g)",
    )
    p.add_argument(
        "--resync-period",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="time between full re-lists (default %(default)g)",
    )
    p.add_argument(
        "--health-host",
        default=os.environ.get("POD_IP", ""),
        help="address of the health endpoints (default: $POD_IP, else every address; '' for every address)",
    )
    # NB: string defaults go through type=int only when this command is parsed, so a bad variable cannot
    # break every other command
    p.add_argument(
        "--health-port",
        type=int,
        default=os.environ.get("SPIDERPOOL_HEALTH_PORT", "5720"),
        help="TCP port of the health endpoints (default %(default)s: $SPIDERPOOL_HEALTH_PORT, else 5720)",
    )
    p.add_argument("--webhook", action="store_true", help="serve the admission webhook over TLS (off by default)")
    p.add_argument(
        "--webhook-host",
        default=os.environ.get("POD_IP", ""),
        help="address of the webhook (default: $POD_IP, else every address; '' for every address)",
    )
    p.add_argument(
        "--webhook-port",
        type=int,
        default=os.environ.get("SPIDERPOOL_WEBHOOK_PORT", "5722"),
        help="TCP port of the webhook (default %(default)s: $SPIDERPOOL_WEBHOOK_PORT, else 5722)",
    )
    p.add_argument(
        "--webhook-cert-dir",
        type=Path,
        default=None,
        help="directory of a mounted tls.crt and tls.key (default: none, a CA is made and kept in --webhook-secret)",
    )
    p.add_argument(
        "--webhook-service", default="spiderpool-controller", help="Service the certificate names (default %(default)s)"
    )
    p.add_argument(
        "--webhook-configuration",
        default="spiderpool-controller",
        help="name of the webhook configurations whose caBundle is kept (default %(default)s)",
    )
    p.add_argument(
        "--webhook-secret",
        default="spiderpool-controller-server-certs",
        help="Secret that keeps the CA made when there is no --webhook-cert-dir (default %(default)s)",
    )
    p.add_argument(
        "--webhook-extra-host",
        action="append",
        default=[],
        help="extra name for the certificate, repeatable (default: none)",
    )
    p.add_argument(
        "--pod-resource-inject",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve the pod mutating webhook that injects RDMA/network resources (serves the webhook port even "
        "without --webhook; default: conf.yml's podResourceInject.enabled, else off)",
    )
    p.add_argument(
        "--pod-inject-exclude-namespace",
        action="append",
        default=None,
        help="a namespace whose pods are never mutated, repeatable (default: conf.yml's "
        "podResourceInject.namespacesExclude, else kube-system, kube-public, spiderpool, metallb-system, "
        "istio-system)",
    )
    p.add_argument(
        "--pod-inject-include-namespace",
        action="append",
        default=None,
        help="only these namespaces' pods are mutated, repeatable (default: conf.yml's "
        "podResourceInject.namespacesInclude, else every namespace not excluded)",
    )
    p.add_argument(
        "--pod-inject-master-nic",
        action="store_true",
        help="inject spidernet.io/<master>-nic requests (the network resource plugin has masterNIC rules)",
    )
    p.add_argument(
        "--pod-inject-sub-eni-resource",
        default="",
        help="inject this sub-ENI resource per vlanMode=auto network, e.g. spidernet.io/sub-eni (IaaS provider "
        "and network resource plugin on; default: none)",
    )
    p.add_argument(
        "--no-pool-host",
        action="store_true",
        help="do not host the pools while leading (default: host them when the store is an API server)",
    )
    p.add_argument(
        "--pool-host-host",
        default=os.environ.get("POD_IP", ""),
        help="address of the pool host, and the IP its certificate names (default: $POD_IP, else every address "
        "and 127.0.0.1)",
    )
    p.add_argument(
        "--pool-host-port",
        type=int,
        default=DEFAULT_POOL_HOST_PORT,
        help="HTTPS port of the pool host, where agents send pool writes (default %(default)s)",
    )
    p.add_argument(
        "--pool-host-client",
        default="",
        metavar="USER",
        help="the only user the pool host serves (default: system:serviceaccount:<namespace>:spiderpool-agent)",
    )
    p.add_argument(
        "--pool-host-conflict-budget",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="seconds a hosted pool's batch may keep losing write races; keep it under the agents' "
        "--pool-host-budget (default %(default)g)",
    )
    p.add_argument(
        "--pool-host-linger",
        type=float,
        default=0.25,
        metavar="SECONDS",
        help="at most the seconds a busy hosted pool waits for a request from every node its last two writes "
        "served, so requests from many nodes share a write; a lone request is never delayed (default %(default)g)",
    )
    p.add_argument(
        "--release-cooldown",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="hosted pools rest released addresses this long; the agents' value (default %(default)g)",
    )
    p.add_argument(
        "--max-pool-status-bytes",
        type=int,
        default=DEFAULT_MAX_STATUS_BYTES,
        metavar="BYTES",
        help="hosted pools' status-size cap; the agents' value (default %(default)d; 0: no cap)",
    )
    p.add_argument(
        "--coordinator",
        action=argparse.BooleanOptionalAction,
        default=env_switch("SPIDERPOOL_COORDINATOR_ENABLED", True),
        help="keep the SpiderCoordinators' status while leading (default %(default)s: $SPIDERPOOL_COORDINATOR_ENABLED, "
        "else on)",
    )
    p.add_argument(
        "--coordinator-resync-period",
        type=float,
        default=os.environ.get("SPIDERPOOL_COORDINATOR_INFORMER_RESYNC_PERIOD", "60"),
        metavar="SECONDS",
        help="time between the coordinator sync's full re-lists (default %(default)s: "
        "$SPIDERPOOL_COORDINATOR_INFORMER_RESYNC_PERIOD, else 60)",
    )
    p.add_argument(
        "--cni-config-dir",
        default=os.environ.get("SPIDERPOOL_CNI_CONFIG_DIR", "/etc/cni/net.d"),
        help="where podCIDRType auto finds the default CNI (default %(default)s: $SPIDERPOOL_CNI_CONFIG_DIR, "
        "else /etc/cni/net.d; '' for nowhere)",
    )
    p.add_argument(
        "--cilium-configmap",
        default=os.environ.get("SPIDERPOOL_CILIUM_CONFIGMAP_NAMESPACE_NAME", "kube-system/cilium-config"),
        metavar="NAMESPACE/NAME",
        help="Cilium's ConfigMap (default %(default)s: $SPIDERPOOL_CILIUM_CONFIGMAP_NAMESPACE_NAME)",
    )
    add_static_ip_switches(p)
    add_switch(
        p,
        "spider-subnet",
        "enableSpiderSubnet",
        on="manage SpiderSubnets' application pools",
        off="do not manage SpiderSubnets' application pools; give the agents the same",
    )
    add_switch(
        p,
        "auto-pool",
        "enableAutoPoolForApplication",
        on="make a pool per application",
        off="make no pool per application; give the agents the same",
    )
    p.add_argument(
        "--auto-pool-redundant-ips",
        type=int,
        default=None,
        metavar="N",
        help="spare addresses of an application's pool when it sets no ippool-ip-number; must match the "
        "agents' (default: conf.yml's clusterSubnetAutoPoolDefaultRedundantIPNumber, else 0, Spiderpool's)",
    )
    p.add_argument(
        "--multus-config",
        action=argparse.BooleanOptionalAction,
        default=env_switch("SPIDERPOOL_MULTUS_CONFIG_ENABLED", True),
        help="keep a NetworkAttachmentDefinition per SpiderMultusConfig while leading (default %(default)s: "
        "$SPIDERPOOL_MULTUS_CONFIG_ENABLED, else on)",
    )
    p.add_argument(
        "--multus-config-resync-period",
        type=float,
        default=os.environ.get("SPIDERPOOL_MULTUS_CONFIG_INFORMER_RESYNC_PERIOD", "60"),
        metavar="SECONDS",
        help="time between the SpiderMultusConfig controller's full re-lists (default %(default)s: "
        "$SPIDERPOOL_MULTUS_CONFIG_INFORMER_RESYNC_PERIOD, else 60)",
    )
    p.add_argument(
        "--clean-outdated-endpoints",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="IP GC also drops SpiderEndpoints no pool record names, once no pod of their UID lives (default: "
        "$SPIDERPOOL_ENABLE_CLEAN_OUTDATED_ENDPOINT, else conf.yml's enableCleanOutdatedEndpoint, else off)",
    )


def controller_settings(args: argparse.Namespace, store: StoreSettings, metrics: Any) -> Any:
    """The ``ControllerSettings`` the parsed options ask for, with the store and metrics ``actors.tools.cli``
    read and ``--config-path``'s conf.yml (read here, once) under the options; ``InvalidInput`` for values the
    controller would refuse (the Lease's durations), ``InvalidSpec`` for a bad conf.yml."""
    from actors.controller.main import ControllerSettings
    from actors.controller.multus import MultusSettings
    from spider.validation import AdmissionSettings

    conf = load_conf(args.config_path, "controller")
    enable_spider_subnet = pick(args.spider_subnet, conf, "enableSpiderSubnet")

    kwargs: dict[str, Any] = {
        "store_path": args.store,
        "kubeconfig": store.kubeconfig,
        "in_cluster": store.in_cluster,
        "context": store.context,
        "lease_name": args.lease_name,
        "lease_duration": args.lease_duration,
        "renew_deadline": args.renew_deadline,
        "retry_period": args.retry_period,
        "resync_period": args.resync_period,
        "health_host": args.health_host or None,
        "health_port": args.health_port,
        "webhook": args.webhook,
        "webhook_host": args.webhook_host or None,
        "webhook_port": args.webhook_port,
        "webhook_cert_dir": args.webhook_cert_dir,
        "webhook_service": args.webhook_service,
        "webhook_configuration": args.webhook_configuration,
        "webhook_secret": args.webhook_secret,
        "webhook_extra_hosts": tuple(args.webhook_extra_host),
        "pod_inject": pod_inject_settings(args, conf),
        "pool_host": not args.no_pool_host,
        "pool_host_host": args.pool_host_host or None,
        "pool_host_port": args.pool_host_port,
        "pool_host_client": args.pool_host_client,
        "pool_host_conflict_budget": args.pool_host_conflict_budget,
        "pool_host_linger": args.pool_host_linger,
        "release_cooldown": args.release_cooldown,
        "max_pool_status_bytes": args.max_pool_status_bytes or None,
        "metrics": metrics,
        "coordinator": coordinator_sync_settings(args),
        "enable_spider_subnet": enable_spider_subnet,
        "enable_auto_pool": pick(args.auto_pool, conf, "enableAutoPoolForApplication"),
        "auto_pool_default_redundant": pick(
            args.auto_pool_redundant_ips, conf, "clusterSubnetAutoPoolDefaultRedundantIPNumber"
        ),
        "admission": AdmissionSettings(
            enable_ipv4=conf.enable_ipv4, enable_ipv6=conf.enable_ipv6, enable_subnet=enable_spider_subnet
        ),
        "multus": MultusSettings(resync_period=args.multus_config_resync_period) if args.multus_config else None,
        "gc": gc_settings(args, conf),
    }
    if args.controller_namespace:
        kwargs["namespace"] = args.controller_namespace
    if args.identity:
        kwargs["identity"] = args.identity
    try:
        settings = ControllerSettings(**kwargs)
        settings.leader_settings()  # NB: checks the three durations before anything starts
    except ValueError as exc:
        raise InvalidInput(reason=str(exc)) from None
    return settings


def gc_settings(args: argparse.Namespace, conf: SpiderpoolConf) -> Any:
    """The ``GcSettings`` of the environment (Spiderpool's ``SPIDERPOOL_GC_*``), with the outdated-endpoint
    switch from ``--[no-]clean-outdated-endpoints``, else ``$SPIDERPOOL_ENABLE_CLEAN_OUTDATED_ENDPOINT``, else
    conf.yml's ``enableCleanOutdatedEndpoint``, and whether StatefulSet and KubeVirt pods keep their addresses
    from ``--[no-]statefulset-ips`` and ``--[no-]kubevirt-ips``, else conf.yml, as the agents decide it;
    ``InvalidSpec`` names a variable that cannot be read."""
    from spider.gc import GcSettings

    variable = "SPIDERPOOL_ENABLE_CLEAN_OUTDATED_ENDPOINT"
    environ = dict(os.environ)
    if args.clean_outdated_endpoints is not None:
        environ[variable] = str(args.clean_outdated_endpoints).lower()
    elif variable not in environ:
        environ[variable] = str(conf.enable_clean_outdated_endpoint).lower()
    return attrs.evolve(
        GcSettings.from_environ(environ),
        statefulset=pick(args.statefulset_ips, conf, "enableStatefulSet"),
        kubevirt=pick(args.kubevirt_ips, conf, "enableKubevirtStaticIP"),
    )


def pod_inject_settings(args: argparse.Namespace, conf: SpiderpoolConf | None = None) -> Any:
    """The ``PodInjectSettings`` of the ``--[no-]pod-resource-inject`` and ``--pod-inject-*`` options, conf.yml's
    ``podResourceInject`` under them."""
    from spider.podinject import DEFAULT_SUB_ENI_RESOURCE, PodInjectSettings

    conf = SpiderpoolConf() if conf is None else conf
    excluded = pick(args.pod_inject_exclude_namespace, conf, "podResourceInject.namespacesExclude")
    included = pick(args.pod_inject_include_namespace, conf, "podResourceInject.namespacesInclude")
    return PodInjectSettings(
        enabled=pick(args.pod_resource_inject, conf, "podResourceInject.enabled"),
        namespaces_exclude=tuple(excluded),
        namespaces_include=tuple(included),
        master_nic=args.pod_inject_master_nic,
        sub_eni=bool(args.pod_inject_sub_eni_resource),
        sub_eni_resource=args.pod_inject_sub_eni_resource or DEFAULT_SUB_ENI_RESOURCE,
    )


def coordinator_sync_settings(args: argparse.Namespace) -> Any:
    """The ``CoordinatorSyncSettings`` of the ``--coordinator*`` options; ``None`` with ``--no-coordinator``."""
    from actors.controller.coordinator_sync import CoordinatorSyncSettings

    if not args.coordinator:
        return None
    return CoordinatorSyncSettings(
        resync_period=args.coordinator_resync_period,
        cni_config_dir=args.cni_config_dir or None,
        cilium_config=args.cilium_configmap,
    )
