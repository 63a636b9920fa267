"""The SpiderMultusConfig controller on every store backend: the NAD made, kept in step, made again, deleted.

SpiderMultusConfigs are written through the ``ValidatingStore`` (as every client writes them); the controller
uses the plain store, as ``spider controller`` does.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

import actors.controller.multus as multus_controller
from actors.controller.multus import MultusReconciler, MultusSettings
from actors.stores.port import Invalid, NotFound, Obj, Store
from actors.stores.validating import ValidatingStore
from spider.multus import NAD_KIND
from tests.controller.support import eventually

NS = "default"
NAD = NAD_KIND
SMC = "SpiderMultusConfig"
TIMEOUT = 10.0


@pytest.fixture
async def running(private_store: Store) -> AsyncIterator[MultusReconciler]:
    reconciler = MultusReconciler(private_store, MultusSettings(resync_period=3600))
    async with trio.open_nursery() as nursery:
        await nursery.start(reconciler.run)
        yield reconciler
        nursery.cancel_scope.cancel()


def smc(name: str = "macvlan-net", annotations: dict[str, str] | None = None, **spec: Any) -> Obj:
    return {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": SMC,
        "metadata": {"name": name, "namespace": NS, **({"annotations": annotations} if annotations else {})},
        "spec": spec or {"cniType": "macvlan", "macvlan": {"master": ["eth0"], "ippools": {"ipv4": ["v4"]}}},
    }


async def nad_of(store: Store, name: str = "macvlan-net") -> Obj | None:
    try:
        return await store.get(NAD, name, NS)
    except NotFound:
        return None


async def wait_for_nad(store: Store, which: str = "macvlan-net", **config_has: Any) -> Obj:
    async def there() -> bool:
        nad = await nad_of(store, which)
        if nad is None:
            return False
        config = json.loads(nad["spec"]["config"])
        return all(config.get(k) == v for k, v in config_has.items())

    await eventually(there, TIMEOUT, f"NAD {which} {config_has}")
    found = await nad_of(store, which)
    assert found is not None
    return found


async def test_m00001_a_macvlan_config_becomes_its_nad_owned_by_it(
    private_store: Store, running: MultusReconciler
) -> None:
    created = await ValidatingStore(private_store).create(smc())
    nad = await wait_for_nad(private_store)
    [owner] = nad["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": SMC,
        "name": "macvlan-net",
        "uid": created["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    plugins = json.loads(nad["spec"]["config"])["plugins"]
    assert [p["type"] for p in plugins] == ["macvlan", "coordinator"]
    assert plugins[0]["ipam"] == {"type": "spiderpool", "default_ipv4_ippool": ["v4"]}


async def test_m00007_a_nad_deleted_by_hand_is_made_again(private_store: Store, running: MultusReconciler) -> None:
    await ValidatingStore(private_store).create(smc())
    await wait_for_nad(private_store)
    await private_store.delete(NAD, "macvlan-net", NS)
    await wait_for_nad(private_store)
    assert running.stats.created == 2


async def test_m00008_deleting_the_config_deletes_its_nad(private_store: Store, running: MultusReconciler) -> None:
    await ValidatingStore(private_store).create(smc())
    await wait_for_nad(private_store)
    await private_store.delete(SMC, "macvlan-net", NS)

    async def gone() -> bool:
        return await nad_of(private_store) is None

    await eventually(gone, TIMEOUT, "the NAD deleted with its SpiderMultusConfig")


async def test_a_nad_with_another_owner_left_loses_only_its_gone_configs_reference(
    private_store: Store, running: MultusReconciler
) -> None:
    """As Kubernetes' garbage collector: a dependent goes only with its last owner (it once was deleted)."""
    await ValidatingStore(private_store).create(smc())
    nad = await wait_for_nad(private_store)
    keeper = {"apiVersion": "v1", "kind": "ConfigMap", "name": "keeper", "uid": "uid-keeper"}
    refs = [*nad["metadata"]["ownerReferences"], keeper]
    await private_store.update({**nad, "metadata": {**nad["metadata"], "ownerReferences": refs}})
    await private_store.delete(SMC, "macvlan-net", NS)

    async def only_the_keeper() -> bool:
        found = await nad_of(private_store)
        return found is not None and found["metadata"].get("ownerReferences") == [keeper]

    await eventually(only_the_keeper, TIMEOUT, "the NAD kept, with the ConfigMap as its only owner")


async def test_m00009_adding_a_bond_updates_the_nad_with_an_ifacer_first(
    private_store: Store, running: MultusReconciler
) -> None:
    store = ValidatingStore(private_store)
    await store.create(smc())
    await wait_for_nad(private_store)
    stored = await store.get(SMC, "macvlan-net", NS)
    stored["spec"]["macvlan"].update(master=["eth0", "eth1"], bond={"name": "bond0", "mode": 1})
    await store.update(stored)

    async def bonded() -> bool:
        nad = await nad_of(private_store)
        return nad is not None and '"bond0"' in nad["spec"]["config"]

    await eventually(bonded, TIMEOUT, "the NAD with the bond")
    nad = await nad_of(private_store)
    assert nad is not None
    plugins = json.loads(nad["spec"]["config"])["plugins"]
    assert [p["type"] for p in plugins] == ["ifacer", "macvlan", "coordinator"]
    assert plugins[0]["bond"] == {"name": "bond0", "mode": 1, "options": ""}
    assert plugins[1]["master"] == "bond0"


