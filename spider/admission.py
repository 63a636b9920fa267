"""Admission review for Spiderpool's kinds: AdmissionReview v1 in and out, the mutation as a JSONPatch.

Owns the webhook's decisions, without any I/O (``actors.servers.webhook`` serves them over TLS):

- ``parse_review`` reads an ``admission.k8s.io/v1`` (or ``v1beta1``) AdmissionReview; ``respond`` writes the
  answer in the same version, echoing the request's ``uid``;
- ``validate_review`` allows or denies (``code`` 422, ``reason`` ``Invalid`` and the rule's message, as
  Spiderpool's webhook answers); ``mutate_review`` allows with a base64 JSONPatch and never denies
  (Spiderpool's CRD mutating webhooks never reject: a mutation that fails leaves the object to validation);
- ``json_patch`` turns "before" and "after" into RFC 6902 operations;
- ``mutate_multus_review`` and ``validate_multus_review`` do the same for SpiderMultusConfig with
  ``spider.multus``'s rules (its defaults and the inject annotations copied to labels; its validation, given
  the NetworkAttachmentDefinition of that name if one exists).

Rules that always hold, whatever the validation says: a DELETE is allowed; an UPDATE that changes only
``metadata.finalizers`` (the controller draining a pool, or a person) is neither validated nor mutated, so
a bad webhook can never keep an object from being deleted; an object being deleted is not mutated.

The rules themselves are the store layer's (``spider.validation``: ``mutate`` and ``validate``), so the webhook
and every store backend refuse exactly the same objects with exactly the same words.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from spider import limits, multus, validation
from spider.errors import DecodeFailure, InvalidInput, InvalidSpec
from spider.kinds import SPIDER_GROUP, SPIDER_VERSION
from spider.validation import AdmissionSettings

Obj = dict[str, Any]

REVIEW_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
DEFAULT_SETTINGS = AdmissionSettings()


def webhook_path(action: str, kind: str) -> str:
    """Spiderpool's path for a kind: ``/validate-spiderpool-spidernet-io-v2beta1-spiderippool``."""
    return f"/{action}-{SPIDER_GROUP.replace('.', '-')}-{SPIDER_VERSION}-{kind.lower()}"


@attrs.frozen
class AdmissionRequest:
    """The parts of an AdmissionReview's ``request`` a decision needs."""

    api_version: str
    uid: str
    kind: str
    group: str
    operation: str
    name: str
    object: Obj | None
    old_object: Obj | None
    dry_run: bool = False
    namespace: str = ""
    """``request.namespace``: the object's namespace (set by the API server even when the object has none)."""


def parse_review(body: bytes) -> AdmissionRequest:
    """Read an AdmissionReview; ``DecodeFailure`` for non-JSON, ``InvalidInput`` for a wrong shape."""
    try:
        review = limits.loads(body)
    except ValueError as exc:
        raise DecodeFailure(what="AdmissionReview", reason=str(exc)) from None
    if not isinstance(review, dict) or review.get("kind") != "AdmissionReview":
        raise InvalidInput(reason="the body is not an AdmissionReview")
    api_version = review.get("apiVersion")
    if api_version not in REVIEW_VERSIONS:
        raise InvalidInput(reason=f"AdmissionReview apiVersion {api_version!r} (known: {', '.join(REVIEW_VERSIONS)})")
    request = review.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str) or not request["uid"]:
        raise InvalidInput(reason="AdmissionReview without request.uid")
    kind = request.get("kind")
    if not isinstance(kind, dict) or not isinstance(kind.get("kind"), str):
        raise InvalidInput(reason="AdmissionReview without request.kind")
    operation = request.get("operation")
    if operation not in ("CREATE", "UPDATE", "DELETE", "CONNECT"):
        raise InvalidInput(reason=f"AdmissionReview operation {operation!r}")
    objects = [request.get("object"), request.get("oldObject")]
    for obj in objects:
        if obj is not None and not isinstance(obj, dict):
            raise InvalidInput(reason="AdmissionReview object and oldObject must be objects or null")
        if obj is not None and not all(isinstance(obj.get(key, {}), dict) for key in ("metadata", "spec")):
            # NB: every rule reads them as objects (a CRD's schema says so; a review from elsewhere may not)
            raise InvalidInput(reason="AdmissionReview object and oldObject must have objects as metadata and spec")
    return AdmissionRequest(
        api_version=api_version,
        uid=request["uid"],
        kind=kind["kind"],
        group=str(kind.get("group", "")),
        operation=operation,
        name=str(request.get("name") or ""),
        object=objects[0],
        old_object=objects[1],
        dry_run=bool(request.get("dryRun", False)),
        namespace=str(request.get("namespace") or ""),
    )


def respond(request: AdmissionRequest, response: Obj) -> Obj:
    """The AdmissionReview answer: ``response`` with the request's uid, in the request's apiVersion."""
    return {
        "apiVersion": request.api_version,
        "kind": "AdmissionReview",
        "response": {"uid": request.uid, **response},
    }


