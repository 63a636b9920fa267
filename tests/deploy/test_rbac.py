"""The RBAC in ``deploy/`` against what the code really asks the API server, not against a list typed here.

The agent and the controller run their real code paths on the fake API server (``tests/fakeapi``), each
through a server of its own that shares one cluster with the test's (so only the component's requests are
logged there): the agent wires pods of every owner kind (ADD, CHECK, DEL, GC through the installed shim, the
coordinator config and the workload endpoint through its API); two controllers in turn lead with the webhook
on (pool and subnet status and finalizers, the Lease, the webhook's Secret made and then renewed, the
caBundle, an AdmissionReview); ``spider init`` runs from the command line as ``deploy/init.yaml`` runs it, its
environment, waiting for the Lease, then a second time (everything exists).  Every request must be allowed by the
roles bound to the component's
ServiceAccount (``tests/deploy/rbac.py`` plays the RBAC authorizer), and every permission the roles grant
must have been used, or its rule's comment must say which code path needs it that this test does not run
("not run by tests/deploy/test_rbac.py").
"""

from __future__ import annotations

import base64
import datetime
import functools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from cryptography import x509

from actors.agent import AgentSettings, open_agent
from actors.controller.coordinator_sync import CoordinatorSyncSettings, sync_once
from actors.controller.main import Controller, ControllerSettings, open_controller
from actors.ipam.remote import HostAddress, HostClient
from actors.servers.certs import generate
from actors.stores.kube import KubeStore
from actors.stores.port import NotFound, Obj
from actors.stores.validating import ValidatingStore
from actors.tools.cli import main as spider_main
from actors.tools.manifests import apply
from spider.kinds import FINALIZER
from tests.controller.support import eventually, pool, reserved, subnet
from tests.deploy.files import DEPLOY, documents, manifests
from tests.deploy.rbac import Attributes, Authorizer, Rule, allowed, request_attributes
from tests.fakeapi import Cluster, FakeApiServer
from tests.servers.test_webhook import VALIDATE, mutated_pool, post, review
from tests.support import (
    cni_env,
    http_call,
    installed_shim,
    netconf,
    pod_args,
    pod_spec,
    pool_object,
    run_plugin,
    short_tmp,
)

TIMEOUT = 30
NAMESPACE = "kube-system"
NODE = "node-1"
NOT_RUN_HERE = "not run by tests/deploy/test_rbac.py"
AUTHORIZER = Authorizer.of(
    manifests(DEPLOY) + manifests(DEPLOY / "webhook"), [DEPLOY / "rbac.yaml", DEPLOY / "webhook" / "rbac.yaml"]
)


@asynccontextmanager
async def api_servers(d: Path) -> AsyncIterator[tuple[FakeApiServer, KubeStore]]:
    """The component's API server (its requests logged) and the test's own client, on one cluster."""
    cluster = Cluster.new()
    async with trio.open_nursery() as nursery:
        component: FakeApiServer = await nursery.start(FakeApiServer(cluster).run)
        admin_server: FakeApiServer = await nursery.start(FakeApiServer(cluster).run)
        admin = await KubeStore.open(admin_server.kubeconfig(d / "admin.kubeconfig", token="admin"))
        try:
            yield component, admin
        finally:
            await admin.aclose()
            nursery.cancel_scope.cancel()


def requests_of(server: FakeApiServer) -> list[Attributes]:
    return [request_attributes(method, target) for method, target in server.log]


def owned(obj: Obj, api_version: str, kind: str, name: str) -> Obj:
    obj["metadata"]["ownerReferences"] = [
        {"apiVersion": api_version, "kind": kind, "name": name, "uid": f"uid-{name}", "controller": True}
    ]
    return obj


def workload(api_version: str, kind: str, name: str, owner: tuple[str, str, str] | None = None) -> Obj:
    obj: Obj = {"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": "default"}}
    return owned(obj, *owner) if owner else obj


def pod(name: str, owner: tuple[str, str, str] | None = None) -> Obj:
    return workload("v1", "Pod", name, owner) | {"spec": pod_spec(nodeName=NODE)}


