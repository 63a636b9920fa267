"""The fake API server's storage: Kubernetes' write and watch semantics for JSON objects, without HTTP.

Owns the objects, the global resourceVersion counter, the event history that watches replay, the served
resources (built-in kinds from ``spider.kinds``, custom resources from CustomResourceDefinitions), and the
answers the real API server gives, each as an ``ApiError`` carrying the ``Status`` it sends.  What it mirrors
(kube-apiserver's generic registry, the custom resource strategy, the watch cache; checked against the
upstream code, see ``tests/fakeapi/__init__.py``):

- managedFields: every create and every write that changes the object stamps the entry of its manager
  (``fieldManager``, else the User-Agent up to its first ``/``), operation ``Update`` and subresource with the
  time, to the second, and the top-level fields written; the other entries stay (``fieldmanager``'s
  ``managedFieldsUpdater``).  So an object read twice across a write differs in its metadata, as on a real
  server.
- pruning: a field a custom resource's structural schema does not list is dropped on every write, unless
  the schema says ``x-kubernetes-preserve-unknown-fields`` (``apiserver/schema/pruning``); and metadata keeps
  only the fields ``ObjectMeta`` has, for every kind (the server decodes it into that struct).  So a status
  field our CRD forgot is silently gone when read back, as on a real server.
- defaulting: the OpenAPI ``default:`` values of a custom resource's schema (its CRD's
  ``openAPIV3Schema``; for our kinds, ``deploy/crds/*.yaml``) fill in absent fields on create and on every
  update, status subresource included, as the structural-schema defaulting of apiextensions-apiserver does
  (``apiserver/schema/defaulting``): top down, a set default defaulted in turn, ``null`` defaulted unless the
  field is ``nullable``.  So a SpiderEndpoint status written without ``vlan`` comes back with ``vlan: 0``.
- create: 201; system fields wiped and set (uid, creationTimestamp, generation 1); ``generateName``; status
  dropped for kinds with a status subresource (Pods start ``Pending``, Namespaces ``Active``); a set
  resourceVersion is a 500 ("resourceVersion should not be set on objects to be created"); a name taken is
  409 ``AlreadyExists``; a namespace that does not exist is 404 (NamespaceLifecycle); bad labels 422; a Pod
  without a container, or a container without a name or an image, 422 (``spec.containers: Required value``).
- update (PUT): 404 when missing (no create-on-update); a uid in the body is a precondition (409); custom
  resources and Leases need a resourceVersion (422 "must be specified for an update"), other built-in kinds
  take the stored one; an unparseable one is a 500 (``strconv.ParseUint: ...``, no reason); a stale one is 409
  ``Conflict``; the status subresource replaces only status; generation grows with spec; no new finalizers on
  an object being deleted (422); removing the last one deletes it and answers the object as sent (its
  resourceVersion too); a no-op writes nothing.
- size: an object over etcd's 1.5 MiB is a 500 "etcdserver: request is too large" (a request body over 3 MiB is
  413 before it is read, ``tests.fakeapi.server``).
- delete: a Pod a node runs (``spec.nodeName``, not finished) stays, terminating, for its grace period
  (``gracePeriodSeconds``, else its ``terminationGracePeriodSeconds``, defaulted to 30 on create), which a later
  delete may only shorten, until one with grace 0 (its kubelet's) removes it; preconditions (409); finalizers only
  mark (deletionTimestamp, grace 0, generation + 1), once.
- list: label selectors (400 when malformed), field selectors (``spider.fields``: the fields each kind can be
  selected by; 400 "field label not supported" for another, not on watches), ``limit``/``continue`` over a
  snapshot (410 when compacted), items of built-in kinds without apiVersion/kind.
- watch: ``""``/``"0"`` start with a synthetic ``ADDED`` per object; an unparseable version is a 500 whose
  ``Status`` has no reason (the storage layer's invalid-field error, which no API error wraps); a
  compacted one an ``ERROR`` event (410 ``Expired``) on a 200 stream; selector transitions become
  ``ADDED``/``DELETED``; ``DELETED`` carries the last state stamped with the deletion's version; a bookmark
  carries the version of the resource's own latest event (``resource_versions``), never one that only other
  resources' writes reached, and none comes before the resource has an event the watch has not seen.

Not modelled: server-side apply (and the exact field sets of ``managedFields``), admission webhooks, dry run,
patch, per-kind validation of built-in specs (and the pruning of their unknown fields), schema validation of
custom resources, and garbage collection by owner references.
"""

from __future__ import annotations

import bisect
import copy
import json
import re
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import trio
import yaml

from spider.errors import InvalidInput
from spider.fields import FieldSelector, parse_field_selector, selectable
from spider.kinds import KINDS, SPIDER_GROUP
from spider.selector import Selector, label_key_problem, label_value_problem, parse_selector

