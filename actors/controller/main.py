"""``spider controller``: the cluster-wide controller, wired together.

Owns the controller's settings and life cycle: open the store, serve health and readiness on TCP (Spiderpool's
controller paths on port 5720), serve the optional admission webhook over TLS (port 5722), and campaign for
the Lease; while this instance leads, the ``PoolReconciler`` keeps pool and subnet status counts and
finalizers.  On SIGTERM or SIGINT the leading work stops first, then the Lease is released (so a successor
takes over within one retry period instead of a whole lease duration), then the servers close.

Health (``GET``, answered 200 or 500 with a JSON string saying why) and the webhook bind the pod's own address
(``$POD_IP``, from the downward API) when it is set, else every address (logged as such):
- ``/v1/runtime/startup``: the process has started everything it runs;
- ``/v1/runtime/liveness``: the event loop answers (a wedged process stops answering);
- ``/v1/runtime/readiness``: the store answered the elector's last Lease call (within a lease duration), a
  leader is known (us, or a holder renewing its Lease), the webhook serves and its cache has listed when
  enabled, and when we lead our informers have listed everything once;
- ``/v1/runtime/leader`` (ours): who leads, who we are, as JSON.

The health endpoints are unauthenticated, so they answer from what the process already knows (the elector's
last Lease call, the informers' state): no request costs an API call.

Wiring only: the rules live in ``actors.controller.leader``, ``actors.controller.reconciler`` and
``actors.servers.webhook``.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from actors.controller.leader import DEFAULT_LEASE_NAME, LeaderElector, LeaderSettings
from actors.controller.reconciler import DEFAULT_RESYNC, PoolReconciler
from actors.servers.certs import CertSettings
from actors.servers.httpserver import READ_TIMEOUT, HttpServer, Request, Response, bound_port, json_response
from actors.servers.webhook import DEFAULT_PORT as DEFAULT_WEBHOOK_PORT
from actors.servers.webhook import AdmissionWebhook, WebhookSettings, describe_host
from actors.stores.port import Store
from actors.stores.selection import StoreSettings, open_store
from actors.stores.sqlite import default_store_path

log = logging.getLogger(__name__)

DEFAULT_HEALTH_PORT = 5720
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def default_namespace(environ: dict[str, str] | None = None) -> str:
    """``$SPIDERPOOL_POD_NAMESPACE`` (downward API), else the service account's namespace, else kube-system."""
    env = os.environ if environ is None else environ
    if env.get("SPIDERPOOL_POD_NAMESPACE"):
        return env["SPIDERPOOL_POD_NAMESPACE"]
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "kube-system"
    except OSError:
        return "kube-system"


def default_bind_host(environ: dict[str, str] | None = None) -> str | None:
    """``$POD_IP`` (downward API ``status.podIP``) when set, else ``None``: every address."""
    env = os.environ if environ is None else environ
    return env.get("POD_IP") or None


default_health_host = default_bind_host
"""The health server's default address (the same as the webhook's)."""


def default_identity(environ: dict[str, str] | None = None) -> str:
    """``<pod name or host name>_<random>``: unique per process, as client-go's leader election wants."""
    env = os.environ if environ is None else environ
    base = env.get("SPIDERPOOL_POD_NAME") or socket.gethostname()
    return f"{base}_{uuid.uuid4().hex[:8]}"


@attrs.frozen
class ControllerSettings:
    """How one controller runs."""

    store_path: Path = attrs.field(factory=default_store_path, converter=Path)
    """The embedded store file (when neither a kubeconfig nor in-cluster is asked for)."""
    kubeconfig: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    """Keep objects on the Kubernetes API server this kubeconfig names instead of the embedded store."""
    in_cluster: bool = False
    """Keep objects on the API server of the cluster the controller runs in (its service account)."""
    context: str | None = None
    """The kubeconfig context (default: its current one)."""
    namespace: str = attrs.field(factory=default_namespace)
    """Where the Lease (and the webhook's Secret) live: the controller's own namespace."""
    identity: str = attrs.field(factory=default_identity)
    lease_name: str = DEFAULT_LEASE_NAME
    lease_duration: int = 15
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    resync_period: float = DEFAULT_RESYNC
    health_host: str | None = attrs.field(factory=default_bind_host)
    """Address for the health server: ``$POD_IP`` when set; ``None`` binds every address."""
    health_port: int = DEFAULT_HEALTH_PORT
    health_read_timeout: float = READ_TIMEOUT
    """Seconds a health client may take to send one request; an idle connection is closed after it."""
    webhook: bool = False
    """Serve the admission webhook (off by default: the store layer keeps the invariants without it)."""
    webhook_host: str | None = attrs.field(factory=default_bind_host)
    """Address for the webhook: ``$POD_IP`` when set; ``None`` binds every address."""
    webhook_port: int = DEFAULT_WEBHOOK_PORT
    webhook_cert_dir: Path | None = None
    """Mounted ``tls.crt``/``tls.key`` (cert-manager or provided); without them a CA is made and stored."""
    webhook_service: str = "spiderpool-controller"
    webhook_configuration: str = "spiderpool-controller"
    webhook_secret: str = "spiderpool-controller-server-certs"
    webhook_extra_hosts: tuple[str, ...] = ()

    @property
    def store(self) -> StoreSettings:
        """Which store the controller opens."""
        return StoreSettings(self.store_path, self.kubeconfig, self.in_cluster, self.context)

    def leader_settings(self) -> LeaderSettings:
        """The leader-election part."""
        return LeaderSettings(
            namespace=self.namespace,
            identity=self.identity,
            name=self.lease_name,
            lease_duration=self.lease_duration,
            renew_deadline=self.renew_deadline,
            retry_period=self.retry_period,
        )

    def webhook_settings(self) -> WebhookSettings:
        """The webhook part."""
        certs = CertSettings(
            namespace=self.namespace,
            service=self.webhook_service,
            secret=self.webhook_secret,
            configuration=self.webhook_configuration,
            cert_dir=self.webhook_cert_dir,
            extra_hosts=self.webhook_extra_hosts,
        )
        return WebhookSettings(certs=certs, port=self.webhook_port, host=self.webhook_host)


