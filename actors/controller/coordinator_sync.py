"""The controller's leading work on SpiderCoordinators: keep every coordinator's status in sync with the cluster.

Owns ``CoordinatorSync``: one follower task per source lists it into a cache and then follows its watch (a
``Gone``, a failure and every ``resync_period`` start over with a fresh list); any change marks the status
dirty, and one worker recomputes every coordinator's status from the caches with the pure rules of
``spider.coordinator.cidrs`` and writes it, only where it differs, guarded by the cached object's
resourceVersion (a ``Conflict`` is retried once the watch has brought the newer copy).

The sources (reference §1.6, Spiderpool's ``coordinator_informer.go``): the SpiderCoordinators; the ConfigMaps
of ``kube-system`` (``kubeadm-config``) and of Cilium's namespace (``cilium-config``); the Pods labelled
``component=kube-controller-manager`` in ``kube-system`` (Spiderpool lists them in every namespace; kubeadm's
static Pod is in kube-system, and the Role grants no more); Calico's IPPools, Cilium's CiliumPodIPPools and the
ServiceCIDRs, each of which a cluster serves only with the CNI (or the Kubernetes release) that brings it: a
listing answered "not served" (``NotFound``, or ``StoreUnavailable`` other than unreachable) counts as "not
installed" and is tried again every ``resync_period``; and, for ``podCIDRType: auto``, the files of the CNI
configuration directory, read afresh on every sync.  The controller reads that directory where it runs: the
manifest (``deploy/controller.yaml``) mounts the node's ``/etc/cni/net.d`` read-only, as Spiderpool's chart does.

The first sync waits until every source has been listed once (or found not served), so a controller that has
just started never writes a NotReady it would take back a moment later.  A required source the server refuses
to list (RBAC forbids a ``cilium-config`` outside ``kube-system``, say) counts as listed with nothing in it
until it lists: a status that then cannot be Synced names the refused source in its reason.
"""

from __future__ import annotations

import logging
from pathlib import Path

import attrs
import trio

from actors.controller.workqueue import backoff
from actors.stores.port import Conflict, Gone, NotFound, Obj, Store, StoreUnreachable, closing_watch
from spider.coordinator.cidrs import (
    DEFAULT_CILIUM_CONFIG,
    DEFAULT_CNI_CONFIG_DIR,
    KCM_LABEL,
    KUBEADM_CONFIG,
    ClusterView,
    CniFile,
    coordinator_status,
    pod_cidr_type_of,
    split_namespaced_name,
    status_differs,
)
from spider.coordinator.config import KIND as COORDINATOR
from spider.errors import SpiderError, StoreUnavailable, TransientError

log = logging.getLogger(__name__)

DEFAULT_RESYNC = 60.0
"""Seconds between full re-lists (Spiderpool's ``SPIDERPOOL_COORDINATOR_INFORMER_RESYNC_PERIOD``)."""
RETRY_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)
"""Seconds before a failed status write or listing is tried again, growing per consecutive failure."""
MAX_CNI_FILE = 1 << 20
"""Bytes read of one CNI configuration file at most."""


@attrs.frozen
class CoordinatorSyncSettings:
    """How the coordinator status is kept."""

    resync_period: float = DEFAULT_RESYNC
    cni_config_dir: Path | None = attrs.field(
        default=Path(DEFAULT_CNI_CONFIG_DIR), converter=attrs.converters.optional(Path)
    )
    """Where ``podCIDRType: auto`` finds the default CNI (``SPIDERPOOL_CNI_CONFIG_DIR``); ``None``: nowhere."""
    cilium_config: str = DEFAULT_CILIUM_CONFIG
    """Cilium's ConfigMap as ``namespace/name`` (``SPIDERPOOL_CILIUM_CONFIGMAP_NAMESPACE_NAME``)."""

    @property
    def cilium_config_key(self) -> tuple[str, str]:
        """``(namespace, name)`` of Cilium's ConfigMap."""
        return split_namespaced_name(self.cilium_config)


@attrs.frozen
class Source:
    """One followed listing: a kind, optionally in one namespace and matching a label selector."""

    kind: str
    namespace: str | None = None
    label_selector: str = ""
    optional: bool = False
    """Served only where a CNI (or a Kubernetes release) brings it: "not served" means "not installed"."""

    def __str__(self) -> str:
        where = f" in {self.namespace}" if self.namespace else ""
        return f"{self.kind}{where}" + (f" ({self.label_selector})" if self.label_selector else "")


@attrs.define
class CoordinatorSyncStats:
    """What the sync did, for tests, logs and metrics."""

    syncs: int = 0
    status_writes: int = 0
    conflicts: int = 0
    lists: int = 0


