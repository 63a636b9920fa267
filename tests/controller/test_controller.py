"""``spider controller`` in one trio run: health and readiness, leading gates the work, the webhook, the stop."""

from __future__ import annotations

import base64
import http.client
import json
import secrets
from pathlib import Path
from typing import Any

import attrs
import trio

from actors.controller.leader import LeaderElector
from actors.controller.main import Controller, ControllerSettings, open_controller
from actors.stores.port import Store
from spider.kinds import FINALIZER
from tests.controller.support import FaultyStore, eventually, pool
from tests.controller.test_leader import candidate
from tests.servers.test_webhook import configuration, post, review

TIMEOUT = 20


def settings(tmp_path: Path, identity: str, lease: str, **more: Any) -> ControllerSettings:
    return ControllerSettings(
        store_path=tmp_path / "unused.db",
        namespace="default",
        identity=identity,
        lease_name=lease,
        lease_duration=1,
        renew_deadline=0.6,
        retry_period=0.1,
        health_host="127.0.0.1",
        health_port=0,
        **more,
    )


def get_sync(port: int, path: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None
    finally:
        conn.close()


async def get(controller: Controller, path: str) -> tuple[int, Any]:
    assert controller.health_port is not None
    return await trio.to_thread.run_sync(get_sync, controller.health_port, path)


def ready(controller: Controller) -> Any:
    async def check() -> bool:
        return (await get(controller, "/v1/runtime/readiness"))[0] == 200

    return check


async def _leading(elector: LeaderElector) -> bool:
    return elector.leading


async def test_health_endpoints_answer_like_spiderpools_controller(store: Store, tmp_path: Path) -> None:
    lease = f"lease-{secrets.token_hex(3)}"
    with trio.fail_after(TIMEOUT):
        async with open_controller(settings(tmp_path, "a", lease), store) as controller:
            assert await get(controller, "/v1/runtime/startup") == (200, None)
            assert await get(controller, "/v1/runtime/liveness") == (200, None)
            await eventually(ready(controller))
            status, info = await get(controller, "/v1/runtime/leader")
            assert status == 200
            assert info == {
                "identity": "a",
                "leader": "a",
                "leading": True,
                "lease": f"default/{lease}",
                "leaseTransitions": 0,
                "synced": True,
            }
            assert (await get(controller, "/v1/runtime/nothing"))[0] == 404


async def test_readiness_fails_with_the_reasons_while_the_store_is_unreachable(store: Store, tmp_path: Path) -> None:
    faulty = FaultyStore(store, down=True)
    with trio.fail_after(TIMEOUT):
        async with open_controller(settings(tmp_path, "a", f"lease-{secrets.token_hex(3)}"), faulty) as controller:
            assert await get(controller, "/v1/runtime/startup") == (200, None)
            status, why = await get(controller, "/v1/runtime/readiness")
            assert status == 500
            assert "store unreachable" in why
            assert "no leader known" in why
            assert await get(controller, "/v1/runtime/liveness") == (200, None)  # alive: a restart would not help
            faulty.down = False
            await eventually(ready(controller))


async def test_a_standby_controller_changes_nothing_until_it_leads(private_store: Store, tmp_path: Path) -> None:
    store = private_store
    lease = f"lease-{secrets.token_hex(3)}"

    async def maintained() -> bool:
        obj = await store.get("SpiderIPPool", "p1")
        return obj["metadata"].get("finalizers") == [FINALIZER] and "totalIPCount" in (obj.get("status") or {})

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            other = LeaderElector(store, settings(tmp_path, "other", lease).leader_settings())
            other_alive = await nursery.start(candidate, other, trio.sleep_forever)
            await eventually(lambda: _leading(other))
            async with open_controller(settings(tmp_path, "b", lease), store) as b:
                await store.create(pool("p1"))
                await eventually(ready(b))  # ready as a standby: it knows who leads
                _, info = await get(b, "/v1/runtime/leader")
                assert (info["leader"], info["leading"], info["synced"]) == ("other", False, False)
                await trio.sleep(1.0)
                untouched = await store.get("SpiderIPPool", "p1")
                assert "finalizers" not in untouched["metadata"]
                assert not untouched.get("status")
                other_alive.cancel(reason="the leader stops and releases the Lease")
                await eventually(maintained)
                assert other.observed is not None
                assert other.observed.holder == ""  # it gave the Lease up: b took it at once, not once it expired
                assert b.elector.leading
            nursery.cancel_scope.cancel(reason="test over")


async def test_stopping_the_controller_releases_the_lease(store: Store, tmp_path: Path) -> None:
    lease = f"lease-{secrets.token_hex(3)}"
    with trio.fail_after(TIMEOUT):
        async with open_controller(settings(tmp_path, "a", lease), store) as controller:
            await eventually(ready(controller))
            assert (await store.get("Lease", lease, "default"))["spec"]["holderIdentity"] == "a"
        spec = (await store.get("Lease", lease, "default"))["spec"]
        assert spec.get("holderIdentity", "") == ""
        assert spec["leaseDurationSeconds"] == 1


async def test_the_controller_serves_the_webhook_when_enabled(tmp_path: Path) -> None:
    from actors.stores.sqlite import SqliteStore

    lease = f"lease-{secrets.token_hex(3)}"
    more = {"webhook": True, "webhook_host": "127.0.0.1", "webhook_port": 0, "namespace": "kube-system"}
    with trio.fail_after(TIMEOUT):
        async with await SqliteStore.open(tmp_path / "store.db") as store:
            for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
                await store.create(configuration(kind))
            async with open_controller(attrs.evolve(settings(tmp_path, "a", lease), **more), store) as controller:
                await eventually(ready(controller))
                assert controller.webhook is not None
                assert controller.webhook.port is not None
                hooks = (await store.get("ValidatingWebhookConfiguration", "spiderpool-controller"))["webhooks"]
                ca = base64.b64decode(hooks[0]["clientConfig"]["caBundle"])
                path = "/mutate-spiderpool-spidernet-io-v2beta1-spiderippool"
                status, answer = await post(controller.webhook.port, path, review("CREATE", pool("p")), ca)
                assert status == 200
                assert answer["response"]["patchType"] == "JSONPatch"
