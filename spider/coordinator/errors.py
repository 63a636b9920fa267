"""The coordinator's own failures, each with the CNI code Spiderpool's coordinator reports for it.

Owns: no Synced SpiderCoordinator yet (transient), an address another host answers for (105), a silent
gateway (106), a pod namespace that is gone (3) and a netlink change the kernel refused (5).
"""

from __future__ import annotations

from typing import Final

import attrs

from spider.errors import CNI_IO_FAILURE, CNI_UNKNOWN_CONTAINER, AllocationError, SpiderError, TransientError

CNI_ADDRESS_CONFLICT: Final = 105
CNI_GATEWAY_UNREACHABLE: Final = 106


@attrs.define(auto_exc=True, kw_only=True)
class CoordinatorNotReady(TransientError):
    """No SpiderCoordinator, or none Synced yet: the controller has not published the cluster's CIDRs."""

    reason: str

    def __str__(self) -> str:
        return self.reason


@attrs.define(auto_exc=True, kw_only=True)
class AddressConflict(AllocationError):
    """Another host already answers for the address the pod was given (its allocation is released)."""

    cni_code = CNI_ADDRESS_CONFLICT
    interface: str
    ip: str
    mac: str

    def __str__(self) -> str:
        return f"interface {self.interface!r} got {self.ip}, but {self.ip} is already in use by {self.mac}"


@attrs.define(auto_exc=True, kw_only=True)
class GatewayUnreachable(AllocationError):
    """The pod's gateway did not answer ARP or neighbour solicitation in time (its allocation is released)."""

    cni_code = CNI_GATEWAY_UNREACHABLE
    interface: str
    gateway: str
    waited: float

    def __str__(self) -> str:
        return (
            f"gateway {self.gateway} is unreachable from interface {self.interface!r} (no answer in {self.waited:g} s)"
        )


@attrs.define(auto_exc=True, kw_only=True)
class NamespaceGone(SpiderError):
    """The pod's network namespace does not exist (CNI code 3, unknown container)."""

    cni_code = CNI_UNKNOWN_CONTAINER
    netns: str

    def __str__(self) -> str:
        return f"network namespace {self.netns!r} does not exist"


@attrs.define(auto_exc=True, kw_only=True)
class InterfaceSetupFailed(SpiderError):
    """The kernel refused a netlink change (CNI code 5, I/O failure); the whole transaction stops there."""

    cni_code = CNI_IO_FAILURE
    action: str
    reason: str

    def __str__(self) -> str:
        return f"{self.action} failed: {self.reason}"