@attrs.define(eq=False)
class CoordinatorSync:
    """Keeps every SpiderCoordinator's status; run with ``await nursery.start(sync.run)``."""

    store: Store
    settings: CoordinatorSyncSettings = attrs.field(factory=CoordinatorSyncSettings)
    retry_delays: tuple[float, ...] = RETRY_DELAYS
    stats: CoordinatorSyncStats = attrs.field(factory=CoordinatorSyncStats)
    _cache: dict[Source, dict[tuple[str, str], Obj] | None] = attrs.field(factory=dict)
    """Each source's objects by (namespace, name); ``None`` while the source is not served."""
    _tried: set[Source] = attrs.field(factory=set)
    _unreadable: dict[Source, str] = attrs.field(factory=dict)
    """Sources the server refuses to list, and why (``_refused``)."""
    _dirty: trio.Event = attrs.field(factory=trio.Event)
    _all_tried: trio.Event = attrs.field(factory=trio.Event)

    @property
    def sources(self) -> tuple[Source, ...]:
        """What is followed: the coordinators and everything their status is computed from."""
        cilium_ns = self.settings.cilium_config_key[0]
        config_namespaces = dict.fromkeys((KUBEADM_CONFIG[0], cilium_ns))
        return (
            Source(COORDINATOR),
            *(Source("ConfigMap", ns) for ns in config_namespaces),
            Source("Pod", KUBEADM_CONFIG[0], KCM_LABEL),
            Source("IPPool", optional=True),
            Source("CiliumPodIPPool", optional=True),
            Source("ServiceCIDR", optional=True),
        )

    @property
    def synced(self) -> bool:
        """Whether every source has been listed (or found not served) at least once."""
        return self._all_tried.is_set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the sources and keep the statuses until cancelled; started after the first sync."""
        first = trio.Event()
        async with trio.open_nursery() as nursery:
            for source in self.sources:
                nursery.start_soon(self._follow, source)
            nursery.start_soon(self._work, first)
            await first.wait()
            task_status.started()

    # --- followers ------------------------------------------------------------------------------------------

    def _changed(self) -> None:
        self._dirty.set()

    def _refused(self, source: Source, exc: SpiderError) -> None:
        """The server answered, refusing to list a source the statuses need (RBAC forbids it, say): until it
        lists, the statuses are computed without it, and a NotReady one names it (rather than never written)."""
        if self._cache.get(source) is None:
            self._unreadable[source] = str(exc)
            self._listed(source, None)

    def _listed(self, source: Source, items: list[Obj] | None) -> None:
        self.stats.lists += 1
        self._cache[source] = None if items is None else {_key(o): o for o in items}
        if source not in self._tried:
            self._tried.add(source)
            if len(self._tried) == len(self.sources):
                self._all_tried.set()
        self._changed()

    async def _follow(self, source: Source) -> None:
        failures = 0
        while True:
            try:
                listing = await self.store.list(
                    source.kind, namespace=source.namespace, label_selector=source.label_selector
                )
            except (NotFound, StoreUnavailable) as exc:
                if isinstance(exc, StoreUnreachable) or not source.optional:
                    failures += 1
                    if isinstance(exc, StoreUnreachable) or source not in self._unreadable:
                        log.warning("coordinator sync: listing %s failed (%s); retrying", source, exc)
                    if not isinstance(exc, StoreUnreachable):
                        self._refused(source, exc)
                    await trio.sleep(self._delay(failures))
                    continue
                if self._cache.get(source, {}) is not None:
                    log.info("coordinator sync: %s is not served (%s); trying again every %gs", source, exc,
                             self.settings.resync_period)  # fmt: skip
                self._listed(source, None)
                await trio.sleep(self.settings.resync_period)
                continue
            except SpiderError as exc:
                failures += 1
                log.warning("coordinator sync: listing %s failed (%s); retrying", source, exc)
                await trio.sleep(self._delay(failures))
                continue
            failures = 0
            self._unreadable.pop(source, None)
            self._listed(source, listing.items)
            with trio.move_on_after(self.settings.resync_period):  # NB: the periodic resync is a fresh list
                await self._watch(source, listing.resource_version)

    async def _watch(self, source: Source, version: str) -> None:
        """Apply the source's watch events until it breaks (then return, for a fresh list)."""
        while True:
            seen = False
            try:
                events = self.store.watch(
                    source.kind, namespace=source.namespace, label_selector=source.label_selector,
                    resource_version=version,
                )  # fmt: skip
                async with closing_watch(events):
                    async for event in events:
                        seen = True
                        cache = self._cache.get(source)
                        if cache is None:
                            return
                        key = _key(event.object)
                        if event.type == "DELETED":
                            cache.pop(key, None)
                        else:
                            cache[key] = event.object
                        version = str((event.object.get("metadata") or {}).get("resourceVersion") or version)
                        self._changed()
            except Gone:
                if not seen:  # NB: a server that answers every watch so must not be listed back to back
                    await trio.sleep(self._delay(1))
                return
            except SpiderError as exc:
                log.info("coordinator sync: watch of %s failed (%s); re-listing", source, exc)
                await trio.sleep(self._delay(1))
                return
            if not seen:  # the stream ended at once: do not spin on a backend that keeps closing it
                await trio.sleep(self._delay(1))

    # --- the worker -----------------------------------------------------------------------------------------

    async def _work(self, first: trio.Event) -> None:
        await self._all_tried.wait()
        failures = 0
        while True:
            self._dirty = trio.Event()
            try:
                await self.sync()
            except SpiderError as exc:  # NB: as Spiderpool's workqueue, any failed write is retried, later each time
                if isinstance(exc, Conflict):
                    self.stats.conflicts += 1
                failures += 1
                level = logging.DEBUG if isinstance(exc, (Conflict, TransientError)) else logging.WARNING
                log.log(level, "coordinator sync: %s; retrying", exc)
                first.set()
                with trio.move_on_after(self._delay(failures)):
                    await trio.sleep_forever()
                self._dirty.set()
            else:
                failures = 0
                first.set()
            await self._dirty.wait()

    def _delay(self, failures: int) -> float:
        return backoff(self.retry_delays, failures)

    def _items(self, source: Source) -> tuple[Obj, ...] | None:
        cache = self._cache.get(source)
        return None if cache is None else tuple(cache.values())

    async def view(self, needs_cni_files: bool) -> ClusterView:
        """The cluster as the caches see it (and the CNI files, when a coordinator is ``auto``)."""
        by_kind = {s.kind: s for s in self.sources if s.kind not in ("ConfigMap",)}
        configs: dict[tuple[str, str], Obj] = {}
        for source in self.sources:
            if source.kind == "ConfigMap":
                configs.update(self._cache.get(source) or {})
        return ClusterView(
            cni_files=await read_cni_files(self.settings.cni_config_dir) if needs_cni_files else (),
            kubeadm_config=configs.get(KUBEADM_CONFIG),
            kcm_pods=tuple(sorted(self._items(by_kind["Pod"]) or (), key=lambda pod: _key(dict(pod)))),
            calico_pools=self._items(by_kind["IPPool"]),
            cilium_config=configs.get(self.settings.cilium_config_key),
            cilium_pod_ip_pools=self._items(by_kind["CiliumPodIPPool"]),
            service_cidrs=self._items(by_kind["ServiceCIDR"]),
            unreadable=tuple(f"{source}: {why}" for source, why in self._unreadable.items()),
        )

    async def sync(self) -> int:
        """Compute every coordinator's status and write those that differ; returns how many were written.

        ``Conflict`` when a write lost to a newer copy (the watch brings it; then sync again); any other
        ``SpiderError`` a write met (refused, or the store unreachable).  Either is raised after every other
        coordinator's status has been written.
        """
        self.stats.syncs += 1
        coordinators = list((self._cache.get(Source(COORDINATOR)) or {}).values())
        if not coordinators:
            return 0
        view = await self.view(any(pod_cidr_type_of(c) == "auto" for c in coordinators))
        written = 0
        failure: SpiderError | None = None
        for obj in coordinators:
            status = coordinator_status(pod_cidr_type_of(obj), view)
            if not status_differs(obj, status):
                continue
            try:
                stored = await self.store.update_status({**obj, "status": status.to_json()})
            except NotFound:
                continue
            except SpiderError as exc:
                failure = failure or exc
                continue
            self._cache[Source(COORDINATOR)][_key(stored)] = stored  # type: ignore[index]
            self.stats.status_writes += 1
            written += 1
            name = obj["metadata"]["name"]
            log.info("SpiderCoordinator %s: %s%s", name, status.phase, f" ({status.reason})" if status.reason else "")
        if failure is not None:
            raise failure
        return written