def allowed(*warnings: str) -> Obj:
    """An allowing response."""
    out: Obj = {"allowed": True}
    if warnings:
        out["warnings"] = list(warnings)
    return out


def denied(message: str, *, code: int = 422, reason: str = "Invalid") -> Obj:
    """A denying response with a ``metav1.Status``; 422 Invalid is what Spiderpool's rules answer."""
    return {"allowed": False, "status": {"status": "Failure", "code": code, "reason": reason, "message": message}}


def patched(ops: Sequence[Obj]) -> Obj:
    """An allowing response carrying a JSONPatch (none when there is nothing to change)."""
    if not ops:
        return allowed()
    encoded = base64.b64encode(json.dumps(list(ops), separators=(",", ":")).encode()).decode()
    return {"allowed": True, "patchType": "JSONPatch", "patch": encoded}


def _pointer(path: str, key: str) -> str:
    return f"{path}/{key.replace('~', '~0').replace('/', '~1')}"


def json_patch(old: Any, new: Any, path: str = "") -> list[Obj]:
    """RFC 6902 operations that turn ``old`` into ``new``: objects key by key, anything else replaced whole."""
    if isinstance(old, dict) and isinstance(new, dict):
        ops: list[Obj] = [{"op": "remove", "path": _pointer(path, k)} for k in old if k not in new]
        for key, value in new.items():
            if key not in old:
                ops.append({"op": "add", "path": _pointer(path, key), "value": value})
            else:
                ops.extend(json_patch(old[key], value, _pointer(path, key)))
        return ops
    if type(old) is type(new) and old == new:  # NB: the type check keeps 1 and True apart
        return []
    return [{"op": "replace", "path": path, "value": new}]


def finalizer_only(request: AdmissionRequest) -> bool:
    """Whether an UPDATE changes nothing but ``metadata.finalizers`` (status is not the webhook's business)."""
    if request.operation != "UPDATE" or request.object is None:
        return False
    return validation.finalizer_only(request.object, request.old_object)


def _deleting(obj: Mapping[str, Any] | None) -> bool:
    return bool(obj and (obj.get("metadata") or {}).get("deletionTimestamp"))


def validate_review(
    request: AdmissionRequest,
    existing: Sequence[Mapping[str, Any]] = (),
    settings: AdmissionSettings = DEFAULT_SETTINGS,
) -> Obj:
    """The validating webhook's answer for one request; ``existing``: the pools and subnets the rules compare."""
    if request.operation in ("DELETE", "CONNECT") or finalizer_only(request):
        return allowed()
    if request.object is None:
        return denied(f"{request.operation} of {request.kind} {request.name!r} without an object", code=400)
    try:
        validation.validate(request.kind, request.object, request.old_object, existing, settings)
    except InvalidSpec as exc:
        return denied(str(exc))
    return allowed()


def mutate_review(request: AdmissionRequest, subnets: Sequence[Mapping[str, Any]] = ()) -> Obj:
    """The mutating webhook's answer for one request: a patch, or nothing; never a denial."""
    obj = request.object
    if request.operation not in ("CREATE", "UPDATE") or obj is None or _deleting(obj) or finalizer_only(request):
        return allowed()
    return patched(json_patch(obj, validation.mutate(request.kind, obj, subnets)))


def multus_object(request: AdmissionRequest) -> Obj | None:
    """The reviewed SpiderMultusConfig, its namespace filled from the request when its metadata has none (a
    create's object may lack it), so the NAD lookup and the texts name the right namespace."""
    obj = request.object
    if obj is None:
        return None
    meta = obj.get("metadata")
    if isinstance(meta, dict) and not meta.get("namespace") and request.namespace:
        return {**obj, "metadata": {**meta, "namespace": request.namespace}}
    return obj


def mutate_multus_review(request: AdmissionRequest) -> Obj:
    """The SpiderMultusConfig mutating webhook's answer: Spiderpool's defaults as a patch; never a denial."""
    obj = request.object
    if request.operation not in ("CREATE", "UPDATE") or obj is None or _deleting(obj) or finalizer_only(request):
        return allowed()
    return patched(json_patch(obj, multus.mutate_multus_config(obj)))


def validate_multus_review(request: AdmissionRequest, existing_nad: Mapping[str, Any] | None = None) -> Obj:
    """The SpiderMultusConfig validating webhook's answer, the store layer's rules on the object as mutated
    (``existing_nad``: the NetworkAttachmentDefinition named ``multus.nad_name`` of it, if one exists)."""
    if request.operation in ("DELETE", "CONNECT") or finalizer_only(request):
        return allowed()
    obj = multus_object(request)
    if obj is None:
        return denied(f"{request.operation} of {request.kind} {request.name!r} without an object", code=400)
    try:
        multus.validate_multus_config(multus.mutate_multus_config(obj), request.old_object, existing_nad)
    except InvalidSpec as exc:
        return denied(str(exc))
    return allowed()
