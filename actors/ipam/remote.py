"""Forwarding pool requests to the pool host (the controller's leader), and falling back to local actors.

Owns the agent's side of "one writer per pool across the cluster" (docs/architecture.md, "The pool host"):

- ``PoolForwarder``: the route a ``PoolRegistry`` hands every request to when the store is the API server.
  Requests that write (``Allocate``, ``Release``, ``ReleaseIPs``, ``Adopt``) are queued per pool; one task per
  pool sends everything queued in ONE HTTPS request to the host (as ``drain`` does for an actor's mailbox),
  naming this node (``sender``: the host's actor waits for the nodes it has lately heard from), whose
  PoolActor folds the requests of every node into one status write, and resolves each request's reply with the
  host's answer (a value, or the same ``SpiderError`` type with the same CNI code).  An ADD's last look
  (``Verify``) goes the same way: the host answers the looks of every node with one read of the pool's
  version, or with the status write it makes anyway, where each agent alone would read the pool once per ADD.
  ``Inspect`` stays with the local actor (a snapshot of a big ledger is not worth a round trip).
- ``HostLocator``: where the host is.  It reads the Lease ``spiderpool-controller-leases`` (its holder names the
  controller Pod, whose ``status.podIP`` and ``--pool-host-port`` give the address) and the ConfigMap
  ``spiderpool-ca`` (the CA that signed the host's certificate), every ``refresh`` seconds and at once after
  the host refused or failed.  A GET of one Lease, not a watch: a watch cannot be narrowed to one name through
  the store port, and the namespace's other Leases renew every two seconds.
- ``HostClient``: HTTPS (the CA above, the Pod IP checked against the certificate's IP SAN) with the agent's
  ServiceAccount token (re-read when the file changes), keep-alive connections.
- the wire format (``encode_message``/``decode_message``, ``encode_outcome``/``decode_outcome``), shared with
  the server side (``actors.servers.pool_host``).

Mixed versions.  A host that refuses a call of looks alone as malformed (400: an older host knows no
``verify``) is still sent the writes; only its looks are served here, as before looks were forwarded.

The fallback.  When the host is unknown, refuses (not leading: 421; 401/403; any other answer that is not 200),
or does not answer within ``budget`` seconds (connect and answer), the batch is handed to the agent's own local
PoolActor, which writes optimistically as before; the host is tried again after a backoff (doubling to
``MAX_BACKOFF``; at once after a new Lease holder appears).  The host is never needed for safety: its PoolActor
is the same optimistic one, every write it makes carries the resourceVersion it read, and a new leader starts
by reading.  A dead leader, a partition, or two controllers that both believe they lead cost time, never an
address.

At-most-once, or why a batch that timed out may be re-run locally.  When the host does not answer in time we do
not know whether it applied the batch, and it may still apply it after we gave up.  Re-running the same
requests locally is safe because each is idempotent on the stored pool:
- ``Allocate`` is keyed by its owner (pod UID, interface): ``PoolLedger.allocate`` returns the address the
  owner already holds.  Whichever of the two writes lands first, the other one conflicts (both carry the
  resourceVersion they read), re-reads, finds the owner's record and answers that same address without a new
  one.  So the owner ends with one address, and the plugin is answered with it.  (The local answer may then
  say ``fresh=False``: an undo of that ADD leaves the address to the DEL or GC, a leak at worst, never a
  duplicate.)
- ``Release`` and ``ReleaseIPs`` free only what still matches; run twice, the second frees nothing.
- ``Adopt`` hands an address to an owner that, once it holds it, holds it again.
The one order that matters is a late host write after a *later* request of ours (the pod's DEL after the
fallback ADD, or the ADD's next pool after the fallback found this one full), and two limits keep it from
happening.  Each batch says ``within``, what is left of half our ``budget`` once the connection is up (with
nothing left it is not sent but served here): the host folds none of its requests after that many seconds from
the batch's arrival (taken before its TokenReview), however long it waited for that review or in the actor's
mailbox (``RequestExpired``, not applied), so a request is folded, and its write sent, only before we give up.
And such a write carries the resourceVersion it read: when our later write lands first, the host's conflicts;
it re-reads within its conflict budget (``--pool-host-conflict-budget``, by default half our ``budget``) and
folds again, which the ``within`` limit refuses by then, so the batch ends with ``RequestExpired`` or
``StaleWrite`` instead of applying anything.
"""

