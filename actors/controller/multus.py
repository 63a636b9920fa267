"""The controller's leading work on SpiderMultusConfigs: each one's NetworkAttachmentDefinition, kept in step.

Owns ``MultusReconciler`` (Spiderpool's ``multusconfig_informer.go``, reference §7.2), an informer-and-workqueue
loop like ``actors.controller.reconciler``:

- informers on SpiderMultusConfig and NetworkAttachmentDefinition list each kind into a cache and follow its
  watch; every ``resync_period`` (60 s, Spiderpool's ``SPIDERPOOL_MULTUS_CONFIG_INFORMER_RESYNC_PERIOD``) they
  re-list, which also repairs anything a missed event left behind;
- a SpiderMultusConfig's key: its NAD (``spider.multus.network_attachment``) is created when missing (also
  when someone deleted it by hand, M00007), updated when its annotations, config or controller owner differ, a
  terminating one is waited for (retried), one controlled by another SpiderMultusConfig is left alone (the
  store layer refuses such an SMC anyway), and one owned by nobody is taken over, as Spiderpool does (M00014);
- a NAD's key: when its controller owner, a SpiderMultusConfig, no longer exists (or is another object of that
  name, a different uid), the NAD is deleted (M00008).  On Kubernetes the garbage collector would do that
  through the owner reference; neither the embedded store nor the test API server has one, so the controller
  does it itself, and on a real cluster it merely gets there first.  Nothing is deleted before both kinds have
  been listed, so a NAD is never taken for an orphan because its owner was not seen yet.

Every write carries the cached resourceVersion; a ``Conflict`` or a transient failure retries the key later; a
refusal is logged once per version; anything else (an object no rule foresaw) is logged and counted in
``MultusStats.failures``, and the other keys go on.
"""

from __future__ import annotations

import contextlib
import logging

import attrs
import trio

from actors.controller.workqueue import RETRY_DELAYS, WorkQueue
from actors.stores.informer import inform_each
from actors.stores.port import AlreadyExists, Conflict, NotFound, Obj, Store, WatchEvent
from spider.errors import InvalidSpec, SpiderError, TransientError
from spider.multus import KIND as MULTUS
from spider.multus import (
    NAD_KIND,
    mutate_multus_config,
    nad_name,
    network_attachment,
    owner_name,
    updated_nad,
    validate_multus_config,
)

log = logging.getLogger(__name__)

DEFAULT_RESYNC = 60.0
"""Seconds between full re-lists (Spiderpool's SpiderMultusConfig informer resyncs every 60 s)."""
WATCHED = (MULTUS, NAD_KIND)

Key = tuple[str, str]
"""(kind, ``namespace/name``)."""


class NadTerminating(TransientError):
    """The NAD is being deleted: a new one can only be made once it is gone."""

    def __str__(self) -> str:
        return "the old net-attach-def is terminating, wait for a while"


@attrs.frozen
class MultusSettings:
    """How the SpiderMultusConfig controller runs (Spiderpool's ``SPIDERPOOL_MULTUS_CONFIG_*``)."""

    resync_period: float = DEFAULT_RESYNC
    retry_delays: tuple[float, ...] = RETRY_DELAYS


@attrs.define
class MultusStats:
    """What the controller did, for tests and logs."""

    reconciles: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
    conflicts: int = 0
    failures: int = 0
    """Keys whose reconcile failed unexpectedly (a bug, or an object no rule foresaw): logged, then skipped."""


