"""Admission at the store layer: every create and update of a pool, subnet, reserved IP or SpiderMultusConfig
is mutated and validated (``spider.validation``, ``spider.multus``) before it reaches any backend, so a bad
object never gets in — with or without the optional admission webhook.

Owns ``ValidatingStore``, a ``Store`` that wraps another one.  Reads, status writes and deletes pass through
untouched (status is the agents' and the controller's, and deletion must never be blocked).  The cross-object
rules read the other pools and subnets through the same store; like Spiderpool's webhook, two racing creates
of overlapping pools on different machines can both pass that read.  That cannot double an address: the
agents never hand out an address two live pools share (``spider.pool.contested``), and ``spider check``
reports one that was handed out before the overlap as ``held-twice``.
"""

from __future__ import annotations

from typing import Any

import attrs

from actors.stores.port import AtomicStatusUpdate, Invalid, NotFound, Obj, PassThrough, Store, key_of
from spider.errors import InvalidInput, InvalidSpec
from spider.kinds import kind_info
from spider.multus import KIND as MULTUS
from spider.multus import NAD_KIND, mutate_multus_config, nad_name, validate_multus_config
from spider.validation import KINDS, POOL, SUBNET, AdmissionSettings, mutate, validate


@attrs.define
class ValidatingStore(PassThrough):
    """A ``Store`` that applies Spiderpool's admission rules to writes of the kinds that have them; every other
    call goes to the inner store unchecked (status belongs to agents and the controller; deletion is never
    blocked: finalizers hold what must be drained)."""

    inner: Store
    settings: AdmissionSettings = attrs.field(factory=AdmissionSettings)
    update_status_atomically: AtomicStatusUpdate | None = attrs.field(init=False)
    """The inner store's, when it has one: status writes are unchecked anyway."""

    @update_status_atomically.default
    def _inner_atomic(self) -> AtomicStatusUpdate | None:
        return getattr(self.inner, "update_status_atomically", None)

    async def _admit(self, obj: Obj, *, creating: bool) -> Obj:
        alias, namespace, name = key_of(obj)
        try:
            kind = kind_info(alias).kind  # NB: "sp" or "spiderippools" names a pool too
        except InvalidInput:
            return obj  # the inner store rejects an unknown kind
        if kind == MULTUS:
            return await self._admit_multus({**obj, "kind": kind}, creating=creating)
        if kind not in KINDS:
            return obj
        obj = {**obj, "kind": kind}
        old = None
        if not creating:
            try:
                old = await self.inner.get(kind, name, namespace)
            except NotFound:
                old = None
        # NB: Spiderpool's mutateIPPool inherits from a SpiderSubnet only when enableSpiderSubnet is set
        subnets = (await self.inner.list(SUBNET)).items if kind == POOL and self.settings.enable_subnet else []
        new = mutate(kind, obj, subnets)
        if creating or old is None or not _same_spec(new, old):
            existing: list[Obj] = []
            if kind in (POOL, SUBNET):
                existing = (await self.inner.list(POOL)).items + (await self.inner.list(SUBNET)).items
            try:
                validate(kind, new, old, existing, self.settings)
            except InvalidSpec as exc:
                raise Invalid(kind=kind, name=name, reason=exc.reason) from None
        return new

    async def _admit_multus(self, obj: Obj, *, creating: bool) -> Obj:
        """A SpiderMultusConfig: mutated, then checked against the stored one and the NAD it would own."""
        _, namespace, name = key_of(obj)
        old = None
        if not creating:
            try:
                old = await self.inner.get(MULTUS, name, namespace)
            except NotFound:
                old = None
        new = mutate_multus_config(obj)
        try:
            nad = await self.inner.get(NAD_KIND, nad_name(new), namespace)
        except NotFound:
            nad = None
        try:
            validate_multus_config(new, old, nad)
        except InvalidSpec as exc:
            raise Invalid(kind=MULTUS, name=name, reason=exc.reason) from None
        return new

    async def create(self, obj: Obj) -> Obj:
        """Mutate, validate, then create."""
        return await self.inner.create(await self._admit(obj, creating=True))

    async def update(self, obj: Obj) -> Obj:
        """Mutate, validate against the stored object, then update."""
        return await self.inner.update(await self._admit(obj, creating=False))


def _same_spec(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """An update that leaves spec and labels alone (finalizers, annotations) needs no validation."""
    return new.get("spec") == old.get("spec")