# Pods of every owner kind the agent looks up: none, ReplicaSet -> Deployment, Job -> CronJob, StatefulSet,
# and a KubeVirt VMI -> VM.
WORKLOADS = [
    workload("apps/v1", "Deployment", "web"),
    workload("apps/v1", "ReplicaSet", "web-7d9", ("apps/v1", "Deployment", "web")),
    workload("batch/v1", "CronJob", "nightly"),
    workload("batch/v1", "Job", "nightly-29", ("batch/v1", "CronJob", "nightly")),
    workload("apps/v1", "StatefulSet", "db") | {"spec": {"replicas": 1}},
    workload("kubevirt.io/v1", "VirtualMachine", "vm1"),
    workload("kubevirt.io/v1", "VirtualMachineInstance", "vm1", ("kubevirt.io/v1", "VirtualMachine", "vm1")),
]
PODS = [
    pod("plain"),
    pod("web-7d9-x1", ("apps/v1", "ReplicaSet", "web-7d9")),
    pod("nightly-29-x1", ("batch/v1", "Job", "nightly-29")),
    pod("db-0", ("apps/v1", "StatefulSet", "db")),
    pod("virt-launcher-vm1-x1", ("kubevirt.io/v1", "VirtualMachineInstance", "vm1")),
]


async def run_the_agent(d: Path) -> list[Attributes]:
    """An agent on ``NODE`` wiring, checking and unwiring a pod of each kind; the requests it made."""
    async with api_servers(d) as (component, admin):
        await apply(admin, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
        await apply(admin, pool_object("v4", "10.8.0.0/24", ["10.8.0.10-10.8.0.40"], gateway="10.8.0.1"))
        await apply(admin, reserved("held", ["10.8.0.11"]))
        await admin.create({"apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderCoordinator",
                            "metadata": {"name": "default"}, "spec": {"podCIDRType": "none"}})  # fmt: skip
        cluster_configuration = "networking:\n  serviceSubnet: 10.96.0.0/12\n"
        await admin.create({"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": "kubeadm-config", "namespace": NAMESPACE},
                            "data": {"ClusterConfiguration": cluster_configuration}})  # fmt: skip
        assert await sync_once(admin, CoordinatorSyncSettings(cni_config_dir=None)) == 1  # the controller's status
        for obj in WORKLOADS:
            await admin.create(obj)
        uids = {}  # NB: the API server gives each pod its UID, and the runtime passes it on
        for obj in PODS:
            uids[obj["metadata"]["name"]] = (await admin.create(obj))["metadata"]["uid"]
        store = await KubeStore.open(component.kubeconfig(d / "agent.kubeconfig", token="agent"))
        await admin.create(
            {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
             "metadata": {"name": "spiderpool-controller-leases", "namespace": NAMESPACE},
             "spec": {"holderIdentity": "ctl_1"}}
        )  # fmt: skip
        ctl = await admin.create(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ctl", "namespace": NAMESPACE}, "spec": pod_spec()}
        )
        await admin.update_status({**ctl, "status": {"podIP": "127.0.0.9"}})
        token = d / "token"
        token.write_text(component.cluster.mint_token(NAMESPACE, "spiderpool-agent"))
        # NB: the kubeconfig only makes it forward (the store is given); the host it finds does not answer
        settings = AgentSettings(store_path=d / "unused.db", socket_path=d / "agent.sock", node=NODE, grace=5,
                                 kubeconfig=d / "agent.kubeconfig", pool_host_token_file=token,
                                 pool_host_budget=0.5)  # fmt: skip
        shim = installed_shim(d / "bin")
        conf = netconf(settings.socket_path, default_ipv4_ippool=["v4"])
        try:
            async with open_agent(settings, ValidatingStore(store)):
                for n, p in enumerate(PODS):
                    name = p["metadata"]["name"]
                    args = pod_args(name, uids[name])
                    code, added = await run_plugin(shim, cni_env("ADD", f"ctr-{n}", "eth0", args), conf)
                    assert code == 0, added
                    code, out = await run_plugin(shim, cni_env("CHECK", f"ctr-{n}", "eth0", args), conf)
                    assert code == 0, out
                status, _, _ = await http_call(
                    settings.socket_path, "GET", "/v1/workloadendpoint?podNamespace=default&podName=plain"
                )
                assert status == 200
                status, config, _ = await http_call(
                    settings.socket_path, "GET", "/v1/coordinator/config?podNamespace=default&podName=plain"
                )
                assert status == 200, config
                await admin.delete("Pod", "db-0", "default")  # its StatefulSet ordinal decides on DEL
                for n, p in enumerate(PODS):
                    args = pod_args(p["metadata"]["name"], uids[p["metadata"]["name"]])
                    code, out = await run_plugin(shim, cni_env("DEL", f"ctr-{n}", "eth0", args), conf)
                    assert code == 0, out
                gc = netconf(settings.socket_path, "1.1.0", default_ipv4_ippool=["v4"])
                gc["cni.dev/valid-attachments"] = []
                code, out = await run_plugin(shim, cni_env("GC"), gc)
                assert code == 0, out
                status, _, _ = await http_call(settings.socket_path, "DELETE", "/v1/ipam/ips", {
                    "containerID": "ctr-0", "ifName": "eth0", "podNamespace": "default", "podName": "plain",
                    "podUID": uids["plain"]})  # fmt: skip
                assert status == 200
        finally:
            await store.aclose()
        return requests_of(component)


