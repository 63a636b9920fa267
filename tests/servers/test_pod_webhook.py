"""The pod resource-injection webhook over real TLS (reference §7.3, H00001): a pod's AdmissionReview in, a
JSONPatch or Spiderpool's refusal out; the namespace filter; its cache; hostile bodies; the manifest."""

from __future__ import annotations

import json
import os
import random
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import yaml

from actors.servers.certs import generate, write_bundle
from actors.servers.pod_webhook import PodResourceWebhook, webhook_entry
from actors.servers.webhook import AdmissionWebhook, WebhookSettings
from actors.stores.port import Obj, Store
from actors.stores.sqlite import SqliteStore
from spider.podinject import ANNO_RDMA_INJECT, POD_WEBHOOK_PATH, PodInjectSettings
from tests.controller.support import FaultyStore
from tests.servers.test_webhook import (
    NAMESPACE,
    SERVICE_DNS,
    VALIDATE,
    ca_bundle,
    cert_settings,
    configuration,
    patch_of,
    post,
    review,
)
from tests.spider.test_admission import apply_patch

TIMEOUT = 20
NETWORKS = "k8s.v1.cni.cncf.io/networks"
COMPONENT = Path(__file__).resolve().parents[2] / "deploy" / "webhook" / "pod-inject" / "kustomization.yaml"


def smc(name: str, namespace: str, master: str, resource: str, value: str = "gpu") -> Obj:
    return {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderMultusConfig",
        "metadata": {"name": name, "namespace": namespace, "labels": {ANNO_RDMA_INJECT: value}},
        "spec": {
            "cniType": "macvlan",
            "macvlan": {"master": [master], "rdmaResourceName": resource, "ippools": {"ipv4": [f"{name}-v4"]}},
        },
    }


def namespace_obj(name: str, annotations: dict[str, str] | None = None) -> Obj:
    meta: dict[str, Any] = {"name": name, "labels": {"kubernetes.io/metadata.name": name}}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def new_pod(namespace: str = "default", annotations: dict[str, str] | None = None) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "rdma-", "namespace": namespace, "annotations": dict(annotations or {})},
        "spec": {"containers": [{"name": "c", "image": "alpine"}]},
    }


def pod_review(obj: Obj, operation: str = "CREATE", namespace: str | None = None) -> bytes:
    body = json.loads(review(operation, obj))
    body["request"]["kind"] = {"group": "", "version": "v1", "kind": "Pod"}
    body["request"]["resource"] = {"group": "", "version": "v1", "resource": "pods"}
    body["request"]["namespace"] = obj["metadata"]["namespace"] if namespace is None else namespace
    return json.dumps(body).encode()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with await SqliteStore.open(tmp_path / "store.db") as s:
        for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            await s.create(configuration(kind))
        for name in ("default", "kube-system", "team"):
            await s.create(namespace_obj(name))
        yield s


@asynccontextmanager
async def serving(
    store: Store, settings: PodInjectSettings | None = None, *, tls_dir: Path | None = None, sync_wait: float = 5.0
) -> AsyncIterator[AdmissionWebhook]:
    pods = PodResourceWebhook(store, settings or PodInjectSettings(enabled=True), sync_wait=sync_wait)
    webhook = AdmissionWebhook(store, pods=pods)
    async with trio.open_nursery() as nursery:
        await nursery.start(webhook.serve, WebhookSettings(cert_settings(tls_dir), port=0, host="127.0.0.1"))
        yield webhook
        nursery.cancel_scope.cancel(reason="test over")


