"""The Kubernetes targets of the store contract: the fake API server in CI, a real cluster on request.

Owns the two ``Backend`` implementations that ``conftest.BACKENDS`` lists beside SQLite, and what a cluster
needs before the contract can run on it: our CRDs (``deploy/crds/*.yaml`` when that directory has them,
otherwise minimal ones made here from ``spider.kinds``) and the namespaces the tests use.

- ``kube-fake``: a ``KubeStore`` talking over TCP on 127.0.0.1, through a generated kubeconfig, to a fresh
  ``tests.fakeapi`` server running in its own thread (so the store's asyncio thread and the server never
  share a loop with the test).  Its latency model is off unless ``$SPIDER_FAKEAPI_LATENCY`` sets one
  (``measured``, ``measured*20``: ``tests/fakeapi/latency.py``), to run a suite against a slow server.
- ``kube-real``: a ``KubeStore`` on the cluster ``$SPIDER_TEST_KUBECONFIG`` names.  Use a throw-away cluster
  (kind, k3d): the tests create objects labelled ``test-run`` and delete what they leave behind.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import yaml

from actors.stores.kube import KubeSettings, KubeStore
from actors.stores.port import AlreadyExists, Conflict, NotFound, Obj, Store
from spider.kinds import KINDS, SPIDER_GROUP, Kind

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "deploy" / "crds"
TEST_NAMESPACES = ("ns-a", "ns-b")
KUBECONFIG_ENV = "SPIDER_TEST_KUBECONFIG"


def minimal_crd(kind: Kind) -> Obj:
    """A CRD that serves ``kind`` with open schemas: enough for the store contract, not for users."""
    open_object: Obj = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    version: Obj = {
        "name": kind.version,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": open_object, "status": open_object}}},
    }
    if kind.status_subresource:
        version["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{kind.group}"},
        "spec": {
            "group": kind.group,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
                "shortNames": list(kind.short_names),
            },
            "scope": "Namespaced" if kind.namespaced else "Cluster",
            "versions": [version],
        },
    }


def crd_documents(crd_dir: Path = CRD_DIR) -> list[Obj]:
    """Our CRDs: the project's manifests when there are any, else minimal ones for every Spider kind."""
    docs: list[Obj] = []
    if crd_dir.is_dir():
        for path in sorted(crd_dir.glob("*.y*ml")):
            docs.extend(
                d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "CustomResourceDefinition"
            )
    return docs or [minimal_crd(k) for k in KINDS if k.group == SPIDER_GROUP]


async def install_crds(store: Store, docs: list[Obj]) -> None:
    """Create or update each CRD, then wait until the API server says each is Established (one minute)."""
    with trio.fail_after(60):
        for doc in docs:
            try:
                await store.create(doc)
            except AlreadyExists:
                current = await store.get("CustomResourceDefinition", doc["metadata"]["name"])
                await store.update(
                    dict(doc, metadata=dict(doc["metadata"], resourceVersion=current["metadata"]["resourceVersion"]))
                )
        for doc in docs:
            while True:
                crd = await store.get("CustomResourceDefinition", doc["metadata"]["name"])
                conditions = (crd.get("status") or {}).get("conditions") or []
                if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
                    break
                await trio.sleep(0.2)


async def ensure_namespaces(store: Store, names: tuple[str, ...] = TEST_NAMESPACES) -> None:
    for name in names:
        with contextlib.suppress(AlreadyExists):
            await store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


async def delete_test_objects(store: Store) -> None:
    """Remove what the contract tests left (objects labelled ``test-run``), finalizers first."""
    for kind in ("SpiderIPPool", "SpiderEndpoint"):
        for obj in (await store.list(kind, label_selector="test-run")).items:
            m = obj["metadata"]
            with contextlib.suppress(NotFound, Conflict):
                if m.get("finalizers"):
                    await store.update(dict(obj, metadata=dict(m, finalizers=[])))
                await store.delete(kind, m["name"], m.get("namespace", ""))


@attrs.define
class KubeFakeBackend:
    """A fresh fake API server per test, in a thread, and ``KubeStore`` clients of it."""

    dir: Path
    settings: KubeSettings = attrs.Factory(KubeSettings)
    host: Any = None  # tests.fakeapi.ServedInThread, imported lazily with the fake
    kubeconfig: Path | None = None
    opened: list[KubeStore] = attrs.Factory(list)

    async def open(self) -> Store:
        from tests.fakeapi import FakeApiServer, LatencyModel, ServedInThread
        from tests.fakeapi.latency import ENV

        first = self.host is None
        if first:
            latency = LatencyModel.parse(os.environ.get(ENV, "off"))
            self.host = await trio.to_thread.run_sync(lambda: ServedInThread(FakeApiServer(latency=latency)).start())
            self.kubeconfig = self.host.server.kubeconfig(self.dir / "kubeconfig")
        store = await KubeStore.open(self.kubeconfig, settings=self.settings)
        self.opened.append(store)
        if first:
            await ensure_namespaces(store)
        return store

    async def compact(self, store: Store) -> None:
        await trio.to_thread.run_sync(self.host.call, self.host.server.cluster.compact)

    async def logged(self) -> list[tuple[str, str]]:
        """Every request the fake API server has received so far, as ``(method, target)``."""
        return list(await trio.to_thread.run_sync(self.host.call, lambda: list(self.host.server.log)))

    async def aclose(self) -> None:
        for store in self.opened:
            await store.aclose()
        if self.host is not None:
            await trio.to_thread.run_sync(self.host.stop)


@attrs.define
class KubeRealBackend:
    """``KubeStore`` clients of the cluster ``$SPIDER_TEST_KUBECONFIG`` names; CRDs installed first."""

    kubeconfig: Path
    opened: list[KubeStore] = attrs.Factory(list)

    async def open(self) -> Store:
        store = await KubeStore.open(self.kubeconfig)
        if not self.opened:
            await install_crds(store, crd_documents())
            await ensure_namespaces(store)
        self.opened.append(store)
        return store

    async def compact(self, store: Store) -> None:
        pytest.skip("a real API server compacts its history on its own schedule, not on request")

    async def aclose(self) -> None:
        if self.opened:
            with trio.move_on_after(60):
                await delete_test_objects(self.opened[0])
        for store in self.opened:
            await store.aclose()


def real_cluster_kubeconfig() -> Path | None:
    """The kubeconfig of the real cluster to test against, when one is configured."""
    value = os.environ.get(KUBECONFIG_ENV)
    return Path(value).expanduser() if value else None


def kube_real_backend(tmp_path: Path) -> KubeRealBackend:
    """The ``kube-real`` factory: the cluster ``$SPIDER_TEST_KUBECONFIG`` names."""
    kubeconfig = real_cluster_kubeconfig()
    if kubeconfig is None:
        pytest.skip(f"${KUBECONFIG_ENV} is not set")
    return KubeRealBackend(kubeconfig)
