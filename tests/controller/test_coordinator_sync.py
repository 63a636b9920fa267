"""``CoordinatorSync``: the leading controller keeps every SpiderCoordinator's status in step with the cluster, on
every store backend, writing only when the status changes (the rules themselves: tests/spider/coordinator)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import pytest
import trio

from actors.controller.coordinator_sync import CoordinatorSync, CoordinatorSyncSettings, sync_once
from actors.controller.main import ControllerSettings, open_controller
from actors.stores.kube import KubeStore
from actors.stores.port import Obj, Store
from actors.stores.sqlite import SqliteStore
from spider.errors import InvalidInput, StoreUnavailable
from spider.kinds import SPIDER_API_VERSION
from tests.controller.support import eventually
from tests.fakeapi import Cluster, FakeApiServer

TIMEOUT = 20


def coordinator(name: str = "default", pod_cidr_type: str = "cluster") -> Obj:
    return {"apiVersion": SPIDER_API_VERSION, "kind": "SpiderCoordinator", "metadata": {"name": name},
            "spec": {"podCIDRType": pod_cidr_type}}  # fmt: skip


def kubeadm_config(pod: str = "10.244.0.0/16", service: str = "10.96.0.0/12") -> Obj:
    text = f"kind: ClusterConfiguration\nnetworking:\n  podSubnet: {pod}\n  serviceSubnet: {service}\n"
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
            "data": {"ClusterConfiguration": text}}  # fmt: skip


def calico_pool(name: str, cidr: str) -> Obj:
    return {"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool", "metadata": {"name": name},
            "spec": {"cidr": cidr}}  # fmt: skip


async def status_of(store: Store, name: str = "default") -> dict[str, Any]:
    return dict((await store.get("SpiderCoordinator", name)).get("status") or {})


def has_status(store: Store, **expected: Any):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        status = await status_of(store)
        return all(status.get(k) == v for k, v in expected.items())

    return check


@pytest.fixture
async def sync(private_store: Store) -> AsyncIterator[CoordinatorSync]:
    keeper = CoordinatorSync(private_store, CoordinatorSyncSettings(resync_period=30, cni_config_dir=None))
    async with trio.open_nursery() as nursery:
        await nursery.start(keeper.run)
        yield keeper
        nursery.cancel_scope.cancel()


async def test_the_status_follows_kubeadm_config_and_goes_not_ready_without_it(
    private_store: Store, sync: CoordinatorSync
) -> None:
    store = private_store
    with trio.fail_after(TIMEOUT):
        await store.create(coordinator())
        await eventually(has_status(store, phase="NotReady"), TIMEOUT, "NotReady without kubeadm-config (V00011)")
        assert (await status_of(store))["overlayPodCIDR"] == []
        await store.create(kubeadm_config())
        await eventually(has_status(store, phase="Synced", overlayPodCIDR=["10.244.0.0/16"],
                                    serviceCIDR=["10.96.0.0/12"]), TIMEOUT, "Synced from kubeadm-config")  # fmt: skip
        changed = kubeadm_config(pod="10.250.0.0/16")
        changed["metadata"]["resourceVersion"] = (await store.get("ConfigMap", "kubeadm-config", "kube-system"))[
            "metadata"]["resourceVersion"]  # fmt: skip
        await store.update(changed)
        await eventually(has_status(store, overlayPodCIDR=["10.250.0.0/16"]), TIMEOUT, "the new pod CIDR")
        await store.delete("ConfigMap", "kubeadm-config", "kube-system")
        await eventually(has_status(store, phase="NotReady", overlayPodCIDR=[], serviceCIDR=[]), TIMEOUT, "NotReady")


FLAGS = ["kube-controller-manager", "--cluster-cidr=10.1.0.0/16", "--service-cluster-ip-range=10.2.0.0/16"]


async def test_a_controller_manager_pod_stands_in_for_kubeadm_config(
    private_store: Store, sync: CoordinatorSync
) -> None:
    kcm = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "kube-controller-manager-m1", "namespace": "kube-system",
                        "labels": {"component": "kube-controller-manager"}},
           "spec": {"containers": [{"name": "kcm", "image": "kube-controller-manager", "command": FLAGS}]}}  # fmt: skip
    with trio.fail_after(TIMEOUT):
        await private_store.create(coordinator())
        await private_store.create(kcm)
        await eventually(has_status(private_store, phase="Synced", overlayPodCIDR=["10.1.0.0/16"],
                                    serviceCIDR=["10.2.0.0/16"]), TIMEOUT, "Synced from the KCM flags")  # fmt: skip


async def test_the_status_is_written_only_when_it_changes(private_store: Store) -> None:
    store = private_store
    keeper = CoordinatorSync(store, CoordinatorSyncSettings(resync_period=30, cni_config_dir=None))
    with trio.fail_after(TIMEOUT):
        await store.create(coordinator())
        await store.create(kubeadm_config())
        async with trio.open_nursery() as nursery:
            await nursery.start(keeper.run)
            await eventually(has_status(store, phase="Synced"), TIMEOUT, "Synced")
            writes = keeper.stats.status_writes
            assert writes == 1
            assert await keeper.sync() == 0  # nothing differs: nothing written
            await store.create(coordinator("second", "none"))  # a change elsewhere: only the new one is written
            await eventually(lambda: _synced(store, "second"), TIMEOUT, "the second coordinator Synced")
            assert keeper.stats.status_writes == writes + 1
            nursery.cancel_scope.cancel()


async def _synced(store: Store, name: str) -> bool:
    return (await status_of(store, name)).get("phase") == "Synced"


async def test_sync_once_writes_what_a_leader_would(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "store.db", create=True)
    try:
        await store.create(coordinator(pod_cidr_type="none"))
        await store.create(kubeadm_config())
        assert await sync_once(store, CoordinatorSyncSettings(cni_config_dir=None)) == 1
        assert await status_of(store) == {"phase": "Synced", "overlayPodCIDR": [], "serviceCIDR": ["10.96.0.0/12"]}
        assert await sync_once(store, CoordinatorSyncSettings(cni_config_dir=None)) == 0
    finally:
        await store.aclose()


async def test_auto_reads_the_default_cni_from_the_configuration_directory(tmp_path: Path) -> None:
    cni_dir = tmp_path / "net.d"
    cni_dir.mkdir()
    (cni_dir / "00-multus.conf").write_text(json.dumps({"name": "multus-cni-network", "type": "multus"}))
    calico = {"name": "k8s-pod-network", "plugins": [{"type": "calico"}]}
    (cni_dir / "10-calico.conflist").write_text(json.dumps(calico))
    store = await SqliteStore.open(tmp_path / "store.db", create=True)
    try:
        await store.create(coordinator(pod_cidr_type="auto"))
        await store.create(kubeadm_config())
        await store.create(calico_pool("default-ipv4-ippool", "10.20.0.0/16"))
        await sync_once(store, CoordinatorSyncSettings(cni_config_dir=cni_dir))
        assert (await status_of(store))["overlayPodCIDR"] == ["10.20.0.0/16"]
        (cni_dir / "10-calico.conflist").unlink()  # V00002: no CNI file is the same as none
        await sync_once(store, CoordinatorSyncSettings(cni_config_dir=cni_dir))
        assert await status_of(store) == {"phase": "Synced", "overlayPodCIDR": [], "serviceCIDR": ["10.96.0.0/12"]}
    finally:
        await store.aclose()


@asynccontextmanager
async def on_fake_cluster(cluster: Cluster, d: Path) -> AsyncIterator[KubeStore]:
    async with trio.open_nursery() as nursery:
        server: FakeApiServer = await nursery.start(FakeApiServer(cluster).run)
        store = await KubeStore.open(server.kubeconfig(d / "kubeconfig"))
        try:
            yield store
        finally:
            await store.aclose()
            nursery.cancel_scope.cancel()


async def test_calico_pools_are_followed_where_calico_is_installed(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with on_fake_cluster(Cluster.new(calico=True), tmp_path) as store:
            await store.create(coordinator(pod_cidr_type="calico"))
            await store.create(kubeadm_config())
            keeper = CoordinatorSync(store, CoordinatorSyncSettings(resync_period=30, cni_config_dir=None))
            async with trio.open_nursery() as nursery:
                await nursery.start(keeper.run)
                assert await status_of(store) == {"phase": "Synced", "overlayPodCIDR": [],
                                                  "serviceCIDR": ["10.96.0.0/12"]}  # fmt: skip
                await store.create(calico_pool("p1", "10.30.0.0/16"))
                await eventually(has_status(store, overlayPodCIDR=["10.30.0.0/16"]), TIMEOUT, "the Calico pool")
                await store.delete("IPPool", "p1")
                await eventually(has_status(store, overlayPodCIDR=[]), TIMEOUT, "no Calico pool")
                nursery.cancel_scope.cancel()


async def test_a_cluster_without_calico_makes_a_calico_coordinator_not_ready(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with on_fake_cluster(Cluster.new(), tmp_path) as store:
            await store.create(coordinator(pod_cidr_type="calico"))
            await store.create(kubeadm_config())
            await sync_once(store, CoordinatorSyncSettings(cni_config_dir=None))
            status = await status_of(store)
            assert (status["phase"], status["overlayPodCIDR"]) == ("NotReady", [])
            assert "Calico needs to be installed first" in status["reason"]


async def test_the_leading_controller_syncs_the_coordinator(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "store.db", create=True)
    settings = ControllerSettings(store_path=tmp_path / "store.db", identity="c1", lease_duration=2, renew_deadline=1.5,
                                  retry_period=0.2, health_host="127.0.0.1", health_port=0, pool_host=False,
                                  coordinator=CoordinatorSyncSettings(cni_config_dir=None))  # fmt: skip
    try:
        with trio.fail_after(TIMEOUT):
            await store.create(coordinator(pod_cidr_type="none"))
            await store.create(kubeadm_config())
            async with open_controller(settings, store):
                await eventually(has_status(store, phase="Synced", serviceCIDR=["10.96.0.0/12"]), TIMEOUT, "Synced")
    finally:
        await store.aclose()


async def test_a_controller_told_not_to_leaves_the_coordinators_alone(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "store.db", create=True)
    settings = ControllerSettings(store_path=tmp_path / "store.db", identity="c1", lease_duration=2, renew_deadline=1.5,
                                  retry_period=0.2, health_host="127.0.0.1", health_port=0, pool_host=False,
                                  coordinator=None)  # fmt: skip
    try:
        with trio.fail_after(TIMEOUT):
            await store.create(coordinator(pod_cidr_type="none"))
            async with open_controller(settings, store) as controller:
                await eventually(_leading(controller), TIMEOUT, "leading")
                assert controller.coordinator_sync is None
            assert await status_of(store) == {}
    finally:
        await store.aclose()


def _leading(controller: Any):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return bool(controller.elector.leading and controller.reconciler and controller.reconciler.synced)

    return check


class RefusingStatusWrites:
    """A store that refuses the status writes of one coordinator ``refusals`` times (as an API server refusing a
    write would: not a conflict, not the store being away), and passes everything else on."""

    def __init__(self, inner: Store, name: str, refusals: int) -> None:
        self.inner, self.name, self.refusals = inner, name, refusals

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.inner, attribute)

    async def update_status(self, obj: Obj) -> Obj:
        if obj["metadata"]["name"] == self.name and self.refusals > 0:
            self.refusals -= 1
            raise InvalidInput(reason="refused by the test")
        return await self.inner.update_status(obj)


async def test_a_refused_status_write_neither_stops_the_sync_nor_keeps_the_other_coordinators_waiting(
    tmp_path: Path,
) -> None:
    store = await SqliteStore.open(tmp_path / "store.db", create=True)
    refusing = RefusingStatusWrites(store, "first", refusals=2)
    keeper = CoordinatorSync(cast(Store, refusing), CoordinatorSyncSettings(resync_period=30, cni_config_dir=None),
                             retry_delays=(0.05,))  # fmt: skip
    try:
        with trio.fail_after(TIMEOUT):
            await store.create(coordinator("first", "none"))
            await store.create(coordinator("second", "none"))
            await store.create(kubeadm_config())
            async with trio.open_nursery() as nursery:
                await nursery.start(keeper.run)
                await eventually(lambda: _synced(store, "second"), TIMEOUT, "the second coordinator Synced")
                await eventually(lambda: _synced(store, "first"), TIMEOUT, "the first Synced once writes pass")
                assert refusing.refusals == 0
                nursery.cancel_scope.cancel()
    finally:
        await store.aclose()


class ForbiddenConfigMaps:
    """A store whose server refuses to list the ConfigMaps of one namespace while ``forbidden`` (a
    ``--cilium-configmap`` outside ``kube-system``, which the shipped RBAC does not let the controller read)."""

    def __init__(self, inner: Store, namespace: str) -> None:
        self.inner, self.namespace, self.forbidden = inner, namespace, True

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.inner, attribute)

    async def list(self, kind: str, **options: Any) -> Any:
        if kind == "ConfigMap" and options.get("namespace") == self.namespace and self.forbidden:
            raise StoreUnavailable(reason=f'configmaps is forbidden in the namespace "{self.namespace}"')
        return await self.inner.list(kind, **options)


async def test_a_source_the_server_will_not_list_is_named_in_the_status_and_the_others_are_synced(
    tmp_path: Path,
) -> None:
    store = await SqliteStore.open(tmp_path / "store.db", create=True)
    refusing = ForbiddenConfigMaps(store, "cilium")
    settings = CoordinatorSyncSettings(resync_period=30, cni_config_dir=None, cilium_config="cilium/cilium-config")
    keeper = CoordinatorSync(cast(Store, refusing), settings, retry_delays=(0.05,))
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cilium-config", "namespace": "cilium"},
              "data": {"ipam": "cluster-pool", "cluster-pool-ipv4-cidr": "10.40.0.0/16"}}  # fmt: skip
    try:
        with trio.fail_after(TIMEOUT):
            await store.create(coordinator("default", "cilium"))
            await store.create(coordinator("other", "cluster"))
            await store.create(kubeadm_config())
            await store.create(config)
            assert await sync_once(cast(Store, refusing), settings) == 2  # NB: it once raised, writing nothing
            async with trio.open_nursery() as nursery:
                await nursery.start(keeper.run)  # NB: it once never started: the first sync waited for the source
                status = await status_of(store)
                assert status["phase"] == "NotReady"
                assert "cannot read ConfigMap in cilium" in status["reason"]
                assert "forbidden" in status["reason"]
                assert await _synced(store, "other")
                refusing.forbidden = False  # the operator grants the Role (docs/operations.md)
                await eventually(has_status(store, phase="Synced", overlayPodCIDR=["10.40.0.0/16"]), TIMEOUT,
                                 "Synced once the ConfigMap can be read")  # fmt: skip
                nursery.cancel_scope.cancel()
    finally:
        await store.aclose()
