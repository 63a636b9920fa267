"""SpiderEndpoint: the per-pod record of which interface got which addresses from which pools.

Owns the endpoint's shape (reference §1.4: ``status.current.{uid,node,ips[]}``, ``ownerControllerType``,
``ownerControllerName``) and its conversion to and from stored objects and to the agent API's
``WorkloadEndpointStatus``.  Each interface entry also records the sandbox (``containerID``) and the CNI
network name that made it, so a DEL of a stale sandbox and CNI GC can tell whose entry it is; and the mark of
a pod served without a Pod object (``ANNO_POD_OBJECT``), which IP GC reads.  Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from spider import limits
from spider.errors import InvalidSpec
from spider.kinds import FINALIZER, SPIDER_API_VERSION
from spider.pool import Route

KIND = "SpiderEndpoint"
ANNO_POD_OBJECT = "ipam.spider.io/pod-object"
"""Ours: ``absent`` on the endpoint of a pod the agent served without a Pod object in the store (the embedded
store's no-cluster mode, the load test): GC cannot tell such a pod's death, so it leaves its addresses to the
pod's CNI DEL or CNI GC.  An annotation rather than a status field: a real API server prunes the fields the
CRD's schema does not name, never ``metadata.annotations``."""
POD_OBJECT_ABSENT = "absent"


def _text(raw: object) -> str | None:
    """An optional text field as stored: ``None`` when empty or absent."""
    return str(raw) if raw else None


@attrs.frozen
class NicAllocation:
    """One interface's addresses (``IPAllocationDetail``): up to one IPv4 and one IPv6."""

    interface: str
    ipv4: str | None = None
    ipv6: str | None = None
    ipv4_pool: str | None = None
    ipv6_pool: str | None = None
    ipv4_gateway: str | None = None
    ipv6_gateway: str | None = None
    clean_gateway: bool = False
    routes: tuple[Route, ...] = ()
    vlan: int = 0
    container_id: str = ""
    network: str = ""

    def pools(self) -> list[tuple[int, str, str]]:
        """``(version, pool, address)`` for each family this interface holds."""
        out = []
        if self.ipv4 and self.ipv4_pool:
            out.append((4, self.ipv4_pool, self.ipv4))
        if self.ipv6 and self.ipv6_pool:
            out.append((6, self.ipv6_pool, self.ipv6))
        return out

    def to_json(self) -> dict[str, Any]:
        """The CR form, Spiderpool's camelCase keys; empty fields omitted."""
        out: dict[str, Any] = {"interface": self.interface}
        for key, value in (
            ("ipv4", self.ipv4),
            ("ipv6", self.ipv6),
            ("ipv4Pool", self.ipv4_pool),
            ("ipv6Pool", self.ipv6_pool),
            ("ipv4Gateway", self.ipv4_gateway),
            ("ipv6Gateway", self.ipv6_gateway),
        ):
            if value:
                out[key] = value
        if self.clean_gateway:
            out["cleanGateway"] = True
        if self.routes:
            out["routes"] = [r.to_json() for r in self.routes]
        if self.vlan:
            out["vlan"] = self.vlan
        if self.container_id:
            out["containerID"] = self.container_id
        if self.network:
            out["network"] = self.network
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> NicAllocation:
        """Read an entry written by us or by Spiderpool."""
        return cls(
            interface=str(raw.get("interface", "")),
            ipv4=_text(raw.get("ipv4")),
            ipv6=_text(raw.get("ipv6")),
            ipv4_pool=_text(raw.get("ipv4Pool")),
            ipv6_pool=_text(raw.get("ipv6Pool")),
            ipv4_gateway=_text(raw.get("ipv4Gateway")),
            ipv6_gateway=_text(raw.get("ipv6Gateway")),
            clean_gateway=bool(raw.get("cleanGateway", False)),
            routes=tuple(Route(str(r["dst"]), str(r["gw"])) for r in raw.get("routes") or ()),
            vlan=int(raw.get("vlan") or 0),
            container_id=str(raw.get("containerID", "")),
            network=str(raw.get("network", "")),
        )

    def to_api(self) -> dict[str, Any]:
        """The agent API's ``InterfaceDetail`` (``vlan`` omitted when 0, as Spiderpool does)."""
        out = self.to_json()
        out.pop("containerID", None)
        out.pop("network", None)
        out.pop("cleanGateway", None)
        return out


@attrs.frozen
class Endpoint:
    """A SpiderEndpoint: one per pod, named and namespaced like the pod."""

    namespace: str
    name: str
    uid: str
    node: str
    nics: tuple[NicAllocation, ...] = ()
    owner_controller_type: str = "Pod"
    owner_controller_name: str = ""
    resource_version: str = ""
    terminating: bool = False
    pod_object_absent: bool = False
    """The agent served its pod without a Pod object in the store (``ANNO_POD_OBJECT``)."""

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Endpoint:
        """Parse a stored SpiderEndpoint; ``InvalidSpec`` when it is not of the shape the CRD gives it (the
        embedded store, or an API server without our CRD's schema, stores whatever it is sent)."""
        try:
            return cls._from_object(obj)
        except limits.MALFORMED as exc:
            meta = obj.get("metadata")
            name = str(meta.get("name", "")) if isinstance(meta, dict) else ""
            raise InvalidSpec(kind=KIND, name=name, reason=f"{type(exc).__name__}: {exc}") from None

    @classmethod
    def _from_object(cls, obj: Mapping[str, Any]) -> Endpoint:
        meta = obj.get("metadata") or {}
        status = obj.get("status") or {}
        current = status.get("current") or {}
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            uid=str(current.get("uid", "")),
            node=str(current.get("node", "")),
            nics=tuple(NicAllocation.from_json(n) for n in current.get("ips") or ()),
            owner_controller_type=str(status.get("ownerControllerType", "Pod")),
            owner_controller_name=str(status.get("ownerControllerName", meta.get("name", ""))),
            resource_version=str(meta.get("resourceVersion", "")),
            terminating=bool(meta.get("deletionTimestamp")),
            pod_object_absent=(meta.get("annotations") or {}).get(ANNO_POD_OBJECT) == POD_OBJECT_ABSENT,
        )

    def to_object(self) -> dict[str, Any]:
        """The stored form; carries ``resourceVersion`` so an update is guarded."""
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace, "finalizers": [FINALIZER]}
        if self.resource_version:
            meta["resourceVersion"] = self.resource_version
        if self.pod_object_absent:
            meta["annotations"] = {ANNO_POD_OBJECT: POD_OBJECT_ABSENT}
        return {
            "apiVersion": SPIDER_API_VERSION,
            "kind": KIND,
            "metadata": meta,
            "status": {
                "current": {"uid": self.uid, "node": self.node, "ips": [n.to_json() for n in self.nics]},
                "ownerControllerType": self.owner_controller_type,
                "ownerControllerName": self.owner_controller_name or self.name,
            },
        }

    def nic(self, interface: str) -> NicAllocation | None:
        """The entry for one interface, if any."""
        return next((n for n in self.nics if n.interface == interface), None)

    def with_nic(self, entry: NicAllocation) -> Endpoint:
        """This endpoint with ``entry`` added or replacing the entry of the same interface."""
        kept = tuple(n for n in self.nics if n.interface != entry.interface)
        return attrs.evolve(self, nics=(*kept, entry))

    def without_nic(self, interface: str) -> Endpoint:
        """This endpoint without the entry of one interface."""
        return attrs.evolve(self, nics=tuple(n for n in self.nics if n.interface != interface))

    def to_api(self) -> dict[str, Any]:
        """The agent API's ``WorkloadEndpointStatus``."""
        return {
            "podNamespace": self.namespace,
            "podName": self.name,
            "podUID": self.uid,
            "node": self.node,
            "interfaces": [n.to_api() for n in self.nics],
        }


def readable(objs: Iterable[Mapping[str, Any]]) -> tuple[list[Endpoint], list[InvalidSpec]]:
    """The endpoints of a listing that parse, and why each of the others does not (for the caller to log or
    report): one malformed object must not stop a scan of all of them."""
    endpoints: list[Endpoint] = []
    errors: list[InvalidSpec] = []
    for obj in objs:
        try:
            endpoints.append(Endpoint.from_object(obj))
        except InvalidSpec as exc:
            errors.append(exc)
    return endpoints, errors
