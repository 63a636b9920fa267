"""How one invocation works: the effective mode, whether it tunes the pod's first NIC, and its table.

Owns Spiderpool's coordinatorModeAndFirstInvoke (reference §5.2): ``auto`` becomes ``underlay`` for the first
NIC or when ``veth0`` exists and ``overlay`` otherwise; the policy table numbering that leaves table 100 to the
replies of ``veth0`` / ``eth0``; and which pod interface leads to the host (``ModeDecision.pod_veth``).
"""

from __future__ import annotations

from typing import Final

import attrs

from spider.coordinator.config import DEFAULT_FIRST_NIC
from spider.coordinator.observed import MAIN_TABLE, NsView
from spider.errors import InvalidNetConf

POD_VETH: Final = "veth0"
"""The pod side of the veth pair underlay mode adds to reach the host."""
POD_MARK_TABLE: Final = 100
"""The pod's table for replies to connections that came in through ``veth0`` (or the overlay's ``eth0``)."""


@attrs.frozen
class ModeDecision:
    """How this invocation works: the effective mode, whether it is the pod's first NIC, and its table."""

    mode: str
    first_invoke: bool
    table: int

    @property
    def pod_veth(self) -> str:
        """The pod side of the path to the host: our ``veth0`` (underlay) or the overlay CNI's ``eth0``."""
        return POD_VETH if self.mode == "underlay" else DEFAULT_FIRST_NIC


def resolve_mode(mode: str, ifname: str, first_nic: str, pod: NsView) -> ModeDecision:
    """Spiderpool's coordinatorModeAndFirstInvoke (§5.2); ``InvalidNetConf`` for a mode that cannot work here."""
    veth_exists = pod.link(POD_VETH) is not None
    links = len(pod.up_links())
    if mode == "auto":
        mode = "underlay" if ifname == first_nic or veth_exists else "overlay"
    if mode == "underlay":
        first = ifname == first_nic
        if not first and not veth_exists:
            raise InvalidNetConf(
                reason=f"when creating interface {ifname} in underlay mode, the auxiliary interface {POD_VETH} was not "
                f"created by the previous interface {first_nic}: enable the coordinator on that interface too"
            )
        # Table 100 stays for eth0's replies; the first NIC uses 101, later ones count the links (veth0, eth0,
        # net1, net2: 4 + 98 = 102 for net2).
        return ModeDecision("underlay", first, POD_MARK_TABLE + 1 if first else links + 98)
    if mode == "overlay":
        if ifname == first_nic:
            raise InvalidNetConf(
                reason=f"interface {ifname} is the pod's first interface, which overlay mode does not tune; "
                "use underlay or auto mode for it"
            )
        if veth_exists:
            raise InvalidNetConf(
                reason=f"interface {POD_VETH} of underlay mode exists in the pod, so the previous interface works "
                f"in underlay mode; overlay mode cannot tune {ifname}"
            )
        first = links == 2
        return ModeDecision("overlay", first, POD_MARK_TABLE + 1 if first else 99 + links)
    if mode == "disable":
        return ModeDecision("disable", False, MAIN_TABLE)
    raise InvalidNetConf(reason=f"unknown tuneMode: {mode}")
