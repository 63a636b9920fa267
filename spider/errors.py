"""Every error this service raises on purpose, and the CNI error code each one maps to.

Owns the error taxonomy (DESIGN §5.6): permanent allocation failures (CNI 100+), transient failures (11),
bad configuration (7), undecodable input (6), bad environment (4) and unsupported versions (1).  The CNI layer
maps errors by type through ``cni_code``, never by parsing messages.  Anything that is not a ``SpiderError``
is a bug and is allowed to crash the process.
"""

from __future__ import annotations

from typing import ClassVar

import attrs

# CNI spec error codes (SPEC.md "Error codes") and ours (100+).
CNI_INCOMPATIBLE_VERSION = 1
CNI_UNSUPPORTED_FIELD = 2
CNI_UNKNOWN_CONTAINER = 3
CNI_INVALID_ENV = 4
CNI_IO_FAILURE = 5
CNI_DECODE_FAILURE = 6
CNI_INVALID_CONFIG = 7
CNI_TRY_AGAIN_LATER = 11
CNI_NOT_AVAILABLE = 50
CNI_POOL_EXHAUSTED = 100
CNI_NO_POOL = 101
CNI_INVALID_INPUT = 102
CNI_POD_NOT_ALIVE = 103
CNI_CHECK_FAILED = 104


class SpiderError(Exception):
    """Root of every error this service raises on purpose."""

    cni_code: ClassVar[int] = 999


class AllocationError(SpiderError):
    """This request cannot be satisfied; retrying it unchanged will not help (CNI 100+)."""

    cni_code = CNI_NO_POOL


class TransientError(SpiderError):
    """Retrying the same request later may succeed (CNI code 11)."""

    cni_code = CNI_TRY_AGAIN_LATER


class ConfigError(SpiderError):
    """A CNI network configuration or an object's spec is invalid (CNI code 7)."""

    cni_code = CNI_INVALID_CONFIG


@attrs.define(auto_exc=True, kw_only=True)
class InvalidSpec(ConfigError):
    """An object (pool, reserved IP, ...) does not describe anything we can use."""

    kind: str
    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r} is invalid: {self.reason}"


@attrs.define(auto_exc=True, kw_only=True)
class InvalidNetConf(ConfigError):
    """The CNI network configuration on stdin is wrong."""

    reason: str

    def __str__(self) -> str:
        return f"invalid network configuration: {self.reason}"


@attrs.define(auto_exc=True, kw_only=True)
class DecodeFailure(SpiderError):
    """Input that is not the JSON it should be (CNI code 6)."""

    cni_code = CNI_DECODE_FAILURE
    what: str
    reason: str

    def __str__(self) -> str:
        return f"cannot decode {self.what}: {self.reason}"


@attrs.define(auto_exc=True, kw_only=True)
class InvalidEnvironment(SpiderError):
    """A required CNI_* variable is missing or malformed (CNI code 4)."""

    cni_code = CNI_INVALID_ENV
    variable: str
    reason: str

    def __str__(self) -> str:
        return f"environment variable {self.variable} {self.reason}"


@attrs.define(auto_exc=True, kw_only=True)
class IncompatibleVersion(SpiderError):
    """The requested CNI spec version or verb is not one we speak (CNI code 1)."""

    cni_code = CNI_INCOMPATIBLE_VERSION
    version: str
    supported: tuple[str, ...]
    command: str = ""

    def __str__(self) -> str:
        if self.command:
            return f"CNI_COMMAND {self.command} is not defined in spec version {self.version!r}"
        return f"unsupported CNI version {self.version!r} (supported: {', '.join(self.supported)})"


@attrs.define(auto_exc=True, kw_only=True)
class PoolTooLarge(AllocationError):
    """A pool's status would outgrow what its store can hold (an API server's etcd refuses objects over 1.5 MiB)."""

    cni_code = CNI_POOL_EXHAUSTED
    pool: str
    records: int
    limit: int
    """``--max-pool-status-bytes``: the most ``allocatedIPs`` plus ``releasedIPs`` may take, in bytes."""

    def __str__(self) -> str:
        return (
            f"pool {self.pool!r} is too large for its store: {self.records} records and one more would pass the "
            f"status limit of {self.limit} bytes; split its addresses over several pools (a SpiderSubnet)"
        )


@attrs.define(auto_exc=True, kw_only=True)
class PoolExhausted(AllocationError):
    """No free address is left in a pool."""

    cni_code = CNI_POOL_EXHAUSTED
    pool: str
    capacity: int
    cooling: int = 0
    """Free addresses that are still in their release cooldown."""

    def __str__(self) -> str:
        if self.cooling:
            return (
                f"pool {self.pool!r} is exhausted: the {self.cooling} free addresses are all still cooling down "
                f"after release (capacity {self.capacity})"
            )
        return f"pool {self.pool!r} is exhausted: all IP addresses used out (capacity {self.capacity})"


@attrs.define(auto_exc=True, kw_only=True)
class NoAvailablePool(AllocationError):
    """No pool can serve this interface and family; ``reason`` says why, per pool where it can."""

    nic: str
    version: int
    reason: str

    def __str__(self) -> str:
        return f"no IPv{self.version} pool available for interface {self.nic!r}: {self.reason}"


