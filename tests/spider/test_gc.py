"""GC's pure rules: the switches' environment names, the trace deadlines (§3.1), every row of scan-all (§3.2)."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from spider.endpoint import Endpoint, NicAllocation
from spider.errors import InvalidSpec
from spider.gc import (
    Action,
    GcSettings,
    Observations,
    Trigger,
    decide,
    finished_at,
    judge_endpoint,
    node_ready,
    static_owner,
    trace_deadline,
    trace_trigger,
)
from spider.pool import RECLAIM_AFTER, Record

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
T0 = "2027-01-15T08:00:00Z"
RECORD = Record("default/p", "uid-1", "eth0", "ctr", "node-1")
S = GcSettings()


def pod(
    *,
    uid: str = "uid-1",
    phase: str = "Running",
    ips: bool = True,
    deleting: str | None = None,
    grace: int = 30,
    finished_at: str | None = None,
    owner: str | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "p", "namespace": "default", "uid": uid}
    if deleting is not None:
        meta.update(deletionTimestamp=deleting, deletionGracePeriodSeconds=grace)
    if owner == "StatefulSet":
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "controller": True}]
    status: dict[str, Any] = {"phase": phase}
    if ips:
        status["podIPs"] = [{"ip": "10.0.0.1"}]
    if finished_at is not None:
        status["containerStatuses"] = [{"state": {"terminated": {"finishedAt": finished_at}}}]
    return {"metadata": meta, "spec": {"nodeName": "node-1", "terminationGracePeriodSeconds": grace}, "status": status}


def endpoint(uid: str = "uid-1", kind: str = "Pod") -> Endpoint:
    return Endpoint("default", "p", uid, "node-1", (NicAllocation("eth0", "10.0.0.1/24", ipv4_pool="p"),), kind, "p")


def judge(p: dict[str, Any] | None, ep: Endpoint | None, *, static: bool | None = None, **kw: Any) -> Any:
    settings = kw.pop("settings", S)
    return decide(RECORD, p, ep, node_ready=kw.pop("ready", True), static_valid=static, settings=settings, now=NOW)


# --- settings -----------------------------------------------------------------------------------------------


def test_the_settings_default_to_spiderpools_values() -> None:
    s = GcSettings.from_environ({})
    assert (s.enabled, s.terminating_on_ready_node, s.terminating_on_not_ready_node) == (True, True, True)
    assert (s.running_on_empty_pod_ips, s.interval, s.additional_grace_delay, s.trace_gap) == (False, 600, 0, 5)
    assert (s.signal_timeout, s.request_gap, s.workers, s.channel_buffer) == (3, 1, 3, 5000)
    assert (s.max_traced, s.max_retries) == (100_000, 5)
    assert not s.clean_outdated_endpoints


def test_cleaning_outdated_endpoints_is_read_from_spiderpools_configmap_key_as_an_environment_variable() -> None:
    assert GcSettings.from_environ({"SPIDERPOOL_ENABLE_CLEAN_OUTDATED_ENDPOINT": "true"}).clean_outdated_endpoints
    assert not GcSettings.from_environ({"SPIDERPOOL_ENABLE_CLEAN_OUTDATED_ENDPOINT": "false"}).clean_outdated_endpoints


def test_the_settings_are_read_from_spiderpools_environment_names() -> None:
    s = GcSettings.from_environ(
        {
            "SPIDERPOOL_GC_IP_ENABLED": "false",
            "SPIDERPOOL_GC_STATELESS_TERMINATING_POD_ON_READY_NODE_ENABLED": "0",
            "SPIDERPOOL_GC_STATELESS_TERMINATING_POD_ON_NOT_READY_NODE_ENABLED": "False",
            "SPIDERPOOL_GC_ENABLE_STATELESS_RUNNING_POD_ON_EMPTY_POD_STATUS_IPS": "true",
            "SPIDERPOOL_GC_DEFAULT_INTERVAL_DURATION": "30",
            "SPIDERPOOL_GC_ADDITIONAL_GRACE_DELAY": "7s",
            "SPIDERPOOL_GC_TRACE_POD_GAP_DURATION": "2",
            "SPIDERPOOL_GC_IP_WORKER_NUM": "9",
            "SPIDERPOOL_GC_PODENTRY_MAX_RETRIES": "1",
        }
    )
    assert not (s.enabled)
    assert not (s.terminating_on_ready_node)
    assert not (s.terminating_on_not_ready_node)
    assert s.running_on_empty_pod_ips
    assert (s.interval, s.additional_grace_delay, s.trace_gap, s.workers, s.max_retries) == (30, 7, 2, 9, 1)


@pytest.mark.parametrize("value", ["maybe", "-1", "0", "0s", "nan", "inf"])
@pytest.mark.parametrize("name", ["SPIDERPOOL_GC_DEFAULT_INTERVAL_DURATION", "SPIDERPOOL_GC_TRACE_POD_GAP_DURATION"])
def test_a_setting_that_cannot_be_read_is_refused_by_name(name: str, value: str) -> None:
    # NB: a zero period once made the collector loop without a pause (scan-all back to back on the API server)
    with pytest.raises(InvalidSpec, match=name):
        GcSettings.from_environ({name: value})


def test_a_delay_may_be_zero() -> None:
    assert GcSettings.from_environ({"SPIDERPOOL_GC_ADDITIONAL_GRACE_DELAY": "0"}).additional_grace_delay == 0


# --- trace triggers (§3.1) ----------------------------------------------------------------------------------


def test_a_deleted_pod_is_traced_for_the_additional_delay() -> None:
    settings = GcSettings(additional_grace_delay=4)
    assert trace_trigger(pod(), None) is Trigger.DELETED
    trace = trace_deadline(pod(), Trigger.DELETED, node_ready=False, static_valid=None, settings=settings, now=NOW)
    assert trace is not None
    assert trace.until == NOW + 4


def test_a_newly_terminating_pod_is_traced_until_its_deletion_grace_period_ends() -> None:
    dying = pod(deleting=T0, grace=20)
    assert trace_trigger(pod(), dying) is Trigger.TERMINATING
    assert trace_trigger(dying, dying) is None
    assert trace_trigger(dying, pod(deleting=T0, grace=0)) is Trigger.TERMINATING  # the grace period changed
    trace = trace_deadline(dying, Trigger.TERMINATING, node_ready=True, static_valid=None, settings=S, now=NOW)
    assert trace is not None
    assert trace.until == NOW + 20


def test_a_newly_finished_pod_is_traced_until_its_termination_grace_period_after_its_last_container() -> None:
    done = pod(phase="Succeeded", finished_at=T0, grace=10)
    assert trace_trigger(pod(), done) is Trigger.FINISHED
    assert trace_trigger(done, done) is None
    trace = trace_deadline(done, Trigger.FINISHED, node_ready=True, static_valid=None, settings=S, now=NOW + 99)
    assert trace is not None
    assert trace.until == NOW + 10


@pytest.mark.parametrize(
    ("ready", "switch"), [(True, "terminating_on_ready_node"), (False, "terminating_on_not_ready_node")]
)
def test_the_node_switches_stop_tracing_of_dying_pods_on_such_nodes(ready: bool, switch: str) -> None:
    settings = GcSettings(**{switch: False})  # type: ignore[arg-type]
    for trigger, p in ((Trigger.TERMINATING, pod(deleting=T0)), (Trigger.FINISHED, pod(phase="Failed"))):
        assert trace_deadline(p, trigger, node_ready=ready, static_valid=None, settings=settings, now=NOW) is None
        assert trace_deadline(p, trigger, node_ready=not ready, static_valid=None, settings=settings, now=NOW)


def test_a_valid_statefulset_or_kubevirt_pod_is_never_traced() -> None:
    for trigger in Trigger:
        assert trace_deadline(pod(), trigger, node_ready=True, static_valid=True, settings=S, now=NOW) is None
    assert trace_deadline(pod(), Trigger.DELETED, node_ready=True, static_valid=False, settings=S, now=NOW)


def test_statefulset_and_kubevirt_pods_are_stateless_to_gc_when_their_switch_is_off() -> None:
    vmi = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "name": "vm", "controller": True}
    launcher = {**pod(), "metadata": {**pod()["metadata"], "ownerReferences": [vmi]}}
    for settings, sts, vm in [
        (GcSettings(), ("StatefulSet", "web"), ("VirtualMachineInstance", "vm")),
        (GcSettings(statefulset=False), None, ("VirtualMachineInstance", "vm")),
        (GcSettings(kubevirt=False), ("StatefulSet", "web"), None),
    ]:
        assert (static_owner(pod(owner="StatefulSet"), settings), static_owner(launcher, settings)) == (sts, vm)
    assert static_owner(pod(), GcSettings()) is None


def test_host_network_pods_are_never_traced() -> None:
    p = {**pod(), "spec": {"hostNetwork": True}}
    assert trace_trigger(p, None) is None


def test_a_node_is_ready_only_when_its_ready_condition_is_true() -> None:
    assert node_ready({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert not node_ready({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}})
    assert not node_ready(None)


# --- scan-all rows (§3.2) -----------------------------------------------------------------------------------


def test_row_pod_and_endpoint_gone_releases() -> None:
    assert judge(None, None).action is Action.RELEASE


def test_row_pod_gone_endpoint_of_a_valid_static_workload_keeps() -> None:
    assert judge(None, endpoint(kind="StatefulSet"), static=True).action is Action.KEEP


def test_row_pod_gone_endpoint_not_valid_static_releases_and_drops_the_endpoint() -> None:
    assert judge(None, endpoint()).action is Action.RELEASE_AND_DROP_ENDPOINT
    assert judge(None, endpoint(kind="StatefulSet"), static=False).action is Action.RELEASE_AND_DROP_ENDPOINT


def test_an_endpoint_of_another_uid_is_never_dropped_with_the_record() -> None:
    assert judge(None, endpoint(uid="uid-2")).action is Action.RELEASE


def test_row_finished_valid_static_keeps() -> None:
    assert judge(pod(phase="Succeeded", owner="StatefulSet"), endpoint(), static=True).action is Action.KEEP


def test_row_finished_invalid_static_releases() -> None:
    assert judge(pod(phase="Failed"), endpoint(), static=False).releases


def test_row_finished_stateless_not_deleting_is_traced_until_its_grace_period_then_released() -> None:
    within = judge(pod(phase="Succeeded", finished_at=T0, grace=30), endpoint())
    assert within.action is Action.TRACE
    assert within.until == NOW + 30
    over = judge(pod(phase="Succeeded", finished_at="2027-01-15T07:00:00Z"), endpoint())
    assert over.action is Action.RELEASE_AND_DROP_ENDPOINT


def test_a_finished_pod_whose_containers_report_no_finish_counts_its_grace_from_a_time_it_records() -> None:
    """A Job pod failed by its deadline while its container never started (``ImagePullBackOff``): no
    ``finishedAt`` anywhere.  Its grace period runs from its last condition change, else from when it started or
    was made, never from the time of the look (which would move with every scan: the address would stay for
    as long as the Pod object does)."""
    failed = pod(phase="Failed", grace=30)
    failed["status"]["containerStatuses"] = [{"state": {"waiting": {"reason": "ImagePullBackOff"}}}]
    failed["status"]["conditions"] = [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2027-01-15T07:00:00Z"},
        {"type": "Ready", "status": "False", "lastTransitionTime": "2027-01-15T07:59:50Z"},
    ]
    within = judge(failed, endpoint())
    assert within.action is Action.TRACE
    assert within.until == NOW - 10 + 30
    later = decide(RECORD, failed, endpoint(), node_ready=True, static_valid=None, settings=S, now=NOW + 21)
    assert later.action is Action.RELEASE_AND_DROP_ENDPOINT
    bare = pod(phase="Failed", grace=30)
    bare["status"]["startTime"] = "2027-01-15T07:00:00Z"
    assert finished_at(bare, NOW) == NOW - 3600
    bare["status"].pop("startTime")
    bare["metadata"]["creationTimestamp"] = "2027-01-15T06:00:00Z"
    assert finished_at(bare, NOW) == NOW - 7200
    assert finished_at(pod(phase="Failed"), NOW) == NOW  # the pod says nothing at all


def test_row_finished_stateless_deleting_follows_the_deadline_rule() -> None:
    assert judge(pod(phase="Failed", deleting="2027-01-15T07:00:00Z"), endpoint()).releases  # deadline passed
    assert judge(pod(phase="Failed", deleting=T0, ips=False), endpoint()).releases  # no podIPs any more
    within = judge(pod(phase="Failed", deleting=T0), endpoint())
    assert within.action is Action.TRACE
    assert within.until == NOW + 30
    off = GcSettings(terminating_on_ready_node=False)
    assert judge(pod(phase="Failed", deleting="2027-01-15T07:00:00Z"), endpoint(), settings=off).action is Action.KEEP


def test_row_pending_keeps() -> None:
    assert judge(pod(phase="Pending", ips=False), endpoint()).action is Action.KEEP


def test_row_terminating_running_pod_follows_the_deadline_rule_on_each_node_switch() -> None:
    old = "2027-01-15T07:00:00Z"
    assert judge(pod(deleting=old), endpoint(), ready=False).releases
    assert judge(pod(deleting=T0), endpoint()).action is Action.TRACE
    off = GcSettings(terminating_on_not_ready_node=False)
    assert judge(pod(deleting=old), endpoint(), ready=False, settings=off).action is Action.KEEP
    assert judge(pod(deleting=old, owner="StatefulSet"), endpoint(), static=True).action is Action.KEEP


def test_row_running_with_pod_ips_keeps() -> None:
    assert judge(pod(), endpoint()).action is Action.KEEP
    assert judge(pod(), None).action is Action.KEEP  # its ADD has not written the endpoint yet


def test_row_running_without_pod_ips_static_keeps_the_live_pods_address_even_when_invalid_unlike_spiderpool() -> None:
    assert judge(pod(ips=False, owner="StatefulSet"), endpoint(), static=True).action is Action.KEEP
    invalid = judge(pod(ips=False, owner="StatefulSet"), endpoint(), static=False)
    assert invalid.action is Action.KEEP
    assert "alive with this UID" in invalid.reason
    gone = judge(pod(ips=False, owner="StatefulSet", deleting="2027-01-15T07:00:00Z"), endpoint(), static=False)
    assert gone.releases  # once deleted, the deadline rule lets it go


def test_row_running_without_pod_ips_stateless_is_released_only_when_switched_on() -> None:
    assert judge(pod(ips=False), endpoint()).action is Action.KEEP
    on = GcSettings(running_on_empty_pod_ips=True)
    assert judge(pod(ips=False), endpoint(), settings=on).action is Action.RELEASE_AND_DROP_ENDPOINT


def test_row_unknown_phase_without_pod_ips_keeps_a_live_pods_address_unlike_spiderpool() -> None:
    assert judge(pod(phase="Unknown", ips=False), endpoint()).action is Action.KEEP


def test_row_pod_uid_differs_stateless_releases_without_touching_the_new_pods_endpoint() -> None:
    assert judge(pod(uid="uid-2"), endpoint(uid="uid-2")).action is Action.RELEASE
    assert judge(pod(uid="uid-2"), endpoint(uid="uid-1")).action is Action.RELEASE_AND_DROP_ENDPOINT


def test_row_pod_uid_differs_static_releases_when_the_new_pod_has_addresses_or_the_workload_is_invalid() -> None:
    sts = "StatefulSet"
    assert judge(pod(uid="uid-2", owner=sts), endpoint(uid="uid-2"), static=True).releases  # has podIPs
    assert judge(pod(uid="uid-2", ips=False, owner=sts), endpoint(), static=True).action is Action.KEEP
    assert judge(pod(uid="uid-2", ips=False, owner=sts), endpoint(), static=False).releases


def test_row_endpoint_uid_differs_from_a_live_pods_keeps_the_live_pods_address_unlike_spiderpool() -> None:
    assert judge(pod(), endpoint(uid="uid-0")).action is Action.KEEP


# --- pods without a Pod object, ADDs in flight ------------------------------------------------------------

YOUNG = attrs.evolve(RECORD, added_at=NOW - RECLAIM_AFTER + 1)
"""A record whose ADD may still write its endpoint and answer."""
OLD = attrs.evolve(RECORD, added_at=NOW - RECLAIM_AFTER)


def bare(uid: str = "uid-1") -> Endpoint:
    """The endpoint of a pod the agent served without a Pod object."""
    return attrs.evolve(endpoint(uid), pod_object_absent=True)


def judge_record(record: Record, p: dict[str, Any] | None, ep: Endpoint | None, **kw: Any) -> Any:
    settings = kw.pop("settings", S)
    return decide(record, p, ep, node_ready=True, static_valid=kw.pop("static", None), settings=settings, now=NOW, **kw)


def test_a_record_whose_endpoint_says_its_pod_has_no_pod_object_is_left_to_its_cni_del() -> None:
    for record in (RECORD, YOUNG, OLD):
        kept = judge_record(record, None, bare())
        assert kept.action is Action.KEEP
        assert kept.reason == "no Pod object: freed by its CNI DEL or CNI GC"
        assert judge_record(record, pod(uid="uid-2"), bare()).action is Action.KEEP  # a Pod object of another UID


def test_a_pod_object_of_the_records_uid_is_judged_as_usual_whatever_the_mark() -> None:
    assert judge_record(RECORD, pod(phase="Failed", deleting="2027-01-15T07:00:00Z"), bare()).releases
    assert judge_record(RECORD, pod(), bare()).action is Action.KEEP


def test_the_mark_of_another_uids_endpoint_does_not_keep_the_record() -> None:
    assert judge_record(OLD, None, bare(uid="uid-2")).action is Action.RELEASE


@pytest.mark.parametrize(
    ("what", "live", "settings"),
    [
        ("no pod at all", None, S),
        ("a pod of another UID", pod(uid="uid-2"), S),
        ("finished, grace period over", pod(phase="Failed", finished_at="2027-01-15T07:00:00Z"), S),
        ("deleting, grace period over", pod(deleting="2027-01-15T07:00:00Z"), S),
        ("deleting, no podIPs", pod(deleting=T0, ips=False), S),
        ("running without podIPs, switched on", pod(ips=False), GcSettings(running_on_empty_pod_ips=True)),
    ],
)
def test_a_record_no_endpoint_accounts_for_is_kept_while_its_add_may_be_in_flight(
    what: str, live: dict[str, Any] | None, settings: GcSettings
) -> None:
    assert judge_record(OLD, live, None, settings=settings).releases, what
    assert judge_record(RECORD, live, None, settings=settings).releases, f"{what}: an unstamped record is not young"
    kept = judge_record(YOUNG, live, None, settings=settings)
    assert kept.action is Action.KEEP, what
    assert "in flight" in kept.reason
    assert judge_record(YOUNG, live, endpoint(uid="uid-2"), settings=settings).action is Action.KEEP, what


def test_a_young_record_whose_pod_was_seen_going_is_released() -> None:
    assert judge_record(YOUNG, None, None, pod_gone=True).action is Action.RELEASE
    assert judge_record(YOUNG, pod(uid="uid-2"), None, pod_gone=True).action is Action.RELEASE


def test_a_young_record_its_endpoint_accounts_for_is_judged_as_usual() -> None:
    assert judge_record(YOUNG, None, endpoint()).action is Action.RELEASE_AND_DROP_ENDPOINT


# --- outdated endpoints -----------------------------------------------------------------------------------


def test_an_endpoint_no_record_names_is_dropped_when_no_pod_of_its_uid_lives() -> None:
    assert judge_endpoint(endpoint(), named_by_a_record=False, pod_of_its_uid=None).action is Action.DROP_ENDPOINT
    finished_pod = pod(phase="Succeeded")
    assert (
        judge_endpoint(endpoint(), named_by_a_record=False, pod_of_its_uid=finished_pod).action is Action.DROP_ENDPOINT
    )


def test_an_endpoint_a_record_names_is_kept() -> None:
    assert judge_endpoint(endpoint(), named_by_a_record=True, pod_of_its_uid=None).action is Action.KEEP


def test_an_endpoint_of_a_live_pod_is_kept_though_no_record_names_it_yet() -> None:
    for alive in (pod(phase="Pending", ips=False), pod()):
        verdict = judge_endpoint(endpoint(), named_by_a_record=False, pod_of_its_uid=alive)
        assert verdict.action is Action.KEEP
        assert not verdict.releases


# --- two looks ----------------------------------------------------------------------------------------------


def test_a_candidate_goes_only_when_the_same_record_is_seen_twice_a_gap_apart() -> None:
    seen: Observations[tuple[str, int], Record] = Observations(gap=5)
    key = ("p", 1)
    assert not seen.note(key, RECORD, 100)
    assert not seen.note(key, RECORD, 104)
    fresh = Record("default/p", "uid-2")
    assert not seen.note(key, fresh, 106)  # another record took the address: start over
    assert not seen.note(key, fresh, 110)
    assert seen.note(key, fresh, 111)