@attrs.define(eq=False)
class Controller:
    """A running controller: its elector, the reconciler while leading, the servers' ports."""

    settings: ControllerSettings
    store: Store
    elector: LeaderElector
    webhook: AdmissionWebhook | None = None
    reconciler: PoolReconciler | None = None
    health_port: int | None = None
    started: bool = False
    _scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)

    async def lead(self) -> None:
        """The leading work: runs while this instance holds the Lease, cancelled when it stops."""
        reconciler = PoolReconciler(self.store, resync_period=self.settings.resync_period)
        self.reconciler = reconciler
        try:
            await reconciler.run()
        finally:
            self.reconciler = None

    def stop(self, reason: str) -> None:
        """Stop everything: the leading work, then the Lease (released), then the servers."""
        self._scope.cancel(reason=reason)

    def readiness_problems(self) -> list[str]:
        """Why this instance is not ready; empty when it is.  From state only: no store call."""
        problems = []
        elector = self.elector
        silent = trio.current_time() - elector.store_answered_at
        if elector.store_problem is not None:
            problems.append(f"store unreachable: {elector.store_problem}")
        elif silent == math.inf:
            problems.append("store unreachable: no Lease call answered yet")
        elif silent > self.settings.lease_duration:
            problems.append(f"store unreachable: no Lease call answered for {silent:.0f}s")
        if elector.leader is None:
            problems.append("no leader known")
        if self.elector.leading and (self.reconciler is None or not self.reconciler.synced):
            problems.append("leading, but the pool informers have not listed everything yet")
        if self.webhook is not None and self.webhook.port is None:
            problems.append("the admission webhook is not serving yet")
        elif self.webhook is not None and not self.webhook.cache.synced:
            problems.append("the admission webhook has not listed the pools and subnets yet")
        return problems

    async def health(self, request: Request) -> Response:
        """The HTTP handler of the health server."""
        if request.method != "GET":
            return json_response(405, "health endpoints take GET")
        if request.path == "/v1/runtime/startup":
            return Response(200) if self.started else json_response(500, "starting")
        if request.path == "/v1/runtime/liveness":
            return Response(200)
        if request.path == "/v1/runtime/readiness":
            problems = self.readiness_problems()
            return json_response(500, "; ".join(problems)) if problems else Response(200)
        if request.path == "/v1/runtime/leader":
            return json_response(200, self.leader_info())
        return json_response(404, f"no route for GET {request.path}")

    def leader_info(self) -> dict[str, Any]:
        """Who leads, as far as this instance knows."""
        record = self.elector.observed
        return {
            "identity": self.settings.identity,
            "leader": self.elector.leader,
            "leading": self.elector.leading,
            "lease": f"{self.settings.namespace}/{self.settings.lease_name}",
            "leaseTransitions": record.transitions if record else None,
            "synced": bool(self.reconciler and self.reconciler.synced),
        }


@asynccontextmanager
async def open_controller(settings: ControllerSettings, store: Store | None = None) -> AsyncIterator[Controller]:
    """A running controller (health served, webhook served if enabled, campaigning) for the ``async with`` body.

    Leaving the block stops it: leading work first, then the Lease is released, then the servers.
    """
    own_store = store is None
    if store is None:
        # NB: not the ValidatingStore: the controller writes only status, finalizers, its Lease, Secret and the
        # webhook configurations' caBundle, none of which goes through admission on Kubernetes either.
        store = await open_store(settings.store)
    controller = Controller(settings, store, LeaderElector(store, settings.leader_settings()))
    try:
        async with trio.open_nursery() as nursery:
            controller._scope = nursery.cancel_scope
            listeners = await trio.open_tcp_listeners(settings.health_port, host=settings.health_host)
            controller.health_port = bound_port(listeners[0])
            health = HttpServer(controller.health, name="health", read_timeout=settings.health_read_timeout)
            await nursery.start(health.serve, listeners)
            if settings.webhook:
                controller.webhook = AdmissionWebhook(store)
                await nursery.start(controller.webhook.serve, settings.webhook_settings())
            await nursery.start(controller.elector.run, controller.lead)
            controller.started = True
            log.info(
                "controller %s started: health on %s port %d, Lease %s/%s, store %s",
                settings.identity,
                describe_host(settings.health_host),
                controller.health_port,
                settings.namespace,
                settings.lease_name,
                settings.store.describe() if own_store else "given",
            )
            try:
                yield controller
            finally:
                # NB: one cancel stops all; the elector stops its leading work, then releases the Lease
                # (shielded), before this nursery exits and the store is closed.
                controller.stop("controller stopped")
    finally:
        if own_store:
            with trio.CancelScope(shield=True):
                await store.aclose()


async def run_controller(settings: ControllerSettings, store: Store | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then stop leading, release the Lease and exit."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with open_controller(settings, store) as controller:
            async for signum in signals:
                name = signal.Signals(signum).name
                log.info("received %s; stopping the leading work, releasing the Lease", name)
                controller.stop(f"received {name}")
                break
