"""The mode of one invocation: auto, underlay and overlay, first invoke and the table of each NIC (§5.2)."""

from __future__ import annotations

from typing import Any

import pytest

from spider.coordinator.mode import ModeDecision, resolve_mode
from spider.coordinator.observed import Link, NsView
from spider.errors import InvalidNetConf


def links(*names: str, up: bool = True) -> tuple[Link, ...]:
    return tuple(Link(i + 2, name, f"02:00:00:00:00:{i + 2:02x}", up=up) for i, name in enumerate(names))


def view(*names: str, **kw: Any) -> NsView:
    return NsView(links=(Link(1, "lo", up=True, kind="loopback"), *links(*names)), **kw)


def test_auto_mode_tunes_the_first_nic_as_underlay() -> None:
    assert resolve_mode("auto", "eth0", "eth0", view("eth0")) == ModeDecision("underlay", True, 101)


def test_auto_mode_is_underlay_for_a_later_nic_when_veth0_exists_and_overlay_otherwise() -> None:
    assert resolve_mode("auto", "net1", "eth0", view("eth0", "veth0", "net1")).mode == "underlay"
    assert resolve_mode("auto", "net1", "eth0", view("eth0", "net1")).mode == "overlay"


def test_underlay_tables_count_the_links_of_the_pod() -> None:
    # veth0, eth0, net1, net2 up: net2 uses 4 + 98 = 102 (Spiderpool's numbering).
    decision = resolve_mode("underlay", "net2", "eth0", view("eth0", "veth0", "net1", "net2"))
    assert decision == ModeDecision("underlay", False, 102)


def test_underlay_for_a_later_nic_without_veth0_asks_for_the_coordinator_on_the_first() -> None:
    with pytest.raises(InvalidNetConf, match="enable the coordinator on that interface"):
        resolve_mode("underlay", "net1", "eth0", view("eth0", "net1"))


def test_overlay_mode_refuses_the_first_nic_and_a_pod_with_veth0() -> None:
    with pytest.raises(InvalidNetConf, match="first interface"):
        resolve_mode("overlay", "eth0", "eth0", view("eth0"))
    with pytest.raises(InvalidNetConf, match="underlay mode exists"):
        resolve_mode("overlay", "net1", "eth0", view("eth0", "veth0", "net1"))


def test_overlay_first_invoke_is_when_the_pod_has_two_nics() -> None:
    assert resolve_mode("overlay", "net1", "eth0", view("eth0", "net1")) == ModeDecision("overlay", True, 101)
    assert resolve_mode("overlay", "net2", "eth0", view("eth0", "net1", "net2")) == ModeDecision("overlay", False, 102)