from __future__ import annotations

import json
import logging
import math
import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import h11
import outcome
import trio

from actors.ipam.pool import (
    Adopt,
    Allocate,
    Allocation,
    Inspect,
    PoolMsg,
    PoolRegistry,
    Release,
    ReleaseIPs,
    Verify,
)
from actors.runtime.mailbox import Reply
from actors.stores.port import NotFound, Store
from spider import limits
from spider.addr import IPSet
from spider.errors import ActorUnavailable, RequestExpired, SpiderError, TransientError
from spider.limits import MAX_CONTAINER_ID, MAX_NAME, MAX_UID
from spider.pool import Owner, Record, Route

log = logging.getLogger(__name__)

DEFAULT_POOL_HOST_PORT = 5723
"""The controller's pool-host port (HTTPS), next to health (5720) and the webhook (5722)."""
DEFAULT_LEASE = "spiderpool-controller-leases"
"""The Lease the controllers elect their leader with; its holder hosts the pools."""
DEFAULT_CA_CONFIGMAP = "spiderpool-ca"
"""The ConfigMap (in the controller's namespace) holding ``ca.crt``: the CA the pool host's certificate is from."""
DEFAULT_AGENT_ACCOUNT = "spiderpool-agent"
"""The agents' ServiceAccount: the only one the pool host serves."""
DEFAULT_TOKEN_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
"""The agent's projected ServiceAccount token, which kubelet rotates on disk."""
DEFAULT_BUDGET = 2.0
"""Seconds a forwarded batch may take (connect and answer) before the agent serves it locally."""
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 30.0
"""Seconds the agent serves locally after the host failed, doubling from ``FIRST_BACKOFF`` to this."""
MAX_FORWARD_BATCH = 256
"""Most requests in one forwarded call (the host actor's own batch limit)."""
BATCH_PATH = "/v1/pools/"
"""``POST /v1/pools/<name>`` on the host: a batch of requests for one pool."""
NOT_LEADING = 421
"""The host's answer when it does not lead (HTTP 421 Misdirected Request): ask the Lease again."""
MAX_ADDRESS_TEXT = 64
"""Characters of an address as sent (an IPv6 address in full is 45)."""
MAX_ANSWER = 16 * 1024 * 1024


# --- the wire format -------------------------------------------------------------------------------------


def _owner_json(owner: Owner) -> dict[str, Any]:
    return attrs.asdict(owner)


_OWNER_BOUNDS = {
    "pod_uid": MAX_UID,
    "nic": MAX_NAME,
    "namespace": MAX_NAME,
    "name": MAX_NAME,
    "container_id": MAX_CONTAINER_ID,
    "node": MAX_NAME,
}
"""The longest each of an owner's strings may be: what goes into a pool record must be bounded (DESIGN §4)."""


def _owner(raw: Any) -> Owner:
    """An owner as sent: every field a bounded string, ``added_at`` a number of seconds or absent."""
    if not isinstance(raw, dict):
        raise ValueError("an owner must be an object")
    fields = {}
    for name, bound in _OWNER_BOUNDS.items():
        value = raw[name]
        if not isinstance(value, str) or len(value) > bound:
            raise ValueError(f"owner {name} must be a string of at most {bound} characters")
        fields[name] = value
    added_at = raw.get("added_at")
    if added_at is not None and not (_is_number(added_at) and math.isfinite(added_at)):
        raise ValueError("owner added_at must be a number of seconds")
    return Owner(**fields, added_at=added_at)


