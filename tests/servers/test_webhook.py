"""The admission webhook over real TLS: certificates, caBundle, AdmissionReview answers on Spiderpool's paths."""

from __future__ import annotations

import base64
import json
import random
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import h11
import pytest
import trio

from actors.servers.certs import CertSettings, generate, problem, write_bundle
from actors.servers.webhook import ROUTES, AdmissionWebhook, WebhookSettings
from actors.stores.port import Obj, Store
from actors.stores.sqlite import SqliteStore
from actors.stores.validating import ValidatingStore
from spider.kinds import FINALIZER
from spider.validation import AdmissionSettings
from tests.controller.support import FaultyStore, pool, subnet
from tests.spider.test_admission import apply_patch
from tests.support import answer_status, exchange

TIMEOUT = 20
NAMESPACE = "kube-system"
SERVICE_DNS = "spiderpool-controller.kube-system.svc"
VALIDATE = "/validate-spiderpool-spidernet-io-v2beta1-spiderippool"
MUTATE = "/mutate-spiderpool-spidernet-io-v2beta1-spiderippool"


def configuration(kind: str) -> Obj:
    """A webhook configuration as the manifests install it: no caBundle yet."""
    action = "mutate" if kind.startswith("Mutating") else "validate"
    webhooks = [
        {
            "name": f"{action}-{k.lower()}.spiderpool.spidernet.io",
            "clientConfig": {
                "service": {"name": "spiderpool-controller", "namespace": NAMESPACE, "port": 5722},
                "path": f"/{action}-spiderpool-spidernet-io-v2beta1-{k.lower()}",
            },
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
        }
        for k in ("SpiderIPPool", "SpiderSubnet", "SpiderReservedIP")
    ]
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": "spiderpool-controller"},
        "webhooks": webhooks,
    }


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with await SqliteStore.open(tmp_path / "store.db") as s:
        for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            await s.create(configuration(kind))
        yield s


def cert_settings(cert_dir: Path | None = None) -> CertSettings:
    return CertSettings(namespace=NAMESPACE, cert_dir=cert_dir)


@asynccontextmanager
async def serving(
    store: Store,
    certs: CertSettings | None = None,
    *,
    sync_wait: float = 5.0,
    read_timeout: float = 30.0,
    admission: AdmissionSettings | None = None,
) -> AsyncIterator[AdmissionWebhook]:
    webhook = AdmissionWebhook(store, settings=admission or AdmissionSettings(), sync_wait=sync_wait)
    settings = WebhookSettings(certs or cert_settings(), port=0, host="127.0.0.1", read_timeout=read_timeout)
    async with trio.open_nursery() as nursery:
        await nursery.start(webhook.serve, settings)
        yield webhook
        nursery.cancel_scope.cancel(reason="test over")


async def ca_bundle(store: Store, kind: str = "ValidatingWebhookConfiguration") -> bytes:
    """The CA the API server would trust: read back from the stored configuration."""
    (bundle,) = {w["clientConfig"]["caBundle"] for w in (await store.get(kind, "spiderpool-controller"))["webhooks"]}
    return base64.b64decode(bundle)


async def post(port: int, path: str, body: bytes, ca: bytes, hostname: str = SERVICE_DNS) -> tuple[int, Any]:
    """POST over TLS as the API server does: connect to the Service's name, verify against the caBundle."""
    context = ssl.create_default_context(cadata=ca.decode())
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, context, server_hostname=hostname)
    conn = h11.Connection(h11.CLIENT)
    async with stream:
        headers = [("Host", hostname), ("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        data = conn.send(h11.Request(method="POST", target=path, headers=headers))
        data += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        await stream.send_all(data)
        status, raw = 0, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                raw += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, json.loads(raw) if raw else None


def review(operation: str, obj: Any, old: Any = None, kind: str = "SpiderIPPool", uid: str = "uid-1") -> bytes:
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": "spiderpool.spidernet.io", "version": "v2beta1", "kind": kind},
                "name": (obj or old or {}).get("metadata", {}).get("name", ""),
                "operation": operation,
                "object": obj,
                "oldObject": old,
            },
        }
    ).encode()


def patch_of(answer: dict[str, Any]) -> list[dict[str, Any]]:
    assert answer["response"]["patchType"] == "JSONPatch"
    ops: list[dict[str, Any]] = json.loads(base64.b64decode(answer["response"]["patch"]))
    return ops


