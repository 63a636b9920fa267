"""Decide what one IPAM request does before anything is done: the pure middle of gather, decide, act.

The agent's IPAM service (``actors.ipam.service``) serves every ADD and DEL in three steps:
- gather: it reads, once, every fact the request depends on (the Pod, its Namespace and Node, the workload
  chain, the SpiderEndpoint, the pools' specs) into one frozen facts object (``AddFacts``, ``ReleaseFacts``);
- decide: one call here turns those facts into one plan for the whole request (``decide_add``,
  ``decide_release``), or into the domain error to raise, before any address is taken or freed;
- act: the service carries the plan out through the pool actors and writes the endpoint.

Owns Spiderpool's rules for what a request must do (reference §2.1 steps 4-6, §2.13):
- ADD: a pod that is not alive, or whose UID was replaced, fails; a same-name endpoint of another UID is a
  fixed-IP workload's (its entries still wanted are adopted, the others freed; with no Pod object to say the
  pod is that workload's, the ADD fails and the endpoint keeps them) or a dead pod's (freed and dropped
  first); a NIC already recorded is asked again from the pools it records (repeated ADD); anything else gets,
  per NIC and family, its candidate pools in order, its gateway choice and the custom routes;
- DEL: a live pod keeps its addresses (its UID taken from the Pod when the request carries none, as
  Spiderpool does; a pod in a terminal phase is not alive, whatever its restart policy); a fixed-IP workload
  whose ordinal or VM is still valid keeps them; otherwise the sandbox's entries are freed and the endpoint
  shrunk or dropped; a KubeVirt VM's endpoint goes whole, once the VM is deleted, with the DEL of any of its
  launcher pods (after a failed live migration it is the gone target's UID); with no endpoint at all, the
  pool records naming the sandbox are freed (``sandbox_holdings``: what a failed or interrupted ADD left
  behind).  CNI GC of one network frees only the interfaces it names (``ReleaseFacts.interfaces``).
Pure: no I/O, no trio.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from spider.endpoint import Endpoint, NicAllocation
from spider.errors import NoAvailablePool, PodNotAlive, PoolNotFound, SpiderError
from spider.ipam_request import AddRequest, DelRequest
from spider.pool import IPPool, Owner, Record, Route, decode_allocated
from spider.selection import ANNO_IPPOOLS, NicRequest, PodContext, candidates, custom_routes, requested_pools
from spider.workload import STATIC_KINDS, Workload, pod_not_alive

ENDPOINT_SOURCE = "endpoint"
"""The ``NicRequest.source`` of a NIC asked again from the pools its endpoint entry records."""


# --- ADD --------------------------------------------------------------------------------------------------------


@attrs.frozen
class AddFacts:
    """Everything an ADD depends on, read once by the service (the gather step)."""

    request: AddRequest
    node: str
    context: PodContext
    """The pod's labels and annotations, its Namespace's and its Node's, as pool selection reads them."""
    pod: Mapping[str, Any] | None
    """The Pod as stored now (``None``: not found)."""
    workload: Workload
    endpoint: Endpoint | None
    """The SpiderEndpoint named after the workload's endpoint name, if any."""
    pools: Mapping[str, IPPool]
    """Every usable pool's spec."""


@attrs.frozen
class FamilyPlan:
    """One family of one NIC: the pools to try, in order (the next one when a pool is exhausted)."""

    nic: str
    version: int
    candidates: tuple[IPPool, ...]


@attrs.frozen
class NicPlan:
    """One interface of the request: its families, its gateway choice, and whether its entry is recorded."""

    nic: str
    families: tuple[FamilyPlan, ...]
    clean_gateway: bool
    recorded: bool = False
    """Already in the endpoint (a repeated ADD, or fixed IPs re-owned): the recorded pools are asked again and
    return what the pod holds."""


