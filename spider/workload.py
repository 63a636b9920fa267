"""Who a pod belongs to, and whether its addresses must outlive it (reference §2.1 step 2, §2.10, §2.11).

Owns the pure rules: whether a pod is alive (not terminating, not in a terminal phase), which owner reference
is its controller, how ReplicaSets resolve to Deployments and Jobs to CronJobs, and when a StatefulSet ordinal
or a KubeVirt VM/VMI is still valid (so its fixed addresses are kept across pod re-creation); and ``Workload``,
the verdict the agent gathers for one pod.  The agent walks the owner chain through the store and asks these
functions at each step.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

KUBEVIRT_API = "kubevirt.io/v1"
CORE_GROUPS = ("", "apps", "batch")
STATIC_KINDS = ("StatefulSet", "VirtualMachineInstance")
"""The owner kinds (``ownerControllerType``) of endpoints whose addresses may outlive the pod."""


@attrs.frozen
class Workload:
    """What a pod belongs to, as far as its addresses are concerned."""

    kind: str = "Pod"
    name: str = ""
    static: bool = False
    """A StatefulSet or KubeVirt pod (feature on): its addresses outlive the pod."""
    keeps: bool = False
    """Static and still valid: a DEL keeps the addresses."""
    endpoint_name: str = ""
    """The SpiderEndpoint's (and pool records') name: the VMI's for KubeVirt, else the pod's."""


@attrs.frozen
class Controller:
    """An owner reference that is the object's controller."""

    api_version: str
    kind: str
    name: str
    uid: str = ""

    @property
    def group(self) -> str:
        """The API group (``""`` for the core group)."""
        return self.api_version.rpartition("/")[0]

    @property
    def third_party(self) -> bool:
        """Not a Kubernetes built-in workload (KubeVirt, OpenKruise, ...): used as-is, never walked further."""
        return self.group not in CORE_GROUPS


def controller_of(obj: Mapping[str, Any]) -> Controller | None:
    """The owner reference with ``controller: true`` (or the only owner), if any."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    chosen = next((r for r in refs if r.get("controller")), refs[0] if len(refs) == 1 else None)
    if not chosen:
        return None
    return Controller(
        str(chosen.get("apiVersion", "")),
        str(chosen.get("kind", "")),
        str(chosen.get("name", "")),
        chosen.get("uid", ""),
    )


def is_vmi(ctrl: Controller) -> bool:
    """A KubeVirt VirtualMachineInstance: its pods' addresses are recorded under the VMI's name."""
    return ctrl.kind == "VirtualMachineInstance" and ctrl.api_version == KUBEVIRT_API


def next_hop(controller: Controller) -> str | None:
    """The kind whose controller must be looked up next: ReplicaSet -> Deployment, Job -> CronJob."""
    if controller.kind == "ReplicaSet" and controller.group == "apps":
        return "ReplicaSet"
    if controller.kind == "Job" and controller.group == "batch":
        return "Job"
    return None


def pod_not_alive(pod: Mapping[str, Any]) -> str | None:
    """Why a pod is not alive, or ``None``: terminating, or in a terminal phase (``Succeeded``, ``Failed``).

    Stricter than Spiderpool's ``IsPodAlive``, which looks at ``restartPolicy`` too (``Succeeded`` is dead only
    when it is not ``Always``; ``Failed`` only when it is ``Never`` or the reason is ``Evicted``).  A terminal
    phase is final whatever the policy: the kubelet never starts the pod's containers again, so a Job pod with
    ``OnFailure`` failed by ``activeDeadlineSeconds``, or a pod failed by a graceful node shutdown, would
    otherwise keep its addresses for as long as the Pod object stays (docs/compatibility.md).
    """
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    phase = status.get("phase", "")
    if meta.get("deletionTimestamp"):
        return "terminating"
    if phase == "Succeeded":
        return "succeeded"
    if phase == "Failed":
        return "evicted" if status.get("reason") == "Evicted" else "failed"
    return None


_ORDINAL = re.compile(r"^(?P<set>.+)-(?P<ordinal>\d+)$")


def statefulset_ordinal(pod_name: str, set_name: str) -> int | None:
    """The ordinal of a StatefulSet pod (``web-3`` of ``web`` is 3), or ``None`` if the name is not one."""
    match = _ORDINAL.match(pod_name)
    if not match or match["set"] != set_name:
        return None
    return int(match["ordinal"])


def statefulset_keeps(sts: Mapping[str, Any] | None, pod_name: str) -> bool:
    """Whether a StatefulSet pod's addresses are kept: the set exists, is not deleting, and the ordinal is valid.

    Valid means ``start <= ordinal < start + replicas``, ``start`` being ``spec.ordinals.start`` (default 0).
    A ``replicas`` or ``start`` that is not an integer (``null``, a string) cannot be judged: kept, the safe
    answer (a wrongly kept address is released later; a wrongly freed one may be handed to another pod).
    """
    if sts is None or (sts.get("metadata") or {}).get("deletionTimestamp"):
        return False
    ordinal = statefulset_ordinal(pod_name, str((sts.get("metadata") or {}).get("name", "")))
    if ordinal is None:
        return False
    spec = sts.get("spec") or {}
    if not isinstance(spec, Mapping):
        return True
    ordinals = spec.get("ordinals") or {}
    if not isinstance(ordinals, Mapping):
        return True
    replicas = int_or_none(spec.get("replicas", 1))
    start = int_or_none(ordinals.get("start", 0))
    if replicas is None or start is None:
        return True
    return start <= ordinal < start + replicas


def int_or_none(value: object) -> int | None:
    """``value`` if it is an integer (a bool is not), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def kubevirt_keeps(vmi: Mapping[str, Any] | None, vm: Mapping[str, Any] | None) -> bool:
    """Whether a KubeVirt VM's addresses are kept (``IsValidVMPod``).

    The VMI exists and is not deleting: kept.  The VMI is deleting and no VM owns it: released.  The VMI is
    gone: kept while its VM exists and is not deleting.
    """
    if vmi is not None:
        if not (vmi.get("metadata") or {}).get("deletionTimestamp"):
            return True
        owner = controller_of(vmi)
        if owner is None or owner.kind != "VirtualMachine":
            return False
    return vm is not None and not (vm.get("metadata") or {}).get("deletionTimestamp")