def aged(current: Obj, hosts: tuple[str, ...]) -> Obj:
    """The webhook's Secret with a serving certificate 80 days old (due for renewal)."""
    old = generate(hosts, now=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=80))
    files = {"tls.crt": old.cert, "tls.key": old.key, "ca.crt": old.ca, "ca.key": old.ca_key}
    return {**current, "data": {k: base64.b64encode(v).decode() for k, v in files.items()}}


def controller_settings(kubeconfig: Path, identity: str) -> ControllerSettings:
    """A controller with the webhook on, quick leader election, on the test's ports."""
    return ControllerSettings(
        kubeconfig=kubeconfig, namespace=NAMESPACE, identity=identity, lease_duration=2, renew_deadline=1.5,
        retry_period=0.2, health_host="127.0.0.1", health_port=0, webhook=True, webhook_host="127.0.0.1",
        webhook_port=0, webhook_extra_hosts=("127.0.0.1",), pool_host_host="127.0.0.1", pool_host_port=0,
    )  # fmt: skip


async def run_the_controllers(d: Path) -> list[Attributes]:
    """Two controllers in turn, each leading with the webhook on; the requests they made."""
    async with api_servers(d) as (component, admin):
        for obj in documents(DEPLOY / "webhook" / "webhooks.yaml"):
            await admin.create(obj)
        finalized_subnet = subnet("s1", cidr="10.9.0.0/16", ips=["10.9.0.10-10.9.0.90"])
        finalized_subnet["metadata"]["finalizers"] = [FINALIZER]  # as the mutating webhook leaves it
        await admin.create(finalized_subnet)
        await apply(admin, pool("p1", subnet="10.9.0.0/16", ips=["10.9.0.10-10.9.0.20"]))
        await apply(admin, reserved("held", ["10.9.0.11"]))
        await admin.create({"apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderCoordinator",
                            "metadata": {"name": "default"}, "spec": {"podCIDRType": "cluster"}})  # fmt: skip
        kubeconfig = component.kubeconfig(d / "controller.kubeconfig", token="controller")
        first_settings = controller_settings(kubeconfig, "first")
        certs = first_settings.webhook_settings().certs

        async def counted_and_finalized() -> bool:
            pool_now, subnet_now = await admin.get("SpiderIPPool", "p1"), await admin.get("SpiderSubnet", "s1")
            return (
                FINALIZER in (pool_now["metadata"].get("finalizers") or [])
                and "totalIPCount" in (pool_now.get("status") or {})
                and "totalIPCount" in (subnet_now.get("status") or {})
            )

        async def pool_and_subnet_gone() -> bool:
            return not (await admin.list("SpiderIPPool")).items + (await admin.list("SpiderSubnet")).items

        async with open_controller(first_settings) as first:
            await eventually(counted_and_finalized, TIMEOUT, "pool and subnet counted, the pool finalized")
            await eventually(coordinator_synced(admin), TIMEOUT, "the SpiderCoordinator's status written")
            await forward_to_the_pool_host(first, admin, component)
            await multus_round_trip(admin)
            await auto_pool_round_trip(admin)
            await admin.delete("SpiderIPPool", "p1")  # the controller removes the finalizers of both
            await admin.delete("SpiderSubnet", "s1")
            await eventually(pool_and_subnet_gone, TIMEOUT, "the pool and the subnet deleted")
            assert first.webhook is not None
            assert first.webhook.port is not None
            secret = await admin.get("Secret", certs.secret, NAMESPACE)
            ca = base64.b64decode(secret["data"]["ca.crt"])
            request = review("CREATE", mutated_pool("p2", subnet="10.9.0.0/16", ips=["10.9.0.30"]))
            status, answer = await post(first.webhook.port, VALIDATE, request, ca, "127.0.0.1")
            assert status == 200, answer
        due = aged(secret, certs.hosts)
        await admin.update(due)
        async with open_controller(controller_settings(kubeconfig, "second")) as second:
            # NB: the Secret was renewed as it started; it takes the Lease the first one released
            async def leading() -> bool:
                return second.elector.leading

            await eventually(leading, TIMEOUT, "the second controller leading")

            async def ca_published() -> bool:  # NB: the aged Secret holds another CA: the agents must get it
                secret_now = await admin.get("Secret", certs.secret, NAMESPACE)
                published = await admin.get("ConfigMap", "spiderpool-ca", NAMESPACE)
                held = x509.load_pem_x509_certificates(base64.b64decode(secret_now["data"]["ca.crt"]))
                # NB: added to the first CA, which stays published until it expires
                return set(held) <= set(x509.load_pem_x509_certificates(published["data"]["ca.crt"].encode()))

            await eventually(ca_published, TIMEOUT, "the renewed CA published for the agents")
        renewed = await admin.get("Secret", certs.secret, NAMESPACE)
        assert renewed["data"]["tls.crt"] != due["data"]["tls.crt"]
        return requests_of(component)