@attrs.frozen
class AddPlan:
    """What one ADD does, in order: free a dead pod's endpoint, adopt a predecessor's fixed IPs, allocate every
    family of every NIC (all or nothing), record them.  ``error`` set: raise it and do nothing else."""

    holder: Owner
    """The owner of every address of this request, ``nic`` left empty (``owner`` fills it in)."""
    error: SpiderError | None = None
    free_first: Endpoint | None = None
    """A same-name pod's endpoint of another UID that is gone (Spiderpool #1187): free all of it, drop it."""
    adopt_from: Endpoint | None = None
    """A fixed-IP workload's previous pod's endpoint: re-own ``adopt``, free ``abandon``, rewrite it."""
    adopt: tuple[NicAllocation, ...] = ()
    abandon: tuple[NicAllocation, ...] = ()
    nics: tuple[NicPlan, ...] = ()
    routes: tuple[Route, ...] = ()
    """The ``ipam.spidernet.io/routes`` annotation: each route goes to the NIC whose subnet holds its gateway."""
    endpoint_exists: bool = False
    """An endpoint is stored when allocation starts (read before writing) rather than to be created."""

    @property
    def pod_uid(self) -> str:
        """The UID the addresses are recorded under."""
        return self.holder.pod_uid

    @property
    def endpoint_name(self) -> str:
        """The SpiderEndpoint's name (and the ``pod`` of the pool records)."""
        return self.holder.name

    def owner(self, nic: str) -> Owner:
        """The owner of one interface's addresses."""
        return attrs.evolve(self.holder, nic=nic)

    @property
    def families(self) -> list[FamilyPlan]:
        """Every (NIC, family) to allocate, for the fan-out."""
        return [f for n in self.nics for f in n.families]

    @property
    def recorded(self) -> tuple[str, ...]:
        """The NICs already recorded in the endpoint."""
        return tuple(n.nic for n in self.nics if n.recorded)


def decide_add(facts: AddFacts) -> AddPlan:
    """The plan of one ADD (reference §2.1), or its ``error``; nothing is decided after anything is done.

    When the act step loses an adoption (the predecessor's record freed or taken meanwhile), the service
    decides again with the endpoint it rewrote: that second plan adopts nothing.
    """
    req = facts.request
    pod_ref = f"{req.pod_namespace}/{req.pod_name}"
    ep_name = facts.workload.endpoint_name or req.pod_name
    holder = Owner(facts.context.uid or req.container_id, "", req.pod_namespace, ep_name, req.container_id, facts.node)
    if facts.pod is not None and (why := pod_not_alive(facts.pod)) is not None:
        return AddPlan(holder, PodNotAlive(pod=pod_ref, reason=why))
    live_uid = (facts.pod or {}).get("metadata", {}).get("uid", "")
    if req.pod_uid and live_uid and req.pod_uid != live_uid:  # a late ADD for a pod replaced since
        return AddPlan(holder, PodNotAlive(pod=pod_ref, reason=f"UID {req.pod_uid} was replaced by {live_uid}"))

    endpoint = facts.endpoint
    free_first = adopt_from = None
    adopt: tuple[NicAllocation, ...] = ()
    abandon: tuple[NicAllocation, ...] = ()
    if endpoint is not None and endpoint.uid != holder.pod_uid:
        if facts.workload.static:  # fixed IPs (steps 4-5): the new pod takes over what its predecessor held
            adopt_from = endpoint
            adopt = tuple(e for e in endpoint.nics if still_candidate(facts, e))
            abandon = tuple(e for e in endpoint.nics if e not in adopt)
            endpoint = adopted(endpoint, adopt, holder) if adopt else None
        elif facts.pod is None and endpoint.owner_controller_type in STATIC_KINDS:
            # NB: with no Pod object, nothing says this is the fixed-IP workload's next pod (a late ADD of a deleted
            # one looks the same): the endpoint keeps its addresses for that pod, so they are not freed on its word
            reason = f"no Pod object, and its endpoint keeps the fixed IPs of {endpoint.owner_controller_type} " + (
                f"{endpoint.owner_controller_name!r} for UID {endpoint.uid}"
            )
            return AddPlan(holder, PodNotAlive(pod=pod_ref, reason=reason))
        else:  # a same-name pod that is gone (step 6): free what the old UID holds, start afresh
            free_first, endpoint = endpoint, None
    try:
        requests = _requests(facts, endpoint)
        nics = _nic_plans(requests, facts)
        routes = custom_routes(facts.context)  # NB: checked before anything is allocated
    except SpiderError as exc:
        return AddPlan(holder, exc)
    return AddPlan(
        holder,
        free_first=free_first,
        adopt_from=adopt_from,
        adopt=adopt,
        abandon=abandon,
        nics=nics,
        routes=routes,
        endpoint_exists=endpoint is not None,
    )


def adopted(endpoint: Endpoint, kept: Sequence[NicAllocation], holder: Owner) -> Endpoint:
    """A fixed-IP workload's endpoint re-owned by the new pod: its UID, node and sandbox on the kept entries."""
    return attrs.evolve(
        endpoint,
        uid=holder.pod_uid,
        node=holder.node,
        nics=tuple(attrs.evolve(e, container_id=holder.container_id) for e in kept),
    )


def recorded_request(entry: NicAllocation) -> NicRequest:
    """Ask again exactly the pools an endpoint entry records."""
    return NicRequest(
        entry.interface,
        (entry.ipv4_pool,) if entry.ipv4_pool else (),
        (entry.ipv6_pool,) if entry.ipv6_pool else (),
        entry.clean_gateway,
        ENDPOINT_SOURCE,
    )


