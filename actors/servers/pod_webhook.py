"""The pod mutating webhook (reference §7.3): RDMA, network, master-NIC and sub-ENI resource injection.

Owns the HTTP side of ``spider.podinject``: answering AdmissionReviews for pods on ``/mutate--v1-pod``
(controller-runtime's path, which Spiderpool registers), the cache of what a decision reads (every
SpiderMultusConfig and every Namespace, kept by one list and one watch per kind, so a review costs no API
call), and the webhook's entry of the MutatingWebhookConfiguration (``webhook_entry``: failurePolicy Fail as
Spiderpool's, the namespace filter as ``namespaceSelector``).

It is served by ``actors.servers.webhook.AdmissionWebhook`` (same TLS listener, same certificate and caBundle)
when ``podResourceInject.enabled`` (``spider controller --pod-resource-inject``); off by default, as in
Spiderpool.  Only CREATE is mutated; the namespace filter is checked again here, whatever the configuration's
selector says.  A refusal is ``403 Forbidden`` with Spiderpool's text (controller-runtime's answer to a
defaulter's error); until the cache has listed both kinds the answer is HTTP 500, so the API server applies
``failurePolicy``.
"""

from __future__ import annotations

import logging

import attrs
import trio

from actors.servers.httpserver import Request, Response, json_response
from actors.stores.informer import KindCache
from actors.stores.port import Obj, Store
from spider.admission import allowed, denied, parse_review, patched, respond
from spider.errors import InvalidInput, SpiderError, StoreUnavailable
from spider.podinject import (
    POD_WEBHOOK_NAME,
    POD_WEBHOOK_PATH,
    PodInjectSettings,
    namespace_selected,
    namespace_selector,
    pod_patch,
)

log = logging.getLogger(__name__)

SMC = "SpiderMultusConfig"
NAMESPACE = "Namespace"
CACHED = (SMC, NAMESPACE)
RESYNC_PERIOD = 300.0
RETRY_DELAY = 1.0
SYNC_WAIT = 5.0
"""Seconds a review waits for the cache's first listing before it is answered 500."""


def _slim(kind: str, obj: Obj) -> Obj:
    """What the cache keeps: metadata (name, namespace, labels, annotations) and spec; no status."""
    meta = obj.get("metadata") or {}
    kept = {k: meta[k] for k in ("name", "namespace", "labels", "annotations") if k in meta}
    return {"metadata": kept, "spec": obj.get("spec") or {}}


def injection_cache(store: Store) -> KindCache:
    """Every SpiderMultusConfig and Namespace, so a review makes no API call."""
    return KindCache(store, CACHED, _slim, who="pod webhook cache", resync_period=RESYNC_PERIOD,
                     retry_delay=RETRY_DELAY)  # fmt: skip


def namespace_annotations(cache: KindCache, name: str) -> dict[str, str]:
    """The annotations of Namespace ``name`` (none when it is not known)."""
    obj = cache.get(NAMESPACE, name) or {}
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return {str(k): v for k, v in annotations.items() if isinstance(v, str)}


@attrs.define(eq=False)
class PodResourceWebhook:
    """Answers pod AdmissionReviews; ``handle`` is the HTTP handler, ``run`` keeps its cache."""

    store: Store
    settings: PodInjectSettings = attrs.field(factory=lambda: PodInjectSettings(enabled=True))
    sync_wait: float = SYNC_WAIT
    reviews: int = 0
    refused: int = 0
    cache: KindCache = attrs.field(default=attrs.Factory(lambda self: injection_cache(self.store), takes_self=True))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the cache until cancelled."""
        await self.cache.run(task_status=task_status)

    async def handle(self, request: Request) -> Response:
        """One HTTP request: a pod's AdmissionReview in, the answer (a JSONPatch or a refusal) out."""
        if request.method != "POST":
            return json_response(405, f"{request.path} takes POST")
        try:
            review = parse_review(request.body)
        except SpiderError as exc:
            return json_response(400, str(exc))
        self.reviews += 1
        if (review.group, review.kind) != ("", "Pod"):
            answer = denied(f"{POD_WEBHOOK_PATH} reviews Pod, not {review.kind}", code=400, reason="BadRequest")
            return json_response(200, respond(review, answer))
        pod = review.object
        meta = (pod or {}).get("metadata")
        namespace = review.namespace or (str(meta.get("namespace") or "") if isinstance(meta, dict) else "")
        if review.operation != "CREATE" or pod is None or not namespace_selected(self.settings, namespace):
            return json_response(200, respond(review, allowed()))
        with trio.move_on_after(self.sync_wait):
            await self.cache.wait_synced()
        if not self.cache.synced:
            problem = StoreUnavailable(reason="the pod webhook has not listed the SpiderMultusConfigs yet")
            return json_response(500, str(problem))  # NB: the API server applies failurePolicy
        try:
            ops = pod_patch(
                pod,
                namespace_annotations(self.cache, namespace),
                self.cache.items(SMC),
                self.settings,
                namespace,
            )
        except InvalidInput as exc:
            self.refused += 1
            name = review.name or (meta.get("generateName") if isinstance(meta, dict) else None)
            log.info("refused pod %s/%s: %s", namespace, name, exc)
            return json_response(200, respond(review, denied(str(exc), code=403, reason="Forbidden")))
        return json_response(200, respond(review, patched(ops)))


def webhook_entry(settings: PodInjectSettings, *, service: str, namespace: str, port: int = 443) -> Obj:
    """The pod webhook's entry of the MutatingWebhookConfiguration (what ``deploy/webhook/pod-inject/`` adds)."""
    return {
        "name": POD_WEBHOOK_NAME,
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        "timeoutSeconds": 5,
        "namespaceSelector": namespace_selector(settings),
        "clientConfig": {"service": {"name": service, "namespace": namespace, "port": port, "path": POD_WEBHOOK_PATH}},
        "rules": [
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }
        ],
    }
