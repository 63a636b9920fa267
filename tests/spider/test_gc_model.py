"""A model of GC running while pods come, die without a CNI DEL and come back under the same name.

The cluster is a dictionary of pods, a pool's records and the endpoints; GC is ``spider.gc.decide`` and
``Observations`` driven as the controller drives them (scan-all every interval; a candidate seen for the first
time is looked at again a trace gap later, then released only if the same record is still judged releasable
from the pod as it is then).  Whatever the interleaving: no live pod ever loses its address, and every orphan
(a record no live pod of that UID holds) is gone within two scan intervals of becoming one.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from spider.endpoint import Endpoint
from spider.gc import GcSettings, Observations, decide
from spider.pool import Record

INTERVAL = 10.0
GAP = 5.0
NAMES = ("a", "b", "c")
SETTINGS = GcSettings(interval=INTERVAL, trace_gap=GAP)


class GcModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1_800_000_000.0
        self.uids = itertools.count(1)
        self.pods: dict[str, dict[str, Any]] = {}
        """Live pods by name."""
        self.records: dict[int, Record] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self.orphaned_at: dict[int, float] = {}
        self.seen = Observations(GAP)
        self.pending: set[int] = set()
        self.next_look: float | None = None
        self.next_scan = self.now + INTERVAL

    # --- the cluster -----------------------------------------------------------------------------------

    def _pod(self, name: str, uid: str, *, running: bool) -> dict[str, Any]:
        status: dict[str, Any] = {"phase": "Running", "podIPs": [{"ip": "x"}]} if running else {"phase": "Pending"}
        return {"metadata": {"name": name, "namespace": "default", "uid": uid}, "status": status}

    @rule(name=st.sampled_from(NAMES))
    def start_pod(self, name: str) -> None:
        """A pod is created and its ADD writes the pool record (the endpoint comes when the ADD finishes)."""
        if name in self.pods:
            return
        uid = f"uid-{next(self.uids)}"
        self.pods[name] = self._pod(name, uid, running=False)
        ip = next(i for i in itertools.count() if i not in self.records)
        self.records[ip] = Record(f"default/{name}", uid, "eth0", f"ctr-{uid}", "node-1")

    @rule(name=st.sampled_from(NAMES))
    def finish_add(self, name: str) -> None:
        """The ADD writes the endpoint; the kubelet reports the pod Running with its address."""
        pod = self.pods.get(name)
        if pod is None or pod["status"]["phase"] == "Running":
            return
        uid = pod["metadata"]["uid"]
        self.endpoints[name] = Endpoint("default", name, uid, "node-1")
        self.pods[name] = self._pod(name, uid, running=True)

    @rule(name=st.sampled_from(NAMES))
    def die_without_del(self, name: str) -> None:
        """The pod goes (node lost, force delete): no CNI DEL, its record and endpoint stay."""
        pod = self.pods.pop(name, None)
        if pod is None:
            return
        for ip, record in self.records.items():
            if record.pod_uid == pod["metadata"]["uid"]:
                self.orphaned_at.setdefault(ip, self.now)

    # --- GC --------------------------------------------------------------------------------------------

    def _judge(self, ip: int) -> bool:
        record = self.records[ip]
        name = record.pod.partition("/")[2]
        decision = decide(
            record,
            self.pods.get(name),
            self.endpoints.get(name),
            node_ready=True,
            static_valid=None,
            settings=SETTINGS,
            now=self.now,
        )
        return decision.releases

    def _settle(self, ip: int) -> None:
        if not self._judge(ip):
            self.seen.forget(("p", ip))
            return
        if self.seen.note(("p", ip), self.records[ip], self.now) and self._judge(ip):  # the last, fresh look
            record = self.records.pop(ip)
            self.seen.forget(("p", ip))
            self.orphaned_at.pop(ip, None)
            name = record.pod.partition("/")[2]
            if name in self.endpoints and self.endpoints[name].uid == record.pod_uid:
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
        for ip, since in self.orphaned_at.items():
            # NB: an orphan the previous scan saw goes by this one at the latest: none left is older than an interval
            assert self.now - since <= INTERVAL, f"orphan {ip} kept since {since}, two scans ago"

    # --- what must hold --------------------------------------------------------------------------------

    @invariant()
    def no_live_pod_loses_its_address(self) -> None:
        held = {record.pod_uid for record in self.records.values()}
        for pod in self.pods.values():
            assert pod["metadata"]["uid"] in held, f"live pod {pod['metadata']} lost its address"


GcModel.TestCase.settings = hypothesis_settings(max_examples=200, stateful_step_count=40, deadline=None)
TestGcModel = GcModel.TestCase