def mutated_pool(name: str, **spec: Any) -> Obj:
    """A pool as the validating webhook receives it (after mutation: ipVersion set)."""
    obj = pool(name, **spec)
    obj["spec"].setdefault("ipVersion", 4)
    return obj


async def test_the_made_ca_goes_into_every_webhook_of_both_configurations_and_verifies_the_server(
    store: Store,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(store) as webhook:
            assert webhook.port is not None
            ca = await ca_bundle(store)
            assert ca == await ca_bundle(store, "MutatingWebhookConfiguration")
            secret = await store.get("Secret", "spiderpool-controller-server-certs", NAMESPACE)
            assert secret["type"] == "kubernetes.io/tls"
            assert base64.b64decode(secret["data"]["ca.crt"]) == ca
            status, answer = await post(webhook.port, VALIDATE, review("CREATE", mutated_pool("p")), ca)
            assert status == 200
            assert answer == {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {"uid": "uid-1", "allowed": True},
            }


async def test_an_invalid_pool_is_denied_with_the_reason(store: Store) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(store) as webhook:
            assert webhook.port is not None
            bad = mutated_pool("p", subnet="10.6.0.0/16", ips=["10.7.0.1"])
            status, answer = await post(webhook.port, VALIDATE, review("CREATE", bad), await ca_bundle(store))
            assert status == 200
            response = answer["response"]
            assert response["uid"] == "uid-1"
            assert response["allowed"] is False
            assert response["status"]["code"] == 422
            assert response["status"]["reason"] == "Invalid"
            assert "spec.ips" in response["status"]["message"]


async def test_a_pool_overlapping_a_stored_pool_is_denied(store: Store) -> None:
    with trio.fail_after(TIMEOUT):
        await store.create(mutated_pool("first", ips=["10.6.0.10-10.6.0.20"]))
        async with serving(store) as webhook:
            assert webhook.port is not None
            second = mutated_pool("second", ips=["10.6.0.15-10.6.0.30"])
            _, answer = await post(webhook.port, VALIDATE, review("CREATE", second), await ca_bundle(store))
            assert answer["response"]["allowed"] is False
            assert "overlap with IPPool first" in answer["response"]["status"]["message"]


async def test_mutation_answers_a_base64_json_patch_with_spiderpools_defaults(store: Store) -> None:
    with trio.fail_after(TIMEOUT):
        await store.create(subnet("s1", cidr="10.6.0.0/16", gateway="10.6.0.1"))
        async with serving(store) as webhook:
            assert webhook.port is not None
            status, answer = await post(webhook.port, MUTATE, review("CREATE", pool("p")), await ca_bundle(store))
            assert status == 200
            assert answer["response"]["allowed"] is True
            ops = {op["path"]: op for op in patch_of(answer)}
            assert ops["/metadata/finalizers"] == {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}
            assert ops["/spec/ipVersion"]["value"] == 4
            assert ops["/spec/gateway"]["value"] == "10.6.0.1"  # inherited from the subnet of its CIDR
            assert ops["/metadata/labels"]["value"]["ipam.spidernet.io/ippool-cidr"] == "10-6-0-0-16"


async def test_with_the_subnet_feature_off_a_pool_inherits_nothing_from_a_subnet(store: Store) -> None:
    # Spiderpool's mutateIPPool: `if iw.EnableSpiderSubnet { setControllerSubnet; InheritSubnetProperties }`
    off = AdmissionSettings(enable_subnet=False)
    routes = [{"dst": "172.16.0.0/16", "gw": "10.6.0.1"}]
    with trio.fail_after(TIMEOUT):
        await store.create(subnet("s1", cidr="10.6.0.0/16", gateway="10.6.0.1", routes=routes))
        async with serving(store, admission=off) as webhook:
            assert webhook.port is not None
            _, answer = await post(webhook.port, MUTATE, review("CREATE", pool("p")), await ca_bundle(store))
        ops = {op["path"]: op for op in patch_of(answer)}
        assert "/spec/gateway" not in ops
        assert "/spec/routes" not in ops
        assert "ipam.spidernet.io/owner-spider-subnet" not in ops["/metadata/labels"]["value"]
        stored = await ValidatingStore(store, off).create(pool("q"))  # the store layer agrees
        assert "gateway" not in stored["spec"]
        assert "ipam.spidernet.io/owner-spider-subnet" not in stored["metadata"]["labels"]


async def test_a_finalizer_only_update_of_a_terminating_pool_is_never_blocked(store: Store) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(store) as webhook:
            assert webhook.port is not None
            ca = await ca_bundle(store)
            old = pool("p", subnet="garbage")  # even a pool no rule accepts any more
            old["metadata"].update(finalizers=[FINALIZER], deletionTimestamp="2024-01-01T00:00:00Z")
            new = {**old, "metadata": {**old["metadata"], "finalizers": []}}
            for path in (VALIDATE, MUTATE):
                status, answer = await post(webhook.port, path, review("UPDATE", new, old), ca)
                assert status == 200
                assert answer["response"] == {"uid": "uid-1", "allowed": True}
            _, answer = await post(webhook.port, VALIDATE, review("DELETE", None, old), ca)
            assert answer["response"]["allowed"] is True


async def test_subnets_and_reserved_ips_have_their_own_paths(store: Store) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(store) as webhook:
            assert webhook.port is not None
            ca = await ca_bundle(store)
            reserved = {
                "kind": "SpiderReservedIP",
                "metadata": {"name": "r"},
                "spec": {"ips": ["10.6.0.9", "10.6.0.8"]},
            }
            path = "/mutate-spiderpool-spidernet-io-v2beta1-spiderreservedip"
            _, answer = await post(webhook.port, path, review("CREATE", reserved, kind="SpiderReservedIP"), ca)
            ops = {op["path"]: op["value"] for op in patch_of(answer)}
            assert ops == {"/spec/ipVersion": 4, "/spec/ips": ["10.6.0.8-10.6.0.9"]}
            bad = subnet("s", cidr="10.6.0.1/16")
            bad["spec"]["ipVersion"] = 4
            path = "/validate-spiderpool-spidernet-io-v2beta1-spidersubnet"
            _, answer = await post(webhook.port, path, review("CREATE", bad, kind="SpiderSubnet"), ca)
            assert answer["response"]["allowed"] is False
            assert "unformatted subnet" in answer["response"]["status"]["message"]


MULTUS_MUTATE = "/mutate-spiderpool-spidernet-io-v2beta1-spidermultusconfig"
MULTUS_VALIDATE = "/validate-spiderpool-spidernet-io-v2beta1-spidermultusconfig"


def multus_config(name: str, annotations: dict[str, str] | None = None, **spec: Any) -> Obj:
    """A SpiderMultusConfig as kubectl sends it (no defaults, no namespace in a create's object)."""
    meta: Obj = {"name": name, **({"annotations": annotations} if annotations else {})}
    default = {"cniType": "macvlan", "macvlan": {"master": ["eth0"], "ippools": {"ipv4": ["v4"]}}}
    return {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderMultusConfig",
        "metadata": meta,
        "spec": spec or default,
    }


def multus_review(operation: str, obj: Obj, namespace: str = "team") -> bytes:
    body = json.loads(review(operation, obj, kind="SpiderMultusConfig"))
    body["request"]["namespace"] = namespace
    return json.dumps(body).encode()


async def test_a_multus_config_is_mutated_with_its_inject_annotation_copied_to_the_label(store: Store) -> None:
    config = multus_config(
        "gpu",
        {"cni.spidernet.io/rdma-resource-inject": "gpu"},
        cniType="macvlan",
        macvlan={"master": ["eth0"], "rdmaResourceName": "spidernet.io/rdma", "ippools": {"ipv4": ["v4"]}},
    )
    with trio.fail_after(TIMEOUT):
        async with serving(store) as webhook:
            assert webhook.port is not None
            ca = await ca_bundle(store, "MutatingWebhookConfiguration")
            status, answer = await post(webhook.port, MULTUS_MUTATE, multus_review("CREATE", config), ca)
    assert (status, answer["response"]["allowed"]) == (200, True)
    after = apply_patch(config, patch_of(answer))
    assert after["metadata"]["labels"] == {"cni.spidernet.io/rdma-resource-inject": "gpu"}
    assert after["spec"]["macvlan"]["vlanID"] == 0
    assert after["spec"]["coordinator"]["mode"] == "auto"


async def test_a_bad_multus_config_is_denied_with_spiderpools_text_and_a_good_one_allowed(store: Store) -> None:
    bad = multus_config("bad", cniType="macvlan", macvlan={"master": ["eth0"], "vlanID": 5000})
    odd = multus_config("odd", cniType="macvlan", macvlan={"master": ["eth0"], "ippools": "x"})
    rdma = multus_config("rdma", {"cni.spidernet.io/rdma-resource-inject": "gpu"})
    with trio.fail_after(TIMEOUT):
        async with serving(store) as webhook:
            assert webhook.port is not None
            ca = await ca_bundle(store)
            answers = [
                (await post(webhook.port, MULTUS_VALIDATE, multus_review("CREATE", obj), ca))[1]["response"]
                for obj in (bad, odd, rdma, multus_config("good"))
            ]
    assert [a["allowed"] for a in answers] == [False, False, False, True]
    assert [a["status"]["code"] for a in answers[:3]] == [422, 422, 422]
    messages = [a["status"]["message"] for a in answers[:3]]
    assert "invalid vlanId 5000, please make sure vlanId in range [0,4094]" in messages[0]
    assert "spec.macvlan.ippools in body must be of type object" in messages[1]
    assert messages[2].endswith("rdmaResourceName can not empty for spidermultusconfig team/rdma")


async def test_a_multus_config_taking_over_a_nad_another_config_owns_is_denied(store: Store) -> None:
    owned = {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {
            "name": "shared",
            "namespace": "team",
            "ownerReferences": [
                {"apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderMultusConfig", "name": "first",
                 "uid": "u1", "controller": True}
            ],
        },
        "spec": {"config": "{}"},
    }  # fmt: skip
    await store.create(owned)
    second = multus_config("second", {"multus.spidernet.io/cr-name": "shared"})
    elsewhere = {**second, "metadata": {**second["metadata"], "namespace": "other"}}
    with trio.fail_after(TIMEOUT):
        async with serving(store) as webhook:
            assert webhook.port is not None
            ca = await ca_bundle(store)
            _, denied = await post(webhook.port, MULTUS_VALIDATE, multus_review("CREATE", second), ca)
            _, allowed = await post(webhook.port, MULTUS_VALIDATE, multus_review("CREATE", elsewhere, "other"), ca)
    assert denied["response"]["allowed"] is False
    assert (
        "the net-attach-def team/shared already exists and is managed by SpiderMultusConfig team/first"
        in (denied["response"]["status"]["message"])
    )
    assert allowed["response"]["allowed"] is True


async def test_requests_that_are_not_reviews_for_the_path_are_refused(store: Store) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(store) as webhook:
            assert webhook.port is not None
            ca = await ca_bundle(store)
            status, answer = await post(webhook.port, VALIDATE, b"{not json", ca)
            assert status == 400
            assert "AdmissionReview" in answer
            status, answer = await post(webhook.port, VALIDATE, review("CREATE", subnet("s"), kind="SpiderSubnet"), ca)
            assert status == 200
            assert answer["response"]["allowed"] is False
            assert answer["response"]["status"]["code"] == 400
            status, _ = await post(webhook.port, "/validate-nothing", review("CREATE", pool("p")), ca)
            assert status == 404


async def test_a_review_whose_object_has_no_object_as_metadata_is_a_400_on_every_path(store: Store) -> None:
    # NB: it once raised AttributeError in the finalizer and deletion checks: a 500 and a traceback, no answer
    with trio.fail_after(TIMEOUT):
        async with serving(store) as webhook:
            assert webhook.port is not None
            ca = await ca_bundle(store)
            for path, kind in ((MULTUS_MUTATE, "SpiderMultusConfig"), (MULTUS_VALIDATE, "SpiderMultusConfig"),
                               (MUTATE, "SpiderIPPool"), (VALIDATE, "SpiderIPPool")):  # fmt: skip
                for obj, old in (({"metadata": 1}, None), ({"metadata": {"name": "n"}}, {"metadata": ["x"]})):
                    body = json.loads(review("UPDATE", {}, kind=kind))
                    body["request"] |= {"object": obj, "oldObject": old}
                    status, answer = await post(webhook.port, path, json.dumps(body).encode(), ca)
                    assert (status, "metadata" in answer) == (400, True), (path, answer)
            status, answer = await post(webhook.port, VALIDATE, review("CREATE", pool("p")), ca)
            assert (status, answer["kind"]) == (200, "AdmissionReview")  # and it serves on


async def test_the_answer_is_500_until_the_pools_could_be_listed_so_failure_policy_decides(
    store: Store, tmp_path: Path
) -> None:
    mounted = generate((SERVICE_DNS,))
    write_bundle(tmp_path / "tls", mounted)  # NB: so that serving needs no store
    faulty = FaultyStore(store, down=True)
    with trio.fail_after(TIMEOUT):
        async with serving(faulty, cert_settings(tmp_path / "tls"), sync_wait=0.2) as webhook:
            assert webhook.port is not None
            status, answer = await post(webhook.port, VALIDATE, review("CREATE", mutated_pool("p")), mounted.ca)
            assert status == 500
            assert "has not listed the pools and subnets yet" in answer
            faulty.down = False
            webhook.sync_wait = TIMEOUT  # the cache lists again within its retry delay; the review waits for it
            status, answer = await post(webhook.port, VALIDATE, review("CREATE", mutated_pool("p")), mounted.ca)
            assert status == 200
            assert answer["response"]["allowed"] is True


async def test_once_listed_an_outage_leaves_the_last_state_served(store: Store) -> None:
    faulty = FaultyStore(store)
    await store.create(mutated_pool("first", ips=["10.6.0.10-10.6.0.20"]))
    with trio.fail_after(TIMEOUT):
        async with serving(faulty) as webhook:
            assert webhook.port is not None
            ca = await ca_bundle(store)
            await webhook.cache.wait_synced()
            faulty.down = True
            second = mutated_pool("second", ips=["10.6.0.15-10.6.0.30"])
            status, answer = await post(webhook.port, VALIDATE, review("CREATE", second), ca)
            assert status == 200
            assert "overlap with IPPool first" in answer["response"]["status"]["message"]


async def test_a_client_that_does_not_trust_the_ca_gets_no_answer(store: Store) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(store) as webhook:
            assert webhook.port is not None
            stranger = await trio.to_thread.run_sync(generate, (SERVICE_DNS,))
            with pytest.raises(trio.BrokenResourceError):
                await post(webhook.port, VALIDATE, review("CREATE", pool("p")), stranger.ca)
            with pytest.raises(trio.BrokenResourceError):  # nor one that asks for a name it does not cover
                await post(webhook.port, VALIDATE, review("CREATE", pool("p")), await ca_bundle(store), "evil.example")
            status, _ = await post(webhook.port, VALIDATE, review("CREATE", mutated_pool("p")), await ca_bundle(store))
            assert status == 200  # and the server keeps serving the others


async def test_a_second_replica_serves_a_certificate_from_the_same_ca(store: Store, tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(store):
            secret = await store.get("Secret", "spiderpool-controller-server-certs", NAMESPACE)
            ca = await ca_bundle(store)
        async with await SqliteStore.open(tmp_path / "store.db") as other, serving(other) as second:
            assert second.port is not None
            assert (await other.get("Secret", secret["metadata"]["name"], NAMESPACE)) == secret  # reused, not remade
            status, _ = await post(second.port, VALIDATE, review("CREATE", mutated_pool("p")), ca)
            assert status == 200


async def test_a_mounted_certificate_is_served_and_the_configurations_are_left_alone(
    store: Store, tmp_path: Path
) -> None:
    mounted = generate(("spiderpool-controller.kube-system.svc",))
    write_bundle(tmp_path / "tls", mounted)
    with trio.fail_after(TIMEOUT):
        async with serving(store, cert_settings(tmp_path / "tls")) as webhook:
            assert webhook.port is not None
            configured = await store.get("ValidatingWebhookConfiguration", "spiderpool-controller")
            assert all("caBundle" not in w["clientConfig"] for w in configured["webhooks"])  # cert-manager's job
            status, _ = await post(webhook.port, VALIDATE, review("CREATE", mutated_pool("p")), mounted.ca)
            assert status == 200


def test_a_stored_certificate_that_misses_a_name_or_expires_is_replaced() -> None:
    hosts = ("spiderpool-controller.kube-system.svc", "127.0.0.1")
    bundle = generate(hosts)
    assert problem(bundle, hosts) is None
    assert (
        problem(bundle, (*hosts, "spiderpool-controller.other.svc")) == "does not cover spiderpool-controller.other.svc"
    )
    other = generate(hosts)
    assert (
        problem(type(bundle)(bundle.cert, other.key, bundle.ca), hosts) == "the key does not belong to the certificate"
    )
    assert problem(type(bundle)(b"junk", bundle.key, bundle.ca), hosts) is not None


def test_the_manifests_call_exactly_the_paths_the_webhook_serves_and_never_block_deletion() -> None:
    from tests.deploy.files import DEPLOY, documents

    configs = {d["kind"]: d for d in documents(DEPLOY / "webhook" / "webhooks.yaml")}
    served = ROUTES
    called = set()
    for kind, action, policy in (
        ("MutatingWebhookConfiguration", "mutate", "Ignore"),
        ("ValidatingWebhookConfiguration", "validate", "Fail"),
    ):
        config = configs[kind]
        assert config["metadata"]["name"] == cert_settings().configuration  # the one whose caBundle we fill in
        for hook in config["webhooks"]:
            service = hook["clientConfig"]["service"]
            assert (service["name"], service["namespace"]) == (cert_settings().service, NAMESPACE)
            assert served[service["path"]][0] == action
            assert hook["failurePolicy"] == policy
            assert "caBundle" not in hook["clientConfig"]
            for rule in hook["rules"]:
                assert rule["operations"] == ["CREATE", "UPDATE"]  # never DELETE
                assert not any("/" in r for r in rule["resources"])  # never the status subresource
            called.add(service["path"])
    assert called == set(served)


async def test_a_review_nested_a_thousand_deep_is_a_400_and_the_webhook_serves_on(store: Store) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(store) as webhook:
            assert webhook.port is not None
            ca = await ca_bundle(store)
            status, answer = await post(webhook.port, VALIDATE, b"[" * 1000 + b"]" * 1000, ca)
            assert status == 400
            assert "nested more than 64 levels" in answer
            status, _ = await post(webhook.port, VALIDATE, review("CREATE", pool("p")), ca)
            assert status == 200


async def test_the_webhook_port_survives_idle_slow_truncated_huge_and_random_clients(store: Store) -> None:
    # NB: the guide's listener checks, beneath TLS and over it; then a review is still answered
    def request(body: bytes, *, length: int | None = None, extra: bytes = b"") -> bytes:
        size = len(body) if length is None else length
        head = f"POST {VALIDATE} HTTP/1.1\r\nHost: h\r\nContent-Length: {size}\r\n".encode()
        return head + extra + b"Connection: close\r\n\r\n" + body

    async def status_of(data: bytes) -> int:
        return answer_status((await exchange("127.0.0.1", port, data))[0])

    with trio.fail_after(3 * TIMEOUT):
        async with serving(store, read_timeout=0.5) as webhook:
            port = webhook.port
            assert port is not None
            assert await exchange("127.0.0.1", port, b"", tls=False) == (b"", True)  # idle: closed
            for junk in (b"\x00\xff garbage\r\n\r\n", b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", b"\x16\x03\x01\x02"):
                answer, closed = await exchange("127.0.0.1", port, junk, tls=False)  # not TLS, or torn
                assert closed
                assert not answer.startswith(b"HTTP")
            assert await exchange("127.0.0.1", port, b"") == (b"", True)  # a handshake, then idle: closed
            assert await status_of(request(b"{", length=100)) == 408  # truncated, then slow
            assert await status_of(f"POST {VALIDATE} HTTP/1.1\r\nHost: h\r\n".encode()) == 408  # a head unfinished
            assert await status_of(request(b"", length=64 * 2**20)) == 413  # huge
            assert await status_of(request(review("CREATE", pool("p")), extra=b"X-A: \xff\xfe\r\n")) == 200
            assert await status_of(request(b"\xff\xfe not utf-8")) == 400
            assert await status_of(request(b"[" * 100_000 + b"]" * 100_000)) == 400  # nested
            rng = random.Random(14)
            for _ in range(10):
                answer, closed = await exchange("127.0.0.1", port, rng.randbytes(rng.randrange(1, 3000)))
                assert closed
                assert not answer or answer_status(answer) in (400, 404, 405, 408, 413, 431)
            status, answer = await post(port, MUTATE, review("CREATE", pool("p")), await ca_bundle(store))
            assert status == 200
            assert answer["response"]["allowed"] is True
