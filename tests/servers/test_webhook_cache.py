"""The webhook answers reviews from its watch-fed cache: no API call per review (anyone reaching the port can
send one), the same decisions as on the stored objects, and changes seen once the watch brings them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.servers.certs import generate, write_bundle
from actors.servers.webhook import AdmissionWebhook, cached_copy
from actors.stores.sqlite import SqliteStore
from tests.controller.support import eventually, subnet
from tests.deploy.rbac import Attributes, request_attributes
from tests.servers.test_webhook import (
    SERVICE_DNS,
    VALIDATE,
    cert_settings,
    mutated_pool,
    post,
    review,
    serving,
)
from tests.stores.kube_backends import KubeFakeBackend

TIMEOUT = 30
REVIEWS = 20
VALIDATE_SUBNET = "/validate-spiderpool-spidernet-io-v2beta1-spidersubnet"
MUTATE = "/mutate-spiderpool-spidernet-io-v2beta1-spiderippool"


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[KubeFakeBackend]:
    backend = KubeFakeBackend(tmp_path)
    try:
        yield backend
    finally:
        await backend.aclose()


async def requests(backend: KubeFakeBackend) -> list[Attributes]:
    """Every request the fake API server has received so far, as the authorizer sees it."""
    return [request_attributes(method, target) for method, target in await backend.logged()]


def lists(seen: list[Attributes]) -> list[Attributes]:
    return [r for r in seen if r.verb == "list" and r.resource in ("spiderippools", "spidersubnets")]


async def test_reviews_make_no_api_call_after_the_first_listing(fake: KubeFakeBackend, tmp_path: Path) -> None:
    store = await fake.open()
    await store.create(mutated_pool("first", ips=["10.6.0.10-10.6.0.20"]))
    await store.create(subnet("s1", cidr="10.6.0.0/16", gateway="10.6.0.1"))
    mounted = generate((SERVICE_DNS,))
    write_bundle(tmp_path / "tls", mounted)
    with trio.fail_after(TIMEOUT):
        async with serving(store, cert_settings(tmp_path / "tls")) as webhook:
            assert webhook.port is not None
            await webhook.cache.wait_synced()
            before = await requests(fake)
            assert len(lists(before)) == 2  # one listing of each kind
            for n in range(REVIEWS):
                overlapping = mutated_pool(f"p{n}", ips=["10.6.0.15-10.6.0.30"])
                status, answer = await post(webhook.port, VALIDATE, review("CREATE", overlapping), mounted.ca)
                assert status == 200
                assert "overlap with IPPool first" in answer["response"]["status"]["message"]
                status, answer = await post(webhook.port, MUTATE, review("CREATE", mutated_pool(f"p{n}")), mounted.ca)
                assert status == 200
                assert answer["response"]["allowed"] is True
            during = (await requests(fake))[len(before) :]
            assert [r for r in during if r.verb != "watch"] == []  # a watch may reconnect; nothing else


async def test_the_cache_follows_creations_and_deletions(tmp_path: Path) -> None:
    async with await SqliteStore.open(tmp_path / "store.db") as store:
        mounted = generate((SERVICE_DNS,))
        write_bundle(tmp_path / "tls", mounted)
        second = review("CREATE", mutated_pool("second", ips=["10.6.0.15-10.6.0.30"]))
        with trio.fail_after(TIMEOUT):
            async with serving(store, cert_settings(tmp_path / "tls")) as webhook:
                assert webhook.port is not None
                port = webhook.port

                async def allowed() -> bool:
                    _, answer = await post(port, VALIDATE, second, mounted.ca)
                    return bool(answer["response"]["allowed"])

                async def denied() -> bool:
                    return not await allowed()

                assert await allowed()
                await store.create(mutated_pool("first", ips=["10.6.0.10-10.6.0.20"]))
                await eventually(denied, 10, "the new pool seen")
                await store.delete("SpiderIPPool", "first")
                await eventually(allowed, 10, "the deleted pool forgotten")


async def test_a_subnet_overlapping_a_cached_subnet_is_denied_as_before(tmp_path: Path) -> None:
    async with await SqliteStore.open(tmp_path / "store.db") as store:
        await store.create(subnet("wide", cidr="10.6.0.0/16"))
        mounted = generate((SERVICE_DNS,))
        write_bundle(tmp_path / "tls", mounted)
        narrow = subnet("narrow", cidr="10.6.1.0/24", ips=["10.6.1.1-10.6.1.9"])
        narrow["spec"]["ipVersion"] = 4
        with trio.fail_after(TIMEOUT):
            async with serving(store, cert_settings(tmp_path / "tls")) as webhook:
                assert webhook.port is not None
                _, answer = await post(
                    webhook.port, VALIDATE_SUBNET, review("CREATE", narrow, kind="SpiderSubnet"), mounted.ca
                )
                assert answer["response"]["allowed"] is False
                assert "overlap with Subnet wide" in answer["response"]["status"]["message"]


async def test_the_cache_keeps_no_pool_status_but_a_subnets_controlled_pools(tmp_path: Path) -> None:
    async with await SqliteStore.open(tmp_path / "store.db") as store:
        stored = await store.create(mutated_pool("p"))
        await store.update_status({**stored, "status": {"allocatedIPs": '{"10.6.0.10": {}}', "allocatedIPCount": 1}})
        await promising_subnet(store)
        webhook = AdmissionWebhook(store)
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                await nursery.start(webhook.cache.run)
                await webhook.cache.wait_synced()
                (cached,) = webhook.cache.items("SpiderIPPool")
                assert "status" not in cached
                assert cached["spec"] == stored["spec"]
                assert cached["kind"] == "SpiderIPPool"
                (cached,) = webhook.cache.items("SpiderSubnet")
                assert cached["status"] == {"controlledIPPools": json.dumps(PROMISED)}
                nursery.cancel_scope.cancel()


PROMISED = {"auto4-x-eth0-abcde": {"ips": ["10.6.0.10-10.6.0.11"], "application": "apps_v1_Deployment_ns_x"}}


async def promising_subnet(store: SqliteStore) -> None:
    """A subnet that has promised two addresses to an auto pool (``status.controlledIPPools``)."""
    created = await store.create(subnet("s", cidr="10.6.0.0/16", ips=["10.6.0.1-10.6.0.100"], ipVersion=4))
    await store.update_status({**created, "status": {"controlledIPPools": json.dumps(PROMISED)}})


async def validated(tmp_path: Path, body: bytes) -> dict[str, Any]:
    """The served webhook's answer to ``body`` against a store holding ``promising_subnet``."""
    async with await SqliteStore.open(tmp_path / "store.db") as store:
        await promising_subnet(store)
        mounted = generate((SERVICE_DNS,))
        write_bundle(tmp_path / "tls", mounted)
        with trio.fail_after(TIMEOUT):
            async with serving(store, cert_settings(tmp_path / "tls")) as webhook:
                assert webhook.port is not None
                _, answer = await post(webhook.port, VALIDATE, body, mounted.ca)
    response: dict[str, Any] = answer["response"]
    return response