def _address(raw: Any) -> str:
    """An address as sent: bounded text.  Whether it names one of the pool's addresses is the pool's to say
    (``PoolLedger.parse``): text that cannot is held by nobody there, so an endpoint edited into nonsense costs
    its own request, not the batch it shares with other pods' requests."""
    if not isinstance(raw, str) or len(raw) > MAX_ADDRESS_TEXT:
        raise ValueError(f"an address must be a string of at most {MAX_ADDRESS_TEXT} characters")
    return raw


def _avoided(raw: Any) -> IPSet | None:
    """The addresses an allocation must not take, as sent: a family and inclusive integer ranges within it."""
    if raw is None:
        return None
    version = raw["version"]
    if type(version) is not int or version not in (4, 6):
        raise ValueError("avoid version must be 4 or 6")
    top = 1 << (32 if version == 4 else 128)
    ranges = []
    for first, last in raw["ranges"]:
        if not (type(first) is int and type(last) is int and 0 <= first <= last < top):
            raise ValueError(f"avoid range {first!r}-{last!r} is not within IPv{version}")
        ranges.append((first, last))
    return IPSet(version, tuple(ranges))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def encode_message(msg: PoolMsg) -> dict[str, Any]:
    """A request that writes, or a look, as JSON (``Inspect`` is never forwarded)."""
    match msg:
        case Allocate(owner=owner, avoid=avoid):
            ranges = None if avoid is None else {"version": avoid.version, "ranges": [list(r) for r in avoid.ranges]}
            return {"op": "allocate", "owner": _owner_json(owner), "avoid": ranges}
        case Release(key=key, container_id=container_id):
            return {"op": "release", "key": list(key), "containerID": container_id}
        case ReleaseIPs(ips=ips):
            return {
                "op": "releaseIPs",
                "ips": [
                    [ip, holder if isinstance(holder, str) else {"record": attrs.asdict(holder)}] for ip, holder in ips
                ],
            }
        case Adopt(ip=ip, previous_uid=previous_uid, owner=owner):
            return {"op": "adopt", "ip": ip, "previousUid": previous_uid, "owner": _owner_json(owner)}
        case Verify(ip=ip, key=key, recorded_at=recorded_at):
            return {"op": "verify", "ip": ip, "key": list(key), "recordedAt": recorded_at}
    raise ValueError(f"{type(msg).__name__} is not forwarded")


def decode_message(raw: Any, sender: str = "", expires: float | None = None) -> PoolMsg:
    """A request from its JSON, with a fresh reply slot, from node ``sender``, applied only until ``expires``
    (trio time; a look has no such limit); ``ValueError`` (and friends: ``KeyError``, ``TypeError``) for a
    malformed one.  What a request would store (its owner) is checked for type and size here, so no batch can
    write a record other readers cannot parse."""
    if not isinstance(raw, dict):
        raise ValueError("a message must be an object")
    op = raw.get("op")
    if op == "allocate":
        avoid = _avoided(raw.get("avoid"))
        return Allocate(_owner(raw["owner"]), Reply[Allocation].open(), avoid, sender=sender, expires=expires)
    if op == "release":
        uid, nic = raw["key"]
        reply: Reply[str | None] = Reply.open()
        return Release((str(uid), str(nic)), str(raw["containerID"]), reply, sender=sender, expires=expires)
    if op == "releaseIPs":
        ips: list[tuple[str, str | Record]] = []
        for ip, holder in raw["ips"]:
            ips.append((_address(ip), str(holder) if isinstance(holder, str) else Record(**holder["record"])))
        return ReleaseIPs(tuple(ips), Reply[int].open(), sender=sender, expires=expires)
    if op == "adopt":
        previous, new_owner = str(raw["previousUid"]), _owner(raw["owner"])
        return Adopt(_address(raw["ip"]), previous, new_owner, Reply[bool].open(), sender=sender, expires=expires)
    if op == "verify":
        uid, nic = raw["key"]
        key = (str(uid), str(nic))
        return Verify(_address(raw["ip"]), key, Reply[bool].open(), str(raw.get("recordedAt") or ""), sender=sender)
    raise ValueError(f"unknown op {op!r}")


