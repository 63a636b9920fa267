"""The informer loop: keep a local view of one kind current with a list, then a watch from the list's version.

Owns the list/watch/re-list cycle every controller and the webhooks' caches share (client-go's reflector): a
listing hands every object to ``on_list``; each watch event goes to ``on_event``; a ``Gone`` (the watch fell too
far behind), a store failure and every ``resync_period`` start over with a fresh list.  A failed listing (also
"no such kind": a CRD not installed yet) is retried after ``delay(failures)``.

``inform_each`` starts one such loop per kind for a controller that follows several; ``KindCache`` keeps the
objects of a few kinds current that way, for readers that must answer without an API call (the webhooks).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import attrs
import trio

from actors.stores.port import Gone, Obj, Store, WatchEvent, closing_watch
from spider.errors import SpiderError

log = logging.getLogger(__name__)


async def inform(
    store: Store,
    kind: str,
    *,
    on_list: Callable[[list[Obj]], None],
    on_event: Callable[[WatchEvent], None],
    resync_period: float,
    delay: Callable[[int], float],
    who: str = "informer",
) -> None:
    """Follow ``kind`` until cancelled; ``who`` names the caller in the log.

    A watch that breaks (410 Gone, an error) is followed by a fresh list; while watches keep breaking before
    any event arrives, each re-list waits ``delay`` of how many did so far (as client-go's reflector backs
    off), so a server that refuses every watch is not listed back to back, nor every object reconciled again.
    """
    failures = 0
    broken = 0  # NB: re-lists since a watch last delivered an event
    while True:
        if broken:
            await trio.sleep(delay(broken))
        try:
            listing = await store.list(kind)
        except SpiderError as exc:
            failures += 1
            log.warning("%s: listing %s failed (%s); retrying", who, kind, exc)
            await trio.sleep(delay(failures))
            continue
        failures = 0
        on_list(listing.items)
        version = listing.resource_version
        with trio.move_on_after(resync_period):  # NB: the periodic resync is a fresh list
            while True:
                try:
                    version, seen = await _follow(store, kind, version, on_event)
                except Gone:
                    log.info("%s: watch of %s from version %s is too old; re-listing", who, kind, version)
                    broken += 1
                    break
                except SpiderError as exc:
                    log.warning("%s: watch of %s failed (%s); re-listing", who, kind, exc)
                    broken += 1
                    break
                if seen:
                    broken = 0
                else:  # the stream ended at once: do not spin on a backend that keeps closing it
                    await trio.sleep(delay(1))


def inform_each(
    nursery: trio.Nursery,
    store: Store,
    kinds: tuple[str, ...],
    *,
    on_list: Callable[[str, list[Obj]], None],
    on_event: Callable[[str, WatchEvent], None],
    resync_period: float,
    delay: Callable[[int], float],
    who: str,
) -> None:
    """Start ``inform`` for each of ``kinds`` in ``nursery``; the callbacks get the kind first."""
    for kind in kinds:
        nursery.start_soon(
            functools.partial(
                inform,
                store,
                kind,
                on_list=functools.partial(on_list, kind),
                on_event=functools.partial(on_event, kind),
                resync_period=resync_period,
                delay=delay,
                who=who,
            )
        )


async def _follow(store: Store, kind: str, version: str, on_event: Callable[[WatchEvent], None]) -> tuple[str, bool]:
    """Apply watch events from ``version`` until the stream ends; the last version seen and whether any."""
    seen = False
    events = store.watch(kind, resource_version=version)
    async with closing_watch(events):
        async for event in events:
            seen = True
            on_event(event)
            version = str((event.object.get("metadata") or {}).get("resourceVersion") or version)
    return version, seen


Key = tuple[str, str]
"""(namespace, name); the namespace is "" for a cluster-scoped kind."""


def key_of(obj: Obj) -> Key:
    """Where ``obj`` is kept in a ``KindCache``."""
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


@attrs.define(eq=False)
class KindCache:
    """The objects of ``kinds`` as ``keep`` trims them, kept current by a list and a watch per kind; ``run`` it.

    Each kind is re-listed after a ``Gone`` (its watch fell too far behind), a store failure, and every
    ``resync_period``; until every kind's first listing, ``synced`` is false.
    """

    store: Store
    kinds: tuple[str, ...]
    keep: Callable[[str, Obj], Obj]
    """What is kept of an object of a kind (what its readers need: never a status they do not read)."""
    who: str = "cache"
    resync_period: float = 300.0
    retry_delay: float = 1.0
    lists: int = 0
    """How many listings it made (one per kind at the start, then one per re-list)."""
    _objects: dict[str, dict[Key, Obj]] = attrs.field(init=False)
    _listed: set[str] = attrs.field(factory=set)
    _synced: trio.Event = attrs.field(factory=trio.Event)

    def __attrs_post_init__(self) -> None:
        self._objects = {kind: {} for kind in self.kinds}

    @property
    def synced(self) -> bool:
        """Whether every kind has been listed at least once."""
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        """Wait for the first listing of every kind."""
        await self._synced.wait()

    def items(self, *kinds: str) -> list[Obj]:
        """The cached objects of ``kinds`` (every cached kind when none is named)."""
        return [obj for kind in kinds or self.kinds for obj in self._objects[kind].values()]

    def get(self, kind: str, name: str, namespace: str = "") -> Obj | None:
        """The cached object, if any."""
        return self._objects[kind].get((namespace, name))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Inform every kind until cancelled; started at once (``synced`` says when the listings came)."""
        async with trio.open_nursery() as nursery:
            inform_each(nursery, self.store, self.kinds, on_list=self._listed_kind, on_event=self._apply,
                        resync_period=self.resync_period, delay=lambda failures: self.retry_delay,
                        who=self.who)  # fmt: skip
            task_status.started()

    def _listed_kind(self, kind: str, items: list[Obj]) -> None:
        self.lists += 1
        self._objects[kind] = {key_of(obj): self.keep(kind, obj) for obj in items}
        self._listed.add(kind)
        if self._listed == set(self.kinds):
            self._synced.set()

    def _apply(self, kind: str, event: WatchEvent) -> None:
        if event.type == "DELETED":
            self._objects[kind].pop(key_of(event.object), None)
        else:
            self._objects[kind][key_of(event.object)] = self.keep(kind, event.object)
