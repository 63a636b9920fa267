"""Riding out short store outages: a ``Store`` that retries what failed only because the store was unreachable.

Owns ``RetryingStore``, a ``Store`` wrapping another one, and the outage budget it keeps.  An API server
restart takes seconds; without this, every request in flight meanwhile fails with CNI 11 and the runtime tears
down and rebuilds each pod sandbox.  With it, a request that meets ``StoreUnreachable`` waits and tries again
(jittered exponential backoff, at most ``MAX_PAUSE`` apart) until the store answers or the outage has lasted
``outage_budget`` seconds; then the last ``StoreUnreachable`` goes to the caller, saying how long it waited.
Every other error, ``StoreUnavailable`` for a reason waiting does not fix included, goes to the caller at once.

The outage is the store's, not one request's: it starts at the first unreachable answer any request met and
ends with the next answer any request gets.  A request that arrives during a long outage tries once and, when
the budget is spent already, fails without waiting the budget again (so requests do not pile up for minutes).

Writes whose answer was lost may have been applied; each retry is safe by construction:

- ``update`` and ``update_status`` guarded by a ``resourceVersion``: a retry of one that was applied is
  ``Conflict``, which callers already handle by reading again (one without a version writes last-wins again);
- ``delete``: a retry of one that was applied is ``NotFound``, which here means "done" and returns; a guarded one
  of an object with finalizers (which the first try marked) is ``Conflict``, "done" when the object is found
  being deleted;
- ``create``: a retry of one that was applied is ``AlreadyExists``; the stored object is read back and, when
  it holds what was sent (labels, annotations, finalizers, owners and every field but ``status`` and the
  server's own), it is the answer; otherwise ``AlreadyExists`` goes to the caller.  A create that leaves the
  name to the server (``generateName``) is never retried: a retry would make a second object.

Watches pass through: each backend's watch reconnects on its own and resumes from the last version it saw
(bookmarks included), which a wrapper cannot know.  ``update_status_atomically`` is retried like a write
(its ``change`` runs again on the object as stored then).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import trio

from actors.stores.port import (
    AlreadyExists,
    AtomicStatusUpdate,
    Conflict,
    KindLister,
    NotFound,
    Obj,
    ObjectList,
    PassThrough,
    Store,
    StoreUnreachable,
    key_of,
)
from spider.errors import SpiderError
from spider.kinds import kind_info

T = TypeVar("T")
log = logging.getLogger(__name__)

DEFAULT_OUTAGE_BUDGET = 8.0
"""Seconds of store outage a request rides out: an API server restart (about 7 s), well inside the runtime's
CNI timeout (100 s for Spiderpool's plugin)."""
FIRST_PAUSE = 0.05
"""Seconds before the first retry (jittered); each later pause doubles it."""
MAX_PAUSE = 1.0
"""Longest pause between two tries, so requests resume within about a second of the store's return."""
_SERVER_FIELDS = frozenset({"apiVersion", "kind", "metadata", "status"})
_SENT_METADATA = ("labels", "annotations", "finalizers", "ownerReferences")


@attrs.define(eq=False)
class RetryingStore(PassThrough):
    """A ``Store`` that retries requests failing with ``StoreUnreachable`` within ``outage_budget`` seconds;
    ``watch`` and ``aclose`` pass through (the module docstring says why for watches)."""

    inner: Store
    outage_budget: float = DEFAULT_OUTAGE_BUDGET
    """Seconds of outage a request waits through before it fails with the last ``StoreUnreachable``; 0: none."""
    update_status_atomically: AtomicStatusUpdate | None = attrs.field(init=False)
    """The inner store's, retried like a write, when it has one."""
    _down_since: float | None = attrs.field(default=None, init=False)
    """``trio.current_time()`` of the first unreachable answer since the store last answered; ``None``: up."""

    @update_status_atomically.default
    def _inner_atomic(self) -> AtomicStatusUpdate | None:
        atomically: AtomicStatusUpdate | None = getattr(self.inner, "update_status_atomically", None)
        if atomically is None:
            return None
        inner = atomically

        async def retried(
            kind: str,
            name: str,
            change: Callable[[Obj], Obj | None],
            namespace: str = "",
            *,
            read_first: Callable[[KindLister], None] | None = None,
        ) -> Obj:
            if read_first is None:  # NB: an inner store may not know the keyword
                return await self._retry(lambda: inner(kind, name, change, namespace))
            return await self._retry(lambda: inner(kind, name, change, namespace, read_first=read_first))

        return retried

    @property
    def unreachable_since(self) -> float | None:
        """``trio.current_time()`` when the current outage began, or ``None`` while the store answers."""
        return self._down_since

    async def _retry(self, attempt: Callable[[], Awaitable[T]], *, on_retry: Callable[[], None] | None = None) -> T:
        """``await attempt()`` until it does not raise ``StoreUnreachable`` or the outage outlasts the budget.

        ``on_retry`` runs before each retry (a write learns that an earlier try may have been applied).
        """
        pause = FIRST_PAUSE
        first_failure: float | None = None  # this request's
        while True:
            try:
                result = await attempt()
            except StoreUnreachable as exc:
                now = trio.current_time()
                if self._down_since is None:
                    self._down_since = now
                    log.warning("store unreachable (%s); waiting up to %g s for it", exc.reason, self.outage_budget)
                first_failure = now if first_failure is None else first_failure
                began = min(first_failure, self._down_since)
                left = began + self.outage_budget - now
                if left <= 0:
                    raise StoreUnreachable(
                        reason=f"{exc.reason} (unreachable for {now - began:.1f} s, past the outage budget of "
                        f"{self.outage_budget:g} s)"
                    ) from exc
                await trio.sleep(min(pause * random.uniform(0.5, 1.5), left))
                pause = min(pause * 2, MAX_PAUSE)
                if on_retry is not None:
                    on_retry()
                continue
            except SpiderError:  # NotFound, Conflict, ...: the store answered, so it is up
                self._store_answered()
                raise
            self._store_answered()
            return result

    def _store_answered(self) -> None:
        if self._down_since is not None:
            log.info("store reachable again after %.1f s", trio.current_time() - self._down_since)
            self._down_since = None

    # --- the Store port ------------------------------------------------------------------------------------

    async def get(self, kind: str, name: str, namespace: str = "") -> Obj:
        """As the inner store, retried through outages."""
        return await self._retry(lambda: self.inner.get(kind, name, namespace))

    async def get_metadata(self, kind: str, name: str, namespace: str = "") -> dict[str, Any]:
        """As the inner store, retried through outages."""
        return await self._retry(lambda: self.inner.get_metadata(kind, name, namespace))

    async def list(
        self, kind: str, *, namespace: str | None = None, label_selector: str = "", field_selector: str = ""
    ) -> ObjectList:
        """As the inner store, retried through outages."""
        return await self._retry(
            lambda: self.inner.list(
                kind, namespace=namespace, label_selector=label_selector, field_selector=field_selector
            )
        )

    async def create(self, obj: Obj) -> Obj:
        """As the inner store, retried through outages; a retry that finds the object it sent is its answer."""
        kind, namespace, name = key_of(obj)
        if not name:  # NB: generateName: a retry of a create that was applied would make a second object
            return await self.inner.create(obj)
        maybe_applied = False

        def retrying() -> None:
            nonlocal maybe_applied
            maybe_applied = True

        try:
            return await self._retry(lambda: self.inner.create(obj), on_retry=retrying)
        except AlreadyExists:
            if not maybe_applied:
                raise
            stored = await self._created_by(obj, kind, name, namespace)
            if stored is None:
                raise
            log.info("create of %s %r was applied though its answer was lost", kind, name)
            return stored

    async def _created_by(self, sent: Obj, kind: str, name: str, namespace: str) -> Obj | None:
        """The stored object when it holds what ``sent`` asked for (so our lost create made it), else ``None``."""
        try:
            stored = await self.get(kind, name, namespace)
        except NotFound:
            return None
        return stored if _holds(stored, sent, kind) else None

    async def update(self, obj: Obj) -> Obj:
        """As the inner store, retried through outages (an applied retry with a version is ``Conflict``)."""
        return await self._retry(lambda: self.inner.update(obj))

    async def update_status(self, obj: Obj) -> Obj:
        """As the inner store, retried through outages (an applied retry with a version is ``Conflict``)."""
        return await self._retry(lambda: self.inner.update_status(obj))

    async def delete(
        self, kind: str, name: str, namespace: str = "", *, resource_version: str = "", grace_seconds: int | None = None
    ) -> None:
        """As the inner store, retried through outages; ``NotFound`` on a retry means an earlier try did it."""
        maybe_applied = False

        def retrying() -> None:
            nonlocal maybe_applied
            maybe_applied = True

        try:
            await self._retry(
                lambda: self.inner.delete(
                    kind, name, namespace, resource_version=resource_version, grace_seconds=grace_seconds
                ),
                on_retry=retrying,
            )
        except NotFound:
            if not maybe_applied:
                raise
        except Conflict:
            # NB: a guarded delete of an object with finalizers marks it (a new resourceVersion): sent again (by us
            # or by the HTTP client on a dropped connection), its precondition fails although it was done
            if not resource_version or not await self._terminating(kind, name, namespace):
                raise

    async def _terminating(self, kind: str, name: str, namespace: str) -> bool:
        """Whether the object is gone or being deleted now."""
        try:
            stored = await self.get(kind, name, namespace)
        except NotFound:
            return True
        return bool((stored.get("metadata") or {}).get("deletionTimestamp"))


def _holds(stored: Obj, sent: Obj, kind: str) -> bool:
    """Whether ``stored`` is what a create of ``sent`` makes: the same fields, but for what the server fills in
    (and ``status``, which a create drops for kinds with a status subresource)."""
    fields = (set(sent) | set(stored)) - _SERVER_FIELDS
    if not kind_info(kind).status_subresource:
        fields.add("status")
    if not all(_holds_value(stored.get(f), sent.get(f)) for f in fields):
        return False
    sent_meta, stored_meta = sent.get("metadata") or {}, stored.get("metadata") or {}
    return all(_empty_is_none(sent_meta.get(f)) == _empty_is_none(stored_meta.get(f)) for f in _SENT_METADATA)


def _holds_value(stored: Any, sent: Any) -> bool:
    """``stored`` is ``sent`` with, at most, fields added inside objects: the defaults an API server fills in
    from the CRD schema (a SpiderIPPool created without ``spec.disable`` is stored with ``disable: false``)."""
    if isinstance(stored, dict) and isinstance(sent, dict):
        return all(_holds_value(stored.get(k), v) for k, v in sent.items())
    if isinstance(stored, list) and isinstance(sent, list):
        return len(stored) == len(sent) and all(map(_holds_value, stored, sent))
    return bool(_empty_is_none(sent) == _empty_is_none(stored))


def _empty_is_none(value: Any) -> Any:
    return value if value not in (None, {}, [], "") else None