def _where(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _uid(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("uid", ""))


def _terminating(obj: Obj) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


@attrs.define(eq=False)
class MultusReconciler:
    """Keeps one NetworkAttachmentDefinition per SpiderMultusConfig; run with ``await nursery.start(r.run)``."""

    store: Store
    settings: MultusSettings = attrs.field(factory=MultusSettings)
    stats: MultusStats = attrs.field(factory=MultusStats)
    _cache: dict[str, dict[str, Obj]] = attrs.field(factory=lambda: {kind: {} for kind in WATCHED})
    _queue: WorkQueue[Key] = attrs.field(
        default=attrs.Factory(lambda self: WorkQueue.open(self.settings.retry_delays), takes_self=True)
    )
    _listed: set[str] = attrs.field(factory=set)
    _all_listed: trio.Event = attrs.field(factory=trio.Event)
    _complained: dict[Key, str] = attrs.field(factory=dict)

    @property
    def synced(self) -> bool:
        """Whether both kinds have been listed at least once."""
        return self._listed == set(WATCHED)

    @property
    def idle(self) -> bool:
        """Whether nothing waits in the queue (for tests that wait for the controller to settle)."""
        return not self._queue

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow both kinds and reconcile until cancelled; started once both are listed."""
        async with trio.open_nursery() as nursery:
            inform_each(nursery, self.store, WATCHED, on_list=self._listed_kind, on_event=self._event,
                        resync_period=self.settings.resync_period, delay=self._queue.delay, who="multus")  # fmt: skip
            nursery.start_soon(self._work, nursery)
            await self._all_listed.wait()
            task_status.started()

    # --- informers ---------------------------------------------------------------------------------------

    def _listed_kind(self, kind: str, items: list[Obj]) -> None:
        old, new = self._cache[kind], {_where(obj): obj for obj in items}
        self._cache[kind] = new
        for where, obj in old.items():
            if where not in new:
                self._changed(kind, obj, deleted=True)
        for obj in items:
            self._changed(kind, obj)
        if kind not in self._listed:
            self._listed.add(kind)
            if self.synced:
                for where in self._cache[MULTUS]:
                    self._queue.add((MULTUS, where))
                for where in self._cache[NAD_KIND]:
                    self._queue.add((NAD_KIND, where))
                self._all_listed.set()

    def _event(self, kind: str, event: WatchEvent) -> None:
        where = _where(event.object)
        if event.type == "DELETED":
            self._cache[kind].pop(where, None)
        else:
            self._cache[kind][where] = event.object
        self._changed(kind, event.object, deleted=event.type == "DELETED")

    def _changed(self, kind: str, obj: Obj, *, deleted: bool = False) -> None:
        """Queue the keys whose desired state depends on this object."""
        namespace = str((obj.get("metadata") or {}).get("namespace", ""))
        if kind == MULTUS:
            self._queue.add((MULTUS, _where(obj)))
            if deleted:  # its NADs may now be orphans
                for where, nad in self._cache[NAD_KIND].items():
                    if owner_name(nad) == (obj.get("metadata") or {}).get("name") and where.startswith(namespace + "/"):
                        self._queue.add((NAD_KIND, where))
            return
        owner = owner_name(obj)
        if owner is not None:
            self._queue.add((NAD_KIND, _where(obj)))
            self._queue.add((MULTUS, f"{namespace}/{owner}"))
        name = str((obj.get("metadata") or {}).get("name", ""))
        for where, smc in self._cache[MULTUS].items():  # a NAD deleted by hand, or one an SMC would take over
            if where.startswith(namespace + "/") and nad_name(smc) == name:
                self._queue.add((MULTUS, where))

    # --- the worker --------------------------------------------------------------------------------------

    async def _work(self, nursery: trio.Nursery) -> None:
        while True:
            key = await self._queue.get()
            if not self.synced:
                continue  # NB: the first complete listing queues every key again
            self.stats.reconciles += 1
            try:
                if key[0] == MULTUS:
                    await self._reconcile_config(key)
                else:
                    await self._reconcile_nad(key)
            except (Conflict, AlreadyExists, NotFound, TransientError) as exc:
                if isinstance(exc, Conflict):
                    self.stats.conflicts += 1
                log.debug("%s %s: %s; retrying", *key, exc)
                self._queue.failed(nursery, key)
            except SpiderError as exc:  # refused (422 and the like): retrying the same write cannot help
                self._complain(key, exc)
            except Exception:  # NB: one odd object must not stop the others from being maintained
                self.stats.failures += 1
                log.exception("%s %s: reconcile failed; skipped until it changes or the next resync", *key)
            else:
                self._queue.succeeded(key)

    async def _reconcile_config(self, key: Key) -> None:
        stored_smc = self._cache[MULTUS].get(key[1])
        if stored_smc is None or _terminating(stored_smc):
            return  # NB: its NADs are handled by their own keys
        smc = mutate_multus_config(stored_smc)
        validate_multus_config(smc)
        namespace = str(smc["metadata"].get("namespace", ""))
        where = f"{namespace}/{nad_name(smc)}"
        nad = self._cache[NAD_KIND].get(where)
        if nad is None:
            created = await self.store.create(network_attachment(smc))
            self._cache[NAD_KIND][where] = created
            self.stats.created += 1
            log.info("SpiderMultusConfig %s: created NetworkAttachmentDefinition %s", key[1], where)
            return
        if _terminating(nad):
            raise NadTerminating()
        owner = owner_name(nad)
        if owner is not None and owner != smc["metadata"].get("name"):
            reason = f"managed by SpiderMultusConfig {namespace}/{owner}, not {key[1]}"
            raise InvalidSpec(kind=NAD_KIND, name=where, reason=reason)
        changed = updated_nad(nad, smc)
        if changed is not None:
            written = await self.store.update(changed)
            self._cache[NAD_KIND][where] = written
            self.stats.updated += 1
            log.info("SpiderMultusConfig %s: updated NetworkAttachmentDefinition %s", key[1], where)

    async def _reconcile_nad(self, key: Key) -> None:
        nad = self._cache[NAD_KIND].get(key[1])
        if nad is None or _terminating(nad):
            return
        owner = owner_name(nad)
        if owner is None:
            return
        namespace = str(nad["metadata"].get("namespace", ""))
        smc = self._cache[MULTUS].get(f"{namespace}/{owner}")
        refs = [r for r in nad["metadata"].get("ownerReferences") or [] if r.get("controller")]
        if smc is not None and any(r.get("uid") == _uid(smc) for r in refs):
            return
        others = [r for r in nad["metadata"].get("ownerReferences") or [] if r not in refs]
        if others:  # NB: as Kubernetes' garbage collector: with owners left, only the gone one's reference goes
            with contextlib.suppress(NotFound):
                written = await self.store.update({**nad, "metadata": {**nad["metadata"], "ownerReferences": others}})
                self._cache[NAD_KIND][key[1]] = written
            log.info("NetworkAttachmentDefinition %s: its SpiderMultusConfig %s is gone; kept for its other owners",
                     key[1], owner)  # fmt: skip
            return
        version = str(nad["metadata"].get("resourceVersion", ""))
        with contextlib.suppress(NotFound):  # NB: deleted meanwhile (by Kubernetes' garbage collector, say)
            await self.store.delete(NAD_KIND, nad["metadata"]["name"], namespace, resource_version=version)
        self._cache[NAD_KIND].pop(key[1], None)
        self.stats.deleted += 1
        log.info("NetworkAttachmentDefinition %s: its SpiderMultusConfig %s is gone; deleted", key[1], owner)

    def _complain(self, key: Key, exc: SpiderError) -> None:
        """Log a problem once per version of the object, not on every resync."""
        obj = self._cache[key[0]].get(key[1]) or {}
        version = str((obj.get("metadata") or {}).get("resourceVersion", ""))
        if self._complained.get(key) != version:
            self._complained[key] = version
            log.warning("%s %s: not maintained: %s", *key, exc)
