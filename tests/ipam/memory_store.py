"""Stores for tests that run on a fake clock: ``MemoryStore`` keeps objects in a dict (no worker threads, so trio's
``MockClock`` jumps only over the waits a test means), and ``SlowWrites`` wraps a store and makes chosen writes
take a while, as a loaded SQLite lock or API server would.

``MemoryStore`` follows the ``Store`` port closely enough for the IPAM service and the pool actors: every write
gets a new ``resourceVersion`` and one that carries a stale one raises ``Conflict``; kinds with a status
subresource keep their status on ``update`` and drop it on ``create``; a delete of an object with finalizers
only marks it, and removing the last finalizer of a marked object deletes it.  It has no write lock of its own
(no ``update_status_atomically``), so pool actors take the optimistic path, conflicts and all.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import attrs
import trio

from actors.stores.port import (
    AlreadyExists,
    Conflict,
    NotFound,
    Obj,
    ObjectList,
    PassThrough,
    Store,
    WatchEvent,
    key_of,
)
from spider.fields import parse_field_selector
from spider.kinds import KINDS, kind_info


def _status_subresource(kind: str) -> bool:
    return any(k.kind == kind and k.status_subresource for k in KINDS)


@attrs.define(eq=False)
class MemoryStore:
    """A ``Store`` in a dict; see the module docstring."""

    objects: dict[tuple[str, str, str], Obj] = attrs.field(factory=dict)
    version: int = 0

    def _next_version(self) -> str:
        self.version += 1
        return str(self.version)

    def _stored(self, kind: str, name: str, namespace: str) -> Obj:
        obj = self.objects.get((kind, namespace, name))
        if obj is None:
            raise NotFound(kind=kind, name=name, namespace=namespace)
        return obj

    def _guard(self, stored: Obj, sent: Obj) -> None:
        version = (sent.get("metadata") or {}).get("resourceVersion", "")
        if version and version != stored["metadata"]["resourceVersion"]:
            raise Conflict(kind=stored["kind"], name=stored["metadata"]["name"], sent_version=version)

    async def get(self, kind: str, name: str, namespace: str = "") -> Obj:
        await trio.lowlevel.checkpoint()
        return copy.deepcopy(self._stored(kind, name, namespace))

    async def get_metadata(self, kind: str, name: str, namespace: str = "") -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return copy.deepcopy(self._stored(kind, name, namespace)["metadata"])

    async def list(
        self, kind: str, *, namespace: str | None = None, label_selector: str = "", field_selector: str = ""
    ) -> ObjectList:
        await trio.lowlevel.checkpoint()
        fields = parse_field_selector(field_selector, kind_info(kind).kind, kind_info(kind).namespaced)
        items = [
            copy.deepcopy(obj)
            for (k, ns, _), obj in sorted(self.objects.items())
            if k == kind and (namespace is None or ns == namespace) and fields.matches(obj)
        ]
        return ObjectList(items, str(self.version))

    async def create(self, obj: Obj) -> Obj:
        await trio.lowlevel.checkpoint()
        key = key_of(obj)
        if key in self.objects:
            raise AlreadyExists(kind=key[0], name=key[2], namespace=key[1])
        new = copy.deepcopy(obj)
        if _status_subresource(key[0]):
            new.pop("status", None)
        new["metadata"].update(uid=f"uid-{self.version + 1}", resourceVersion=self._next_version())
        self.objects[key] = new
        return copy.deepcopy(new)

    async def update(self, obj: Obj) -> Obj:
        await trio.lowlevel.checkpoint()
        kind, namespace, name = key_of(obj)
        stored = self._stored(kind, name, namespace)
        self._guard(stored, obj)
        new = copy.deepcopy(obj)
        if _status_subresource(kind) and "status" in stored:
            new["status"] = stored["status"]
        for kept in ("uid", "deletionTimestamp"):
            if kept in stored["metadata"]:
                new["metadata"][kept] = stored["metadata"][kept]
        new["metadata"]["resourceVersion"] = self._next_version()
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            del self.objects[(kind, namespace, name)]
        else:
            self.objects[(kind, namespace, name)] = new
        return copy.deepcopy(new)

    async def update_status(self, obj: Obj) -> Obj:
        await trio.lowlevel.checkpoint()
        kind, namespace, name = key_of(obj)
        stored = self._stored(kind, name, namespace)
        self._guard(stored, obj)
        stored["status"] = copy.deepcopy(obj.get("status") or {})
        stored["metadata"]["resourceVersion"] = self._next_version()
        return copy.deepcopy(stored)

    async def delete(
        self, kind: str, name: str, namespace: str = "", *, resource_version: str = "", grace_seconds: int | None = None
    ) -> None:
        await trio.lowlevel.checkpoint()
        stored = self._stored(kind, name, namespace)
        self._guard(stored, {"metadata": {"resourceVersion": resource_version}})
        if stored["metadata"].get("finalizers"):
            stored["metadata"]["deletionTimestamp"] = "marked"
            stored["metadata"]["resourceVersion"] = self._next_version()
        else:
            del self.objects[(kind, namespace, name)]

    def watch(self, kind: str, **kwargs: Any) -> AsyncIterator[WatchEvent]:
        raise NotImplementedError("no test here watches")

    async def aclose(self) -> None:
        pass


@attrs.define(eq=False)
class SlowWrites(PassThrough):
    """A ``Store`` wrapper whose writes take as long as ``delay(kind, name)`` says (seconds), before they are
    applied (so a slow write may find its resourceVersion stale by then).  ``gate``: an event the next write of
    ``gated`` (a kind) waits for, once, after reporting ``entered``."""

    inner: Store
    delay: Callable[[str, str], float] = lambda kind, name: 0.0
    gated: str = ""
    gate: trio.Event = attrs.field(factory=trio.Event)
    entered: trio.Event = attrs.field(factory=trio.Event)

    async def _slow(self, obj: Obj) -> None:
        kind, _, name = key_of(obj)
        if kind == self.gated and not self.entered.is_set():
            self.entered.set()
            await self.gate.wait()
        await trio.sleep(self.delay(kind, name))

    async def create(self, obj: Obj) -> Obj:
        await self._slow(obj)
        return await self.inner.create(obj)

    async def update(self, obj: Obj) -> Obj:
        await self._slow(obj)
        return await self.inner.update(obj)

    async def update_status(self, obj: Obj) -> Obj:
        await self._slow(obj)
        return await self.inner.update_status(obj)


def delays(schedule: dict[str, list[float]]) -> Callable[[str, str], float]:
    """A ``SlowWrites.delay`` that takes each object's (by name) writes' delays from a list, in order; 0 after."""
    left: dict[str, Iterator[float]] = {name: iter(values) for name, values in schedule.items()}

    def delay(kind: str, name: str) -> float:
        return next(left.get(name, iter(())), 0.0)

    return delay