async def test_a_pool_taking_addresses_the_cached_subnet_promised_is_denied(tmp_path: Path) -> None:
    answer = await validated(tmp_path, review("CREATE", mutated_pool("manual", ips=["10.6.0.11-10.6.0.12"])))
    assert answer["allowed"] is False
    assert "pre-allocated by Subnet s" in answer["status"]["message"]


async def test_editing_an_auto_pools_ips_is_denied_from_the_cached_subnet_status_i00018(tmp_path: Path) -> None:
    old = mutated_pool("auto4-x-eth0-abcde", ips=["10.6.0.10-10.6.0.11"])
    old["metadata"]["labels"] = {"ipam.spidernet.io/owner-application-uid": "u-1"}
    new = {**old, "spec": {**old["spec"], "ips": ["10.6.0.10-10.6.0.30"]}}  # kubectl edit grows an auto pool
    answer = await validated(tmp_path, review("UPDATE", new, old))
    assert answer["allowed"] is False
    assert "illegal to update AutoPool" in answer["status"]["message"]


def test_a_cached_copy_has_the_kind_even_when_a_listing_leaves_it_out() -> None:
    listed = {"metadata": {"name": "p", "managedFields": [{"manager": "kubectl"}]}, "spec": {}, "status": {"x": 1}}
    assert cached_copy("SpiderIPPool", listed) == {"kind": "SpiderIPPool", "metadata": {"name": "p"}, "spec": {}}