async def test_h00001_a_pod_asking_for_rdma_gets_its_networks_and_resources_through_https(store: Store) -> None:
    await store.create(smc("gpu1", "kube-system", "ens1", "spidernet.io/shared_rdma"))
    await store.create(smc("gpu2", "team", "ens2", "spidernet.io/shared_rdma"))
    pod = new_pod(annotations={ANNO_RDMA_INJECT: "gpu"})
    with trio.fail_after(TIMEOUT):
        async with serving(store, PodInjectSettings(enabled=True, master_nic=True)) as webhook:
            assert webhook.port is not None
            ca = await ca_bundle(store, "MutatingWebhookConfiguration")
            status, answer = await post(webhook.port, POD_WEBHOOK_PATH, pod_review(pod), ca)
    assert status == 200
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["response"]["uid"] == "uid-1"
    assert answer["response"]["allowed"] is True
    after = apply_patch(pod, patch_of(answer))
    assert after["metadata"]["annotations"][NETWORKS] == "kube-system/gpu1,team/gpu2"
    assert after["spec"]["containers"][0]["resources"] == {
        "limits": {"spidernet.io/shared_rdma": "1", "spidernet.io/ens1-nic": "1", "spidernet.io/ens2-nic": "1"},
        "requests": {"spidernet.io/ens1-nic": "1", "spidernet.io/ens2-nic": "1"},
    }


async def test_h00001_an_smc_written_raw_with_only_the_annotation_is_injected_by_its_nads_name(store: Store) -> None:
    # As kubectl writes it where no SMC webhook ran: straight into the store, the inject annotation and no label
    raw = smc("gpu-smc", "team", "ens3", "spidernet.io/shared_rdma")
    raw["metadata"]["annotations"] = {ANNO_RDMA_INJECT: "gpu", "multus.spidernet.io/cr-name": "gpu-nad"}
    del raw["metadata"]["labels"]
    await store.create(raw)
    pod = new_pod(annotations={ANNO_RDMA_INJECT: "gpu"})
    with trio.fail_after(TIMEOUT):
        async with serving(store) as webhook:
            assert webhook.port is not None
            ca = await ca_bundle(store, "MutatingWebhookConfiguration")
            status, answer = await post(webhook.port, POD_WEBHOOK_PATH, pod_review(pod), ca)
    assert (status, answer["response"]["allowed"]) == (200, True)
    after = apply_patch(pod, patch_of(answer))
    assert after["metadata"]["annotations"][NETWORKS] == "team/gpu-nad"  # the NAD Multus looks up
    assert after["spec"]["containers"][0]["resources"] == {"limits": {"spidernet.io/shared_rdma": "1"}}


async def test_the_namespaces_annotation_asks_for_the_pods_of_that_namespace(store: Store) -> None:
    await store.create(smc("gpu1", "kube-system", "ens1", "rdma/a"))
    team = await store.get("Namespace", "team")
    team["metadata"]["annotations"] = {ANNO_RDMA_INJECT: "gpu"}
    await store.update(team)
    with trio.fail_after(TIMEOUT):
        async with serving(store) as webhook:
            assert webhook.port is not None
            ca = await ca_bundle(store, "MutatingWebhookConfiguration")
            _, answer = await post(webhook.port, POD_WEBHOOK_PATH, pod_review(new_pod("team")), ca)
            _, untouched = await post(webhook.port, POD_WEBHOOK_PATH, pod_review(new_pod("default")), ca)
    assert apply_patch(new_pod("team"), patch_of(answer))["metadata"]["annotations"][NETWORKS] == "kube-system/gpu1"
    assert untouched["response"] == {"uid": "uid-1", "allowed": True}


async def test_a_pod_that_cannot_be_served_is_refused_with_spiderpools_text(store: Store) -> None:
    pod = new_pod(annotations={ANNO_RDMA_INJECT: "none-such"})
    with trio.fail_after(TIMEOUT):
        async with serving(store) as webhook:
            assert webhook.port is not None
            ca = await ca_bundle(store, "MutatingWebhookConfiguration")
            status, answer = await post(webhook.port, POD_WEBHOOK_PATH, pod_review(pod), ca)
            assert webhook.pods is not None
            assert webhook.pods.refused == 1
    assert status == 200
    assert answer["response"]["allowed"] is False
    assert answer["response"]["status"] == {
        "status": "Failure",
        "code": 403,
        "reason": "Forbidden",
        "message": f"no spidermultusconfigs with annotation: {ANNO_RDMA_INJECT}:none-such found",
    }


