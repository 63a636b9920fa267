"""``spider controller``: the cluster-wide controller, wired together.

Owns the controller's settings and life cycle: open the store, serve health and readiness on TCP (Spiderpool's
controller paths on port 5720), serve ``GET /metrics`` when switched on (``ControllerMetrics``, port 5721), serve
the admission webhook over TLS (port 5722) when enabled or when ``podResourceInject`` is (then with the pod
mutating webhook, ``PodResourceWebhook``), and campaign for the Lease.  While this instance leads it runs
(``Controller.lead``), each until the leadership ends:
- the ``PoolReconciler``: pool and subnet status counts and finalizers;
- the hosted pool actors (a ``PoolRegistry``, API server store only), which the pool host serves;
- the ``IpGarbageCollector`` (``actors.controller.gc``): IP GC, its trace path and scan-all, releasing through
  the hosted pool actors (or its own);
- with SpiderSubnet on, the ``ApplicationController`` (``actors.controller.applications``) and the
  ``SubnetActors`` of its ``SubnetRegistry``: applications' auto pools made, sized and reclaimed;
- with the SpiderMultusConfig controller on, the ``MultusReconciler``: SpiderMultusConfigs to
  NetworkAttachmentDefinitions;
- with coordinator sync on, ``CoordinatorSync``: the SpiderCoordinators' status (the cluster's pod and
  service CIDRs).
On SIGTERM or SIGINT the leading work stops first, then the Lease is released (so a successor takes over
within one retry period instead of a whole lease duration), then the servers close.

Health (``GET``, answered 200 or 500 with a JSON string saying why) and the webhook bind the pod's own address
(``$POD_IP``, from the downward API) when it is set, else every address (logged as such):
- ``/v1/runtime/startup``: the process has started everything it runs;
- ``/v1/runtime/liveness``: the event loop answers (a wedged process stops answering);
- ``/v1/runtime/readiness``: the store answered the elector's last Lease call (within a lease duration), a
  leader is known (us, or a holder renewing its Lease), the webhook serves and its cache has listed when
  enabled (the pod webhook's too), and when we lead the pool informers and the IP GC's pod informer have
  listed everything once;
- ``/v1/runtime/leader`` (ours): who leads, who we are, as JSON.

- ``/v1/spider/stats`` (ours): ``{"leader": bool, "pools": {...}, "gc": {...}, "host": {...}}``, the hosted
  pool actors' counters (the same ``PoolStatistics`` as the agents' ``GET /v1/spider/stats``), the IP GC's and
  the pool host's, of this leadership or the last.

With an API server store the controller also serves the pool host (``actors.servers.pool_host``, HTTPS on
``--pool-host-port``, 5723): while it leads, its PoolActors take the agents' forwarded pool requests, so each
pool has one writer in the cluster; the agents fall back to their own actors whenever it does not answer.

The health endpoints are unauthenticated, so they answer from what the process already knows (the elector's
last Lease call, the informers' state): no request costs an API call.

Wiring only: the rules live in ``actors.controller.leader``, ``actors.controller.reconciler``,
``actors.controller.gc``, ``actors.controller.applications``, ``actors.controller.multus``,
``actors.controller.coordinator_sync``, ``actors.servers.webhook`` and ``actors.servers.pod_webhook``.
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

from actors.controller.applications import ApplicationController, ApplicationSettings
from actors.controller.coordinator_sync import CoordinatorSync, CoordinatorSyncSettings
from actors.controller.gc import IpGarbageCollector
from actors.controller.leader import DEFAULT_LEASE_NAME, LeaderElector, LeaderSettings
from actors.controller.multus import MultusReconciler, MultusSettings
from actors.controller.reconciler import DEFAULT_RESYNC, PoolReconciler
from actors.ipam.pool import DEFAULT_MAX_STATUS_BYTES, PoolRegistry
from actors.ipam.remote import DEFAULT_AGENT_ACCOUNT, DEFAULT_CA_CONFIGMAP, DEFAULT_POOL_HOST_PORT
from actors.ipam.subnet import SubnetRegistry
from actors.runtime.heap import settle_heap
from actors.runtime.supervisor import Supervisor
from actors.servers.certs import CertSettings, certificate_pending, pool_host_certificate
from actors.servers.httpserver import GET_BODY, READ_TIMEOUT, HttpServer, Request, Response, bound_port, json_response
from actors.servers.metrics import CONTROLLER_PORT, ControllerMetrics, MetricsServer, MetricsSettings
from actors.servers.pod_webhook import PodResourceWebhook
from actors.servers.pool_host import PoolHost, keep_certificate, open_listeners
from actors.servers.webhook import DEFAULT_PORT as DEFAULT_WEBHOOK_PORT
from actors.servers.webhook import AdmissionWebhook, WebhookSettings, describe_host
from actors.stores.port import Store
from actors.stores.selection import StoreSettings, open_store
from actors.stores.sqlite import default_store_path
from actors.stores.validating import ValidatingStore
from spider.errors import SpiderError
from spider.gc import GcSettings
from spider.podinject import PodInjectSettings
from spider.validation import AdmissionSettings

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
    read_timeout: float = READ_TIMEOUT
    """Seconds a client of any of the controller's ports (health, webhook, pool host) may take to send one request
    (a TLS handshake included); an idle connection is closed after it."""
    webhook: bool = False
    """Serve the admission webhook (off by default: the store layer keeps the invariants without it)."""
    webhook_host: str | None = attrs.field(factory=default_bind_host)
    """Address for the webhook: ``$POD_IP`` when set; ``None`` binds every address."""
    webhook_port: int = DEFAULT_WEBHOOK_PORT
    webhook_cert_dir: Path | None = None
    """Mounted ``tls.crt``/``tls.key`` (cert-manager or provided), waited for when missing; ``None``: a CA is
    made and stored (the Secret ``webhook_secret``)."""
    webhook_service: str = "spiderpool-controller"
    webhook_configuration: str = "spiderpool-controller"
    webhook_secret: str = "spiderpool-controller-server-certs"
    webhook_extra_hosts: tuple[str, ...] = ()
    pod_inject: PodInjectSettings = attrs.field(factory=PodInjectSettings)
    """Spiderpool's ``podResourceInject``: when enabled the webhook also serves the pod mutating webhook
    (``actors.servers.pod_webhook``), and is served for it even without ``webhook``."""
    pool_host: bool = True
    """With an API server store, host the pools while leading (agents forward their requests here)."""
    pool_host_host: str | None = attrs.field(factory=default_bind_host)
    """Address of the pool host and the IP its certificate names: ``$POD_IP`` (the Pod's IP, which agents
    read from the Pod); ``None`` binds every address and names 127.0.0.1."""
    pool_host_port: int = DEFAULT_POOL_HOST_PORT
    pool_host_client: str = ""
    """The only user the pool host serves; empty: ``system:serviceaccount:<namespace>:spiderpool-agent``."""
    pool_host_conflict_budget: float = 1.0
    """Seconds a hosted pool's batch may keep losing write races (to agents writing locally) before it fails;
    keep it under the agents' ``--pool-host-budget`` (see ``actors.ipam.remote`` on why)."""
    pool_host_linger: float = 0.25
    """At most the seconds a hosted pool, once busy, waits for a request from every node its last two writes
    served, so that requests from many nodes share a write (``PoolActor.linger``); a lone request is never delayed.
    Long enough to cover one round of the nodes' requests, so that a straggler joins the next round's write
    instead of writing alone (``docs/benchmarks.md``)."""
    release_cooldown: float = 0.0
    """What the hosted pools rest released addresses for when the pool does not say: the agents' value."""
    max_pool_status_bytes: int | None = DEFAULT_MAX_STATUS_BYTES
    """The hosted pools' status-size cap: the agents' ``--max-pool-status-bytes``."""
    ca_configmap: str = DEFAULT_CA_CONFIGMAP
    """The ConfigMap (in ``namespace``) the CA of the pool host's certificate is published in."""
    gc: GcSettings = attrs.field(factory=lambda: GcSettings.from_environ(os.environ))
    """IP garbage collection while leading (``actors.controller.gc``): Spiderpool's ``SPIDERPOOL_GC_*``."""
    enable_spider_subnet: bool = True
    """[enableSpiderSubnet] Manage SpiderSubnets' auto pools and adopt manual pools inside a subnet."""
    enable_auto_pool: bool = True
    """[enableAutoPoolForApplication] Create, size and reclaim a pool per application (reference §7.1)."""
    auto_pool_default_redundant: int = 0
    """[clusterSubnetAutoPoolDefaultRedundantIPNumber] Spare addresses of an auto pool whose application names
    no ``ippool-ip-number`` (Spiderpool's effective default is 0)."""
    admission: AdmissionSettings = attrs.field(factory=AdmissionSettings)
    """[enableIPv4, enableIPv6, enableSpiderSubnet] The switches the admission webhook's rules read."""
    metrics: MetricsSettings = attrs.field(factory=lambda: MetricsSettings(port=CONTROLLER_PORT))
    """``GET /metrics`` on port 5721 (``actors.servers.metrics``); off unless enabled, as Spiderpool's."""

    multus: MultusSettings | None = attrs.field(factory=MultusSettings)
    """Keep each SpiderMultusConfig's NetworkAttachmentDefinition while leading (``actors.controller.multus``);
    ``None``: do not (Spiderpool's ``SPIDERPOOL_MULTUS_CONFIG_ENABLED=false``)."""
    coordinator: CoordinatorSyncSettings | None = attrs.field(factory=CoordinatorSyncSettings)
    """Keep the SpiderCoordinators' status while leading (``actors.controller.coordinator_sync``); ``None``:
    do not (Spiderpool's ``SPIDERPOOL_COORDINATOR_ENABLED=false``)."""

    @property
    def pool_host_user(self) -> str:
        """Who may use the pool host."""
        return self.pool_host_client or f"system:serviceaccount:{self.namespace}:{DEFAULT_AGENT_ACCOUNT}"

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
        return WebhookSettings(
            certs=certs, port=self.webhook_port, host=self.webhook_host, read_timeout=self.read_timeout
        )


