"""Helpers for the controller tests: a store with injectable faults, waiting for a condition, objects."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import trio

from actors.stores.port import Conflict, Gone, Obj, ObjectList, Store, WatchEvent
from spider.errors import StoreUnavailable
from spider.kinds import SPIDER_API_VERSION


@attrs.define(eq=False)
class FaultyStore:
    """A ``Store`` that passes calls through to ``inner`` until told to misbehave.

    ``down``: every call raises ``StoreUnavailable``; ``hang``: every call blocks until cancelled;
    ``conflicts``: that many ``update_status`` calls fail with ``Conflict`` first; ``gone``: that many watches
    raise ``Gone`` at once; ``deaf``: watches never yield (only re-lists see changes).
    """

    inner: Store
    down: bool = False
    hang: bool = False
    conflicts: int = 0
    gone: int = 0
    deaf: bool = False
    calls: dict[str, int] = attrs.field(factory=dict)

    async def _gate(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if self.hang:
            await trio.sleep_forever()
        if self.down:
            raise StoreUnavailable(reason="injected: store down")

    async def get(self, kind: str, name: str, namespace: str = "") -> Obj:
        await self._gate("get")
        return await self.inner.get(kind, name, namespace)

    async def get_metadata(self, kind: str, name: str, namespace: str = "") -> dict[str, Any]:
        await self._gate("get")
        return await self.inner.get_metadata(kind, name, namespace)

    async def list(
        self, kind: str, *, namespace: str | None = None, label_selector: str = "", field_selector: str = ""
    ) -> ObjectList:
        await self._gate("list")
        return await self.inner.list(
            kind, namespace=namespace, label_selector=label_selector, field_selector=field_selector
        )

    async def create(self, obj: Obj) -> Obj:
        await self._gate("create")
        return await self.inner.create(obj)

    async def update(self, obj: Obj) -> Obj:
        await self._gate("update")
        return await self.inner.update(obj)

    async def update_status(self, obj: Obj) -> Obj:
        await self._gate("update_status")
        if self.conflicts > 0:
            self.conflicts -= 1
            raise Conflict(kind=obj["kind"], name=obj["metadata"]["name"], sent_version="injected")
        return await self.inner.update_status(obj)

    async def delete(
        self, kind: str, name: str, namespace: str = "", *, resource_version: str = "", grace_seconds: int | None = None
    ) -> None:
        await self._gate("delete")
        await self.inner.delete(kind, name, namespace, resource_version=resource_version, grace_seconds=grace_seconds)

    def watch(
        self, kind: str, *, namespace: str | None = None, label_selector: str = "", resource_version: str = ""
    ) -> AsyncIterator[WatchEvent]:
        return self._watch(kind, namespace, label_selector, resource_version)

    async def _watch(
        self, kind: str, namespace: str | None, label_selector: str, resource_version: str
    ) -> AsyncIterator[WatchEvent]:
        await self._gate("watch")
        if self.gone > 0:
            self.gone -= 1
            raise Gone(resource_version=resource_version)
        if self.deaf:
            await trio.sleep_forever()
        events = self.inner.watch(
            kind, namespace=namespace, label_selector=label_selector, resource_version=resource_version
        )
        try:
            async for event in events:
                yield event
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0, what: str = "condition") -> float:
    """Poll ``check`` until it holds; returns the trio time it took.  Fails the test after ``within`` seconds."""
    start = trio.current_time()
    with trio.move_on_after(within):
        while not await check():  # noqa: ASYNC110  (polling the store is the point: it has no event to wait on)
            await trio.sleep(0.02)
        return trio.current_time() - start
    raise AssertionError(f"{what} did not hold within {within}s")


def pool(name: str, subnet: str = "10.6.0.0/16", ips: list[str] | None = None, **spec: Any) -> Obj:
    """A SpiderIPPool."""
    return {
        "apiVersion": SPIDER_API_VERSION,
        "kind": "SpiderIPPool",
        "metadata": {"name": name},
        "spec": {"subnet": subnet, "ips": ips if ips is not None else ["10.6.0.10-10.6.0.20"], **spec},
    }


def subnet(name: str, cidr: str = "10.6.0.0/16", ips: list[str] | None = None, **spec: Any) -> Obj:
    """A SpiderSubnet."""
    return {
        "apiVersion": SPIDER_API_VERSION,
        "kind": "SpiderSubnet",
        "metadata": {"name": name},
        "spec": {"subnet": cidr, "ips": ips if ips is not None else ["10.6.0.1-10.6.0.100"], **spec},
    }


def reserved(name: str, ips: list[str]) -> Obj:
    """A SpiderReservedIP."""
    return {
        "apiVersion": SPIDER_API_VERSION,
        "kind": "SpiderReservedIP",
        "metadata": {"name": name},
        "spec": {"ips": ips},
    }