async def test_excluded_namespaces_and_updates_are_allowed_untouched_whatever_they_ask(store: Store) -> None:
    await store.create(smc("gpu1", "kube-system", "ens1", "rdma/a"))
    asking = {ANNO_RDMA_INJECT: "gpu"}
    settings = PodInjectSettings(enabled=True, namespaces_include=("default",))
    with trio.fail_after(TIMEOUT):
        async with serving(store, settings) as webhook:
            assert webhook.port is not None
            ca = await ca_bundle(store, "MutatingWebhookConfiguration")
            for body in (
                pod_review(new_pod("kube-system", asking)),  # excluded by default
                pod_review(new_pod("team", asking)),  # not included
                pod_review(new_pod("", asking), namespace="kube-system"),  # the review's namespace counts
                pod_review(new_pod("default", asking), operation="UPDATE"),
                pod_review(new_pod("default", asking), operation="DELETE"),
            ):
                status, answer = await post(webhook.port, POD_WEBHOOK_PATH, body, ca)
                assert (status, answer["response"]) == (200, {"uid": "uid-1", "allowed": True})
            _, answer = await post(webhook.port, POD_WEBHOOK_PATH, pod_review(new_pod("default", asking)), ca)
            assert answer["response"]["patchType"] == "JSONPatch"


async def test_a_config_labelled_after_the_start_is_seen_through_the_watch(store: Store) -> None:
    pod = new_pod(annotations={ANNO_RDMA_INJECT: "late"})
    with trio.fail_after(TIMEOUT):
        async with serving(store) as webhook:
            assert webhook.port is not None
            assert webhook.pods is not None
            ca = await ca_bundle(store, "MutatingWebhookConfiguration")
            await webhook.pods.cache.wait_synced()
            _, answer = await post(webhook.port, POD_WEBHOOK_PATH, pod_review(pod), ca)
            assert answer["response"]["allowed"] is False
            await store.create(smc("late1", "team", "ens3", "rdma/late", value="late"))
            while not answer["response"]["allowed"]:
                await trio.sleep(0.05)
                _, answer = await post(webhook.port, POD_WEBHOOK_PATH, pod_review(pod), ca)
    assert apply_patch(pod, patch_of(answer))["metadata"]["annotations"][NETWORKS] == "team/late1"


async def test_the_answer_is_500_until_the_configs_could_be_listed(store: Store, tmp_path: Path) -> None:
    mounted = generate((SERVICE_DNS,))
    write_bundle(tmp_path / "tls", mounted)
    faulty = FaultyStore(store, down=True)
    pod = new_pod(annotations={ANNO_RDMA_INJECT: "gpu"})
    with trio.fail_after(TIMEOUT):
        async with serving(faulty, tls_dir=tmp_path / "tls", sync_wait=0.2) as webhook:
            assert webhook.port is not None
            status, answer = await post(webhook.port, POD_WEBHOOK_PATH, pod_review(pod), mounted.ca)
            assert status == 500
            assert "has not listed the SpiderMultusConfigs yet" in answer


