"""The optional admission webhook: Spiderpool's validate and mutate paths for its IPAM kinds, over TLS.

Owns the HTTPS side: routing Spiderpool's paths (``/validate-spiderpool-spidernet-io-v2beta1-spiderippool``,
``/mutate-...``, for SpiderIPPool, SpiderSubnet and SpiderReservedIP), reading the objects a rule compares
against from the store, and serving it all on port 5722 with the certificate ``actors.servers.certs`` provides.
The decisions are ``spider.admission``'s (pure), the rules behind them the store layer's own
(``spider.validation``, which ``actors.stores.validating`` applies to every write whatever the backend).

Off by default: the store layer keeps every invariant without it, so the webhook only gives ``kubectl`` users
an early, clear "denied" instead of an object that the controller and agents report as invalid.  Every
replica serves it (it needs no leadership).  When the store cannot be read, the answer is HTTP 500, so the
API server applies the configuration's ``failurePolicy`` rather than a guess of ours.
"""

from __future__ import annotations

import logging
from typing import Any

import attrs
import trio

from actors.servers.certs import CertSettings, ServedCertificate
from actors.servers.httpserver import HttpServer, Request, Response, bound_port, json_response
from actors.stores.port import Store
from spider import limits
from spider.admission import (
    AdmissionRequest,
    denied,
    finalizer_only,
    mutate_review,
    parse_review,
    respond,
    validate_review,
    webhook_path,
)
from spider.errors import SpiderError, TransientError
from spider.validation import KINDS, POOL, SUBNET, AdmissionSettings

log = logging.getLogger(__name__)

DEFAULT_PORT = 5722
ROUTES = {webhook_path(action, kind): (action, kind) for kind in KINDS for action in ("validate", "mutate")}
"""``path -> (action, kind)`` for every path the webhook serves (Spiderpool's)."""


@attrs.frozen
class WebhookSettings:
    """How the webhook is served."""

    certs: CertSettings
    port: int = DEFAULT_PORT
    host: str | None = None
    """Address to bind; ``None`` binds every address (the controller runs on the host network)."""


@attrs.define(eq=False)
class AdmissionWebhook:
    """Answers AdmissionReviews; ``handle`` is the HTTP handler."""

    store: Store
    settings: AdmissionSettings = attrs.field(factory=AdmissionSettings)
    """The configmap switches the rules depend on (IPv4/IPv6 enabled, subnets)."""
    reviews: int = 0
    port: int | None = None
    """The port it serves on, once serving."""

    async def handle(self, request: Request) -> Response:
        """One HTTP request: an AdmissionReview in, an AdmissionReview out."""
        route = ROUTES.get(request.path)
        if route is None:
            return json_response(404, f"no webhook at {request.path}")
        if request.method != "POST":
            return json_response(405, f"{request.path} takes POST")
        action, kind = route
        depth = limits.json_depth(request.body.decode("utf-8", "replace"), stop_above=limits.MAX_JSON_DEPTH)
        if depth > limits.MAX_JSON_DEPTH:
            return json_response(400, f"AdmissionReview nested more than {limits.MAX_JSON_DEPTH} levels deep")
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
        if action == "mutate":
            # NB: a pool inherits gateway and routes from the SpiderSubnet of its CIDR
            subnets = (await self.store.list(SUBNET)).items if writing and review.kind == POOL else []
            return mutate_review(review, subnets)
        existing: list[dict[str, Any]] = []
        if writing and review.kind in (POOL, SUBNET):
            existing = (await self.store.list(POOL)).items + (await self.store.list(SUBNET)).items
        return validate_review(review, existing, self.settings)

    async def serve(
        self, settings: WebhookSettings, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Obtain the certificate (writing the caBundle when self-made), then serve HTTPS, presenting a renewed
        or re-mounted certificate from the next handshake on; reports the port."""
        certificate = await ServedCertificate.open(self.store, settings.certs)
        listeners = await trio.open_tcp_listeners(settings.port, host=settings.host)
        tls = [trio.SSLListener(listener, certificate.context, https_compatible=True) for listener in listeners]
        self.port = bound_port(tls[0])
        log.info("admission webhook serving HTTPS on port %d", self.port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(certificate.keep_current)  # NB: a renewed or re-mounted certificate, no restart
            await nursery.start(HttpServer(self.handle, name="webhook").serve, tls)
            task_status.started(self.port)