def _key(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


async def read_cni_files(directory: Path | None) -> tuple[CniFile, ...]:
    """The ``*.conf``/``*.conflist`` files of the CNI configuration directory (none when it is missing)."""
    if directory is None:
        return ()

    def read() -> tuple[CniFile, ...]:
        try:
            paths = sorted(p for p in directory.iterdir() if p.suffix in (".conf", ".conflist") and p.is_file())
        except OSError:
            return ()
        out = []
        for path in paths:
            try:
                with path.open("rb") as f:
                    out.append(CniFile(path.name, f.read(MAX_CNI_FILE).decode("utf-8", "replace")))
            except OSError as exc:
                out.append(CniFile(path.name, f"<unreadable: {exc}>"))
        return tuple(out)

    return await trio.to_thread.run_sync(read)


async def sync_once(store: Store, settings: CoordinatorSyncSettings | None = None) -> int:
    """List every source once and write every coordinator's status that differs (the demo, tests, a CLI):
    what a leading controller does continuously.  Returns how many statuses were written."""
    sync = CoordinatorSync(store, settings or CoordinatorSyncSettings())
    for source in sync.sources:
        try:
            listing = await store.list(source.kind, namespace=source.namespace, label_selector=source.label_selector)
        except (NotFound, StoreUnavailable) as exc:
            if isinstance(exc, StoreUnreachable):
                raise
            if source.optional:
                sync._listed(source, None)
            else:
                sync._refused(source, exc)
        else:
            sync._listed(source, listing.items)
    return await sync.sync()