@attrs.define(eq=False)
class Controller:
    """A running controller: its elector, the reconciler while leading, the servers' ports."""

    settings: ControllerSettings
    store: Store
    elector: LeaderElector
    webhook: AdmissionWebhook | None = None
    reconciler: PoolReconciler | None = None
    pool_host: PoolHost | None = None
    """The pool host (API server store only); it serves while ``pools`` is set on it (we lead)."""
    pools: PoolRegistry | None = None
    """The hosted pool actors of the current (or last) leadership, for ``GET /v1/spider/stats``."""
    gc: IpGarbageCollector | None = None
    """The IP garbage collector of the current (or last) leadership."""
    applications: ApplicationController | None = None
    """The auto-pool work of the current leadership (SpiderSubnet on)."""
    pool_host_port: int | None = None
    health_port: int | None = None
    metrics_port: int | None = None
    """The port of ``GET /metrics`` when served."""
    coordinator_sync: CoordinatorSync | None = None
    """The SpiderCoordinator status keeper of the current (or last) leadership."""
    multus: MultusReconciler | None = None
    """The SpiderMultusConfig controller of the current (or last) leadership."""
    started: bool = False
    _scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)

    async def lead(self) -> None:
        """The leading work: runs while this instance holds the Lease, cancelled when it stops."""
        reconciler = PoolReconciler(self.store, resync_period=self.settings.resync_period)
        self.reconciler = reconciler
        try:
            async with trio.open_nursery() as actors:
                if self.pool_host is not None:  # NB: a new leader's actors start by reading (PoolRegistry)
                    s = self.settings
                    self.pools = PoolRegistry(
                        self.store,
                        Supervisor(actors),
                        default_cooldown=s.release_cooldown,
                        conflict_budget=s.pool_host_conflict_budget,
                        linger=s.pool_host_linger,
                        max_status_bytes=s.max_pool_status_bytes,
                    )
                    self.pool_host.registry = self.pools
                self.gc = IpGarbageCollector(self.store, self.settings.gc, pools=self.pools)
                actors.start_soon(self.gc.run)
                if self.settings.enable_spider_subnet:
                    self.applications = ApplicationController(
                        # NB: it writes pools' specs, which admission checks (an auto pool's IPs are what its
                        # subnet records for it): a late resize by a deposed leader is refused, not applied
                        ValidatingStore(self.store, self.settings.admission),
                        SubnetRegistry(self.store, Supervisor(actors)),
                        ApplicationSettings(
                            enable_spider_subnet=self.settings.enable_spider_subnet,
                            enable_auto_pool=self.settings.enable_auto_pool,
                            default_redundant=self.settings.auto_pool_default_redundant,
                            resync_period=self.settings.resync_period,
                        ),
                    )
                    actors.start_soon(self.applications.run)
                if self.settings.multus is not None:
                    self.multus = MultusReconciler(self.store, self.settings.multus)
                    actors.start_soon(self.multus.run)
                if self.settings.coordinator is not None:
                    self.coordinator_sync = CoordinatorSync(self.store, self.settings.coordinator)
                    actors.start_soon(self.coordinator_sync.run)
                try:
                    await reconciler.run()
                finally:  # NB: first, so no batch reaches actors being cancelled: they get 421 instead
                    if self.pool_host is not None:
                        self.pool_host.registry = None
                actors.cancel_scope.cancel(reason="leading work finished")
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
        if self.elector.leading and (self.gc is None or not self.gc.synced):
            problems.append("leading, but the IP GC's pod informer has not listed the pods yet")
        if self.webhook is not None and self.webhook.port is None:
            problems.append("the admission webhook is not serving yet")
        elif self.webhook is not None and not self.webhook.cache.synced:
            problems.append("the admission webhook has not listed the pools and subnets yet")
        elif self.webhook is not None and self.webhook.pods is not None and not self.webhook.pods.cache.synced:
            problems.append("the pod webhook has not listed the SpiderMultusConfigs and Namespaces yet")
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
        if request.path == "/v1/spider/stats":
            return json_response(200, self.stats())
        return json_response(404, f"no route for GET {request.path}")

    def stats(self) -> dict[str, Any]:
        """The hosted pools' counters (``PoolStatistics``, as the agents report theirs), of this leadership or
        the last one, and whether we lead."""
        host = self.pool_host
        return {
            "leader": self.elector.leading,
            "pools": self.pools.statistics() if self.pools is not None else {},
            "gc": self.gc.statistics() if self.gc is not None else None,
            "host": {"batches": host.batches, "refused": host.refused} if host is not None else None,
        }

    async def host_pools(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the pool host: get its certificate (retried while the store fails), then serve until cancelled.
        Never holds the controller's start up: the agents serve locally until it answers."""
        s = self.settings
        hosts = (s.pool_host_host or "127.0.0.1",)
        certs = s.webhook_settings().certs
        task_status.started()
        delay = 1.0
        while True:
            try:
                bundle = await pool_host_certificate(self.store, certs, hosts, s.ca_configmap)
                break
            except SpiderError as exc:
                log.warning("pool host not serving yet (retrying in %gs): %s", delay, exc)
                await trio.sleep(delay)
                delay = min(delay * 2, 30.0)
        context = bundle.ssl_context()
        try:
            listeners = await open_listeners(s.pool_host_host, s.pool_host_port, context)
        except OSError as exc:  # NB: the agents serve locally without it; the controller's other work goes on
            log.error("pool host cannot listen on port %d: %s; agents will serve their pools", s.pool_host_port, exc)
            return
        self.pool_host_port = bound_port(listeners[0])
        log.info("pool host on %s port %d (serving %s)", describe_host(s.pool_host_host), self.pool_host_port,
                 s.pool_host_user)  # fmt: skip
        assert self.pool_host is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_certificate, self.store, certs, hosts, s.ca_configmap, bundle, context,
                               certs.refresh_interval)  # fmt: skip
            await nursery.start(self.pool_host.serve, listeners)

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
        # NB: not the ValidatingStore: the controller writes status, finalizers, its Lease, Secret and the webhook
        # configurations' caBundle, none of which goes through admission on Kubernetes either; the one part that
        # writes specs (the auto pools' ApplicationController) is given a ValidatingStore of its own.
        store = await open_store(settings.store)
    controller = Controller(settings, store, LeaderElector(store, settings.leader_settings()))
    try:
        async with trio.open_nursery() as nursery:
            controller._scope = nursery.cancel_scope
            listeners = await trio.open_tcp_listeners(settings.health_port, host=settings.health_host)
            controller.health_port = bound_port(listeners[0])
            health = HttpServer(controller.health, "health", read_timeout=settings.read_timeout, max_body=GET_BODY)
            await nursery.start(health.serve, listeners)
            if settings.metrics.enabled:
                metrics = ControllerMetrics(controller, debug=settings.metrics.debug)
                server = MetricsServer(metrics.render, settings.metrics, name="controller metrics")
                await nursery.start(server.serve)
                controller.metrics_port = server.port
            if settings.webhook or settings.pod_inject.enabled:
                pods = PodResourceWebhook(store, settings.pod_inject) if settings.pod_inject.enabled else None
                controller.webhook = AdmissionWebhook(store, settings=settings.admission, pods=pods)
                webhook_settings = settings.webhook_settings()
                if await certificate_pending(webhook_settings.certs) is None:
                    await nursery.start(controller.webhook.serve, webhook_settings)
                else:  # NB: it waits for its mounted certificate; the rest runs meanwhile, not ready until it serves
                    nursery.start_soon(controller.webhook.serve, webhook_settings)
            review = getattr(store, "review_token", None)  # NB: only an API server store hosts pools
            if settings.pool_host and review is not None:
                user = settings.pool_host_user
                controller.pool_host = PoolHost(
                    review, user, leader=lambda: controller.elector.leader, read_timeout=settings.read_timeout
                )
                await nursery.start(controller.host_pools)
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
            settle_heap()
            async for signum in signals:
                name = signal.Signals(signum).name
                log.info("received %s; stopping the leading work, releasing the Lease", name)
                controller.stop(f"received {name}")
                break
