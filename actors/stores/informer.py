"""The informer loop: keep a local view of one kind current with a list, then a watch from the list's version.

Owns the list/watch/re-list cycle the controller's reconciler and the webhook's cache share (client-go's
reflector): a listing hands every object to ``on_list``; each watch event goes to ``on_event``; a ``Gone``
(the watch fell too far behind), a store failure and every ``resync_period`` start over with a fresh list.
A failed listing (also "no such kind": a CRD not installed yet) is retried after ``delay(failures)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

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
    """Follow ``kind`` until cancelled; ``who`` names the caller in the log."""
    failures = 0
    while True:
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
                    break
                except SpiderError as exc:
                    log.warning("%s: watch of %s failed (%s); re-listing", who, kind, exc)
                    await trio.sleep(delay(1))
                    break
                if not seen:  # the stream ended at once: do not spin on a backend that keeps closing it
                    await trio.sleep(delay(1))


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