async def test_reviews_of_other_kinds_or_methods_are_refused_and_without_the_setting_the_path_is_absent(
    store: Store,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(store) as webhook:
            assert webhook.port is not None
            ca = await ca_bundle(store, "MutatingWebhookConfiguration")
            status, answer = await post(webhook.port, POD_WEBHOOK_PATH, review("CREATE", {"metadata": {}}), ca)
            assert status == 200
            assert answer["response"]["status"]["code"] == 400
            assert "reviews Pod, not SpiderIPPool" in answer["response"]["status"]["message"]
        plain = AdmissionWebhook(store)
        async with trio.open_nursery() as nursery:
            await nursery.start(plain.serve, WebhookSettings(cert_settings(), port=0, host="127.0.0.1"))
            assert plain.port is not None
            pod = new_pod(annotations={ANNO_RDMA_INJECT: "gpu"})
            status, _ = await post(plain.port, POD_WEBHOOK_PATH, pod_review(pod), ca)
            assert status == 404
            nursery.cancel_scope.cancel(reason="test over")


async def announce_body(port: int, length: int, ca: bytes) -> int:
    """The status of a POST whose headers announce ``length`` bytes, none of which are sent."""
    context = ssl.create_default_context(cadata=ca.decode())
    stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", port), context, server_hostname=SERVICE_DNS)
    conn = h11.Connection(h11.CLIENT)
    async with stream:
        headers = [("Host", SERVICE_DNS), ("Content-Type", "application/json"), ("Content-Length", str(length))]
        await stream.send_all(conn.send(h11.Request(method="POST", target=POD_WEBHOOK_PATH, headers=headers)))
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                return event.status_code


def hostile_bodies() -> list[bytes]:
    rng = random.Random(15)
    bodies = [
        b"[" * 100_000 + b"]" * 100_000,  # nested far too deep
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
        b"\xff\xfe\x00\x80 not utf-8 \xc3\x28",
        os.urandom(4096),
        b"",
        b"null",
        b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": []}',
        json.dumps(
            {
                "kind": "AdmissionReview",
                "apiVersion": "admission.k8s.io/v1",
                "request": {
                    "uid": "u",
                    "kind": {"kind": "Pod"},
                    "operation": "CREATE",
                    "object": {"metadata": "x", "spec": 7},
                },
            }
        ).encode(),
        json.dumps(
            {
                "kind": "AdmissionReview",
                "apiVersion": "admission.k8s.io/v1",
                "request": {
                    "uid": "u",
                    "kind": {"kind": "Pod"},
                    "operation": "CREATE",
                    "namespace": "d",
                    "object": {
                        "metadata": {"annotations": {ANNO_RDMA_INJECT: ["x"], NETWORKS: 5}},
                        "spec": {"containers": "c"},
                    },
                },
            }
        ).encode(),
        json.dumps(
            {
                "kind": "AdmissionReview",
                "apiVersion": "admission.k8s.io/v1",
                "request": {
                    "uid": "u",
                    "kind": {"kind": "Pod"},
                    "operation": "CREATE",
                    "namespace": "d",
                    "object": {"metadata": 7, "spec": {"containers": [{"resources": {"limits": []}}]}},
                },
            }
        ).encode(),
        pod_review(
            {
                "metadata": {"namespace": "default", "annotations": {ANNO_RDMA_INJECT: "gpu"}},
                "spec": {"containers": [{"name": "c", "resources": {"limits": "none"}}, 3]},
            }
        ),
        pod_review({"metadata": {"namespace": "default", "annotations": {NETWORKS: '[{"name": 1}]'}}, "spec": {}}),
    ]
    bodies += [bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 2048))) for _ in range(20)]
    return bodies


async def test_hostile_bodies_get_a_client_error_and_the_webhook_serves_on(store: Store) -> None:
    await store.create(smc("gpu1", "kube-system", "ens1", "rdma/a"))
    with trio.fail_after(TIMEOUT * 3):
        async with serving(store) as webhook:
            assert webhook.port is not None
            ca = await ca_bundle(store, "MutatingWebhookConfiguration")
            for body in hostile_bodies():
                status, _ = await post(webhook.port, POD_WEBHOOK_PATH, body, ca)
                assert status in (200, 400), body[:80]
            big = pod_review(new_pod(annotations={ANNO_RDMA_INJECT: "gpu", "pad": "x" * (3 * 1024 * 1024)}))
            status, answer = await post(webhook.port, POD_WEBHOOK_PATH, big, ca)
            assert status == 200  # under the 4 MiB bound: decided like any other
            assert answer["response"]["patchType"] == "JSONPatch"
            assert await announce_body(webhook.port, 64 * 1024 * 1024, ca) == 413  # refused before it is sent
            pod = new_pod(annotations={ANNO_RDMA_INJECT: "gpu"})
            status, answer = await post(webhook.port, POD_WEBHOOK_PATH, pod_review(pod), ca)
            assert status == 200
            assert answer["response"]["patchType"] == "JSONPatch"
            status, _ = await post(webhook.port, VALIDATE, review("CREATE", {"metadata": {"name": "p"}}), ca)
            assert status == 200  # the other paths too