async def auto_pool_round_trip(admin: KubeStore) -> None:
    """A Deployment asking subnet s1 for a pool: the controller creates it, then deletes it with the Deployment."""
    template = {"metadata": {"annotations": {"ipam.spidernet.io/subnet": '{"ipv4": ["s1"]}'}}}
    meta = {"name": "web", "namespace": "default"}
    await admin.create({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
                        "spec": {"replicas": 1, "template": template}})  # fmt: skip
    selector = "ipam.spidernet.io/owner-application-name=web"

    async def pools(present: bool) -> bool:
        return bool((await admin.list("SpiderIPPool", label_selector=selector)).items) == present

    await eventually(functools.partial(pools, True), TIMEOUT, "the Deployment's auto pool created")
    await admin.delete("Deployment", "web", "default")
    await eventually(functools.partial(pools, False), TIMEOUT, "the auto pool deleted with its Deployment")


async def multus_round_trip(admin: KubeStore) -> None:
    """A SpiderMultusConfig's NAD made by the leader, updated, made again when deleted by hand and deleted with
    the SMC (``actors/controller/multus.py``)."""
    smc = {"apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderMultusConfig",
           "metadata": {"name": "net1", "namespace": "default"},
           "spec": {"cniType": "macvlan", "macvlan": {"master": ["eth0"]}}}  # fmt: skip
    await admin.create(smc)

    async def config_has(text: str) -> bool:
        try:
            nad = await admin.get("NetworkAttachmentDefinition", "net1", "default")
        except NotFound:
            return False
        return text in nad["spec"]["config"]

    await eventually(functools.partial(config_has, '"eth0"'), TIMEOUT, "the NAD made")
    stored = await admin.get("SpiderMultusConfig", "net1", "default")
    stored["spec"]["macvlan"]["vlanID"] = 100
    await admin.update(stored)
    await eventually(functools.partial(config_has, '"eth0.100"'), TIMEOUT, "the NAD updated")
    await admin.delete("NetworkAttachmentDefinition", "net1", "default")
    await eventually(functools.partial(config_has, '"eth0.100"'), TIMEOUT, "the NAD made again")
    await admin.delete("SpiderMultusConfig", "net1", "default")

    async def gone() -> bool:
        return not (await admin.list("NetworkAttachmentDefinition")).items

    await eventually(gone, TIMEOUT, "the NAD deleted with its SMC")


def coordinator_synced(admin: KubeStore):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return bool((await admin.get("SpiderCoordinator", "default")).get("status"))

    return check


