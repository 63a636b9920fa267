"""The coordinator's own failures map to the CNI codes Spiderpool reports."""

from __future__ import annotations

import pytest

from spider.coordinator.errors import (
    AddressConflict,
    CoordinatorNotReady,
    GatewayUnreachable,
    InterfaceSetupFailed,
    NamespaceGone,
)
from spider.errors import SpiderError


def test_an_interface_failure_is_a_cni_io_failure() -> None:
    assert InterfaceSetupFailed(action="x", reason="y").cni_code == 5


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (AddressConflict(interface="eth0", ip="10.6.0.20", mac="02:00:00:00:00:01"), 105),
        (GatewayUnreachable(interface="eth0", gateway="10.6.0.1", waited=0.3), 106),
        (NamespaceGone(netns="/var/run/netns/gone"), 3),
        (CoordinatorNotReady(reason="coordinator config not found"), 11),
    ],
)
def test_each_failure_carries_the_code_spiderpool_reports_for_it(error: SpiderError, code: int) -> None:
    assert error.cni_code == code