Obj = dict[str, Any]
_Objs = list[Obj]  # NB: spelled here because the class's own ``list`` method shadows the builtin

_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery's names.SimpleNameGenerator
_SNAPSHOTS_KEPT = 64
INTERFERENCE_ANNOTATION = "fakeapi.spider.test/interference"
CRD_GROUP = "apiextensions.k8s.io"
CRD_DIR = Path(__file__).resolve().parents[2] / "deploy" / "crds"
"""Our CustomResourceDefinitions: the schemas whose defaults the fake applies to our kinds."""


def now(later: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=later)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pod_grace(pod: Obj, options: object) -> int:
    """Seconds a Pod's deletion waits for its kubelet (``podStrategy.CheckGracefulDelete``): the options' grace,
    else its spec's (30 by default); none for a pod no node runs or one that has finished."""
    spec, phase = pod.get("spec") or {}, (pod.get("status") or {}).get("phase")
    if not spec.get("nodeName") or phase in ("Succeeded", "Failed"):
        return 0
    asked = options.get("gracePeriodSeconds") if isinstance(options, dict) else None
    grace = asked if isinstance(asked, int) else spec.get("terminationGracePeriodSeconds", DEFAULT_POD_GRACE)
    return max(int(grace), 0)


class ApiError(Exception):
    """An answer that is not a success: the HTTP code and the ``Status`` object the API server sends."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> Obj:
        out: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "code": self.code,
        }
        if self.reason:  # NB: StatusReasonUnknown is "" and omitted, as Go's omitempty does
            out["reason"] = self.reason
        if self.details:
            out["details"] = self.details
        return out


class NotServed(Exception):
    """No such resource: the API server answers a plain-text "404 page not found"."""


@attrs.frozen
class Resource:
    """One served resource: where it lives and how the registry treats it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    status_subresource: bool
    custom: bool  # custom resources refuse updates without resourceVersion (AllowUnconditionalUpdate false)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``plural.group`` as error messages name it."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def details(self, name: str, uid: str = "") -> Obj:
        out: Obj = {"name": name, "kind": self.plural}
        if self.group:
            out["group"] = self.group
        if uid:
            out["uid"] = uid
        return out

    def not_found(self, name: str) -> ApiError:
        return ApiError(404, "NotFound", f'{self.qualified} "{name}" not found', self.details(name))

    def conflict(self, name: str, why: str) -> ApiError:
        message = f'Operation cannot be fulfilled on {self.qualified} "{name}": {why}'
        return ApiError(409, "Conflict", message, self.details(name))

    def invalid(self, name: str, field: str, why: str) -> ApiError:
        kind = f"{self.kind}.{self.group}" if self.group else self.kind
        message = f'{kind} "{name}" is invalid: {field}: {why}'
        return ApiError(422, "Invalid", message, {**self.details(name), "causes": [{"field": field, "message": why}]})


CRD_RESOURCE = Resource(CRD_GROUP, "v1", "customresourcedefinitions", "CustomResourceDefinition", False, True, False)
"""Served whatever ``spider.kinds`` says: creating one serves the resource it defines."""


@attrs.frozen
class Event:
    """One write, as the watch history keeps it."""

    rv: int
    resource: tuple[str, str]  # (group, plural)
    namespace: str
    type: str
    object: Obj
    previous: Obj | None


def _labels(obj: Obj | None) -> dict[str, str]:
    labels: dict[str, str] = ((obj or {}).get("metadata") or {}).get("labels") or {}
    return labels


def _without(obj: Obj, *fields: str) -> Obj:
    return {k: v for k, v in obj.items() if k not in fields}


DEFAULT_POD_GRACE = 30
"""``spec.terminationGracePeriodSeconds`` of a Pod that names none (the API's defaulting)."""
MAX_OBJECT_BYTES = 1_572_864
"""etcd's ``--max-request-bytes`` (1.5 MiB): a larger object is not stored, and kube-apiserver passes etcd's
error on as a 500 without a reason (kubernetes#112152)."""
CONDITIONAL_UPDATES_ONLY = frozenset({"Lease"})
"""Built-in kinds whose strategy refuses an update without a resourceVersion (``AllowUnconditionalUpdate``
false: coordination's Lease); the others take the stored one, and custom resources refuse it too."""