def _requests(facts: AddFacts, endpoint: Endpoint | None) -> list[NicRequest]:
    """The NICs this call allocates and the pools named for each."""
    req = facts.request
    if endpoint is not None and (entry := endpoint.nic(req.ifname)) is not None:
        # Repeated ADD (or re-owned fixed IPs): ask the recorded pools again; they return what is held.
        if facts.workload.static:
            return [recorded_request(e) for e in endpoint.nics]
        return [recorded_request(e) for e in endpoint.nics if e.interface == entry.interface]
    requests = requested_pools(facts.context, req.ifname, req.default_ipv4_pools, req.default_ipv6_pools)
    if endpoint is not None:  # NICs allocated by an earlier ADD of a multi-NIC pod keep theirs
        requests = [r for r in requests if endpoint.nic(r.nic) is None or r.nic == req.ifname]
    return requests


def _nic_plans(requests: Sequence[NicRequest], facts: AddFacts) -> tuple[NicPlan, ...]:
    """For each NIC, the candidate pools in order per family asked for; its gateway choice."""
    pools = facts.pools
    out: list[NicPlan] = []
    for r in requests:
        families: list[FamilyPlan] = []
        if r.source == ENDPOINT_SOURCE:
            for version, names in ((4, r.ipv4), (6, r.ipv6)):
                if names:
                    if names[0] not in pools:
                        raise PoolNotFound(pool=names[0])
                    families.append(FamilyPlan(r.nic, version, (pools[names[0]],)))
        else:
            for version in (4, 6):
                found = candidates(r, version, facts.context, pools)
                if found:
                    families.append(FamilyPlan(r.nic, version, tuple(found)))
            if not families:
                raise NoAvailablePool(
                    nic=r.nic, version=4, reason=f"no pool selection rules of any type are specified ({r.source})"
                )
        clean = r.clean_gateway if r.clean_gateway is not None else facts.request.clean_gateway
        out.append(NicPlan(r.nic, tuple(families), clean, r.source == ENDPOINT_SOURCE))
    return tuple(out)


def still_candidate(facts: AddFacts, entry: NicAllocation) -> bool:
    """Whether every pool an endpoint entry records is still a candidate for its NIC (annotation unchanged).

    Another NIC's entry is judged only when the pod's ``ipam.spidernet.io/ippools`` annotation names that NIC's
    pools: its pools may come from its own network's configuration, which this request (another network's)
    does not carry, so judging it by this request's default pools would free its fixed address.
    """
    req = facts.request
    try:
        if entry.interface == req.ifname:
            requests = requested_pools(facts.context, entry.interface, req.default_ipv4_pools, req.default_ipv6_pools)
        else:
            requests = requested_pools(facts.context, entry.interface)
            if not any(r.source == ANNO_IPPOOLS for r in requests):
                return True
    except SpiderError:
        return False
    request = next((r for r in requests if r.nic == entry.interface), None)
    if request is None:
        return False
    for version, pool, _ in entry.pools():
        try:
            names = [p.name for p in candidates(request, version, facts.context, facts.pools)]
        except SpiderError:
            return False
        if pool not in names:
            return False
    return True


# --- DEL --------------------------------------------------------------------------------------------------------


@attrs.frozen
class ReleaseFacts:
    """Everything a DEL depends on, read once by the service (the gather step)."""

    request: DelRequest
    pod: Mapping[str, Any] | None
    """The Pod as stored now (``None``: gone)."""
    workload: Workload
    endpoint: Endpoint | None
    static_keeps: bool = False
    """For an endpoint of a fixed-IP workload that the pod no longer names (the pod is gone): whether the
    StatefulSet ordinal or the VM is still valid."""
    keep_live: bool = True
    """A live pod keeps its addresses (a DEL); ``False`` for the batch release after a conflict."""
    interfaces: frozenset[str] | None = None
    """Free only these interfaces of the sandbox (CNI GC of one network); ``None``: every NIC of the sandbox
    (a DEL, as Spiderpool)."""


@attrs.frozen
class Sandbox:
    """The pool records of one sandbox: the pod (``namespace/name``), its UID if known, its container."""

    pod: str
    pod_uid: str
    container_id: str
    interfaces: frozenset[str] | None = None
    """Only the records of these interfaces (CNI GC of one network); ``None``: every one."""

    def holds(self, record: Record) -> bool:
        """Whether a pool record was written for this sandbox (and one of its interfaces asked for)."""
        return (
            record.container_id == self.container_id
            and record.pod == self.pod
            and (not self.pod_uid or record.pod_uid == self.pod_uid)
            and (self.interfaces is None or record.nic in self.interfaces)
        )


