"""The pool host: the leading controller's HTTPS endpoint where agents send their pool requests.

Owns the server side of "one writer per pool across the cluster" (the agent side, the wire format and the
safety argument are in ``actors.ipam.remote``; docs/architecture.md, "The pool host"):

- ``POST /v1/pools/<name>`` with ``{"sender": NODE, "within": SECONDS, "messages": [...]}``: every message is
  queued for the pool's PoolActor in one step (``PoolRegistry.deliver_all``), so the actor folds it with
  whatever other agents sent meanwhile into one status write, but not once ``within`` seconds have passed since
  the batch arrived (the agent no longer waits by then: ``RequestExpired``, unapplied); the answer is
  ``{"results": [...]}`` in the same order, each a value or a structured error (its type, fields and CNI code),
  so the agent answers the plugin exactly as if it had run the request.
- when this controller does not lead (``registry`` is ``None``): 421 "not leading", and the agent serves the
  request with its own actor.  The host's actors are the same optimistic ones: nothing here is needed for
  safety, only for fewer write races.
- authentication: the agent's ServiceAccount token as a bearer token, checked with a TokenReview (the store's
  ``review_token``), remembered ``review_ttl`` seconds (valid or not; one review at a time per token); only
  ``allowed_user`` is served (``system:serviceaccount:<namespace>:spiderpool-agent``).  No or an invalid
  token: 401; another account: 403.  Either changes nothing.

TLS: a certificate for the Pod IP signed by the controller's CA (``actors.servers.certs.pool_host_certificate``:
the webhook's self-made one, or with a mounted webhook certificate one of its own, ``pool_host_secret``),
renewed with that Secret's CA every ``refresh_interval`` seconds.  The counters (``GET /v1/spider/stats``) are
served on the health port, not here (``actors.controller.main``).
"""

from __future__ import annotations

import functools
import logging
import math
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import outcome
import trio

from actors.ipam.pool import PoolMsg, PoolRegistry
from actors.ipam.remote import BATCH_PATH, NOT_LEADING, decode_message, encode_outcome
from actors.servers.certs import CertBundle, CertSettings, issue_for, pool_host_ca, problem, publish_ca
from actors.servers.httpserver import READ_TIMEOUT, HttpServer, Request, Response, json_response
from actors.stores.port import Store
from spider import limits
from spider.errors import ActorUnavailable, SpiderError

log = logging.getLogger(__name__)

REVIEW_TTL = 60.0
"""Seconds a TokenReview's verdict on a token is reused."""
MAX_BATCH_BYTES = 1024 * 1024
"""Largest batch body: an agent sends at most 256 requests in one (``MAX_FORWARD_BATCH``), each under 2 KiB."""
MAX_CACHED_TOKENS = 1024
"""Most verdicts kept of each kind (tokens of an account, tokens of none); the oldest goes first, so a flood of
made-up tokens never pushes out the agents'."""
ANSWER_GRACE = 10.0
"""Seconds past a batch's ``within`` (and the pool's conflict budget) its handler waits for the actor's answers
before answering ``ActorUnavailable`` itself (an actor cancelled as the host steps down)."""

TokenReview = Callable[[str], Awaitable[str | None]]
V = TypeVar("V")