async def test_m00010_m00012_the_annotations_name_the_nad_and_its_cni_version(
    private_store: Store, running: MultusReconciler
) -> None:
    annotations = {"multus.spidernet.io/cr-name": "custom-name", "multus.spidernet.io/cni-version": "1.0.0"}
    await ValidatingStore(private_store).create(smc(annotations=annotations))
    nad = await wait_for_nad(private_store, "custom-name", cniVersion="1.0.0", name="custom-name")
    assert nad["metadata"]["annotations"] == annotations
    assert await nad_of(private_store) is None


async def test_m00014_an_existing_nad_owned_by_nobody_is_taken_over(
    private_store: Store, running: MultusReconciler
) -> None:
    await private_store.create(
        {
            "apiVersion": "k8s.cni.cncf.io/v1",
            "kind": NAD,
            "metadata": {"name": "macvlan-net", "namespace": NS},
            "spec": {"config": '{"cniVersion":"0.3.1","name":"x","plugins":[{"type":"bridge"}]}'},
        }
    )
    await ValidatingStore(private_store).create(smc())
    nad = await wait_for_nad(private_store, name="macvlan-net")
    assert nad["metadata"]["ownerReferences"][0]["name"] == "macvlan-net"
    assert json.loads(nad["spec"]["config"])["plugins"][0]["type"] == "macvlan"


async def test_a_nad_owned_by_another_config_refuses_a_second_one_of_that_name(
    private_store: Store, running: MultusReconciler
) -> None:
    store = ValidatingStore(private_store)
    await store.create(smc("first", {"multus.spidernet.io/cr-name": "shared"}))
    await wait_for_nad(private_store, "shared")
    with pytest.raises(Invalid, match="already exists and is managed by SpiderMultusConfig default/first"):
        await store.create(smc("second", {"multus.spidernet.io/cr-name": "shared"}))


async def test_a_nad_edited_by_hand_is_put_back(private_store: Store, running: MultusReconciler) -> None:
    await ValidatingStore(private_store).create(smc())
    nad = await wait_for_nad(private_store)
    await private_store.update(
        {**nad, "spec": {"config": "{}"}, "metadata": {**nad["metadata"], "ownerReferences": []}}
    )
    restored = await wait_for_nad(private_store, name="macvlan-net")
    assert restored["metadata"]["ownerReferences"][0]["controller"] is True


async def test_m00019_an_empty_spec_is_a_custom_config_whose_nad_has_no_config(
    private_store: Store, running: MultusReconciler
) -> None:
    obj = smc()
    obj["spec"] = {}
    stored = await ValidatingStore(private_store).create(obj)
    assert stored["spec"]["cniType"] == "custom"
    assert stored["spec"]["enableCoordinator"] is False

    async def made() -> bool:
        return await nad_of(private_store) is not None

    await eventually(made, TIMEOUT, "the NAD")
    nad = await nad_of(private_store)
    assert nad is not None
    assert "config" not in (nad.get("spec") or {})


async def test_the_store_layer_refuses_a_bad_config_with_spiderpools_text(private_store: Store) -> None:
    store = ValidatingStore(private_store)
    bad = smc(spec=None)
    bad["spec"] = {"cniType": "macvlan", "macvlan": {"master": ["eth0"], "vlanID": 5000}}
    with pytest.raises(Invalid, match=r"invalid vlanId 5000, please make sure vlanId in range \[0,4094\]"):
        await store.create(bad)
    good = await store.create(smc())
    good["metadata"]["annotations"] = {"multus.spidernet.io/cr-name": "renamed"}
    with pytest.raises(Invalid, match="it's unsupported to changed Multus net-attach-def 'macvlan-net' to customized"):
        await store.update(good)


async def test_an_odd_config_written_raw_is_refused_and_the_others_are_still_maintained(
    private_store: Store, running: MultusReconciler
) -> None:
    # As kubectl would write it past a missing webhook, straight into the store: the embedded stores take it,
    # the API server's CRD schema may already refuse it.
    odd = smc("odd", cniType="macvlan", macvlan={"master": ["eth0"], "ippools": "x"})
    with contextlib.suppress(Invalid):
        await private_store.create(odd)
    await ValidatingStore(private_store).create(smc("good"))
    await wait_for_nad(private_store, "good")
    assert await nad_of(private_store, "odd") is None
    assert running.stats.failures == 0  # NB: refused as invalid (logged once), not a crash


async def test_a_key_whose_reconcile_crashes_is_counted_and_the_others_go_on(
    private_store: Store, running: MultusReconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = multus_controller.network_attachment

    def crashing(config: Obj) -> Obj:
        if config["metadata"]["name"] == "broken":
            raise RuntimeError("a bug")
        return real(config)

    monkeypatch.setattr(multus_controller, "network_attachment", crashing)
    await ValidatingStore(private_store).create(smc("broken"))

    async def counted() -> bool:
        return running.stats.failures >= 1

    await eventually(counted, TIMEOUT, "the failure counted")
    await ValidatingStore(private_store).create(smc("after"))
    await wait_for_nad(private_store, "after")
    assert await nad_of(private_store, "broken") is None