async def forward_to_the_pool_host(controller: Controller, admin: KubeStore, api: FakeApiServer) -> None:
    """An agent's batch (an ADD and its DEL) sent to the leading controller's pool host, as the agents do."""

    async def hosting() -> bool:
        return controller.elector.leading and controller.pool_host_port is not None

    await eventually(hosting, TIMEOUT, "the pool host serving")
    assert controller.pool_host_port is not None
    ca = (await admin.get("ConfigMap", "spiderpool-ca", NAMESPACE))["data"]["ca.crt"].encode()
    address = HostAddress("127.0.0.1", controller.pool_host_port, ca)
    token = api.cluster.mint_token(NAMESPACE, "spiderpool-agent")
    owner = {"pod_uid": "u1", "nic": "eth0", "namespace": "default", "name": "p", "container_id": "c",
             "node": NODE, "added_at": None}  # fmt: skip
    client = HostClient()
    try:
        for message in ({"op": "allocate", "owner": owner, "avoid": None},
                        {"op": "release", "key": ["u1", "eth0"], "containerID": ""}):  # fmt: skip
            body = json.dumps({"messages": [message]}).encode()
            sent = await client.post(address, address.ssl_context(), "/v1/pools/p1", (lambda data=body: data), token)
            answer = json.loads(sent)
            assert "value" in answer["results"][0], answer
    finally:
        await client.aclose()


INIT_POOLS = {
    "SPIDERPOOL_INIT_DEFAULT_IPV4_SUBNET_NAME": "default-v4-subnet",
    "SPIDERPOOL_INIT_DEFAULT_IPV4_IPPOOL_NAME": "default-v4-ippool",
    "SPIDERPOOL_INIT_DEFAULT_IPV4_IPPOOL_SUBNET": "172.18.0.0/16",
    "SPIDERPOOL_INIT_DEFAULT_IPV4_IPPOOL_IPRANGES": '["172.18.40.1-172.18.40.10"]',
    "SPIDERPOOL_INIT_DEFAULT_IPV4_IPPOOL_GATEWAY": "172.18.0.1",
}
"""The default subnet and pool deploy/init.yaml's comment says to name (its Job names only the coordinator)."""
MULTUS_CONFIGMAP = "spiderpool-multus"
INIT_MULTUS = {"SPIDERPOOL_INIT_INSTALL_MULTUS": "true", "SPIDERPOOL_INIT_MULTUS_CONFIGMAP": MULTUS_CONFIGMAP}
"""And Multus's ConfigMap, which deploy/init.yaml's comment says how to name."""


def init_environment() -> dict[str, str]:
    """The environment deploy/init.yaml's Job gives ``spider init``, plus the default subnet and pool."""
    [job] = documents(DEPLOY / "init.yaml")
    [container] = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    return env | {"SPIDERPOOL_NAMESPACE": NAMESPACE} | INIT_POOLS


@pytest.fixture
def init_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """``init_environment()`` in this process's environment (``spider init`` reads it), restored afterwards;
    the node's CNI configurations are a folder holding Calico's."""
    cni_dir = tmp_path / "net.d"
    cni_dir.mkdir()
    (cni_dir / "10-calico.conflist").write_text(
        json.dumps({"name": "k8s-pod-network", "plugins": [{"type": "calico"}]})
    )
    env = init_environment() | INIT_MULTUS | {"SPIDERPOOL_INIT_DEFAULT_CNI_DIR": str(cni_dir)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


async def run_init(d: Path) -> list[Attributes]:
    """``spider init`` as deploy/init.yaml runs it: waiting until a controller holds the Lease, creating the
    defaults; then again, finding them all; the requests it made."""
    async with api_servers(d) as (component, admin):
        token = component.cluster.mint_token(NAMESPACE, "spiderpool-init")
        kubeconfig = component.kubeconfig(d / "init.kubeconfig", token=token)
        argv = ["init", "--kubeconfig", str(kubeconfig), "--wait-controller", str(TIMEOUT)]
        multus = {"name": "multus-cni-network", "type": "multus"}
        await admin.create({"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": MULTUS_CONFIGMAP, "namespace": NAMESPACE},
                            "data": {"cni-conf.json": json.dumps(multus)}})  # fmt: skip
        async with trio.open_nursery() as nursery:
            first = trio.Event()

            async def first_run() -> None:
                assert await trio.to_thread.run_sync(spider_main, argv) == 0
                first.set()

            nursery.start_soon(first_run)
            await trio.sleep(0.2)  # NB: no Lease yet: init waits (a 404, then a Lease without a holder)
            lease = await admin.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                        "metadata": {"name": "spiderpool-controller-leases", "namespace": NAMESPACE},
                                        "spec": {}})  # fmt: skip
            await trio.sleep(0.6)
            await admin.update({**lease, "spec": {"holderIdentity": "ctl_1"}})
            await first.wait()
        kinds = ("SpiderCoordinator", "SpiderSubnet", "SpiderIPPool", "SpiderMultusConfig")
        made = {(o["kind"], o["metadata"]["name"]) for k in kinds for o in (await admin.list(k)).items}
        assert made == {("SpiderCoordinator", "default"), ("SpiderSubnet", "default-v4-subnet"),
                        ("SpiderIPPool", "default-v4-ippool"), ("SpiderMultusConfig", "calico")}  # fmt: skip
        configmap = await admin.get("ConfigMap", MULTUS_CONFIGMAP, NAMESPACE)
        assert json.loads(configmap["data"]["cni-conf.json"])["clusterNetwork"] == "k8s-pod-network"
        assert await trio.to_thread.run_sync(spider_main, argv) == 0  # everything exists: AlreadyExists each
        return requests_of(component)


