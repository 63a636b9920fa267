"""The optional admission webhook: Spiderpool's validate and mutate paths for its IPAM kinds, over TLS.

Owns the HTTPS side: routing Spiderpool's paths (``/validate-spiderpool-spidernet-io-v2beta1-spiderippool``,
``/mutate-...``, for SpiderIPPool, SpiderSubnet, SpiderReservedIP and SpiderMultusConfig; with ``pods`` also the
pod webhook's ``/mutate--v1-pod``, ``actors.servers.pod_webhook``), the cache of the objects a rule compares
against (``spec_cache``, a ``KindCache``), and serving it all on port 5722 with the certificate
``actors.servers.certs`` provides.
A SpiderMultusConfig's validation reads the NetworkAttachmentDefinitions of its namespace straight from the
store (one namespaced LIST, the verb the controller's role grants; Spiderpool's webhook reads the one NAD through
its API reader), to refuse taking over one another SMC owns; only a review with a named object costs that.
The decisions are ``spider.admission``'s (pure), the rules behind them the store layer's own
(``spider.validation``, which ``actors.stores.validating`` applies to every write whatever the backend).

Off by default: the store layer keeps every invariant without it, so the webhook only gives ``kubectl`` users
an early, clear "denied" instead of an object that the controller and agents report as invalid.  Every
replica serves it (it needs no leadership).

Anyone who reaches the port can send a review (TLS authenticates the server only), so a review costs no API
call: the pools and subnets come from a cache that one list and one watch per kind keep (an informer, as
controller-runtime's cached client gives Spiderpool's webhook), holding only what the rules read (kind,
metadata, spec, and of a status only a subnet's ``controlledIPPools``).  Like Spiderpool's, it sees a change
once the watch brings it.  Until the cache has listed both kinds once (the store unreachable since the start),
a review that needs it is answered HTTP 500 after ``sync_wait``, so the API server applies the configuration's
``failurePolicy`` rather than a guess of ours; afterwards an outage leaves the last state served while the
informer re-lists.
"""

from __future__ import annotations

import logging
from typing import Any

import attrs
import trio

from actors.servers.certs import CertSettings, ServedCertificate
from actors.servers.httpserver import READ_TIMEOUT, HttpServer, Request, Response, bound_port, json_response
from actors.servers.pod_webhook import PodResourceWebhook
from actors.stores.informer import KindCache
from actors.stores.port import Obj, Store
from spider.admission import (
    AdmissionRequest,
    denied,
    finalizer_only,
    multus_object,
    mutate_multus_review,
    mutate_review,
    parse_review,
    respond,
    validate_multus_review,
    validate_review,
    webhook_path,
)
from spider.errors import SpiderError, StoreUnavailable, TransientError
from spider.multus import KIND as MULTUS
from spider.multus import NAD_KIND, nad_name
from spider.podinject import POD_WEBHOOK_PATH
from spider.validation import KINDS, POOL, SUBNET, AdmissionSettings

log = logging.getLogger(__name__)

DEFAULT_PORT = 5722
CACHED = (POOL, SUBNET)
"""The kinds the rules compare a reviewed object against."""
RESYNC_PERIOD = 300.0
"""Seconds between the cache's full re-lists (a missed event is repaired by the next)."""
RETRY_DELAY = 1.0
"""Seconds the cache waits before listing again after the store failed it."""
SYNC_WAIT = 5.0
"""Seconds a review waits for the cache's first listing before it is answered 500 (within the API server's
10 s webhook timeout)."""
ROUTES = {webhook_path(action, kind): (action, kind) for kind in (*KINDS, MULTUS) for action in ("validate", "mutate")}
"""``path -> (action, kind)`` for every path the webhook serves (Spiderpool's)."""


@attrs.frozen
class WebhookSettings:
    """How the webhook is served."""

    certs: CertSettings
    port: int = DEFAULT_PORT
    host: str | None = None
    """Address to bind; ``None`` binds every address.  The controller passes ``$POD_IP`` when it knows it (it
    runs on the host network, where every address would include public ones)."""
    read_timeout: float = READ_TIMEOUT
    """Seconds a client may take to send one request, its TLS handshake included (``HttpServer``)."""


def describe_host(host: str | None) -> str:
    """A bind address for the log; ``None`` says that it is every address, and why."""
    return host if host else "every address (no $POD_IP known)"


def cached_copy(kind: str, obj: Obj) -> Obj:
    """What the cache keeps of a pool or subnet: what the rules read (kind, metadata, spec).  Of a status only
    a subnet's ``controlledIPPools``: the promised-addresses and auto-pool (I00018) rules read it; a pool's
    ``allocatedIPs`` no rule reads from here (an update's own comes with the review's old object)."""
    metadata = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    out = {**{k: v for k, v in obj.items() if k != "status"}, "kind": kind, "metadata": metadata}
    status = obj.get("status")
    if kind == SUBNET and isinstance(status, dict) and "controlledIPPools" in status:
        out["status"] = {"controlledIPPools": status["controlledIPPools"]}
    return out


def spec_cache(store: Store) -> KindCache:
    """The pools and subnets the rules compare a reviewed object against, without an API call per review."""
    return KindCache(store, CACHED, cached_copy, who="webhook cache", resync_period=RESYNC_PERIOD,
                     retry_delay=RETRY_DELAY)  # fmt: skip