def _error_classes() -> dict[str, type[SpiderError]]:
    found: dict[str, type[SpiderError]] = {}
    todo: list[type[SpiderError]] = [SpiderError]
    while todo:
        cls = todo.pop()
        found.setdefault(cls.__name__, cls)
        todo.extend(cls.__subclasses__())
    return found


@attrs.define(auto_exc=True, kw_only=True)
class HostFailed(TransientError):
    """The host answered with an error this agent does not know by type (another version); CNI 11."""

    reason: str

    def __str__(self) -> str:
        return f"pool host: {self.reason}"


def encode_outcome(result: outcome.Outcome[Any]) -> dict[str, Any]:
    """A reply as JSON: ``{"value": ...}`` or ``{"error": {"type", "fields", "message", "cniCode"}}``."""
    if isinstance(result, outcome.Error):
        exc = result.error
        if not isinstance(exc, SpiderError):
            raise exc  # a bug on the host: not something to answer with
        fields = attrs.asdict(exc) if attrs.has(type(exc)) else {}  # type: ignore[arg-type]
        try:
            json.dumps(fields)
        except (TypeError, ValueError):
            fields = {}
        return {"error": {"type": type(exc).__name__, "fields": fields, "message": str(exc), "cniCode": exc.cni_code}}
    value = result.unwrap()
    if isinstance(value, Allocation):
        value = attrs.asdict(value)
    return {"value": value}


_ALLOCATION_FIELDS = frozenset(attrs.fields_dict(Allocation))


def decode_outcome(msg: PoolMsg, raw: Any) -> outcome.Outcome[Any]:
    """The reply for ``msg`` from its JSON; an error comes back as the same ``SpiderError`` type when known."""
    if "error" in raw:
        err = raw["error"]
        cls = _error_classes().get(str(err.get("type")))
        if cls is not None:
            try:
                return outcome.Error(cls(**(err.get("fields") or {})))
            except TypeError:
                pass
        return outcome.Error(HostFailed(reason=f"{err.get('type')}: {err.get('message')}"))
    value = raw["value"]
    if isinstance(msg, Allocate):  # NB: fields this version does not know (a newer host's) are left out
        routes = tuple(Route(r["dst"], r["gw"]) for r in value["routes"])
        known = {k: v for k, v in value.items() if k in _ALLOCATION_FIELDS}
        return outcome.Value(attrs.evolve(Allocation(**{**known, "routes": ()}), routes=routes))
    return outcome.Value(value)


# --- finding the host ------------------------------------------------------------------------------------


@attrs.frozen
class HostAddress:
    """Where the pool host listens, and the CA bundle (PEM) to trust it with."""

    host: str
    port: int
    ca: bytes = attrs.field(repr=False)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting only ``ca``, checking the host's IP against the certificate."""
        context = ssl.create_default_context(cadata=self.ca.decode())
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


