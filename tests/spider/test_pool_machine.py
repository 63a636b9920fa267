"""``PoolLedger`` as a state machine against a dict model (DESIGN §5 invariants 1 and 2, on the pure ledger).

Rules allocate, repeat, release (sometimes from a stale sandbox), release by address (sometimes for the wrong
UID), reserve more addresses, adopt a record Spiderpool wrote without ``nic``, and persist and reload the
status.  After every step the ledger must agree with the model and keep the invariants below.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import attrs
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, rule

from spider.addr import IPSet
from spider.errors import PoolExhausted
from spider.pool import Owner, PoolLedger, Record
from tests.spider.strategies import allocatable_model, ip_text, owners, pod_uids, pool_objects


class PoolMachine(RuleBasedStateMachine):
    """One pool's ledger, driven by CNI-like requests, checked against a plain ``dict[int, Record]``."""

    holders = Bundle("holders")

    @initialize(obj=pool_objects())
    def create(self, obj: dict[str, Any]) -> None:
        self.obj = obj
        self.ledger = PoolLedger.from_object(obj)
        self.version = self.ledger.pool.version
        self.reserved: set[int] = set()
        self.allocatable = allocatable_model(obj["spec"])
        self.model: dict[int, Record] = {}

    # --- the model ---------------------------------------------------------------------------------------

    def held_by(self, key: tuple[str, str]) -> int | None:
        """The model's answer to ``lookup``: exact key first, then a Spiderpool record without nic."""
        for wanted in (key, (key[0], "")):
            for ip, rec in self.model.items():
                if (rec.pod_uid, rec.nic) == wanted:
                    return ip
        return None

    def free_addresses(self) -> list[int]:
        return sorted(self.allocatable - self.model.keys())

    def reload(self) -> None:
        """Persist the status, read the pool back (with the current reservations) as a restarted agent does."""
        stored = json.loads(json.dumps({**self.obj, "status": self.ledger.to_status()}))
        self.ledger = PoolLedger.from_object(stored, reserved=IPSet.of(self.version, self.reserved))

    # --- rules -------------------------------------------------------------------------------------------

    def request(self, owner: Owner) -> None:
        held = self.held_by(owner.key)
        free = self.free_addresses()
        try:
            ip, changed = self.ledger.allocate(owner)
        except PoolExhausted as exc:
            exhausted: PoolExhausted | None = exc
        else:
            exhausted = None
        if exhausted is not None:
            assert held is None, "an owner that holds an address must get it back, even from a full pool"
            assert free == [], "exhausted only when nothing allocatable is free"
            assert exhausted.capacity == len(self.allocatable)
            return
        new = Record.for_owner(owner)
        if held is not None:
            assert ip == held, "a repeated ADD returns the address already held"
            assert changed == (self.model[held] != new)
        else:
            assert ip not in self.model, "an address is never handed to a second owner"
            assert ip == free[0], "the lowest free allocatable address is handed out"
            assert changed
        self.model[ip] = new

    @rule(target=holders, owner=owners())
    def allocate(self, owner: Owner) -> Owner:
        self.request(owner)
        return owner

    @rule(target=holders, owner=holders)
    def allocate_the_other_nic(self, owner: Owner) -> Owner:
        sibling = attrs.evolve(owner, nic="net1" if owner.nic == "eth0" else "eth0")
        self.request(sibling)
        return sibling

    @rule(owner=holders, new_sandbox=st.booleans())
    def allocate_again(self, owner: Owner, new_sandbox: bool) -> None:
        if new_sandbox:  # the runtime re-created the sandbox: same pod and nic, new container id
            owner = attrs.evolve(owner, container_id=owner.container_id + "+")
        self.request(owner)

    @rule(owner=consumes(holders), stale=st.booleans())
    def release(self, owner: Owner, stale: bool) -> None:
        container_id = f"stale-{owner.container_id}" if stale else owner.container_id
        held = self.held_by(owner.key)
        got = self.ledger.release(owner.key, container_id)
        if held is None:
            assert got is None
            return
        holder = self.model[held].container_id
        if holder and holder != container_id:
            assert got is None, "a DEL from another sandbox must not free the address"
        else:
            assert got == held
            del self.model[held]

    @rule(owner=holders, wrong_uid=st.booleans())
    def release_ip(self, owner: Owner, wrong_uid: bool) -> None:
        ip = self.held_by(owner.key)
        if ip is None:  # aim at some address anyway: a free one must stay free
            ip = min(self.allocatable, default=0)
        uid = owner.pod_uid + "-other" if wrong_uid else owner.pod_uid
        expected = ip in self.model and self.model[ip].pod_uid == uid
        assert self.ledger.release_ip(ip, uid) == expected
        if expected:
            del self.model[ip]

    @rule(data=st.data())
    def reserve_more(self, data: st.DataObject) -> None:
        net = self.ledger.pool.subnet
        anywhere = st.integers(int(net.network_address), int(net.broadcast_address))
        held = st.sampled_from(sorted(self.model)) if self.model else anywhere
        extra = data.draw(st.lists(anywhere | held, min_size=1, max_size=4))
        self.reserved |= set(extra)
        self.allocatable = allocatable_model(self.obj["spec"], self.reserved)
        self.reload()  # NB: records made before the reservation stay; the model is unchanged

    @rule(owner=holders, new_uid=pod_uids, raced=st.booleans())
    def a_recreated_pod_adopts_the_address_of_its_predecessor(self, owner: Owner, new_uid: str, raced: bool) -> None:
        # A StatefulSet pod or VM comes back under the same name with a new UID (reference §2.10, §2.11).
        successor = attrs.evolve(owner, pod_uid=new_uid, container_id="c-new")
        if any(rec.pod_uid == new_uid and rec.pod != successor.pod for rec in self.model.values()):
            return  # a UID names one pod only
        ip = self.held_by(owner.key)
        if ip is None:
            ip = min(self.allocatable, default=0)
        if raced:  # the new pod already got an address of its own (an ADD retried after a partial failure)
            self.request(successor)
        rec = self.model.get(ip)
        expected = rec is not None and rec.pod_uid in (owner.pod_uid, new_uid) and rec.pod == successor.pod
        held, changed = self.ledger.adopt(ip, owner.pod_uid, successor)
        assert held == expected
        if not expected:
            assert not changed
            return
        new = Record.for_owner(successor)
        # the fixed address wins: another one the new pod took under the same key is given back
        stray = [a for a, r in self.model.items() if (r.pod_uid, r.nic) == successor.key and a != ip]
        assert changed == (rec != new or bool(stray))
        for a in stray:
            del self.model[a]
        self.model[ip] = new

    @rule(uid=pod_uids)
    def spiderpool_wrote_a_record_without_nic(self, uid: str) -> None:
        free = self.free_addresses()
        if not free or any(rec.pod_uid == uid for rec in self.model.values()):
            return  # Spiderpool keeps one address per pod per pool
        record = Record(pod=f"default/pod-{uid}", pod_uid=uid)
        status = self.ledger.to_status()
        allocated = json.loads(status.get("allocatedIPs") or "{}")
        allocated[ip_text(free[0], self.version)] = {"pod": record.pod, "podUid": uid}
        stored = {**self.obj, "status": {**status, "allocatedIPs": json.dumps(allocated)}}
        self.ledger = PoolLedger.from_object(stored, reserved=IPSet.of(self.version, self.reserved))
        self.model[free[0]] = record

    @rule()
    def persist_and_reload(self) -> None:
        self.reload()

    # --- invariants --------------------------------------------------------------------------------------

    @invariant()
    def the_ledger_agrees_with_the_model(self) -> None:
        assert self.ledger.records == self.model

    @invariant()
    def an_owner_key_holds_at_most_one_address(self) -> None:
        keys = Counter((rec.pod_uid, rec.nic) for rec in self.ledger.records.values())
        assert all(n == 1 for n in keys.values()), keys
        for key in keys:
            assert self.ledger.lookup(key) == self.held_by(key)

    @invariant()
    def allocatable_excludes_gateway_excluded_reserved_network_and_broadcast(self) -> None:
        assert set(self.ledger.allocatable) == self.allocatable

    @invariant()
    def free_plus_held_allocatable_is_capacity(self) -> None:
        held = sum(1 for ip in self.model if ip in self.allocatable)
        assert self.ledger.capacity == len(self.allocatable)
        assert self.ledger.free == len(self.free_addresses())
        assert self.ledger.free + held == self.ledger.capacity

    @invariant()
    def the_status_counts_agree(self) -> None:
        status = self.ledger.to_status()
        assert status["allocatedIPCount"] == len(self.model)
        assert status["freeIPCount"] == self.ledger.free
        assert ("allocatedIPs" in status) == bool(self.model)


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(
    max_examples=settings().max_examples,  # the profile's: dev 100, ci 500
    stateful_step_count=50,
)
