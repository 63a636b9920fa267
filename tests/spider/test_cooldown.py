"""The optional release cooldown: a released address rests before reuse, then comes back oldest first (FIFO),
and every released address remembers who held it last (until its history must make room for records)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spider.errors import PoolExhausted
from spider.pool import ANNO_COOLDOWN, IPPool, Owner, PoolLedger


def ledger(cooldown: str | None = None, ips: str = "10.0.0.10-10.0.0.13") -> PoolLedger:
    meta: dict[str, object] = {"name": "p"}
    if cooldown is not None:
        meta["annotations"] = {ANNO_COOLDOWN: cooldown}
    return PoolLedger(IPPool.from_object({"metadata": meta, "spec": {"subnet": "10.0.0.0/24", "ips": [ips]}}))


def owner(n: int) -> Owner:
    return Owner(f"uid-{n}", "eth0", "default", f"pod-{n}")


def test_without_cooldown_the_lowest_free_address_is_reused_at_once() -> None:
    book = ledger()
    first, _ = book.allocate(owner(1))
    book.allocate(owner(2))
    book.release(owner(1).key, now=100.0)
    assert book.allocate(owner(3), now=100.0)[0] == first


def test_with_cooldown_never_used_addresses_go_first() -> None:
    book = ledger()
    first, _ = book.allocate(owner(1), now=0.0, cooldown=60)
    book.release(owner(1).key, now=1.0)
    second, _ = book.allocate(owner(2), now=2.0, cooldown=60)
    assert second != first


def test_a_released_address_is_not_reused_before_its_cooldown_ends() -> None:
    book = ledger(ips="10.0.0.10")
    book.allocate(owner(1), cooldown=60)
    book.release(owner(1).key, now=100.0)
    with pytest.raises(PoolExhausted) as caught:
        book.allocate(owner(2), now=159.0, cooldown=60)
    assert caught.value.cooling == 1
    assert "still cooling down" in str(caught.value)
    assert book.allocate(owner(2), now=160.0, cooldown=60)[0] == int.from_bytes(bytes([10, 0, 0, 10]), "big")


def test_rested_addresses_come_back_in_release_order() -> None:
    book = ledger(ips="10.0.0.10-10.0.0.12")
    ips = [book.allocate(owner(n), cooldown=10)[0] for n in range(3)]
    for n, at in ((2, 1.0), (0, 2.0), (1, 3.0)):  # released out of address order
        book.release(owner(n).key, now=at)
    again = [book.allocate(owner(10 + n), now=100.0, cooldown=10)[0] for n in range(3)]
    assert again == [ips[2], ips[0], ips[1]]


def test_the_last_holder_of_a_released_address_is_in_the_status_and_survives_a_reload() -> None:
    book = ledger()
    ip, _ = book.allocate(owner(1))
    book.release(owner(1).key, now=1234.5)
    status = book.to_status()
    assert json.loads(status["releasedIPs"]) == {
        "10.0.0.10": {"pod": "default/pod-1", "podUid": "uid-1", "releasedAt": 1234.5}
    }
    reloaded = PoolLedger.from_object(
        {"metadata": {"name": "p"}, "spec": {"subnet": "10.0.0.0/24", "ips": ["10.0.0.10-10.0.0.13"]}, "status": status}
    )
    assert reloaded.released[ip].pod_uid == "uid-1"
    reloaded.allocate(owner(2))
    assert "releasedIPs" not in reloaded.to_status()


def test_the_pool_annotation_sets_the_cooldown_and_must_be_a_number() -> None:
    assert ledger("30").pool.cooldown == 30.0
    assert ledger().pool.cooldown is None
    with pytest.raises(Exception, match="must be a number of seconds"):
        ledger("soon")


def churned(times: list[float], cooldown: float = 10) -> tuple[PoolLedger, list[int]]:
    """A ledger where ``owner(n)`` took a never-used address and released it at ``times[n]``."""
    book = ledger(ips="10.0.0.10-10.0.0.30")
    ips = []
    for n, at in enumerate(times):
        ips.append(book.allocate(owner(n), now=at, cooldown=cooldown)[0])
        book.release(owner(n).key, now=at)
    return book, ips


def test_forgetting_history_takes_the_longest_released_first_and_only_what_has_rested() -> None:
    book, ips = churned([3.0, 1.0, 2.0, 50.0])
    size = book.status_bytes()
    freed = book.forget_rested(1, now=20.0, cooldown=10)  # a byte is wanted: the one released longest ago goes
    assert set(book.released) == {ips[0], ips[2], ips[3]}
    assert freed == size - book.status_bytes() > 0
    assert book.forget_rested(10**6, now=20.0, cooldown=10, at_least=1) > 0  # all that has rested, no more
    assert set(book.released) == {ips[3]}  # released at 50: still resting at 20


def test_history_that_cannot_make_the_room_asked_for_is_kept_whole() -> None:
    book, _ = churned([1.0, 2.0, 15.0])
    before = dict(book.released)
    assert book.forget_rested(10**6, now=20.0, cooldown=10) == 0  # two have rested, and they are not enough
    assert book.released == before
    assert book.forget_rested(10**6, now=10.5, cooldown=10, at_least=1) == 0  # nothing has rested yet
    assert book.released == before


@given(
    times=st.lists(st.integers(0, 40), min_size=1, max_size=12),
    now=st.integers(0, 60),
    cooldown=st.sampled_from([0, 10]),
    wanted=st.integers(1, 2000),
    at_least=st.none() | st.integers(1, 2000),
)
def test_forgetting_keeps_every_resting_address_and_drops_only_the_longest_rested(
    times: list[int], now: int, cooldown: int, wanted: int, at_least: int | None
) -> None:
    book, _ = churned([float(t) for t in times], cooldown=cooldown)
    before, size = dict(book.released), book.status_bytes()
    freed = book.forget_rested(wanted, now=now, cooldown=cooldown, at_least=at_least)
    gone = {ip: entry for ip, entry in before.items() if ip not in book.released}
    assert freed == size - book.status_bytes() - (1 if before and not book.released else 0)
    assert all(entry.at <= now - cooldown for entry in gone.values()), "an address still resting was forgotten"
    if not gone:
        assert freed == 0
        assert book.released == before
        return
    assert freed >= (wanted if at_least is None else at_least)
    kept_rested = [entry.at for entry in book.released.values() if entry.at <= now - cooldown]
    assert max(entry.at for entry in gone.values()) <= min(kept_rested, default=float("inf"))