@attrs.frozen
class ReleasePlan:
    """What one DEL frees.  Nothing set: it keeps everything (``reason`` says why)."""

    endpoint: Endpoint | None = None
    """The endpoint whose entries ``free`` lists."""
    free: tuple[NicAllocation, ...] = ()
    container_id: str = ""
    """Free only what this sandbox still holds in the pools (``""``: whichever sandbox of the UID)."""
    drop_endpoint: bool = False
    """Delete the endpoint (a fixed-IP workload that no longer keeps its addresses)."""
    forget: frozenset[tuple[str, str]] | None = None
    """Remove these ``(interface, container)`` entries from the endpoint, deleting it when none remain."""
    sweep: Sandbox | None = None
    """No endpoint: free every pool record that names this sandbox (a failed or interrupted ADD's)."""
    reason: str = ""


def decide_release(facts: ReleaseFacts) -> ReleasePlan:
    """The plan of one DEL (reference §2.13): from stored state alone, only what this pod's sandbox holds.

    Two departures from Spiderpool: a pod in a terminal phase is not alive whatever its restart policy
    (``pod_not_alive``), and a deleted KubeVirt VM's endpoint is freed by the DEL of any of its launcher pods,
    not only of the one whose UID it records last (a failed live migration's target adopted it, then went).
    """
    req = facts.request
    meta = (facts.pod or {}).get("metadata") or {}
    uid = req.pod_uid or str(meta.get("uid", ""))  # NB: as Spiderpool: a request without UID takes the Pod's
    live = facts.pod is not None and pod_not_alive(facts.pod) is None and meta.get("uid") == uid
    if facts.keep_live and live:
        return ReleasePlan(reason="the pod is alive (sandbox re-created)")
    endpoint = facts.endpoint
    wanted = facts.interfaces
    if endpoint is None:
        if not req.container_id:
            return ReleasePlan(reason="nothing recorded")
        pod = f"{req.pod_namespace}/{facts.workload.endpoint_name or req.pod_name}"
        return ReleasePlan(sweep=Sandbox(pod, uid, req.container_id, wanted), reason="no endpoint")
    if uid and endpoint.uid != uid and not _deleted_vms_launcher(facts, endpoint):
        return ReleasePlan(reason=f"the endpoint is UID {endpoint.uid}'s")
    if endpoint.owner_controller_type in STATIC_KINDS:
        keeps = facts.workload.keeps if facts.workload.static else facts.static_keeps
        if keeps:
            return ReleasePlan(reason="the next pod of this ordinal or VM takes the same addresses")
        if wanted is None:
            return ReleasePlan(endpoint, endpoint.nics, drop_endpoint=True)
    mine = tuple(
        n
        for n in endpoint.nics
        if (not n.container_id or n.container_id == req.container_id) and (wanted is None or n.interface in wanted)
    )
    return ReleasePlan(endpoint, mine, req.container_id, forget=frozenset((n.interface, n.container_id) for n in mine))


def _deleted_vms_launcher(facts: ReleaseFacts, endpoint: Endpoint) -> bool:
    """Whether the DEL is a launcher pod's of the KubeVirt VM whose endpoint this is, and the VM is deleted.

    Then the endpoint goes whichever launcher pod's DEL comes: every one of them is being torn down, and the
    UID it records may be a pod that will never DEL again (a failed live migration's target, whose DEL kept
    the addresses while the VMI was valid).  Only a Pod still stored can say it is a launcher of this VMI.
    """
    workload = facts.workload
    return (
        workload.static
        and not workload.keeps
        and workload.kind == "VirtualMachineInstance"
        and endpoint.owner_controller_type == "VirtualMachineInstance"
        and workload.endpoint_name == endpoint.name
    )


def sandbox_holdings(pool: Mapping[str, Any], sandbox: Sandbox) -> list[tuple[str, str]]:
    """The owner keys ``(pod UID, NIC)`` of the records of one stored pool that name the sandbox.

    Cheap for a pool whose ``status.allocatedIPs`` does not mention the container: it is not parsed.
    """
    allocated = (pool.get("status") or {}).get("allocatedIPs")
    if not allocated or (isinstance(allocated, str) and sandbox.container_id not in allocated):
        return []
    version = IPPool.from_object(pool).version
    return [(r.pod_uid, r.nic) for r in decode_allocated(version, allocated).values() if sandbox.holds(r)]


__all__ = [
    "AddFacts",
    "AddPlan",
    "FamilyPlan",
    "NicPlan",
    "ReleaseFacts",
    "ReleasePlan",
    "Sandbox",
    "adopted",
    "decide_add",
    "decide_release",
    "recorded_request",
    "sandbox_holdings",
    "still_candidate",
]
