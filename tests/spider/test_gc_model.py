"""A model of GC running while pods come, die without a CNI DEL and come back under the same name.

The cluster is a dictionary of pods (some served without a Pod object, as the embedded store's no-cluster mode
and the load test serve them), a pool's records (stamped with their ADD's start) and the endpoints; each ADD
writes its record, then, within ``ADD_WINDOW``, its endpoint and answers if its record is still there (else it
fails, and a live pod's kubelet tries again).  GC is ``spider.gc.decide`` and ``Observations`` driven as the
controller drives them (scan-all every interval; a candidate seen for the first time is looked at again a trace
gap later, then released only if the same record is still judged releasable from the pod as it is then); it sees
only the pods that have a Pod object, and remembers those it saw go.

Whatever the interleaving: no live pod ever loses its address; no record without an endpoint of its UID is
released while its ADD may be in flight (younger than ``RECLAIM_AFTER``) unless GC saw its pod go; a pod
without a Pod object keeps its address while its endpoint says so; and every other orphan goes within two scan
intervals of becoming releasable.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import attrs
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from spider.endpoint import Endpoint
from spider.gc import GcSettings, Observations, decide
from spider.pool import ADD_WINDOW, RECLAIM_AFTER, Record

INTERVAL = 10.0
GAP = 5.0
NAMES = ("a", "b", "c")
SETTINGS = GcSettings(interval=INTERVAL, trace_gap=GAP)


@attrs.define
class Add:
    """An ADD between its record's write and its answer."""

    name: str
    started: float
    bare: bool


class GcModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1_800_000_000.0
        self.uids = itertools.count(1)
        self.pods: dict[str, dict[str, Any]] = {}
        """Live pods by name."""
        self.bare: set[str] = set()
        """UIDs of the pods without a Pod object: GC never sees them."""
        self.adds: dict[str, Add] = {}
        """ADDs in flight, by pod UID."""
        self.departed: set[str] = set()
        """UIDs of the pods GC saw go (its informer's DELETED)."""
        self.records: dict[int, Record] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self.died_at: dict[str, float] = {}
        self.seen: Observations[tuple[str, int], Record] = Observations(GAP)
        self.pending: set[int] = set()
        self.next_look: float | None = None
        self.next_scan = self.now + INTERVAL

    # --- the cluster -----------------------------------------------------------------------------------

    def _pod(self, name: str, uid: str, *, running: bool) -> dict[str, Any]:
        status: dict[str, Any] = {"phase": "Running", "podIPs": [{"ip": "x"}]} if running else {"phase": "Pending"}
        return {"metadata": {"name": name, "namespace": "default", "uid": uid}, "status": status}

    def _begin_add(self, name: str, uid: str, bare: bool) -> None:
        """An ADD writes the pool record, stamped with its start (the endpoint comes when it answers)."""
        ip = next(i for i in itertools.count() if i not in self.records)
        self.records[ip] = Record(f"default/{name}", uid, "eth0", f"ctr-{uid}", "node-1", self.now)
        self.adds[uid] = Add(name, self.now, bare)

    def _record_of(self, uid: str) -> int | None:
        return next((ip for ip, r in self.records.items() if r.pod_uid == uid), None)

    @rule(name=st.sampled_from(NAMES), bare=st.booleans())
    def start_pod(self, name: str, bare: bool) -> None:
        """A pod is created (with a Pod object, or served bare) and its ADD starts."""
        if name in self.pods:
            return
        uid = f"uid-{next(self.uids)}"
        self.pods[name] = self._pod(name, uid, running=False)
        if bare:
            self.bare.add(uid)
        self._begin_add(name, uid, bare)

    @rule(which=st.integers(0, 5))
    def answer_add(self, which: int) -> None:
        """An ADD in flight goes on: within its window it writes the endpoint and answers if its record is still
        there; past it, it gives back its record and fails (a live pod's kubelet tries again)."""
        if not self.adds:
            return
        uid = sorted(self.adds)[which % len(self.adds)]
        add = self.adds.pop(uid)
        ip = self._record_of(uid)
        live = self.pods.get(add.name, {}).get("metadata", {}).get("uid") == uid
        if self.now - add.started >= ADD_WINDOW:
            if ip is not None:
                del self.records[ip]
            if live:
                self._begin_add(add.name, uid, add.bare)
            return
        if ip is None:
            assert not live, f"the ADD of live pod {add.name} in flight lost its record"
            return
        held = self.endpoints.get(add.name)
        if held is not None and held.uid != uid:
            if not live:  # NB: a newer pod's: this dead pod's ADD gives up
                del self.records[ip]
                return
            for old in [i for i, r in self.records.items() if r.pod_uid == held.uid]:  # a dead one's: freed first
                del self.records[old]
        self.endpoints[add.name] = Endpoint("default", add.name, uid, "node-1", pod_object_absent=add.bare)
        if live:
            self.pods[add.name] = self._pod(add.name, uid, running=True)

    @rule(name=st.sampled_from(NAMES))
    def die_without_del(self, name: str) -> None:
        """The pod goes (node lost, force delete): no CNI DEL, its record and endpoint stay (its ADD may still
        answer)."""
        pod = self.pods.pop(name, None)
        if pod is None:
            return
        uid = pod["metadata"]["uid"]
        self.died_at[uid] = self.now
        if uid not in self.bare:
            self.departed.add(uid)

    # --- GC --------------------------------------------------------------------------------------------

    def _seen_pod(self, name: str) -> dict[str, Any] | None:
        pod = self.pods.get(name)
        return None if pod is None or pod["metadata"]["uid"] in self.bare else pod

    def _judge(self, ip: int) -> bool:
        record = self.records[ip]
        name = record.pod.partition("/")[2]
        decision = decide(
            record,
            self._seen_pod(name),
            self.endpoints.get(name),
            node_ready=True,
            static_valid=None,
            settings=SETTINGS,
            now=self.now,
            pod_gone=record.pod_uid in self.departed,
        )
        return decision.releases

    def _settle(self, ip: int) -> None:
        if not self._judge(ip):
            self.seen.forget(("p", ip))
            return
        if self.seen.note(("p", ip), self.records[ip], self.now) and self._judge(ip):  # the last, fresh look
            record = self.records.pop(ip)
            self.seen.forget(("p", ip))
            name = record.pod.partition("/")[2]
            endpoint = self.endpoints.get(name)
            accounted = endpoint is not None and endpoint.uid == record.pod_uid
            if not accounted and record.may_be_in_flight(self.now):
                assert record.pod_uid in self.departed, f"{record} released while its ADD may be in flight"
            if accounted:
                assert endpoint is not None
                assert not endpoint.pod_object_absent, f"{record} of a pod without a Pod object released"
                del self.endpoints[name]

    def _advance(self, until: float) -> None:
        """Let time pass up to ``until``, giving the pending candidates their second look on the way."""
        if self.next_look is not None and self.next_look <= until:
            self.now = max(self.now, self.next_look)
            for ip in sorted(self.pending):
                if ip in self.records:
                    self._settle(ip)
            self.pending, self.next_look = set(), None
        self.now = max(self.now, until)

    @rule(fraction=st.floats(0, 1))
    def wait(self, fraction: float) -> None:
        """Some time passes before the next scan-all."""
        self._advance(self.now + (self.next_scan - self.now) * fraction)

    @rule()
    def scan_all(self) -> None:
        """The next scan-all (one interval after the last); its new candidates get their second look a gap
        later, on the way to the one after."""
        self._advance(self.next_scan)
        self.next_scan += INTERVAL
        candidates = {ip for ip in self.records if self._judge(ip)}
        self.seen.keep_only({("p", ip) for ip in candidates})
        for ip in sorted(candidates):
            self._settle(ip)
        self.pending = {ip for _pool, ip in self.seen.pending()}
        self.next_look = self.now + GAP if self.pending else None
        for ip, record in self.records.items():
            due = self._releasable_since(record)
            # NB: an orphan the previous scan saw releasable goes by this one at the latest
            assert due is None or self.now - due <= INTERVAL, f"orphan {ip} ({record}) releasable since {due}"

    @rule(span=st.sampled_from([ADD_WINDOW, RECLAIM_AFTER]))
    def much_later(self, span: float) -> None:
        """A minute or a few pass, scan-all running all along."""
        for _ in range(math.ceil(span / INTERVAL)):
            self.scan_all()

    def _releasable_since(self, record: Record) -> float | None:
        """Since when GC must let this record go (``None``: never, or not yet known): the record of a dead pod
        whose ADD is over, unless its endpoint says it had no Pod object (its CNI DEL frees it)."""
        uid = record.pod_uid
        died = self.died_at.get(uid)
        if died is None or (uid in self.adds and uid in self.bare):
            return None  # NB: alive, or a bare pod's ADD may still write the marked endpoint
        endpoint = self.endpoints.get(record.pod.partition("/")[2])
        accounted = endpoint is not None and endpoint.uid == uid
        if accounted and endpoint is not None and endpoint.pod_object_absent:
            return None
        if accounted or uid in self.departed:
            return died
        assert record.added_at is not None
        return max(died, record.added_at + RECLAIM_AFTER)

    # --- what must hold --------------------------------------------------------------------------------

    @invariant()
    def no_live_pod_loses_its_address(self) -> None:
        """Every live pod holds its record, but one whose ADD outlived its window (it fails, and is tried
        again)."""
        held = {record.pod_uid for record in self.records.values()}
        for pod in self.pods.values():
            uid = pod["metadata"]["uid"]
            add = self.adds.get(uid)
            if add is not None and self.now - add.started >= ADD_WINDOW:
                continue
            assert uid in held, f"live pod {pod['metadata']} lost its address"


GcModel.TestCase.settings = hypothesis_settings(max_examples=200, stateful_step_count=40, deadline=None)
TestGcModel = GcModel.TestCase