@attrs.define(eq=False)
class HostLocator:
    """Keeps ``current``: the pool host as the Lease, the holder's Pod and the CA ConfigMap say (``None``:
    unknown).  Run it with ``nursery.start(locator.run)``; ``poke`` asks for a fresh look at once."""

    store: Store
    namespace: str
    port: int = DEFAULT_POOL_HOST_PORT
    lease: str = DEFAULT_LEASE
    ca_configmap: str = DEFAULT_CA_CONFIGMAP
    refresh: float = 5.0
    """Seconds between looks at the Lease while nothing goes wrong."""
    fixed: tuple[str, int] | None = None
    """An address to use instead of the Lease holder's Pod (``--pool-host HOST:PORT``: a controller outside the
    cluster, the load test); the CA still comes from the ConfigMap."""
    current: HostAddress | None = None
    holder: str | None = None
    """The Lease's holderIdentity at the last look."""
    looks: int = 0
    _poked: trio.Event = attrs.field(factory=trio.Event)
    _contexts: dict[bytes, ssl.SSLContext] = attrs.field(factory=dict)

    def poke(self) -> None:
        """Look again now (the host refused or failed)."""
        self._poked.set()

    def ssl_context(self, address: HostAddress) -> ssl.SSLContext:
        """The client context for ``address`` (one per CA bundle)."""
        context = self._contexts.get(address.ca)
        if context is None:
            self._contexts.clear()
            context = self._contexts[address.ca] = address.ssl_context()
        return context

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Look every ``refresh`` seconds (or when poked), until cancelled."""
        task_status.started()
        while True:
            try:
                await self.look()
            except SpiderError as exc:  # the store is down: keep what we knew; the host may still answer
                log.debug("pool host not looked up: %s", exc)
            except (ssl.SSLError, ValueError) as exc:
                log.warning("pool host CA in ConfigMap %s/%s unusable: %s", self.namespace, self.ca_configmap, exc)
                self.current = None
            self._poked = trio.Event()
            with trio.move_on_after(self.refresh):
                await self._poked.wait()
            await trio.sleep(0.2)  # NB: pokes come in bursts (every failed batch): one look per burst

    async def look(self) -> HostAddress | None:
        """Read the Lease, the holder's Pod and the CA; ``current`` is what they say."""
        self.looks += 1
        if self.fixed is not None:
            return await self._located(*self.fixed, holder=f"{self.fixed[0]}:{self.fixed[1]}")
        try:
            lease = await self.store.get("Lease", self.lease, self.namespace)
        except NotFound:
            self.current = self.holder = None
            return None
        holder = str((lease.get("spec") or {}).get("holderIdentity") or "")
        if holder != self.holder:
            log.info("pool host: the Lease %s/%s names %r", self.namespace, self.lease, holder or None)
        self.holder = holder or None
        if not holder:
            self.current = None
            return None
        pod = holder.rsplit("_", 1)[0] if "_" in holder else holder  # NB: the identity is <pod name>_<random>
        try:
            ip = str(((await self.store.get("Pod", pod, self.namespace)).get("status") or {}).get("podIP") or "")
        except NotFound as exc:
            log.debug("pool host unknown: %s", exc)
            ip = ""
        return await self._located(ip, self.port, holder=holder)

    async def _located(self, ip: str, port: int, *, holder: str) -> HostAddress | None:
        """``current`` for a host at ``ip``:``port`` (nothing without an IP or a CA)."""
        self.holder = holder
        try:
            configmap = await self.store.get("ConfigMap", self.ca_configmap, self.namespace)
        except NotFound as exc:
            log.debug("pool host not trusted yet: %s", exc)
            configmap = {}
        ca = str((configmap.get("data") or {}).get("ca.crt") or "")
        if not ip or not ca:
            self.current = None
            return None
        address = HostAddress(ip, port, ca.encode())
        self.ssl_context(address)  # NB: a CA that does not load fails here, not in every request
        self.current = address
        return address


# --- the client ------------------------------------------------------------------------------------------


@attrs.define(eq=False)
class ServiceAccountToken:
    """The agent's token, read again whenever the file changes (kubelet rotates projected tokens)."""

    path: Path = DEFAULT_TOKEN_FILE
    _stamp: tuple[float, int] | None = None
    _token: str | None = None

    def read(self) -> str | None:
        """The token, or ``None`` when there is no file (out of a cluster: nothing is forwarded)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        stamp = (st.st_mtime, st.st_size)
        if stamp != self._stamp:
            try:
                self._token = self.path.read_text().strip() or None
            except OSError:
                return None
            self._stamp = stamp
        return self._token


class HostRefused(Exception):
    """The host answered, but not with results (its HTTP status and reason)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status


class _Unanswered(trio.BrokenResourceError):
    """The connection failed before the host answered a byte (on a kept-alive one: the host had closed it)."""