@attrs.define(eq=False)
class PoolHost:
    """Serves pool batches while ``registry`` is set (this controller leads); run ``serve`` under a nursery."""

    review: TokenReview
    """Who a bearer token belongs to (``KubeStore.review_token``)."""
    allowed_user: str
    """The only user served: the agents' ServiceAccount."""
    registry: PoolRegistry | None = None
    """The pool actors while this controller leads; ``None``: it does not, and every batch is refused (421)."""
    review_ttl: float = REVIEW_TTL
    leader: Callable[[], str | None] = lambda: None
    """Who leads as far as we know (said in a 421, for the logs)."""
    read_timeout: float = READ_TIMEOUT
    """Seconds a client may take to send one request, its TLS handshake included (``HttpServer``)."""
    batches: int = 0
    refused: int = 0
    _verdicts: dict[str, tuple[str, float]] = attrs.field(factory=dict)
    _refusals: dict[str, float] = attrs.field(factory=dict)
    _reviewing: dict[str, trio.Event] = attrs.field(factory=dict)
    """The tokens whose TokenReview runs now: a request with one of them waits for that verdict."""

    async def handle(self, request: Request) -> Response:
        """The HTTP handler."""
        if request.method != "POST" or not request.path.startswith(BATCH_PATH):
            return json_response(404, f"no route for {request.method} {request.path}")
        # NB: a batch's "within" counts from its arrival, before its TokenReview and the rest of its body
        arrived = request.received_at or trio.current_time()
        denied = await self._authenticate(request)  # NB: done on its head already when served (cached since)
        if denied is not None:
            self.refused += 1
            return denied
        registry = self.registry
        if registry is None:
            self.refused += 1
            return json_response(NOT_LEADING, f"not leading (leader: {self.leader() or 'unknown'})")
        name = request.path.removeprefix(BATCH_PATH)
        if limits.dns_subdomain_problem(name):  # NB: no pool can have such a name: not worth a read
            return json_response(404, f"no pool in {limits.preview(request.path)}")
        try:
            sent = limits.loads(request.body)
            if not isinstance(sent, dict) or not isinstance(sent.get("messages"), list):
                raise ValueError("a batch is an object with a list of messages")
            sender = sent.get("sender") or ""  # NB: the node: its actor waits for the nodes of late
            if not isinstance(sender, str) or len(sender) > limits.MAX_NAME:
                raise TypeError("'sender' is not a node name")
            expires = _expiry(sent.get("within"), arrived)
            messages = [decode_message(raw, sender, expires) for raw in sent["messages"]]
        except (ValueError, KeyError, TypeError, OverflowError) as exc:  # NB: a number too large for a float
            return json_response(400, f"malformed batch: {type(exc).__name__}: {exc}")
        self.batches += 1
        try:
            await registry.deliver_all(name, messages)
        except SpiderError as exc:  # no such pool: every request gets that answer
            for msg in messages:
                msg.reply.error(exc)
        # NB: bounded, whatever becomes of the actor: the agent stopped waiting long before
        give_up = (expires if expires is not None else arrived) + registry.conflict_budget + ANSWER_GRACE
        results = [encode_outcome(await _outcome(msg, give_up, name)) for msg in messages]
        return json_response(200, {"results": results})

    async def _check_head(self, request: Request) -> Response | None:
        denied = await self._authenticate(request)
        self.refused += denied is not None
        return denied

    async def _authenticate(self, request: Request) -> Response | None:
        """``None`` when the bearer token is the allowed account's; else the 401 or 403 to answer."""
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth.removeprefix("Bearer ").strip():
            return json_response(401, "a bearer token (the agent's ServiceAccount token) is required")
        token = auth.removeprefix("Bearer ").strip()
        try:
            user = await self._user_of(token)
        except SpiderError as exc:  # the API server is down: we cannot tell, so we do not serve
            log.warning("pool host: TokenReview failed: %s", exc)
            return json_response(503, f"cannot review the token now: {exc}")
        if user is None:
            return json_response(401, "the token is not valid")
        if user != self.allowed_user:
            log.warning("pool host: refused %s (only %s is served)", user, self.allowed_user)
            return json_response(403, f"{user} may not use the pool host")
        return None

    async def _user_of(self, token: str) -> str | None:
        """Whose ``token`` is (``None``: nobody's), as a TokenReview said at most ``review_ttl`` seconds ago; one
        review at a time per token, which every request with it waits for."""
        while True:
            now = trio.current_time()
            if (verdict := self._verdicts.get(token)) is not None and verdict[1] >= now:
                return verdict[0]
            if self._refusals.get(token, -math.inf) >= now:
                return None
            running = self._reviewing.get(token)
            if running is None:
                break
            await running.wait()  # NB: then the verdict is cached, or that review failed and we try ourselves
        self._reviewing[token] = done = trio.Event()
        try:
            user = await self.review(token)
        finally:
            del self._reviewing[token]
            done.set()
        until = trio.current_time() + self.review_ttl
        if user is None:
            _remember(self._refusals, token, until)
        else:
            _remember(self._verdicts, token, (user, until))
        return user

    async def serve(
        self,
        listeners: list[trio.SSLListener[Any]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the listeners until cancelled.  A request's token is checked on its head, before its body is
        read: a client without the agents' token cannot make the host hold a byte of body."""
        server = HttpServer(
            self.handle, name="pool-host", read_timeout=self.read_timeout, max_body=MAX_BATCH_BYTES,
            check_head=self._check_head,
        )  # fmt: skip
        await server.serve(listeners, task_status=task_status)


def _expiry(within: Any, arrived: float) -> float | None:
    """When a batch's requests stop being applied (trio time): ``within`` seconds from its arrival, as the agent
    asks (an older agent says nothing: no limit); ``ValueError`` for anything but a finite number from 0 to a
    day."""
    if within is None:
        return None
    if isinstance(within, bool) or not isinstance(within, int | float) or not 0 <= within <= 86400:
        raise ValueError(f"'within' must be seconds from 0 to 86400, not {within!r}")
    return arrived + within


def _remember(cache: dict[str, V], token: str, verdict: V) -> None:
    """Keep ``verdict`` as the newest of ``cache``, dropping the oldest when it is full."""
    cache.pop(token, None)
    while len(cache) >= MAX_CACHED_TOKENS:
        del cache[next(iter(cache))]
    cache[token] = verdict


async def _outcome(msg: PoolMsg, give_up: float, pool: str) -> outcome.Outcome[Any]:
    try:
        with trio.move_on_at(give_up):
            return outcome.Value(await msg.reply.wait())
    except SpiderError as exc:
        return outcome.Error(exc)
    return outcome.Error(ActorUnavailable(actor=f"pool/{pool}"))


async def keep_certificate(
    store: Store,
    settings: CertSettings,
    hosts: tuple[str, ...],
    ca_configmap: str,
    bundle: CertBundle,
    context: ssl.SSLContext,
    interval: float,
) -> None:
    """Every ``interval`` seconds: publish the CA of ``certs.pool_host_secret`` again, and serve a new certificate
    when the CA changed or ours is due (``certs.problem``); trouble is logged and the current certificate kept."""
    while True:
        await trio.sleep(interval)
        try:
            stored = await pool_host_ca(store, settings)
            await publish_ca(store, settings.namespace, ca_configmap, stored.ca)
            if stored.ca != bundle.ca or problem(bundle, hosts) is not None:
                bundle = await trio.to_thread.run_sync(functools.partial(issue_for, stored, hosts))
                bundle.load_into(context)
                log.info("pool host serves a new certificate")
        except SpiderError as exc:
            log.warning("pool host certificate not refreshed (serving the current one): %s", exc)


async def open_listeners(host: str | None, port: int, context: ssl.SSLContext) -> list[trio.SSLListener[Any]]:
    """TLS listeners on ``host`` (every address when ``None``) and ``port``."""
    plain = await trio.open_tcp_listeners(port, host=host)
    return [trio.SSLListener(listener, context, https_compatible=True) for listener in plain]
