"""The install manifests in ``deploy/``: valid for Kubernetes, consistent with each other and with the code.

Three checks stand in for a cluster, which neither this machine nor CI has:
- Kubernetes' own JSON schemas (the ``kubernetes-validate`` package, strict: unknown fields are errors) for the
  oldest and newest Kubernetes release it ships, and our CRD schemas for our kinds;
- ``kubectl apply --dry-run=client`` against a discovery stub (``tests/deploy/discovery.py``): kubectl parses,
  maps and applies every document as it would against a cluster, offline;
- the container arguments are parsed by ``spider``'s own argument parser, so a manifest cannot name a flag the
  program does not have.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from actors.controller.leader import DEFAULT_LEASE_NAME
from actors.tools.cli import build_parser
from spider.cni import DEFAULT_SOCKET
from tests.deploy.discovery import kubeconfig, serve_discovery
from tests.deploy.files import DEPLOY, crds, documents, example_files, kustomization_files, manifests
from tests.support import short_tmp

NAMESPACE = "kube-system"
RELEASES = ("1.25", kubernetes_validate.latest_version())
BASE = manifests(DEPLOY)
WITH_WEBHOOK = BASE + manifests(DEPLOY / "webhook")
Obj = dict[str, Any]


def one(objs: list[Obj], kind: str, name: str) -> Obj:
    [found] = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return dict(found)


def pod_spec(kind: str, name: str) -> Obj:
    spec: Obj = one(BASE, kind, name)["spec"]["template"]["spec"]
    return spec


def container(spec: Obj, name: str, init: bool = False) -> Obj:
    [found] = [c for c in spec["initContainers" if init else "containers"] if c["name"] == name]
    return dict(found)


def rules(kind: str, name: str) -> dict[tuple[str, str], tuple[str, ...]]:
    """``{(apiGroup, resource[ (names)]): verbs}`` of one Role or ClusterRole of either kustomization."""
    out: dict[tuple[str, str], tuple[str, ...]] = {}
    for rule in one(WITH_WEBHOOK, kind, name)["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                names = rule.get("resourceNames")
                key = (group, f"{resource} {names}" if names else resource)
                out[key] = tuple(sorted({*out.get(key, ()), *rule["verbs"]}))
    return out


@pytest.mark.parametrize("obj", WITH_WEBHOOK, ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_every_manifest_is_valid_for_kubernetes_oldest_and_newest_release(obj: Obj) -> None:
    for release in RELEASES:
        kubernetes_validate.validate(obj, release, strict=True)


def test_the_kustomization_lists_every_manifest_file_and_each_object_once() -> None:
    listed = set(kustomization_files(DEPLOY))
    on_disk = {p.resolve() for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml"}
    on_disk |= {p.resolve() for p in (DEPLOY / "crds").glob("*.yaml")}
    multus_crd = set(kustomization_files(DEPLOY / "multus-crd"))  # NB: linked from crds/, a component's own
    assert on_disk == listed | multus_crd
    assert not multus_crd & listed
    keys = Counter((o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in WITH_WEBHOOK)
    assert [k for k, n in keys.items() if n > 1] == []


def test_namespaced_objects_live_in_kube_system_like_spiderpools() -> None:
    cluster_scoped = {
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "Namespace",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    }
    for obj in WITH_WEBHOOK:
        expected = None if obj["kind"] in cluster_scoped else NAMESPACE
        assert obj["metadata"].get("namespace") == expected, obj["metadata"]["name"]


def test_rbac_grants_no_wildcards_and_lists_known_verbs() -> None:
    known = {"get", "list", "watch", "create", "update", "patch", "delete"}
    for obj in WITH_WEBHOOK:
        for rule in obj.get("rules", []) if obj["kind"] in ("Role", "ClusterRole") else []:
            assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"]
            assert set(rule["verbs"]) <= known, rule


def test_every_rbac_rule_is_commented_with_why() -> None:
    for path in (DEPLOY / "rbac.yaml", DEPLOY / "webhook" / "rbac.yaml"):
        previous = ""
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip().startswith("- apiGroups:"):
                assert previous.strip().startswith("#"), f"{path.name}:{number}: rule without a comment"
            if line.strip():
                previous = line


WRITES = {"create", "update", "patch", "delete", "deletecollection"}


def test_the_agent_writes_only_pool_status_endpoints_and_third_party_auto_pools() -> None:
    # Which calls it makes is tests/deploy/test_rbac.py's (from the code); this is the line it must not cross.
    written = {
        resource for (_, resource), verbs in rules("ClusterRole", "spiderpool-agent").items() if WRITES & set(verbs)
    }
    # NB: pools and subnets' status only for third-party controllers' SpiderSubnet auto pools, which no
    # controller makes (Spiderpool's agent has the same rights); never a pool's delete, nor a subnet's spec.
    assert written == {"spiderippools/status", "spiderendpoints", "spiderippools", "spidersubnets/status"}
    pools = rules("ClusterRole", "spiderpool-agent")[("spiderpool.spidernet.io", "spiderippools")]
    assert WRITES & set(pools) == {"create", "update"}


def test_the_controller_renews_only_its_own_lease_in_its_own_namespace() -> None:
    cluster_wide = rules("ClusterRole", "spiderpool-controller")
    assert not [key for key in cluster_wide if key[0] == "coordination.k8s.io"]
    assert not [key for key in cluster_wide if key[1].startswith(("secrets", "configmaps"))]
    role = rules("Role", "spiderpool-controller")
    assert role[("coordination.k8s.io", "leases")] == ("create",)
    assert role[("coordination.k8s.io", f"leases {[DEFAULT_LEASE_NAME]}")] == ("get", "update")


def test_the_controller_writes_network_attachment_definitions_and_creates_only_auto_pools_and_gc_endpoints() -> None:
    # A NetworkAttachmentDefinition names the CNI plugin and config the runtime runs as root on a node: write
    # access to NADs is root on every node, granted only to the code that needs it (SpiderMultusConfig).
    nads = ("k8s.cni.cncf.io", "network-attachment-definitions")
    assert rules("ClusterRole", "spiderpool-controller")[nads] == ("create", "delete", "list", "update", "watch")
    assert nads not in rules("ClusterRole", "spiderpool-controller-webhook")
    for name in ("spiderpool-controller", "spiderpool-controller-webhook"):
        granted = rules("ClusterRole", name)
        assert not [key for key in granted if key[0] == "k8s.cni.cncf.io" and key != nads]
        # NB: a TokenReview (the pool host's) is a question to the API server, never a stored object
        not_stored_or_allowed = (("authentication.k8s.io", "tokenreviews"), nads)
        stored = {key: verbs for key, verbs in granted.items() if key not in not_stored_or_allowed}
        creates_or_deletes = {key for key, verbs in stored.items() if {"create", "delete"} & set(verbs)}
        # NB: SpiderSubnet auto pools (created and reclaimed with their application) and the endpoints GC drops
        allowed = {("spiderpool.spidernet.io", "spiderippools"), ("spiderpool.spidernet.io", "spiderendpoints")}
        assert creates_or_deletes <= (allowed if name == "spiderpool-controller" else set())


def test_webhook_permissions_come_only_with_the_webhook_overlay() -> None:
    def grants(objs: list[Obj], resource: str) -> bool:
        return any(resource in r["resources"] for o in objs if o["kind"] in ("Role", "ClusterRole") for r in o["rules"])

    # NB: not secrets: the pool host keeps its CA in the same Secret, webhook or not (deploy/rbac.yaml)
    for resource in ("validatingwebhookconfigurations", "mutatingwebhookconfigurations"):
        assert not grants(BASE, resource)
        assert grants(WITH_WEBHOOK, resource)


def test_bindings_refer_to_roles_and_service_accounts_that_exist() -> None:
    accounts = {
        (o["metadata"]["namespace"], o["metadata"]["name"]) for o in WITH_WEBHOOK if o["kind"] == "ServiceAccount"
    }
    for binding in (o for o in WITH_WEBHOOK if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        ref = binding["roleRef"]
        one(WITH_WEBHOOK, ref["kind"], ref["name"])
        for subject in binding["subjects"]:
            assert (subject["namespace"], subject["name"]) in accounts
    for kind, name in (("DaemonSet", "spiderpool-agent"), ("Deployment", "spiderpool-controller")):
        assert (NAMESPACE, pod_spec(kind, name)["serviceAccountName"]) in accounts


def host_paths(spec: Obj) -> dict[str, str]:
    return {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}


def mounts(c: Obj) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}


def test_the_agent_runs_on_the_host_network_privileged_with_the_socket_and_cni_directories() -> None:
    spec = pod_spec("DaemonSet", "spiderpool-agent")
    agent = container(spec, "agent")
    assert spec["hostNetwork"] is True
    assert agent["securityContext"]["privileged"] is True
    paths = host_paths(spec)
    assert paths["socket-dir"] == os.path.dirname(DEFAULT_SOCKET) == "/var/run/spidernet"
    assert mounts(agent)["socket-dir"] == "/var/run/spidernet"
    assert (paths["cni-bin"], paths["cni-conf"]) == ("/opt/cni/bin", "/etc/cni/net.d")
    assert {"operator": "Exists"} in spec["tolerations"]


def test_the_agent_and_install_arguments_are_accepted_by_spiders_parser() -> None:
    spec = pod_spec("DaemonSet", "spiderpool-agent")
    parser = build_parser()
    agent = parser.parse_args(container(spec, "agent")["args"])
    assert (agent.command, agent.node) == ("agent", "$(SPIDERPOOL_NODE_NAME)")
    assert (agent.socket, agent.config_path) == (None, "/etc/spiderpool/conf.yml")  # its ipamUnixSocketPath
    assert agent.in_cluster is True  # the API server is the store, not a file in the container
    env = {e["name"] for e in container(spec, "agent")["env"]}
    assert "SPIDERPOOL_NODE_NAME" in env  # $(VAR) in args is expanded by the kubelet from the container's env
    install = parser.parse_args(container(spec, "install-cni", init=True)["args"])
    assert install.command == "install-cni"
    assert install.bin_dir == mounts(container(spec, "install-cni", init=True))["cni-bin"]


def test_the_plugins_are_installed_self_contained_naming_the_hosts_cni_bin_directory() -> None:
    spec = pod_spec("DaemonSet", "spiderpool-agent")
    install = build_parser().parse_args(container(spec, "install-cni", init=True)["args"])
    assert install.self_contained is True  # no python3 needed on the node
    [volume] = [v for v in spec["volumes"] if v["name"] == "cni-bin"]
    assert install.host_bin_dir == volume["hostPath"]["path"]  # the launchers name the runtime as the node sees it
    assert not [v for v in spec["volumes"] if v["name"] == "host-python"]


def controller_defaults() -> argparse.Namespace:
    """What ``spider controller`` runs with when the manifests pass no flag for it."""
    return build_parser().parse_args(["controller"])


def test_the_controllers_arguments_are_accepted_by_spiders_parser() -> None:
    args = container(pod_spec("Deployment", "spiderpool-controller"), "controller")["args"]
    parsed = build_parser().parse_args([*args, "--webhook"])  # as the webhook component leaves them
    assert (parsed.command, parsed.in_cluster, parsed.webhook) == ("controller", True, True)


def test_the_names_rbac_grants_by_are_the_ones_the_controller_uses() -> None:
    defaults = controller_defaults()
    assert defaults.lease_name == DEFAULT_LEASE_NAME
    assert rules("Role", "spiderpool-controller")[("coordination.k8s.io", f"leases {[defaults.lease_name]}")]
    webhook_role = rules("Role", "spiderpool-controller-webhook")
    assert webhook_role[("", f"secrets {[defaults.webhook_secret]}")] == ("get", "update")
    webhook_configs = rules("ClusterRole", "spiderpool-controller-webhook")
    for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
        assert ("admissionregistration.k8s.io", f"{kind} {[defaults.webhook_configuration]}") in webhook_configs
    one(BASE, "Service", defaults.webhook_service)


def test_the_controller_is_probed_and_scraped_on_spiderpools_ports() -> None:
    spec = pod_spec("Deployment", "spiderpool-controller")
    controller = container(spec, "controller")
    ports = {p["name"]: p["containerPort"] for p in controller["ports"]}
    assert ports == {"health": 5720, "metrics": 5721, "webhook": 5722, "pool-host": 5723}
    for probe, path in (("startupProbe", "startup"), ("livenessProbe", "liveness"), ("readinessProbe", "readiness")):
        assert controller[probe]["httpGet"] == {"path": f"/v1/runtime/{path}", "port": "health"}
    service = one(BASE, "Service", "spiderpool-controller")
    labels = one(BASE, "Deployment", "spiderpool-controller")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)


def test_two_controller_replicas_never_share_a_node() -> None:
    deployment = one(BASE, "Deployment", "spiderpool-controller")
    assert deployment["spec"]["replicas"] == 2
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    [term] = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"


def test_every_container_uses_one_image_and_every_pod_reads_the_settings() -> None:
    images = set()
    for kind, name in (("DaemonSet", "spiderpool-agent"), ("Deployment", "spiderpool-controller")):
        spec = pod_spec(kind, name)
        images |= {c["image"] for c in spec.get("initContainers", []) + spec["containers"]}
        [config] = [v for v in spec["volumes"] if v["name"] == "config"]
        assert config["configMap"]["name"] == "spiderpool-conf"
    assert len(images) == 1


# Spiderpool's spiderpool-conf keys and their defaults (reference §12.1), where they mean something here.
SPIDERPOOL_CONF = {
    "ipamUnixSocketPath": DEFAULT_SOCKET,
    "enableIPv4": True,
    "enableIPv6": True,
    "enableStatefulSet": True,
    "enableKubevirtStaticIP": True,
    "enableSpiderSubnet": True,
    "enableAutoPoolForApplication": True,
    "clusterSubnetDefaultFlexibleIPNumber": 1,
    "enableIPConflictDetection": False,
    "enableGatewayDetection": False,
    "enableCleanOutdatedEndpoint": False,
    "enableValidatingResourcesDeletedWebhook": False,
    "tuneSysctlConfig": True,
    "podResourceInject": {
        "enabled": False,
        "namespacesExclude": ["kube-system", "kube-public", "spiderpool", "metallb-system", "istio-system"],
        "namespacesInclude": [],
    },
    "iaasNetworkProvider": {"serverUrl": "", "httpRequestTimeout": "50s"},
}


def test_the_settings_configmap_has_spiderpools_name_keys_and_defaults() -> None:
    data = one(BASE, "ConfigMap", "spiderpool-conf")["data"]
    assert yaml.safe_load(data["conf.yml"]) == SPIDERPOOL_CONF
    assert data["clusterNetwork"] == ""


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("no kubectl on PATH (.ci/setup installs Debian's kubernetes-client when run as root)")
    return found


def dry_run(files: list[Path]) -> subprocess.CompletedProcess[str]:
    """``kubectl apply --dry-run=client`` of ``files`` against the discovery stub."""
    with serve_discovery(crds().values()) as url, short_tmp() as tmp:
        args = [kubectl(), "--kubeconfig", str(kubeconfig(url, tmp / "config")), "--cache-dir", str(tmp / "cache")]
        args += ["apply", "--dry-run=client", "--validate=false"]
        for path in files:
            args += ["-f", str(path)]
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp)}
        return subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, check=False)


def test_kubectl_applies_the_install_the_webhook_overlay_and_every_example_in_a_client_dry_run() -> None:
    files = kustomization_files(DEPLOY) + kustomization_files(DEPLOY / "webhook") + example_files()
    done = dry_run(files)
    assert done.returncode == 0, done.stderr
    expected = sum(len(documents(p)) for p in files)
    created = re.findall(r"^\S+ created \(dry run\)$", done.stdout, re.MULTILINE)
    assert len(created) == expected, done.stdout


def test_kubectl_refuses_a_kind_the_api_does_not_serve() -> None:
    with short_tmp() as tmp:
        bad = tmp / "bad.yaml"
        bad.write_text("apiVersion: spiderpool.spidernet.io/v2beta1\nkind: SpiderClaimParameter\nmetadata: {name: x}\n")
        done = dry_run([bad])
    assert done.returncode != 0
    assert "SpiderClaimParameter" in done.stderr


def kustomize(directory: Path) -> list[Obj]:
    version = subprocess.run([kubectl(), "version", "--client"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"Kustomize Version: v(\d+)", version)
    if match is None or int(match.group(1)) < 4:
        pytest.skip(f"this kubectl's kustomize is too old for components: {version.strip()!r}")
    built = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(built) if d]


def canonical(objs: list[Obj]) -> list[str]:
    return sorted(json.dumps(o, sort_keys=True) for o in objs)


def test_kustomize_builds_exactly_the_listed_objects() -> None:
    assert canonical(kustomize(DEPLOY)) == canonical(BASE)


def test_the_webhook_component_adds_its_rbac_and_turns_the_webhook_on() -> None:
    with short_tmp() as tmp:
        shutil.copytree(DEPLOY, tmp / "deploy")
        with (tmp / "deploy" / "kustomization.yaml").open("a") as f:
            f.write("components:\n  - webhook\n")
        built = kustomize(tmp / "deploy")
    args = container(one(built, "Deployment", "spiderpool-controller")["spec"]["template"]["spec"], "controller")
    assert args["args"] == [
        *container(pod_spec("Deployment", "spiderpool-controller"), "controller")["args"],
        "--webhook",
    ]
    without_controller = [o for o in built if o["kind"] != "Deployment"]
    expected = [o for o in WITH_WEBHOOK if o["kind"] != "Deployment"]
    assert canonical(without_controller) == canonical(expected)


def test_multus_nad_crd_comes_only_with_its_component() -> None:
    def crd_names(objs: list[Obj]) -> set[str]:
        return {o["metadata"]["name"] for o in objs if o["kind"] == "CustomResourceDefinition"}

    nad_crd = "network-attachment-definitions.k8s.cni.cncf.io"
    assert nad_crd not in crd_names(kustomize(DEPLOY))  # NB: Multus installs its own; ours would replace it
    with short_tmp() as tmp:
        shutil.copytree(DEPLOY, tmp / "deploy", symlinks=True)
        with (tmp / "deploy" / "kustomization.yaml").open("a") as f:
            f.write("components:\n  - multus-crd\n")
        built = kustomize(tmp / "deploy")
    assert crd_names(built) == crd_names(BASE) | {nad_crd}
    assert canonical([o for o in built if o["metadata"]["name"] != nad_crd]) == canonical(BASE)


def test_the_documented_cni_bin_dir_patch_changes_exactly_the_two_places() -> None:
    text = (DEPLOY.parent / "docs" / "operations.md").read_text()
    block = re.search(r"```yaml\n(patches:.*?)```", text, re.DOTALL)
    assert block is not None
    [patch] = yaml.safe_load(block.group(1))["patches"]
    daemonset = json.loads(json.dumps(one(BASE, "DaemonSet", "spiderpool-agent")))
    for op in yaml.safe_load(patch["patch"]):
        *parents, last = op["path"].strip("/").split("/")
        node: Any = daemonset
        for step in parents:
            node = node[int(step)] if isinstance(node, list) else node[step]
        key: Any = int(last) if isinstance(node, list) else last
        assert node[key] == "/opt/cni/bin"
        node[key] = op["value"]
    spec = daemonset["spec"]["template"]["spec"]
    install = container(spec, "install-cni", init=True)
    [volume] = [v for v in spec["volumes"] if v["name"] == "cni-bin"]
    assert build_parser().parse_args(install["args"]).host_bin_dir == volume["hostPath"]["path"] == op["value"]


def test_metrics_are_switched_off_by_default_on_spiderpools_ports_in_both_processes() -> None:
    for kind, name, box, port in (
        ("DaemonSet", "spiderpool-agent", "agent", 5711),
        ("Deployment", "spiderpool-controller", "controller", 5721),
    ):
        spec = container(pod_spec(kind, name), box)
        env = {e["name"]: e.get("value") for e in spec["env"]}
        assert env["SPIDERPOOL_ENABLED_METRIC"] == "false"
        assert env["SPIDERPOOL_METRIC_HTTP_PORT"] == str(port)
        assert "POD_IP" in env  # bound to the pod's address, as the health port
        assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in spec["ports"]
