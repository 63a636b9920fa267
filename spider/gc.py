"""IP garbage collection's rules (reference §3): when to look at a dying pod, and what to do with each pool record.

Owns, as pure functions of what the controller has read:
- ``GcSettings``: Spiderpool's ``SPIDERPOOL_GC_*`` switches, read from the environment with their names and
  defaults (reference §3.4);
- the trace path (§3.1): ``trace_trigger`` tells which event a Pod change is (deleted, terminating, finished)
  and ``trace_deadline`` when its addresses may go (``TracingStopTime``), or that they are not traced;
- the scan-all table (§3.2): ``decide`` gives, for one pool record, the Pod of its name (or ``None``), the
  SpiderEndpoint of its name (or ``None``), whether the pod's node is Ready and whether a StatefulSet or KubeVirt
  workload still wants the address, one ``GcDecision``: keep, trace until a time, release the address, or
  release it and drop the endpoint, with the reason as text;
- outdated endpoints (``enableCleanOutdatedEndpoint``): ``judge_endpoint`` on an endpoint no pool record names.

Two departures from Spiderpool, both safer, are decided here: an address whose record names a live pod's UID is
never released (Spiderpool releases it when the endpoint names another UID, when a pod in phase ``Unknown``
reports no ``podIPs``, or when a StatefulSet or KubeVirt pod reports none and its workload is no longer valid),
except by the one explicit opt-in ``SPIDERPOOL_GC_ENABLE_STATELESS_RUNNING_POD_ON_EMPTY_POD_STATUS_IPS``; and an
endpoint is dropped only when it records the same pod UID as the released record (an outdated one only when no
pod of its UID is alive).  Two keeps are ours: the addresses of a pod the agent served without a Pod object
(its endpoint says so) are left to its CNI DEL, and a record no endpoint accounts for is never released while its
ADD may still be in flight (``Record.may_be_in_flight``), unless its pod was seen deleted.  The two-observation
rule (a release needs the same record seen twice, a trace gap apart) is the controller's (``actors.controller.gc``):
it needs a clock.  Pure: no I/O, no trio.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Hashable, Mapping
from datetime import datetime
from typing import Any, Generic, TypeVar

import attrs

from spider.endpoint import Endpoint
from spider.errors import InvalidSpec
from spider.pool import RECLAIM_AFTER, Record
from spider.workload import KUBEVIRT_API, controller_of

ENV_PREFIX = "SPIDERPOOL_GC_"
_TRUE = ("1", "t", "true", "y", "yes", "on")
_FALSE = ("0", "f", "false", "n", "no", "off")


def _env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidSpec(kind="environment", name=name, reason=f"{raw!r} is not a boolean")


def _env_seconds(env: Mapping[str, str], name: str, default: float, *, positive: bool = False) -> float:
    """``positive``: a period the collector waits out in a loop, which at zero would spin (Spiderpool's Go
    ticker panics on it)."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip().removesuffix("s"))
    except ValueError:
        raise InvalidSpec(kind="environment", name=name, reason=f"{raw!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidSpec(kind="environment", name=name, reason=f"{raw!r} is not a finite number of seconds >= 0")
    if positive and value == 0:
        raise InvalidSpec(kind="environment", name=name, reason="must be more than 0 seconds")
    return value


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise InvalidSpec(kind="environment", name=name, reason=f"{raw!r} is not an integer") from None
    if value < 0:
        raise InvalidSpec(kind="environment", name=name, reason=f"{raw!r} is negative")
    return value


@attrs.frozen
class GcSettings:
    """Spiderpool's GC switches (reference §3.4); the environment variable of each in brackets."""

    enabled: bool = True
    """Run IP GC at all [SPIDERPOOL_GC_IP_ENABLED]."""
    terminating_on_ready_node: bool = True
    """Release a stateless terminating or finished pod's addresses when its node is Ready
    [SPIDERPOOL_GC_STATELESS_TERMINATING_POD_ON_READY_NODE_ENABLED]."""
    terminating_on_not_ready_node: bool = True
    """... and when its node is not Ready (or gone)
    [SPIDERPOOL_GC_STATELESS_TERMINATING_POD_ON_NOT_READY_NODE_ENABLED]."""
    running_on_empty_pod_ips: bool = False
    """Release a Running stateless pod's addresses when its ``status.podIPs`` is empty: the one case where a live
    pod's address goes, on the operator's word [SPIDERPOOL_GC_ENABLE_STATELESS_RUNNING_POD_ON_EMPTY_POD_STATUS_IPS]."""
    interval: float = 600.0
    """Seconds between scan-alls [SPIDERPOOL_GC_DEFAULT_INTERVAL_DURATION]."""
    additional_grace_delay: float = 0.0
    """Seconds added to every trace deadline [SPIDERPOOL_GC_ADDITIONAL_GRACE_DELAY]."""
    trace_gap: float = 5.0
    """Seconds between trace-worker rounds, and the least time between the two observations of a record before it
    is released [SPIDERPOOL_GC_TRACE_POD_GAP_DURATION]."""
    signal_timeout: float = 3.0
    """Seconds a traced pod waits for a free release worker before it is left to the next round
    [SPIDERPOOL_GC_SIGNAL_TIMEOUT_DURATION]."""
    request_gap: float = 1.0
    """Seconds a forced scan-all rests after it ran [SPIDERPOOL_GC_HTTP_REQUEST_TIME_GAP]: accepted and unused,
    as in Spiderpool, whose forced scan-all (``TriggerGCAll``) nothing calls; ``spider gc`` scans in its own
    process."""
    workers: int = 3
    """Releases carried out at once [SPIDERPOOL_GC_IP_WORKER_NUM]."""
    channel_buffer: int = 5000
    """Traced pods due at once that may wait for a worker; more are left to the next round
    [SPIDERPOOL_GC_CHANNEL_BUFFER]."""
    max_traced: int = 100_000
    """Pods traced at once; more are not traced (scan-all still finds them) [SPIDERPOOL_GC_MAX_PODENTRY_DB_CAP]."""
    max_retries: int = 5
    """Rounds a traced pod whose release failed is tried again [SPIDERPOOL_GC_PODENTRY_MAX_RETRIES]."""
    clean_outdated_endpoints: bool = False
    """Scan-all also drops SpiderEndpoints no pool record names (Spiderpool's configmap key
    ``enableCleanOutdatedEndpoint``) [SPIDERPOOL_ENABLE_CLEAN_OUTDATED_ENDPOINT]."""
    statefulset: bool = True
    """A StatefulSet pod keeps its addresses while its ordinal is valid; off, it is judged as a stateless pod
    (Spiderpool's configmap key ``enableStatefulSet``, as the agents read it)."""
    kubevirt: bool = True
    """A KubeVirt VM's pod keeps its addresses while its VM is valid; off, it is judged as a stateless pod
    (configmap key ``enableKubevirtStaticIP``)."""

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> GcSettings:
        """The settings an environment (``os.environ``) gives, unset ones at their defaults; ``InvalidSpec`` names
        a value that cannot be read."""
        d = cls()
        return cls(
            enabled=_env_bool(env, "SPIDERPOOL_GC_IP_ENABLED", d.enabled),
            terminating_on_ready_node=_env_bool(
                env, "SPIDERPOOL_GC_STATELESS_TERMINATING_POD_ON_READY_NODE_ENABLED", d.terminating_on_ready_node
            ),
            terminating_on_not_ready_node=_env_bool(
                env,
                "SPIDERPOOL_GC_STATELESS_TERMINATING_POD_ON_NOT_READY_NODE_ENABLED",
                d.terminating_on_not_ready_node,
            ),
            running_on_empty_pod_ips=_env_bool(
                env, "SPIDERPOOL_GC_ENABLE_STATELESS_RUNNING_POD_ON_EMPTY_POD_STATUS_IPS", d.running_on_empty_pod_ips
            ),
            interval=_env_seconds(env, "SPIDERPOOL_GC_DEFAULT_INTERVAL_DURATION", d.interval, positive=True),
            additional_grace_delay=_env_seconds(env, "SPIDERPOOL_GC_ADDITIONAL_GRACE_DELAY", d.additional_grace_delay),
            trace_gap=_env_seconds(env, "SPIDERPOOL_GC_TRACE_POD_GAP_DURATION", d.trace_gap, positive=True),
            signal_timeout=_env_seconds(env, "SPIDERPOOL_GC_SIGNAL_TIMEOUT_DURATION", d.signal_timeout),
            request_gap=_env_seconds(env, "SPIDERPOOL_GC_HTTP_REQUEST_TIME_GAP", d.request_gap),
            workers=max(1, _env_int(env, "SPIDERPOOL_GC_IP_WORKER_NUM", d.workers)),
            channel_buffer=_env_int(env, "SPIDERPOOL_GC_CHANNEL_BUFFER", d.channel_buffer),
            max_traced=_env_int(env, "SPIDERPOOL_GC_MAX_PODENTRY_DB_CAP", d.max_traced),
            max_retries=_env_int(env, "SPIDERPOOL_GC_PODENTRY_MAX_RETRIES", d.max_retries),
            clean_outdated_endpoints=_env_bool(
                env, "SPIDERPOOL_ENABLE_CLEAN_OUTDATED_ENDPOINT", d.clean_outdated_endpoints
            ),
        )

    def node_allows(self, node_ready: bool) -> bool:
        """Whether a stateless terminating or finished pod on a node this ready may lose its addresses."""
        return self.terminating_on_ready_node if node_ready else self.terminating_on_not_ready_node


# --- reading a Pod ------------------------------------------------------------------------------------------


def parse_time(value: Any) -> float | None:
    """An RFC 3339 timestamp of the API (``2026-01-02T03:04:05Z``) as Unix seconds; ``None`` when missing or bad."""
    if not value or not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _meta(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return pod.get("metadata") or {}


def _status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return pod.get("status") or {}


def pod_uid(pod: Mapping[str, Any]) -> str:
    """The Pod's UID."""
    return str(_meta(pod).get("uid", ""))


def phase(pod: Mapping[str, Any]) -> str:
    """``status.phase`` (``""`` when not reported yet)."""
    return str(_status(pod).get("phase", ""))


def finished(pod: Mapping[str, Any]) -> bool:
    """Whether the pod is in a terminal phase (``Succeeded`` or ``Failed``)."""
    return phase(pod) in ("Succeeded", "Failed")


def terminating(pod: Mapping[str, Any]) -> bool:
    """Whether the pod has a ``deletionTimestamp``."""
    return bool(_meta(pod).get("deletionTimestamp"))


def host_network(pod: Mapping[str, Any]) -> bool:
    """Whether the pod uses the node's network (GC skips it: it has no address of ours)."""
    return bool((pod.get("spec") or {}).get("hostNetwork"))


def has_pod_ips(pod: Mapping[str, Any]) -> bool:
    """Whether the kubelet reported any address of the pod (``status.podIPs`` or ``status.podIP``)."""
    status = _status(pod)
    return bool(status.get("podIPs") or status.get("podIP"))


def keeps_addresses(kind: str, settings: GcSettings) -> bool:
    """Whether pods of this controller kind keep their addresses while it is valid (``StatefulSet`` and
    ``VirtualMachineInstance``, each unless switched off), rather than being judged as stateless."""
    return (kind == "StatefulSet" and settings.statefulset) or (kind == "VirtualMachineInstance" and settings.kubevirt)


def static_owner(pod: Mapping[str, Any], settings: GcSettings) -> tuple[str, str] | None:
    """``(kind, name)`` of the pod's StatefulSet or KubeVirt VMI controller, or ``None`` (stateless, also when
    ``settings`` switch that kind off)."""
    ctrl = controller_of(pod)
    if ctrl is None or not keeps_addresses(ctrl.kind, settings):
        return None
    if (ctrl.kind == "StatefulSet" and ctrl.group == "apps") or (
        ctrl.kind == "VirtualMachineInstance" and ctrl.api_version == KUBEVIRT_API
    ):
        return ctrl.kind, ctrl.name
    return None


def deletion_deadline(pod: Mapping[str, Any], settings: GcSettings) -> float | None:
    """``deletionTimestamp`` + ``deletionGracePeriodSeconds`` + the additional delay, in Unix seconds."""
    meta = _meta(pod)
    at = parse_time(meta.get("deletionTimestamp"))
    if at is None:
        return None
    return at + float(meta.get("deletionGracePeriodSeconds") or 0) + settings.additional_grace_delay


def finished_deadline(pod: Mapping[str, Any], settings: GcSettings, now: float) -> float:
    """When the pod finished (``finished_at``) + ``terminationGracePeriodSeconds`` + the additional delay, in Unix
    seconds."""
    grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds")
    return finished_at(pod, now) + float(grace if grace is not None else 30) + settings.additional_grace_delay


def finished_at(pod: Mapping[str, Any], now: float) -> float:
    """The latest container ``finishedAt``; for a pod whose containers report none (failed before one started:
    ``ImagePullBackOff`` then ``DeadlineExceeded``, or evicted with ``ContainerStatusUnknown``), the latest
    condition change (``lastTransitionTime``: when it stopped being ready), else when it started or was made;
    ``now`` only when the pod says nothing at all.  A time the pod records, never the time of the look: a
    deadline counted from each scan's ``now`` would move with every scan and never come."""
    status = _status(pod)
    containers = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    for stamps in (
        [((c.get("state") or {}).get("terminated") or {}).get("finishedAt") for c in containers],
        [c.get("lastTransitionTime") for c in status.get("conditions") or []],
        [status.get("startTime"), _meta(pod).get("creationTimestamp")],
    ):
        known = [t for t in (parse_time(s) for s in stamps) if t is not None]
        if known:
            return max(known)
    return now


# --- the trace path (§3.1) ----------------------------------------------------------------------------------


class Trigger(enum.Enum):
    """What made a pod worth tracing."""

    DELETED = "deleted"
    TERMINATING = "terminating"
    FINISHED = "finished"


def trace_trigger(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> Trigger | None:
    """The trace event a Pod change is: deleted (``new`` is ``None``), newly terminating or its grace period
    changed, newly finished; ``None`` for any other change (and for host-network pods)."""
    pod = new if new is not None else old
    if pod is None or host_network(pod):
        return None
    if new is None:
        return Trigger.DELETED
    if terminating(new):
        was = old is not None and terminating(old)
        grace = _meta(new).get("deletionGracePeriodSeconds")
        if not was or grace != _meta(old or {}).get("deletionGracePeriodSeconds"):
            return Trigger.TERMINATING
        return None
    if finished(new):
        if old is None or not finished(old):
            return Trigger.FINISHED
        grace = (new.get("spec") or {}).get("terminationGracePeriodSeconds")
        if grace != ((old.get("spec") or {}).get("terminationGracePeriodSeconds")):
            return Trigger.FINISHED
    return None


@attrs.frozen
class Trace:
    """A traced pod: when its addresses may go (``TracingStopTime``), and why."""

    until: float
    reason: str


def trace_deadline(
    pod: Mapping[str, Any],
    trigger: Trigger,
    *,
    node_ready: bool,
    static_valid: bool | None,
    settings: GcSettings,
    now: float,
) -> Trace | None:
    """When the pod's addresses may be released (reference §3.1), or ``None``: not traced.

    ``static_valid``: ``None`` for a stateless pod; else whether its StatefulSet ordinal or KubeVirt VM is still
    valid (a valid one is never traced: the next pod takes the same addresses).  A deleted pod is traced for the
    additional delay whatever its node; a terminating or finished one only when the node switch allows.
    """
    if static_valid:
        return None
    if trigger is Trigger.DELETED:
        return Trace(now + settings.additional_grace_delay, "deleted")
    if not settings.node_allows(node_ready):
        return None
    if trigger is Trigger.TERMINATING:
        until = deletion_deadline(pod, settings)
        return Trace(now if until is None else until, "terminating: deletion grace period")
    return Trace(finished_deadline(pod, settings, now), f"{phase(pod).lower()}: termination grace period")


# --- the scan-all table (§3.2) ------------------------------------------------------------------------------


class Action(enum.Enum):
    """What GC does with one pool record."""

    KEEP = "keep"
    TRACE = "trace"
    RELEASE = "release"
    RELEASE_AND_DROP_ENDPOINT = "release-and-drop-endpoint"
    DROP_ENDPOINT = "drop-endpoint"
    """An outdated endpoint (no pool record names it) goes; it holds no address."""


@attrs.frozen
class GcDecision:
    """The verdict on one pool record: the action, until when a traced one waits, and why."""

    action: Action
    reason: str
    until: float | None = None

    @property
    def releases(self) -> bool:
        """Whether the address goes."""
        return self.action in (Action.RELEASE, Action.RELEASE_AND_DROP_ENDPOINT)


def _keep(reason: str) -> GcDecision:
    return GcDecision(Action.KEEP, reason)


def _release(reason: str, endpoint: Endpoint | None, record: Record) -> GcDecision:
    """Release; drop the endpoint too when it records the same pod UID (another UID's is not ours to drop)."""
    if endpoint is not None and endpoint.uid == record.pod_uid:
        return GcDecision(Action.RELEASE_AND_DROP_ENDPOINT, reason)
    return GcDecision(Action.RELEASE, reason)


def _deadline_rule(
    pod: Mapping[str, Any],
    until: float,
    endpoint: Endpoint | None,
    record: Record,
    node_ready: bool,
    settings: GcSettings,
    now: float,
    what: str,
) -> GcDecision:
    """A dying stateless pod: released once ``until`` passed (node switch allowing); before, at once when the
    kubelet reports no address any more, else traced until then."""
    if not settings.node_allows(node_ready):
        ready = "Ready" if node_ready else "not Ready"
        return _keep(f"{what}, but GC of such pods on {ready} nodes is switched off")
    if now >= until:
        return _release(f"{what}: grace period over", endpoint, record)
    if not has_pod_ips(pod):
        return _release(f"{what}: no podIPs reported any more", endpoint, record)
    return GcDecision(Action.TRACE, f"{what}: within its grace period", until)


NO_POD_OBJECT = "no Pod object: freed by its CNI DEL or CNI GC"
"""Why a record whose endpoint says the agent served its pod without a Pod object is kept."""


def decide(
    record: Record,
    pod: Mapping[str, Any] | None,
    endpoint: Endpoint | None,
    *,
    node_ready: bool,
    static_valid: bool | None,
    settings: GcSettings,
    now: float,
    pod_gone: bool = False,
) -> GcDecision:
    """Spiderpool's scan-all verdict on one pool record (reference §3.2), made safer.

    ``pod``: the Pod named as the record names it (``None``: none; for a KubeVirt VM the record names the VMI,
    so there is none); ``endpoint``: the SpiderEndpoint of that name; ``node_ready``: whether the pod's node is
    Ready; ``static_valid``: ``None`` when the workload is stateless, else whether its StatefulSet ordinal or VM
    is still valid; ``now``: wall-clock Unix seconds; ``pod_gone``: a Pod of the record's UID was seen in the
    store and is gone since (deleted: whatever its ADD still does, it answers no live pod).

    Two more keeps than Spiderpool's table: a record whose endpoint (of its UID) says the agent served the pod
    without a Pod object (``Endpoint.pod_object_absent``) is kept while no pod of its UID is seen: GC cannot
    tell such a pod's death, its CNI DEL or CNI GC frees it; and a record no endpoint of its UID accounts for is
    never released while its ADD may still write the endpoint and answer (``Record.may_be_in_flight``, the rule
    ``spider check --reclaim`` keeps), whatever the pod says, unless ``pod_gone``.
    """
    accounted = endpoint is not None and endpoint.uid == record.pod_uid
    unseen = pod is None or pod_uid(pod) != record.pod_uid
    if accounted and endpoint is not None and endpoint.pod_object_absent and unseen:
        return _keep(NO_POD_OBJECT)
    decision = _decide(record, pod, endpoint, node_ready=node_ready, static_valid=static_valid, settings=settings,
                       now=now)  # fmt: skip
    if decision.releases and not accounted and not pod_gone and record.may_be_in_flight(now):
        return _keep(f"{decision.reason}, but no endpoint records it yet and its ADD may still be in flight "
                     f"(recorded less than {RECLAIM_AFTER:.0f} s ago): looked at again later")  # fmt: skip
    return decision


def _decide(
    record: Record,
    pod: Mapping[str, Any] | None,
    endpoint: Endpoint | None,
    *,
    node_ready: bool,
    static_valid: bool | None,
    settings: GcSettings,
    now: float,
) -> GcDecision:
    """Spiderpool's table itself (``decide`` adds the keeps around it)."""
    static = static_valid is not None
    if pod is None:
        if endpoint is None:
            return _release("neither the pod nor its endpoint exists", endpoint, record)
        if static_valid:
            return _keep(f"the pod is gone, but its {endpoint.owner_controller_type} still wants the address")
        return _release("the pod is gone", endpoint, record)
    if pod_uid(pod) != record.pod_uid:  # a newer pod of the same name
        if not static:
            return _release(f"the pod of this name is another one (UID {pod_uid(pod)})", endpoint, record)
        if has_pod_ips(pod):
            return _release(f"the workload's new pod (UID {pod_uid(pod)}) has other addresses", endpoint, record)
        if static_valid:
            return _keep("the workload's new pod may still take this address")
        return _release("the workload's new pod does not want this address any more", endpoint, record)
    if finished(pod):
        if static:
            if static_valid:
                return _keep(f"{phase(pod)}, but its workload keeps the address")
            return _release(f"{phase(pod)}, and its workload does not want the address any more", endpoint, record)
        if terminating(pod):
            until = deletion_deadline(pod, settings) or now
            return _deadline_rule(pod, until, endpoint, record, node_ready, settings, now, f"{phase(pod)}, deleting")
        if not settings.node_allows(node_ready):
            return _keep(f"{phase(pod)}, but GC of such pods on {'Ready' if node_ready else 'not Ready'} nodes is off")
        until = finished_deadline(pod, settings, now)
        if now >= until:
            return _release(f"{phase(pod)}: termination grace period over", endpoint, record)
        return GcDecision(Action.TRACE, f"{phase(pod)}: within its termination grace period", until)
    if phase(pod) == "Pending" or not phase(pod):
        return _keep("the pod is pending")
    if terminating(pod):
        if static_valid:
            return _keep("deleting, but its workload keeps the address")
        until = deletion_deadline(pod, settings) or now
        return _deadline_rule(pod, until, endpoint, record, node_ready, settings, now, "deleting")
    if has_pod_ips(pod):
        return _keep("the pod runs with its addresses")
    if static:  # NB: Spiderpool releases it when the workload is invalid; the pod is alive with this UID
        return _keep(f"{phase(pod)} without podIPs, but alive with this UID")
    if phase(pod) == "Running" and settings.running_on_empty_pod_ips:
        return _release("Running without podIPs (GC of such pods switched on)", endpoint, record)
    return _keep(f"{phase(pod)} without podIPs, but alive with this UID")  # NB: Spiderpool releases an Unknown one


def judge_endpoint(
    endpoint: Endpoint, *, named_by_a_record: bool, pod_of_its_uid: Mapping[str, Any] | None
) -> GcDecision:
    """Whether an endpoint is outdated (``enableCleanOutdatedEndpoint``, reference §3.2): dropped when no pool
    record names its ``namespace/name`` (``named_by_a_record``), unless a pod with its UID is still alive
    (``pod_of_its_uid``: that pod, under whatever name, or ``None``), as one is between its ADD's pool write and
    its endpoint write.  Keep, or ``DROP_ENDPOINT``."""
    if named_by_a_record:
        return _keep("a pool record names it")
    if pod_of_its_uid is not None and not finished(pod_of_its_uid):
        return _keep(f"its pod {_meta(pod_of_its_uid).get('name', '')} (UID {endpoint.uid}) is alive")
    return GcDecision(Action.DROP_ENDPOINT, "no pool record names it")


def node_ready(node: Mapping[str, Any] | None) -> bool:
    """Whether a Node reports condition ``Ready`` as ``True`` (a missing node is not Ready)."""
    if node is None:
        return False
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


# --- seen twice before released -----------------------------------------------------------------------------


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@attrs.define
class Observations(Generic[K, V]):
    """The release candidates seen so far: an address (or an outdated endpoint) goes only when the same thing
    (the same record: holder, pod UID and sandbox; the same endpoint version) was judged releasable twice, at
    least ``gap`` seconds apart.

    A pod the informer has not caught up with, an ADD between its pool write and its endpoint write: whatever a
    first look got wrong, the second look, a trace gap later, sees otherwise; a record that changed between the
    looks (a fresh ADD took the address) starts over.
    """

    gap: float
    _first: dict[K, tuple[V, float]] = attrs.field(factory=dict)

    def note(self, key: K, seen_as: V, now: float) -> bool:
        """Note a releasable ``seen_as`` at ``key`` (pool and address; endpoint) seen at ``now``; whether it may
        go now."""
        seen = self._first.get(key)
        if seen is not None and seen[0] == seen_as:
            return now - seen[1] >= self.gap
        self._first[key] = (seen_as, now)
        return False

    def forget(self, key: K) -> None:
        """The candidate at ``key`` was released or judged worth keeping: start over next time."""
        self._first.pop(key, None)

    def keep_only(self, keys: set[K]) -> None:
        """Forget every candidate a complete scan did not find releasable again."""
        self._first = {k: v for k, v in self._first.items() if k in keys}

    def pending(self) -> set[K]:
        """The candidates seen once and waiting for their second look."""
        return set(self._first)

    def __len__(self) -> int:
        return len(self._first)