def denied(account: str, requests: list[Attributes]) -> list[str]:
    rules = AUTHORIZER.rules(NAMESPACE, account)
    return sorted({str(r) for r in requests if not allowed(rules, r)})


def unused(account: str, requests: list[Attributes]) -> list[str]:
    """Permissions granted to ``account`` that no request used, of rules that do not say why they stay."""
    out = []
    for rule in AUTHORIZER.rules(NAMESPACE, account):
        if NOT_RUN_HERE in rule.comment:
            continue
        for group, resource, verb in sorted(rule.grants()):
            if not any(
                rule.allows(r) for r in requests if (r.group, r.resource_path, r.verb) == (group, resource, verb)
            ):
                out.append(f"{rule}: {verb} {group or 'core'}/{resource}")
    return out


async def test_the_agent_asks_only_what_its_role_allows_and_its_role_allows_only_what_it_asks() -> None:
    with short_tmp() as d, trio.fail_after(TIMEOUT):
        requests = await run_the_agent(d)
    assert denied("spiderpool-agent", requests) == []
    assert unused("spiderpool-agent", requests) == []


async def test_the_controller_asks_only_what_its_roles_allow_and_its_roles_allow_only_what_it_asks() -> None:
    with short_tmp() as d, trio.fail_after(TIMEOUT):
        requests = await run_the_controllers(d)
    assert denied("spiderpool-controller", requests) == []
    assert unused("spiderpool-controller", requests) == []


async def test_spider_init_asks_only_what_its_roles_allow_and_its_roles_allow_only_what_it_asks(
    init_env: dict[str, str],
) -> None:
    with short_tmp() as d, trio.fail_after(TIMEOUT):
        requests = await run_init(d)
    assert denied("spiderpool-init", requests) == []
    assert unused("spiderpool-init", requests) == []


def test_the_authorizer_refuses_what_a_rule_does_not_name() -> None:
    rule = Rule("ClusterRole/x", 0, ("apps",), ("statefulsets",), ("get",), (), "", "")
    named = Rule("Role/y", 0, ("",), ("secrets",), ("get", "update"), ("mine",), NAMESPACE, "")
    get = request_attributes("GET", "/apis/apps/v1/namespaces/default/statefulsets/db")
    assert allowed([rule], get)
    assert not allowed([rule], request_attributes("GET", "/apis/apps/v1/namespaces/default/statefulsets"))  # list
    assert not allowed([rule], request_attributes("GET", "/apis/apps/v1/statefulsets?watch=true"))
    assert not allowed([rule], request_attributes("GET", "/apis/batch/v1/namespaces/default/jobs/db"))
    assert not allowed([rule], request_attributes("PUT", "/apis/apps/v1/namespaces/default/statefulsets/db/status"))
    assert allowed([named], request_attributes("PUT", f"/api/v1/namespaces/{NAMESPACE}/secrets/mine"))
    assert not allowed([named], request_attributes("PUT", "/api/v1/namespaces/default/secrets/mine"))
    assert not allowed([named], request_attributes("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/other"))
    assert not allowed([named], request_attributes("POST", f"/api/v1/namespaces/{NAMESPACE}/secrets"))
    assert allowed([], request_attributes("GET", "/version"))