@attrs.define(eq=False)
class AdmissionWebhook:
    """Answers AdmissionReviews; ``handle`` is the HTTP handler."""

    store: Store
    settings: AdmissionSettings = attrs.field(factory=AdmissionSettings)
    """The configmap switches the rules depend on (IPv4/IPv6 enabled, subnets)."""
    sync_wait: float = SYNC_WAIT
    """Seconds a review that needs the cache waits for its first listing before it is answered 500."""
    reviews: int = 0
    port: int | None = None
    """The port it serves on, once serving."""
    cache: KindCache = attrs.field(default=attrs.Factory(lambda self: spec_cache(self.store), takes_self=True))
    """The pools and subnets the rules compare against (filled while ``serve`` runs)."""
    pods: PodResourceWebhook | None = None
    """The pod resource-injection webhook, served on ``/mutate--v1-pod`` when given (``podResourceInject``)."""

    async def handle(self, request: Request) -> Response:
        """One HTTP request: an AdmissionReview in, an AdmissionReview out."""
        if self.pods is not None and request.path == POD_WEBHOOK_PATH:
            return await self.pods.handle(request)
        route = ROUTES.get(request.path)
        if route is None:
            return json_response(404, f"no webhook at {request.path}")
        if request.method != "POST":
            return json_response(405, f"{request.path} takes POST")
        action, kind = route
        try:
            review = parse_review(request.body)
        except SpiderError as exc:
            return json_response(400, str(exc))
        self.reviews += 1
        if review.kind != kind:
            answer = denied(f"{request.path} reviews {kind}, not {review.kind}", code=400, reason="BadRequest")
            return json_response(200, respond(review, answer))
        try:
            answer = await self._decide(action, review)
        except TransientError as exc:
            log.warning("%s %s %s: %s", action, kind, review.name, exc)
            return json_response(500, str(exc))  # NB: the API server applies failurePolicy
        if not answer.get("allowed"):
            log.info("denied %s %s %r: %s", review.operation, kind, review.name, answer["status"]["message"])
        return json_response(200, respond(review, answer))

    async def _decide(self, action: str, review: AdmissionRequest) -> dict[str, Any]:
        writing = review.operation in ("CREATE", "UPDATE") and not finalizer_only(review)
        if review.kind == MULTUS:
            if action == "mutate":
                return mutate_multus_review(review)
            return validate_multus_review(review, await self._nad_of(review) if writing else None)
        if action == "mutate":
            # NB: a pool inherits gateway and routes from the SpiderSubnet of its CIDR, when subnets are enabled
            inherits = writing and review.kind == POOL and self.settings.enable_subnet
            subnets = await self._cached(SUBNET) if inherits else []
            return mutate_review(review, subnets)
        existing: list[dict[str, Any]] = []
        if writing and review.kind in (POOL, SUBNET):
            existing = await self._cached(POOL, SUBNET)
        return validate_review(review, existing, self.settings)

    async def _nad_of(self, review: AdmissionRequest) -> Obj | None:
        """The NetworkAttachmentDefinition the reviewed SpiderMultusConfig would own, if one exists."""
        obj = multus_object(review) or {}
        meta = obj.get("metadata")
        if not isinstance(meta, dict) or not meta.get("name") or not meta.get("namespace"):
            return None  # NB: validation refuses it, or it names nothing to look up
        name = nad_name(obj)
        try:
            found = await self.store.list(NAD_KIND, namespace=str(meta["namespace"]))
        except TransientError:
            raise
        except SpiderError as exc:  # NB: answered 500, so the API server applies failurePolicy
            raise StoreUnavailable(reason=f"listing NetworkAttachmentDefinitions: {exc}") from None
        return next((nad for nad in found.items if (nad.get("metadata") or {}).get("name") == name), None)

    async def _cached(self, *kinds: str) -> list[Obj]:
        """The cached objects of ``kinds``; ``StoreUnavailable`` (HTTP 500) when the cache has never listed."""
        with trio.move_on_after(self.sync_wait):
            await self.cache.wait_synced()
        if not self.cache.synced:
            raise StoreUnavailable(reason="the webhook has not listed the pools and subnets yet")
        return self.cache.items(*kinds)

    async def serve(
        self, settings: WebhookSettings, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Obtain the certificate (writing the caBundle when self-made), then serve HTTPS, presenting a renewed
        or re-mounted certificate from the next handshake on; reports the port."""
        certificate = await ServedCertificate.open(self.store, settings.certs)
        listeners = await trio.open_tcp_listeners(settings.port, host=settings.host)
        tls = [trio.SSLListener(listener, certificate.context, https_compatible=True) for listener in listeners]
        self.port = bound_port(tls[0])
        log.info("admission webhook serving HTTPS on %s port %d", describe_host(settings.host), self.port)
        async with trio.open_nursery() as nursery:
            await nursery.start(self.cache.run)
            if self.pods is not None:
                await nursery.start(self.pods.run)
            nursery.start_soon(certificate.keep_current)  # NB: a renewed or re-mounted certificate, no restart
            await nursery.start(HttpServer(self.handle, name="webhook", read_timeout=settings.read_timeout).serve, tls)
            task_status.started(self.port)