@attrs.define(auto_exc=True, kw_only=True)
class PoolNotFound(AllocationError):
    """A pool named by the pod, its namespace or the CNI config does not exist."""

    pool: str

    def __str__(self) -> str:
        return f"pool {self.pool!r} does not exist"


@attrs.define(auto_exc=True, kw_only=True)
class InvalidInput(AllocationError):
    """A request (API call, annotation) is malformed in a way the caller must fix."""

    cni_code = CNI_INVALID_INPUT
    reason: str

    def __str__(self) -> str:
        return f"wrong input: {self.reason}"


@attrs.define(auto_exc=True, kw_only=True)
class MalformedRequest(InvalidInput):
    """A request to the agent's API is not what its schema says: not JSON, nested too deep, a field missing,
    of the wrong type or over its bound (``spider.limits``).  The API answers it with HTTP 400."""


@attrs.define(auto_exc=True, kw_only=True)
class ConflictReleaseForbidden(AllocationError):
    """``DELETE /v1/ipam/ips`` with ``isReleaseConflictIPs`` that may not release, as in Spiderpool: the agent's
    switch is off (``SPIDERPOOL_ENABLED_RELEASE_CONFLICT_IPS=false``: HTTP 521), or the pod is a StatefulSet's or
    a KubeVirt VM's, whose addresses are fixed (HTTP 522).  Nothing is released."""

    cni_code = CNI_INVALID_INPUT
    pod: str
    stateful: bool

    @property
    def http_status(self) -> int:
        return 522 if self.stateful else 521

    def __str__(self) -> str:
        if self.stateful:
            return f"pod {self.pod}: the conflicting addresses of a StatefulSet or KubeVirt pod are not released"
        return f"pod {self.pod}: releasing conflicting addresses is off (SPIDERPOOL_ENABLED_RELEASE_CONFLICT_IPS)"


@attrs.define(auto_exc=True, kw_only=True)
class PodNotAlive(AllocationError):
    """The pod is terminating or finished; it gets no new address."""

    cni_code = CNI_POD_NOT_ALIVE
    pod: str
    reason: str

    def __str__(self) -> str:
        return f"pod {self.pod!r} is not alive ({self.reason}); no address is allocated to it"


@attrs.define(auto_exc=True, kw_only=True)
class CheckFailed(SpiderError):
    """CNI CHECK found the container's addresses differ from what the store holds."""

    cni_code = CNI_CHECK_FAILED
    reason: str

    def __str__(self) -> str:
        return f"check failed: {self.reason}"


@attrs.define(auto_exc=True, kw_only=True)
class StaleWrite(TransientError):
    """A write lost an optimistic-concurrency race (resourceVersion conflict) and its retries ran out."""

    kind: str
    name: str
    sent_version: str

    def __str__(self) -> str:
        return (
            f"{self.kind} {self.name!r}: write based on resourceVersion {self.sent_version} "
            "kept losing races to other writers; retry"
        )


@attrs.define(auto_exc=True, kw_only=True)
class AddAbandoned(TransientError):
    """An ADD gave back what it took instead of answering: an address is no longer recorded as the pod's, or the
    ADD outlasted ``spider.pool.ADD_WINDOW`` (after which reclaim may free its records)."""

    pod: str
    reason: str

    def __str__(self) -> str:
        return f"the ADD of pod {self.pod!r} gave back its addresses instead of answering them: {self.reason}; retry"


@attrs.define(auto_exc=True, kw_only=True)
class RequestExpired(TransientError):
    """A request reached its pool's actor only after its sender had stopped waiting for it (a batch forwarded to
    the pool host and kept there past the agent's budget): it was not applied, the sender serves it itself."""

    pool: str

    def __str__(self) -> str:
        return f"pool {self.pool!r}: the request's sender stopped waiting before it could be applied; nothing changed"


@attrs.define(auto_exc=True, kw_only=True)
class AutoPoolNotReady(TransientError):
    """A pod's auto-created pool (SpiderSubnet) did not appear with its desired size within the agent's wait:
    the controller may still be making or resizing it, so a later ADD may succeed."""

    selector: str
    reason: str

    def __str__(self) -> str:
        return f"no matching auto-created IPPool candidate with matchLabels {self.selector!r}: {self.reason}; retry"


@attrs.define(auto_exc=True, kw_only=True)
class ActorUnavailable(TransientError):
    """The actor that owned a request stopped before answering."""

    actor: str

    def __str__(self) -> str:
        return f"{self.actor} stopped before answering; retry"


@attrs.define(auto_exc=True, kw_only=True)
class StoreUnavailable(TransientError):
    """The store (SQLite file or API server) did not answer in time."""

    reason: str

    def __str__(self) -> str:
        return f"store unavailable: {self.reason}"


@attrs.define(auto_exc=True, kw_only=True)
class AgentUnavailable(TransientError):
    """The node's agent is not serving (STATUS reports it with CNI code 50)."""

    cni_code = CNI_NOT_AVAILABLE
    reason: str

    def __str__(self) -> str:
        return f"spider agent not available: {self.reason}"


@attrs.define(auto_exc=True, kw_only=True)
class SocketUnusable(ConfigError):
    """The agent cannot serve on its socket path: another agent answers there, or the path is no socket."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"cannot serve on {self.path}: {self.reason}"