def test_the_component_adds_exactly_the_entry_the_controller_serves_with_spiderpools_defaults() -> None:
    component = yaml.safe_load(COMPONENT.read_text())
    [webhooks] = [p for p in component["patches"] if p["target"]["kind"] == "MutatingWebhookConfiguration"]
    [op] = yaml.safe_load(webhooks["patch"])
    assert (op["op"], op["path"]) == ("add", "/webhooks/-")
    assert op["value"] == webhook_entry(PodInjectSettings(), service=cert_settings().service, namespace=NAMESPACE)
    assert webhooks["target"]["name"] == cert_settings().configuration  # the caBundle is filled in there
    [deployment] = [p for p in component["patches"] if p["target"]["kind"] == "Deployment"]
    assert yaml.safe_load(deployment["patch"])[0]["value"] == "--pod-resource-inject"


async def test_the_controller_serves_the_pod_webhook_when_pod_resource_inject_is_on(
    store: Store, tmp_path: Path
) -> None:
    from actors.controller.main import ControllerSettings, open_controller

    mounted = generate((SERVICE_DNS,))
    write_bundle(tmp_path / "tls", mounted)
    await store.create(smc("gpu1", "kube-system", "ens1", "rdma/a"))
    settings = ControllerSettings(
        store_path=tmp_path / "unused.db",
        namespace=NAMESPACE,
        identity="c-0",
        health_host="127.0.0.1",
        health_port=0,
        webhook_host="127.0.0.1",
        webhook_port=0,
        webhook_cert_dir=tmp_path / "tls",
        pod_inject=PodInjectSettings(enabled=True),  # NB: without webhook=True: the setting serves the port
    )
    pod = new_pod(annotations={ANNO_RDMA_INJECT: "gpu"})
    with trio.fail_after(TIMEOUT):
        async with open_controller(settings, store) as controller:
            assert controller.webhook is not None
            assert controller.webhook.port is not None
            status, answer = await post(controller.webhook.port, POD_WEBHOOK_PATH, pod_review(pod), mounted.ca)
    assert status == 200
    assert apply_patch(pod, patch_of(answer))["metadata"]["annotations"][NETWORKS] == "kube-system/gpu1"


def test_kustomize_builds_the_pod_webhook_into_the_configuration_and_the_controller_parses_its_args() -> None:
    import shutil

    from actors.tools.cli import build_parser
    from actors.tools.controller_args import pod_inject_settings
    from tests.deploy.test_manifests import DEPLOY, kustomize, one
    from tests.support import short_tmp

    with short_tmp() as tmp:
        shutil.copytree(DEPLOY, tmp / "deploy")
        with (tmp / "deploy" / "kustomization.yaml").open("a") as f:
            f.write("components:\n  - webhook\n  - webhook/pod-inject\n")
        built = kustomize(tmp / "deploy")
    mutating = one(built, "MutatingWebhookConfiguration", "spiderpool-controller")
    assert mutating["webhooks"][-1]["clientConfig"]["service"]["path"] == POD_WEBHOOK_PATH
    assert len(mutating["webhooks"]) == 5  # the three IPAM kinds' and the SpiderMultusConfig's hooks are kept
    rules = one(built, "ClusterRole", "spiderpool-controller-pod-webhook")["rules"]
    assert {(r["apiGroups"][0], r["resources"][0]) for r in rules} == {
        ("spiderpool.spidernet.io", "spidermultusconfigs"),
        ("", "namespaces"),
    }
    controller = one(built, "Deployment", "spiderpool-controller")["spec"]["template"]["spec"]["containers"][0]
    assert controller["args"][-2:] == ["--webhook", "--pod-resource-inject"]
    parsed = build_parser().parse_args(controller["args"])
    assert pod_inject_settings(parsed) == PodInjectSettings(enabled=True)  # the selector's namespaces