@attrs.define(eq=False)
class HostClient:
    """HTTPS requests to the pool host over kept-alive connections (at most ``keep`` idle ones)."""

    keep: int = 8
    _idle: list[tuple[HostAddress, trio.SSLStream[trio.SocketStream]]] = attrs.field(factory=list)

    async def post(
        self, address: HostAddress, context: ssl.SSLContext, path: str, body: Callable[[], bytes], token: str
    ) -> bytes:
        """The answer body of a 200; ``HostRefused`` for another status, ``OSError``/``trio`` errors when the
        connection fails.  ``body()`` is called once the connection is up (its TLS handshake done), so that
        what the body says about time is said as late as it can be.  Cancel it to give up (the connection is
        then dropped).

        A kept-alive connection the host closed meanwhile (it drops idle ones after its read timeout) fails
        before a byte of answer: the request is then sent once more on a fresh connection, and the other idle
        connections to that host, as old, are dropped."""
        stream = self._take(address)
        kept = stream is not None
        if stream is None:
            stream = await trio.open_ssl_over_tcp_stream(address.host, address.port, ssl_context=context)
        try:
            await stream.do_handshake()  # NB: at once on a kept-alive connection
            status, reason, data, reusable = await self._exchange(stream, address, path, body(), token)
        except _Unanswered:
            await trio.aclose_forcefully(stream)
            if not kept:
                raise
            await self._drop_idle(address)
            return await self.post(address, context, path, body, token)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        if reusable and len(self._idle) < self.keep:
            self._idle.append((address, stream))
        else:
            await trio.aclose_forcefully(stream)
        if status != 200:
            raise HostRefused(status, reason)
        return data

    async def _drop_idle(self, address: HostAddress) -> None:
        idle = [stream for where, stream in self._idle if where == address]
        self._idle = [(where, stream) for where, stream in self._idle if where != address]
        for stream in idle:
            await trio.aclose_forcefully(stream)

    def _take(self, address: HostAddress) -> trio.SSLStream[trio.SocketStream] | None:
        for i, (where, stream) in enumerate(self._idle):
            if where == address:
                del self._idle[i]
                return stream
        return None

    @staticmethod
    async def _exchange(
        stream: trio.SSLStream[trio.SocketStream], address: HostAddress, path: str, body: bytes, token: str
    ) -> tuple[int, str, bytes, bool]:
        conn = h11.Connection(h11.CLIENT)
        headers = [
            ("Host", f"{address.host}:{address.port}"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
        ]
        if token:
            headers.append(("Authorization", f"Bearer {token}"))
        data = conn.send(h11.Request(method="POST", target=path, headers=headers))
        data += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, OSError) as exc:
            raise _Unanswered(f"the host closed the connection ({exc})") from exc
        status, answer, heard = 0, bytearray(), False
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    chunk = await stream.receive_some(65536)
                except (trio.BrokenResourceError, OSError) as exc:
                    if heard:
                        raise
                    raise _Unanswered(f"the host closed the connection ({exc})") from exc
                if not chunk:
                    raise (trio.BrokenResourceError if heard else _Unanswered)("the host closed the connection")
                heard = True
                conn.receive_data(bytes(chunk))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                answer += event.data
                if len(answer) > MAX_ANSWER:
                    raise trio.BrokenResourceError("the host's answer is too large")
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise trio.BrokenResourceError("the host closed the connection")
        reusable = conn.our_state is h11.DONE and conn.their_state is h11.DONE
        if status == 200:
            return status, "", bytes(answer), reusable
        try:
            reason = limits.preview(str(limits.loads(bytes(answer))), 200)
        except ValueError:
            reason = answer[:200].decode(errors="replace")
        return status, reason, b"", reusable

    async def aclose(self) -> None:
        """Close the idle connections."""
        idle, self._idle = self._idle, []
        for _, stream in idle:
            await trio.aclose_forcefully(stream)


# --- the forwarder ---------------------------------------------------------------------------------------


@attrs.define
class ForwardStatistics:
    """What forwarding did: requests that write answered by the host, ADDs' last looks (``Verify``) answered by
    the host, the HTTP calls they took, requests that write served locally because the host was unavailable
    (``GET /v1/spider/stats`` ``forwarded``)."""

    requests: int = 0
    looks: int = 0
    calls: int = 0
    fallback: int = 0


