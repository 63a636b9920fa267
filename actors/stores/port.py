"""The store port: Kubernetes-shaped objects with Kubernetes' concurrency semantics.

Owns the interface every backend implements (embedded SQLite, Kubernetes API) and the errors a backend raises.
Objects are plain JSON-shaped dicts exactly as the API server returns them (``apiVersion``, ``kind``,
``metadata`` with ``name``, ``namespace``, ``uid``, ``resourceVersion``, ``labels``, ``annotations``,
``finalizers``, ``deletionTimestamp``; ``spec``; ``status``).  Domain code parses them with named
constructors (``IPPool.from_object``); nothing here knows what a pool is.

Semantics every backend keeps (the contract tests in ``tests/store`` check them):

- ``resourceVersion`` changes on every write; a write that carries a stale one raises ``Conflict``.
- ``update`` never changes ``status`` of a kind with a status subresource, ``update_status`` changes only it.
- ``delete`` of an object with finalizers only sets ``metadata.deletionTimestamp``; the object goes when an
  update removes the last finalizer.
- ``watch`` yields every change after ``resource_version`` in order; a version too old to replay raises
  ``Gone`` (HTTP 410), after which the caller re-lists.
- A store that cannot be reached (connection refused or reset, a timeout, HTTP 5xx or 429) raises
  ``StoreUnreachable``: the request may or may not have been applied, and the same request may succeed in a
  moment (``actors.stores.retrying`` rides such outages out).  Other ``StoreUnavailable`` errors (no
  credentials, CRDs not installed, a locked file) are not expected to clear by themselves.

Optional capabilities, looked up with ``getattr`` by the code that can use them: ``AtomicStatusUpdate``
(``update_status_atomically``), a read-modify-write of a status under a backend's own write lock, which the
embedded store has and the API server does not; ``TokenReviewer`` (``review_token``), which only the API server
has.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal, Protocol

import attrs
import trio

from spider.errors import SpiderError, StoreUnavailable, TransientError

Obj = dict[str, Any]


@attrs.define(auto_exc=True, kw_only=True)
class NotFound(SpiderError):
    """The object does not exist (HTTP 404)."""

    kind: str
    name: str
    namespace: str = ""

    def __str__(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind} {where!r} not found"


@attrs.define(auto_exc=True, kw_only=True)
class AlreadyExists(SpiderError):
    """``create`` of an object whose name is taken (HTTP 409 AlreadyExists)."""

    kind: str
    name: str
    namespace: str = ""

    def __str__(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind} {where!r} already exists"


@attrs.define(auto_exc=True, kw_only=True)
class Conflict(TransientError):
    """A write carried a resourceVersion that is no longer current (HTTP 409 Conflict)."""

    kind: str
    name: str
    sent_version: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r} was modified since resourceVersion {self.sent_version}"


@attrs.define(auto_exc=True, kw_only=True)
class Gone(TransientError):
    """A watch asked for history the store no longer keeps (HTTP 410); re-list and watch again."""

    resource_version: str

    def __str__(self) -> str:
        return f"resourceVersion {self.resource_version} is too old to watch from; re-list"


@attrs.define(auto_exc=True, kw_only=True)
class StoreUnreachable(StoreUnavailable):
    """The store did not answer (connection refused or reset, a timeout, HTTP 5xx or 429); CNI 11.

    A write that raises it may have been applied all the same (only its answer was lost).
    """

    def __str__(self) -> str:
        return f"store unreachable: {self.reason}"


@attrs.define(auto_exc=True, kw_only=True)
class Invalid(SpiderError):
    """The store refused an object that fails validation (HTTP 422)."""

    kind: str
    name: str
    reason: str

    cni_code = 7

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r} is invalid: {self.reason}"


@attrs.frozen
class ObjectList:
    """The answer to ``list``: the items and the store version to watch from."""

    items: list[Obj]
    resource_version: str


@attrs.frozen
class WatchEvent:
    """One change seen by ``watch``: the object as it is after the change (or was, before a delete)."""

    type: Literal["ADDED", "MODIFIED", "DELETED"]
    object: Obj


class Store(Protocol):
    """A store of Kubernetes-shaped objects; see the module docstring for the semantics."""

    async def get(self, kind: str, name: str, namespace: str = "") -> Obj:
        """The object, or ``NotFound``."""
        ...

    async def get_metadata(self, kind: str, name: str, namespace: str = "") -> dict[str, Any]:
        """The object's ``metadata`` alone, as fresh as ``get``; ``NotFound``.  Cheap for a big object: its
        ``resourceVersion`` says whether it changed, without sending and decoding the rest."""
        ...

    async def list(
        self, kind: str, *, namespace: str | None = None, label_selector: str = "", field_selector: str = ""
    ) -> ObjectList:
        """Objects of a kind, optionally in one namespace and matching a label selector string and a field
        selector string (``spider.fields``: the fields the API server lets the kind be selected by)."""
        ...

    async def create(self, obj: Obj) -> Obj:
        """Store a new object; fills uid, resourceVersion, creationTimestamp; ``AlreadyExists``."""
        ...

    async def update(self, obj: Obj) -> Obj:
        """Replace metadata and spec (and status, for kinds without a status subresource).

        Guarded by ``metadata.resourceVersion`` when it is set (``Conflict``); an empty one means "last
        write wins", as the API server does for built-in kinds (for custom resources, which refuse that, the
        Kubernetes backend reads the current version and writes with it).  A ``metadata.uid`` that is not the
        stored object's is ``Invalid``.
        """
        ...

    async def update_status(self, obj: Obj) -> Obj:
        """Replace only ``status``, guarded like ``update``."""
        ...

    async def delete(
        self, kind: str, name: str, namespace: str = "", *, resource_version: str = "", grace_seconds: int | None = None
    ) -> None:
        """Delete, or mark for deletion when finalizers remain; ``NotFound``, ``Conflict``.

        ``grace_seconds`` (``DeleteOptions.gracePeriodSeconds``) is how long a Pod that a node runs stays,
        terminating, for its kubelet: ``None`` its own (``terminationGracePeriodSeconds``, 30 by default), 0 not
        at all (the kubelet's own delete, or ``kubectl delete --force``).  Other kinds ignore it, and so does the
        embedded store, where no kubelet confirms: a Pod goes at once."""
        ...

    def watch(
        self, kind: str, *, namespace: str | None = None, label_selector: str = "", resource_version: str = ""
    ) -> AsyncIterator[WatchEvent]:
        """Changes after ``resource_version`` (from now, when empty) until the caller stops iterating."""
        ...

    async def aclose(self) -> None:
        """Release connections; the store is unusable afterwards."""
        ...


class PassThrough:
    """A ``Store`` that hands every call to ``self.inner`` (set by the subclass): a wrapper that checks, counts,
    delays or fails some calls overrides those alone.  It adds no ``update_status_atomically``: a wrapper
    writes optimistically unless it offers the inner store's (``ValidatingStore`` does)."""

    inner: Store

    async def get(self, kind: str, name: str, namespace: str = "") -> Obj:
        return await self.inner.get(kind, name, namespace)

    async def get_metadata(self, kind: str, name: str, namespace: str = "") -> dict[str, Any]:
        return await self.inner.get_metadata(kind, name, namespace)

    async def list(
        self, kind: str, *, namespace: str | None = None, label_selector: str = "", field_selector: str = ""
    ) -> ObjectList:
        return await self.inner.list(
            kind, namespace=namespace, label_selector=label_selector, field_selector=field_selector
        )

    async def create(self, obj: Obj) -> Obj:
        return await self.inner.create(obj)

    async def update(self, obj: Obj) -> Obj:
        return await self.inner.update(obj)

    async def update_status(self, obj: Obj) -> Obj:
        return await self.inner.update_status(obj)

    async def delete(
        self, kind: str, name: str, namespace: str = "", *, resource_version: str = "", grace_seconds: int | None = None
    ) -> None:
        await self.inner.delete(kind, name, namespace, resource_version=resource_version, grace_seconds=grace_seconds)

    def watch(
        self, kind: str, *, namespace: str | None = None, label_selector: str = "", resource_version: str = ""
    ) -> AsyncIterator[WatchEvent]:
        return self.inner.watch(
            kind, namespace=namespace, label_selector=label_selector, resource_version=resource_version
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


@contextlib.asynccontextmanager
async def closing_watch(events: AsyncIterator[Any]) -> AsyncIterator[None]:
    """Close a ``watch`` stream however the loop over it ends (a backend's session must not leak)."""
    try:
        yield
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            with trio.CancelScope(shield=True):
                await aclose()


KindLister = Callable[[str], list[Obj]]
"""Every object of a kind, as it stands inside a write transaction (``AtomicStatusUpdate``'s ``read_first``)."""


class AtomicStatusUpdate(Protocol):
    """An optional capability of a backend that has a write lock of its own (the embedded store):
    ``update_status_atomically(kind, name, change)`` reads the object, lets ``change(stored)`` compute the new
    status (``None``: write nothing) and writes it, all under that lock, so it never raises ``Conflict``.
    Callers look it up with ``getattr`` and keep an optimistic read-write-retry path for backends without it
    (the API server has no such lock: there a write races and retries).  ``read_first``, when given, runs under
    the same lock before ``change``, with a function that lists every object of a kind as it stands there (a
    SubnetActor reads the pools it must not hand out inside the transaction that records its hand-outs)."""

    async def __call__(
        self,
        kind: str,
        name: str,
        change: Callable[[Obj], Obj | None],
        namespace: str = "",
        *,
        read_first: Callable[[KindLister], None] | None = None,
    ) -> Obj: ...


class TokenReviewer(Protocol):
    """An optional capability of the API server backend: ``review_token(token)`` asks the server who a bearer
    token belongs to (a TokenReview) and returns the user name, or ``None`` when the token is not valid.  The
    embedded store has none (nothing authenticates against it); callers look it up with ``getattr``."""

    async def __call__(self, token: str) -> str | None: ...


def meta(obj: Obj) -> dict[str, Any]:
    """The ``metadata`` mapping of an object (created empty when missing)."""
    result: dict[str, Any] = obj.setdefault("metadata", {})
    return result


def key_of(obj: Obj) -> tuple[str, str, str]:
    """``(kind, namespace, name)`` of an object."""
    m = obj.get("metadata") or {}
    return obj.get("kind", ""), m.get("namespace", "") or "", m.get("name", "")