def _parse_rv(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _validate_pod_spec(r: Resource, name: str, spec: object) -> None:
    """What kube-apiserver refuses of a new Pod's spec that a test might leave out: its containers, each named
    and with an image (422 ``Invalid``, as ``ValidatePodCreate`` answers)."""
    containers = spec.get("containers") if isinstance(spec, dict) else None
    if not isinstance(containers, list) or not containers:
        raise r.invalid(name, "spec.containers", "Required value")
    for i, container in enumerate(containers):
        for field in ("name", "image"):
            if not isinstance(container, dict) or not container.get(field):
                raise r.invalid(name, f"spec.containers[{i}].{field}", "Required value")


def apply_defaults(value: object, schema: Obj) -> None:
    """Fill in, in place, the ``default:`` values an OpenAPI v3 (structural) schema gives for absent fields.

    As apiextensions-apiserver's ``structuraldefaulting.Default``: an object's absent properties (and those
    that are ``null`` without ``nullable: true``) get a copy of their default, then every property is defaulted
    in turn (a default's own fields included), through ``properties``, ``additionalProperties`` and ``items``.
    """
    if isinstance(value, dict):
        properties: Obj = schema.get("properties") or {}
        for key, sub in properties.items():
            defaulted = isinstance(sub, dict) and "default" in sub
            if defaulted and (key not in value or (value[key] is None and not sub.get("nullable"))):
                value[key] = copy.deepcopy(sub["default"])
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = properties.get(key, extra)
            if isinstance(sub, dict):
                apply_defaults(item, sub)
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for item in value:
                apply_defaults(item, items)


OBJECT_META_FIELDS = frozenset(
    {
        "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
        "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
        "ownerReferences", "finalizers", "zz_deprecatedClusterName", "clusterName", "managedFields",
    }
)  # fmt: skip
"""The fields of ``metav1.ObjectMeta`` (Kubernetes 1.24): a write's metadata keeps these and loses the rest."""


def prune_unknown(value: object, schema: Obj, *, root: bool = False) -> None:
    """Drop, in place, what a structural schema does not list, as apiextensions-apiserver's
    ``structuralpruning.Prune``: an object's keys outside ``properties`` go unless ``additionalProperties``
    describes them or ``x-kubernetes-preserve-unknown-fields`` is set; ``items`` are pruned in turn; at the
    resource's root (and in an ``x-kubernetes-embedded-resource``) ``apiVersion``, ``kind`` and ``metadata``
    stay (metadata is ``ObjectMeta``'s business)."""
    if isinstance(value, dict):
        properties: Obj = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        keep_unknown = bool(schema.get("x-kubernetes-preserve-unknown-fields")) or extra is True
        embedded = root or bool(schema.get("x-kubernetes-embedded-resource"))
        for key in list(value):
            if embedded and key in ("apiVersion", "kind", "metadata"):
                continue
            sub = properties.get(key, extra if isinstance(extra, dict) else None)
            if isinstance(sub, dict):
                prune_unknown(value[key], sub)
            elif not keep_unknown:
                del value[key]
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for item in value:
                prune_unknown(item, items)


def stamp_managed_fields(new: Obj, old: Obj | None, manager: str, subresource: str = "") -> None:
    """Set ``new``'s ``metadata.managedFields`` as an Update by ``manager`` leaves them: the entry of this
    manager, operation and subresource replaced (the time now, the top-level fields it wrote), the others
    kept as ``old`` had them."""
    previous = ((old or {}).get("metadata") or {}).get("managedFields") or []
    ours = (manager, "Update", subresource)
    kept = [e for e in previous if (e.get("manager"), e.get("operation"), e.get("subresource", "")) != ours]
    written = ("status",) if subresource else tuple(k for k in new if k not in ("apiVersion", "kind", "status"))
    entry: Obj = {"manager": manager, "operation": "Update", "apiVersion": new.get("apiVersion", ""), "time": now()}
    entry.update(fieldsType="FieldsV1", fieldsV1={f"f:{k}": {} for k in written})
    if subresource:
        entry["subresource"] = subresource
    new["metadata"]["managedFields"] = [*kept, entry]


def crd_schemas(crd: Obj) -> dict[tuple[str, str, str], Obj]:
    """(group, version, plural) to ``openAPIV3Schema`` of each version a CustomResourceDefinition defines."""
    spec = crd.get("spec") or {}
    group, plural = str(spec.get("group", "")), str((spec.get("names") or {}).get("plural", ""))
    out: dict[tuple[str, str, str], Obj] = {}
    for v in spec.get("versions") or []:
        schema = (v.get("schema") or {}).get("openAPIV3Schema")
        if isinstance(schema, dict):
            out[group, str(v.get("name", "")), plural] = schema
    return out


def our_crd_schemas(crd_dir: Path = CRD_DIR) -> dict[tuple[str, str, str], Obj]:
    """The schemas of the CRDs under ``deploy/crds`` (none when the directory is missing)."""
    out: dict[tuple[str, str, str], Obj] = {}
    for path in sorted(crd_dir.glob("*.y*ml")) if crd_dir.is_dir() else []:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                out.update(crd_schemas(doc))
    return out


@attrs.define(eq=False)
class Cluster:
    """The storage behind one fake API server; every method runs in the server's trio thread."""

    event_retention: int = 10_000
    rv: int = 1
    compacted: int = 0
    resources: dict[tuple[str, str, str], Resource] = attrs.Factory(dict)
    objects: dict[tuple[str, str, str, str], Obj] = attrs.Factory(dict)
    events: list[Event] = attrs.Factory(list)
    service_account_tokens: dict[str, str] = attrs.Factory(dict)
    """Bearer token to the user name a TokenReview answers for it (``mint_token``)."""
    interfere: set[tuple[str, str]] = attrs.Factory(set)
    """(plural, name) of objects another writer always updates just before a PUT to them arrives."""
    writes: int = 0
    resource_versions: dict[tuple[str, str], int] = attrs.Factory(dict)
    """(group, plural) to the version of its latest event: what its watch cache has seen, and so what a
    bookmark on a watch of it carries (``cacher.go``: a resource's own events move it, not another's)."""
    schemas: dict[tuple[str, str, str], Obj] = attrs.Factory(dict)
    """(group, version, plural) to the ``openAPIV3Schema`` whose defaults writes of that resource get."""
    _snapshots: dict[str, tuple[int, list[Obj]]] = attrs.Factory(dict)
    _changed: trio.Event = attrs.Factory(trio.Event)

    @classmethod
    def new(
        cls, *, crds_installed: bool = True, event_retention: int = 10_000, calico: bool = False, cilium: bool = False
    ) -> Cluster:
        """A cluster with the built-in kinds, the default namespaces and (unless not asked) our CRDs; Calico's
        IPPool and Cilium's CiliumPodIPPool only when asked, as a real cluster serves them only with their CRDs."""
        cluster = cls(event_retention=event_retention)
        if crds_installed:
            cluster.schemas.update(our_crd_schemas())
        foreign = {"crd.projectcalico.org": calico, "cilium.io": cilium}
        for k in KINDS:
            custom = not (k.group in ("", "apps", "batch") or k.group.endswith(".k8s.io"))
            if not foreign.get(k.group, True):
                continue
            if k.group != SPIDER_GROUP or crds_installed:
                status = k.status_subresource
                cluster.serve(Resource(k.group, k.version, k.plural, k.kind, k.namespaced, status, custom))
        namespaces = cluster.resource("", "v1", "namespaces")
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            cluster.create(namespaces, "", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        return cluster

    # --- service account tokens ---------------------------------------------------------------------------

    def mint_token(self, namespace: str, account: str) -> str:
        """A new token of ServiceAccount ``namespace/account``, as kubelet would project into a pod."""
        token = f"sa-{account}-{secrets.token_hex(12)}"
        self.service_account_tokens[token] = f"system:serviceaccount:{namespace}:{account}"
        return token

    def review_token(self, body: object) -> Obj:
        """The TokenReview kube-apiserver answers (``authentication.k8s.io/v1``): who the token is, if anyone."""
        spec = body.get("spec") if isinstance(body, dict) else None
        token = spec.get("token") if isinstance(spec, dict) else None
        if not isinstance(token, str) or not token:
            raise ApiError(422, "Invalid", "TokenReview.authentication.k8s.io is invalid: spec.token: Required value")
        user = self.service_account_tokens.get(token)
        status: Obj = {"authenticated": user is not None}
        if user is not None:
            status["user"] = {"username": user, "groups": ["system:serviceaccounts", "system:authenticated"]}
        else:
            status["error"] = "invalid bearer token"
        return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec, "status": status}

    # --- resources ---------------------------------------------------------------------------------------

    def serve(self, resource: Resource) -> None:
        self.resources[resource.group, resource.version, resource.plural] = resource

    def resource(self, group: str, version: str, plural: str) -> Resource:
        found = self.resources.get((group, version, plural))
        if found is None:
            raise NotServed(f"/{group}/{version}/{plural}")
        return found

    def namespaced_plural(self, group: str, version: str, plural: str) -> bool:
        found = self.resources.get((group, version, plural))
        return found is not None and found.namespaced

    def _crd_changed(self, crd: Obj, gone: bool) -> None:
        """Serve (or stop serving) the versions a CustomResourceDefinition describes."""
        spec = crd.get("spec") or {}
        group, names = str(spec.get("group", "")), spec.get("names") or {}
        schemas = crd_schemas(crd)
        for v in spec.get("versions") or []:
            key = (group, str(v.get("name", "")), str(names.get("plural", "")))
            if gone or not v.get("served", True):
                self.resources.pop(key, None)
                self.schemas.pop(key, None)
                continue
            if key in schemas:
                self.schemas[key] = schemas[key]
            status = "status" in ((v.get("subresources") or {}) or {})
            namespaced = spec.get("scope") == "Namespaced"
            self.serve(Resource(key[0], key[1], key[2], str(names.get("kind", "")), namespaced, status, True))
        if gone:
            for stale in [k for k in self.objects if k[:2] == (group, names.get("plural"))]:
                del self.objects[stale]

    # --- plumbing ----------------------------------------------------------------------------------------

    @property
    def next_change(self) -> trio.Event:
        """Set by the next write.  Take it *before* reading what to send: a write while the reader awaits its
        send then still wakes it (an event taken after that write would wait for the one after it)."""
        return self._changed

    def _key(self, r: Resource, namespace: str, name: str) -> tuple[str, str, str, str]:
        return (r.group, r.plural, namespace if r.namespaced else "", name)

    def _commit(self, r: Resource, namespace: str, type_: str, obj: Obj, previous: Obj | None) -> Obj:
        if type_ != "DELETED" and len(json.dumps(obj)) > MAX_OBJECT_BYTES:  # NB: etcd's answer, passed on as is
            raise ApiError(500, "", "etcdserver: request is too large")
        self.rv += 1
        self.writes += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        key = self._key(r, namespace, obj["metadata"]["name"])
        if type_ == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        self.events.append(Event(self.rv, (r.group, r.plural), key[2], type_, copy.deepcopy(obj), previous))
        self.resource_versions[r.group, r.plural] = self.rv
        if len(self.events) > 2 * self.event_retention:
            dropped = self.events[: -self.event_retention]
            self.compacted = max(self.compacted, dropped[-1].rv)
            del self.events[: -self.event_retention]
        if r == CRD_RESOURCE:
            self._crd_changed(obj, type_ == "DELETED")
        self._changed.set()
        self._changed = trio.Event()
        return copy.deepcopy(obj)

    def compact(self) -> None:
        """Forget every event so far (etcd compaction): watches from older versions get 410."""
        self.events.clear()
        self.compacted = self.rv

    def _stored(self, r: Resource, namespace: str, name: str) -> Obj:
        found = self.objects.get(self._key(r, namespace, name))
        if found is None:
            raise r.not_found(name)
        return found

    def _check_body(self, r: Resource, namespace: str, body: object) -> Obj:
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise ApiError(400, "BadRequest", "the body is not a JSON object with metadata")
        if body.get("apiVersion") != r.api_version or body.get("kind") != r.kind:
            got = f"{body.get('apiVersion')}, Kind={body.get('kind')}"
            raise ApiError(400, "BadRequest", f"the API version in the data ({got}) does not match the resource")
        schema = self.schemas.get((r.group, r.version, r.plural)) if r.custom else None
        if schema is not None:  # NB: as the server decodes a custom resource: pruned, then defaulted
            metadata = body.pop("metadata", {})
            prune_unknown(body, schema, root=True)
            apply_defaults(body, schema)  # NB: defaults never touch metadata (the schema cannot describe it)
            body["metadata"] = metadata
        m = body.setdefault("metadata", {})
        for unknown in [k for k in m if k not in OBJECT_META_FIELDS]:
            del m[unknown]
        if r.namespaced:
            if not m.get("namespace"):
                m["namespace"] = namespace
            elif m["namespace"] != namespace:
                message = "the namespace of the provided object does not match the namespace sent on the request"
                raise ApiError(400, "BadRequest", message)
        else:
            m.pop("namespace", None)
        return body

    def _validate_meta(self, r: Resource, obj: Obj) -> None:
        m, name = obj["metadata"], str(obj["metadata"].get("name", ""))
        if len(name) > 253 or not _SUBDOMAIN.fullmatch(name):
            why = f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric'
            raise r.invalid(name, "metadata.name", why)
        for field in ("labels", "annotations"):
            value = m.get(field)
            if value is not None and not (
                isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
            ):
                raise r.invalid(name, f"metadata.{field}", "Invalid value: must be a map of strings")
        for key, value in (m.get("labels") or {}).items():
            problem = label_key_problem(key) or label_value_problem(value)
            if problem:
                raise r.invalid(name, "metadata.labels", f"Invalid value: {problem}")
        finalizers = m.get("finalizers")
        if finalizers is not None and not (
            isinstance(finalizers, list) and all(isinstance(f, str) for f in finalizers)
        ):
            raise r.invalid(name, "metadata.finalizers", "Invalid value: must be a list of strings")
        refs = m.get("ownerReferences")
        named = ("apiVersion", "kind", "name", "uid")
        if refs is not None and not (
            isinstance(refs, list)
            and all(isinstance(x, dict) and all(isinstance(x.get(f), str) and x[f] for f in named) for x in refs)
        ):
            raise r.invalid(name, "metadata.ownerReferences", "Invalid value: each names apiVersion, kind, name, uid")
        if refs and sum(bool(x.get("controller")) for x in refs) > 1:
            why = "Invalid value: Only one reference can have Controller set to true"
            raise r.invalid(name, "metadata.ownerReferences", why)
        for field in ("labels", "annotations", "finalizers", "ownerReferences"):
            if field in m and not m[field]:
                del m[field]  # NB: Go's omitempty: an empty map or list is the same as none

    # --- verbs -------------------------------------------------------------------------------------------

    def get(self, r: Resource, namespace: str, name: str) -> Obj:
        return copy.deepcopy(self._stored(r, namespace, name))

    def list(
        self, r: Resource, namespace: str, selector: str, fields: str = "", *, limit: int = 0, token: str = ""
    ) -> Obj:
        if token:
            snapshot = self._snapshots.pop(token, None)
            if snapshot is None or snapshot[0] < self.compacted:
                message = (
                    "The provided continue parameter is too old to display a consistent list result. "
                    "You can start a new list without the continue parameter."
                )
                raise ApiError(410, "Expired", message)
            version, items = snapshot
        else:
            matcher, field_matcher = self._selector(selector), self._fields(fields, r)
            version = self.rv
            items = [
                copy.deepcopy(o)
                for (group, plural, ns, _), o in sorted(self.objects.items())
                if (group, plural) == (r.group, r.plural)
                and (not namespace or ns == namespace)
                and matcher.matches(_labels(o))
                and field_matcher.matches(o)
            ]
            if not r.custom:
                items = [_without(o, "apiVersion", "kind") for o in items]  # NB: as Go's typed lists encode
        meta: Obj = {"resourceVersion": str(version)}
        if limit and len(items) > limit:
            items, rest = items[:limit], items[limit:]
            token = secrets.token_urlsafe(12)
            self._snapshots[token] = (version, rest)
            while len(self._snapshots) > _SNAPSHOTS_KEPT:
                del self._snapshots[next(iter(self._snapshots))]
            meta.update({"continue": token, "remainingItemCount": len(rest)})
        return {"apiVersion": r.api_version, "kind": f"{r.kind}List", "metadata": meta, "items": items}

    @staticmethod
    def _fields(text: str, r: Resource) -> FieldSelector:
        """A list's ``fieldSelector``: 400 when malformed or naming a field the kind cannot be selected by."""
        try:
            parsed = parse_field_selector(text, None)
        except InvalidInput as exc:
            raise ApiError(400, "BadRequest", f"invalid field selector: {exc.reason}") from None
        for requirement in parsed.requirements:
            if requirement.field not in selectable(r.kind, r.namespaced):
                raise ApiError(400, "BadRequest", f"field label not supported: {requirement.field}")
        return parsed

    @staticmethod
    def _selector(text: str) -> Selector:
        try:
            return parse_selector(text)
        except InvalidInput as exc:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {exc}") from None

    def create(self, r: Resource, namespace: str, body: object, *, manager: str = "") -> Obj:
        obj = self._check_body(r, namespace, copy.deepcopy(body))
        m = obj["metadata"]
        for field in (
            "creationTimestamp", "uid", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink", "managedFields"
        ):  # fmt: skip
            m.pop(field, None)
        if r.namespaced:
            ns_key = self._key(self.resource("", "v1", "namespaces"), "", namespace)
            if ns_key not in self.objects:
                message = f'namespaces "{namespace}" not found'
                raise ApiError(404, "NotFound", message, {"name": namespace, "kind": "namespaces"})
        if not m.get("name"):
            prefix = m.get("generateName")
            if not prefix:
                raise r.invalid("", "metadata.name", "Required value: name or generateName is required")
            m["name"] = str(prefix) + "".join(secrets.choice(_GENERATE_ALPHABET) for _ in range(5))
        self._validate_meta(r, obj)
        if r.kind == "Pod":
            _validate_pod_spec(r, m["name"], obj.get("spec"))
        if m.get("resourceVersion"):
            raise ApiError(500, "InternalError", "resourceVersion should not be set on objects to be created")
        name = m["name"]
        if self._key(r, namespace, name) in self.objects:
            message = f'{r.qualified} "{name}" already exists'
            raise ApiError(409, "AlreadyExists", message, r.details(name))
        m.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
        if r.status_subresource:
            obj.pop("status", None)
        if r.kind == "Pod":
            obj["spec"].setdefault("terminationGracePeriodSeconds", DEFAULT_POD_GRACE)
            obj["status"] = {"phase": "Pending"}
        elif r.kind == "Namespace":
            obj["status"] = {"phase": "Active"}
            m.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        elif r == CRD_RESOURCE:
            names = (obj.get("spec") or {}).get("names") or {}
            conditions = [
                {"type": t, "status": "True", "reason": r_, "lastTransitionTime": now()}
                for t, r_ in (("NamesAccepted", "NoConflicts"), ("Established", "InitialNamesAccepted"))
            ]
            obj["status"] = {"acceptedNames": names, "conditions": conditions, "storedVersions": []}
        stamp_managed_fields(obj, None, manager)
        return self._commit(r, namespace, "ADDED", obj, None)

    def stale_at_arrival(self, r: Resource, namespace: str, name: str, kind: str, body: object) -> bool:
        """Whether a PUT names a resourceVersion the object has already left: kube-apiserver compares it with
        the object it holds before any etcd transaction (the registry's ``tryUpdate``), so such a write is
        refused in the time of a read, and only one that was current when it came loses at etcd's compare."""
        if kind not in ("update", "updateStatus") or (r.plural, name) in self.interfere:
            return False
        stored = self.objects.get(self._key(r, namespace, name))
        try:
            sent = body["metadata"]["resourceVersion"]  # type: ignore[index]
        except (TypeError, KeyError):
            return False
        return stored is not None and _parse_rv(str(sent)) is not None and sent != stored["metadata"]["resourceVersion"]

    def update(self, r: Resource, namespace: str, name: str, body: object, *, status: bool, manager: str = "") -> Obj:
        stored = self._stored(r, namespace, name)
        if (r.plural, name) in self.interfere:  # another writer gets in first, every time
            foreign = copy.deepcopy(stored)
            annotations = foreign["metadata"].setdefault("annotations", {})
            annotations[INTERFERENCE_ANNOTATION] = str(int(annotations.get(INTERFERENCE_ANNOTATION, "0")) + 1)
            stored = self._commit(r, namespace, "MODIFIED", foreign, stored)
        new = self._check_body(r, namespace, copy.deepcopy(body))
        m, old = new["metadata"], stored["metadata"]
        if m.get("name") != name:
            message = f"the name of the object ({m.get('name')}) does not match the name on the URL ({name})"
            raise ApiError(400, "BadRequest", message)
        if m.get("uid") and m["uid"] != old["uid"]:
            why = f"Precondition failed: UID in precondition: {m['uid']}, UID in object meta: {old['uid']}"
            raise r.conflict(name, why)
        sent = str(m.get("resourceVersion") or "")
        if not sent:
            if r.custom or r.kind in CONDITIONAL_UPDATES_ONLY:
                raise r.invalid(name, "metadata.resourceVersion", "Invalid value: 0x0: must be specified for an update")
            sent = old["resourceVersion"]
        elif _parse_rv(sent) is None:  # NB: the versioner's parse error, which no API error wraps: a 500
            raise ApiError(500, "", f'strconv.ParseUint: parsing "{sent}": invalid syntax')
        if sent != old["resourceVersion"]:
            why = "the object has been modified; please apply your changes to the latest version and try again"
            raise r.conflict(name, why)
        if status:  # the status strategy: everything but status comes from the stored object
            result = _without(copy.deepcopy(stored), "status")
            if "status" in new:
                result["status"] = new["status"]
            new = result
        else:
            for field in ("uid", "creationTimestamp", "generation", "resourceVersion"):
                m[field] = old[field]
            m.pop("managedFields", None)  # NB: the server's to stamp (a client sends back what it read, or none)
            if "managedFields" in old:
                m["managedFields"] = copy.deepcopy(old["managedFields"])
            for field in ("deletionTimestamp", "deletionGracePeriodSeconds"):
                m.pop(field, None)
                if field in old:
                    m[field] = old[field]
            if r.status_subresource:
                new.pop("status", None)
                if "status" in stored:
                    new["status"] = copy.deepcopy(stored["status"])
            self._validate_meta(r, new)
            ignored = ("metadata", "status") if r.status_subresource else ("metadata",)
            if _without(new, *ignored) != _without(stored, *ignored):
                m["generation"] = old["generation"] + 1
            if "deletionTimestamp" in old:
                added = sorted(set(m.get("finalizers") or []) - set(old.get("finalizers") or []))
                if added:
                    why = f"Forbidden: no new finalizers can be added if the object is being deleted, found {added}"
                    raise r.invalid(name, "metadata.finalizers", why)
                # NB: as the registry's shouldDeleteDuringUpdate: no finalizers left and no grace to wait out (a Pod
                # its kubelet still runs keeps its grace: an update leaves it, terminating); the answer is the
                # object as sent, at the version sent
                if not m.get("finalizers") and old.get("deletionGracePeriodSeconds") == 0:
                    self._commit(r, namespace, "DELETED", copy.deepcopy(stored), stored)
                    return dict(copy.deepcopy(new), metadata=dict(m, resourceVersion=sent))
        if new == stored:
            return copy.deepcopy(stored)
        stamp_managed_fields(new, stored, manager, "status" if status else "")
        return self._commit(r, namespace, "MODIFIED", new, stored)

    def delete(self, r: Resource, namespace: str, name: str, options: object) -> Obj:
        stored = self._stored(r, namespace, name)
        m = stored["metadata"]
        preconditions = (options.get("preconditions") if isinstance(options, dict) else None) or {}
        for field, label in (("resourceVersion", "ResourceVersion"), ("uid", "UID")):
            want = preconditions.get(field)
            if want and want != m[field]:
                why = f"Precondition failed: {label} in precondition: {want}, {label} in object meta: {m[field]}"
                raise r.conflict(name, why)
        grace = _pod_grace(stored, options) if r.kind == "Pod" else 0
        if grace and m.get("deletionGracePeriodSeconds", grace + 1) > grace:  # NB: a new grace may only shorten
            marked = copy.deepcopy(stored)
            marked["metadata"].update(
                deletionTimestamp=now(grace), deletionGracePeriodSeconds=grace, generation=m.get("generation", 0) + 1
            )
            return self._commit(r, namespace, "MODIFIED", marked, stored)
        if grace:
            return copy.deepcopy(stored)
        if m.get("finalizers"):
            if "deletionTimestamp" in m:
                if not m.get("deletionGracePeriodSeconds"):
                    return copy.deepcopy(stored)
                shortened = copy.deepcopy(stored)  # NB: a Pod's grace cut to 0; its finalizers still hold it
                shortened["metadata"].update(deletionTimestamp=now(), deletionGracePeriodSeconds=0)
                return self._commit(r, namespace, "MODIFIED", shortened, stored)
            marked = copy.deepcopy(stored)
            marked["metadata"].update(
                deletionTimestamp=now(), deletionGracePeriodSeconds=0, generation=m.get("generation", 0) + 1
            )
            return self._commit(r, namespace, "MODIFIED", marked, stored)
        self._commit(r, namespace, "DELETED", copy.deepcopy(stored), stored)
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": r.details(name, m["uid"]),
        }

    # --- watch -------------------------------------------------------------------------------------------

    def watch_start(self, r: Resource, namespace: str, selector: str, version: str) -> tuple[_Objs, int]:
        """The synthetic events a watch starts with, and the version it continues after.

        ``ApiError`` 500 for an unparseable version (sent as the answer); 410 for a compacted one (sent as
        an ``ERROR`` event on a 200 stream, as the watch cache does).
        """
        matcher = self._selector(selector)
        if version in ("", "0"):
            listing = self.list(r, namespace, selector)
            items = [dict(o, apiVersion=r.api_version, kind=r.kind) for o in listing["items"]]
            return [{"type": "ADDED", "object": o} for o in items if matcher.matches(_labels(o))], self.rv
        start = _parse_rv(version)
        if start is None:  # NB: kube-apiserver's ErrorToAPIStatus: a 500 with StatusReasonUnknown ("")
            why = f'strconv.ParseUint: parsing "{version}": invalid syntax'
            message = f'resourceVersion: Invalid value: "{version}": {why}'
            raise ApiError(500, "", message)
        if start < self.compacted:
            raise ApiError(410, "Expired", f"too old resource version: {start} ({self.compacted})")
        return [], start

    def watch_since(self, r: Resource, namespace: str, selector: str, after: int) -> tuple[_Objs, int]:
        """Events of a watch after version ``after``, and the version it has now seen everything up to."""
        if after < self.compacted:
            raise ApiError(410, "Expired", f"too old resource version: {after} ({self.compacted})")
        matcher = self._selector(selector)
        out: _Objs = []
        start = bisect.bisect_right(self.events, after, key=lambda e: e.rv)
        for e in self.events[start:]:
            if e.resource != (r.group, r.plural) or (namespace and e.namespace != namespace):
                continue
            now_ = matcher.matches(_labels(e.object))
            before = e.previous is not None and matcher.matches(_labels(e.previous))
            if e.type == "MODIFIED" and now_ != before:
                if now_:
                    out.append({"type": "ADDED", "object": e.object})
                else:  # NB: leaving the selection: the old body, stamped with this event's version
                    assert e.previous is not None
                    gone = copy.deepcopy(e.previous)
                    gone["metadata"]["resourceVersion"] = str(e.rv)
                    out.append({"type": "DELETED", "object": gone})
            elif before if e.type == "DELETED" else now_:
                out.append({"type": e.type, "object": e.object})
        return out, self.rv