_TRANSPORT = (OSError, ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError)


@attrs.define(eq=False)
class PoolForwarder:
    """The route of a ``PoolRegistry`` (``registry.route = forwarder``): writes go to the host in batches,
    reads and everything the host cannot take go to the registry's local actors.  Run it with
    ``nursery.start(forwarder.run)`` before the first request."""

    local: PoolRegistry
    locator: HostLocator
    token: ServiceAccountToken = attrs.field(factory=ServiceAccountToken)
    client: HostClient = attrs.field(factory=HostClient)
    budget: float = DEFAULT_BUDGET
    """Seconds one forwarded call may take, connect and answer, before its batch is served locally."""
    sender: str = ""
    """This node's name, sent with every batch: the host's actor waits for the nodes it has lately heard from."""
    stats: ForwardStatistics = attrs.field(factory=ForwardStatistics)
    clock: Callable[[], float] = trio.current_time
    _queues: dict[tuple[str, bool], list[PoolMsg]] = attrs.field(factory=dict)
    """Per pool and lane (looks or writes): what waits for the next call."""
    _nursery: trio.Nursery | None = None
    _retry_at: float = -math.inf
    _backoff: float = FIRST_BACKOFF
    _failed_holder: str | None = None
    _no_looks_from: set[str | None] = attrs.field(factory=set)
    """Lease holders that refused a call of looks as malformed (an older host, which knows no ``verify``): their
    looks are served here, their writes still go to them."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve forwarded batches until cancelled (the locator runs here too)."""
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.locator.run)
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                await self.client.aclose()

    def host_available(self) -> bool:
        """Whether a request now would be sent to the host (known, a token to show, not backing off)."""
        if self.locator.current is None or self.token.read() is None:
            return False
        if self.locator.holder != self._failed_holder:
            self._retry_at = -math.inf  # NB: a new leader: try it at once
        return self.clock() >= self._retry_at

    async def deliver(self, name: str, msg: PoolMsg) -> None:
        """Queue ``msg`` for the host, or for the local actor when it is an ``Inspect`` or the host is unavailable."""
        if isinstance(msg, Inspect) or (isinstance(msg, Verify) and self.locator.holder in self._no_looks_from):
            await self.local.deliver(name, msg)
            return
        if self._nursery is None or not self.host_available():
            self.stats.fallback += _writes([msg])
            await self.local.deliver(name, msg)
            return
        # NB: looks in a lane of their own: the host answers them at once, not after the next write
        lane = (name, isinstance(msg, Verify))
        queue = self._queues.get(lane)
        if queue is None:
            self._queues[lane] = [msg]
            self._nursery.start_soon(self._flush, lane, name=f"forward/{name}{'/looks' if lane[1] else ''}")
        else:
            queue.append(msg)

    async def _flush(self, lane: tuple[str, bool]) -> None:
        """Send what is queued in ``lane``, one call per batch, until nothing is (then the queue is dropped)."""
        await trio.lowlevel.checkpoint()  # NB: let the other requests of this moment join the first batch
        try:
            while queue := self._queues.get(lane):
                batch, queue[:] = queue[:MAX_FORWARD_BATCH], queue[MAX_FORWARD_BATCH:]
                try:
                    await self._forward(lane[0], batch)
                except Exception as exc:  # NB: a bug here costs this batch (CNI 11, retried), never the agent
                    log.exception("forwarding %d requests for pool %s failed", len(batch), lane[0])
                    for msg in batch:  # NB: an answer given already stays (a reply takes the first)
                        msg.reply.error(HostFailed(reason=f"forwarding failed: {type(exc).__name__}: {exc}"))
        finally:
            self._queues.pop(lane, None)

    async def _forward(self, name: str, batch: list[PoolMsg]) -> None:
        address, token = self.locator.current, self.token.read()
        if address is None or token is None or not self.host_available():
            await self._serve_locally(name, batch)
            return
        messages = [encode_message(m) for m in batch]
        began = self.clock()

        def body() -> bytes:
            # NB: "within": the host applies nothing of this batch after that many seconds from its arrival: what
            # is left of half our budget once connected, the other half being for the write it makes (module
            # docstring); a slow connection or TLS handshake shortens it, so the host's limit ends before ours
            within = round(self.budget / 2 - (self.clock() - began), 3)
            if within <= 0:  # NB: nothing the host could apply in time: serve it here (caught below)
                raise ValueError(f"connecting took more than half of {self.budget:g}s")
            return json.dumps({"sender": self.sender, "within": within, "messages": messages}).encode()

        failure: str | None = None
        answers: Any = None
        with trio.move_on_after(self.budget) as budget:
            try:
                context = self.locator.ssl_context(address)
                answer = await self.client.post(address, context, f"{BATCH_PATH}{name}", body, token)
                answers = limits.loads(answer)["results"]  # NB: a host of another version may answer anything
                if not isinstance(answers, list) or len(answers) != len(batch):
                    raise ValueError("the host answered a different number of results")
            except HostRefused as exc:
                if exc.status == 400 and not _writes(batch):  # NB: an older host: it takes our writes, not looks
                    log.warning("pool host %s:%d refused looks (%s); looking here", address.host, address.port, exc)
                    self._no_looks_from.add(self.locator.holder)
                    self.stats.calls += 1
                    await self._serve_locally(name, batch)
                    return
                failure = str(exc)
            except (*_TRANSPORT, ValueError, KeyError, TypeError) as exc:
                failure = f"{type(exc).__name__}: {exc}"
        if budget.cancelled_caught:
            failure = f"no answer within {self.budget:g}s"
        self.stats.calls += 1
        if failure is not None:
            self._host_failed(address, failure)
            await self._serve_locally(name, batch)
            return
        self.stats.requests += _writes(batch)
        self.stats.looks += len(batch) - _writes(batch)
        self._backoff, self._failed_holder = FIRST_BACKOFF, None
        again = []
        for msg, raw in zip(batch, answers, strict=True):
            try:
                result = decode_outcome(msg, raw)
            except (ValueError, KeyError, TypeError) as exc:
                result = outcome.Error(HostFailed(reason=f"malformed result: {exc}"))
            if isinstance(result, outcome.Error) and _host_side(result.error):
                again.append(msg)  # NB: the host stopped leading mid-batch: ours to serve (idempotent, above)
            else:
                msg.reply.resolve(result)
        if again:
            self.locator.poke()
            await self._serve_locally(name, again)

    def _host_failed(self, address: HostAddress, why: str) -> None:
        log.warning("pool host %s:%d failed (%s); serving locally for %gs", address.host, address.port, why,
                    self._backoff)  # fmt: skip
        self._retry_at = self.clock() + self._backoff
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        self._failed_holder = self.locator.holder
        self.locator.poke()

    async def _serve_locally(self, name: str, batch: list[PoolMsg]) -> None:
        self.stats.fallback += _writes(batch)
        for msg in batch:
            try:
                await self.local.deliver(name, msg)
            except SpiderError as exc:  # no such pool: the answer the local actor would give
                msg.reply.error(exc)


def _writes(batch: list[PoolMsg]) -> int:
    """How many requests of a batch write (all but the looks)."""
    return sum(not isinstance(msg, Verify) for msg in batch)


def _host_side(exc: BaseException) -> bool:
    """Whether an error came from the host's own state (its actor stopped, it stepped down, it kept the request
    past its ``within``: unapplied), not the pool's: the agent then serves the request itself."""
    return isinstance(exc, ActorUnavailable | RequestExpired)


__all__ = [
    "DEFAULT_POOL_HOST_PORT",
    "ForwardStatistics",
    "HostAddress",
    "HostClient",
    "HostLocator",
    "PoolForwarder",
    "ServiceAccountToken",
    "decode_message",
    "decode_outcome",
    "encode_message",
    "encode_outcome",
]
