"""Just enough of an API server for ``kubectl apply --dry-run=client``: discovery, and 404 for every object.

kubectl needs the API's discovery documents to map each manifest's kind to a resource, and it GETs each object
to decide between create and patch; with ``--dry-run=client`` it sends nothing else. There is no cluster here
or in CI, so this serves those from a thread on 127.0.0.1: the resources are Kubernetes' built-in ones the
manifests use (the table below) plus every kind of the CRDs given, as the API server serves them once the CRDs
are established. Everything else answers 404, so every object is "created (dry run)".
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# (group, version, plural, kind, namespaced) of the built-in kinds deploy/ and its examples use.
BUILTIN: tuple[tuple[str, str, str, str, bool], ...] = (
    ("", "v1", "namespaces", "Namespace", False),
    ("", "v1", "serviceaccounts", "ServiceAccount", True),
    ("", "v1", "configmaps", "ConfigMap", True),
    ("", "v1", "secrets", "Secret", True),
    ("", "v1", "services", "Service", True),
    ("", "v1", "pods", "Pod", True),
    ("apps", "v1", "daemonsets", "DaemonSet", True),
    ("apps", "v1", "deployments", "Deployment", True),
    ("apps", "v1", "statefulsets", "StatefulSet", True),
    ("batch", "v1", "jobs", "Job", True),
    ("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    ("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
    ("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False),
    ("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", "MutatingWebhookConfiguration", False),
    ("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations", "ValidatingWebhookConfiguration", False),
    ("coordination.k8s.io", "v1", "leases", "Lease", True),
)
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def _resources(crds: Iterable[Mapping[str, Any]]) -> list[tuple[str, str, str, str, bool]]:
    out = list(BUILTIN)
    for crd in crds:
        spec = crd["spec"]
        for version in spec["versions"]:
            out.append(
                (
                    spec["group"],
                    version["name"],
                    spec["names"]["plural"],
                    spec["names"]["kind"],
                    spec["scope"] == "Namespaced",
                )
            )
    return out


def _documents(resources: list[tuple[str, str, str, str, bool]]) -> dict[str, Any]:
    """Discovery documents by URL path."""
    docs: dict[str, Any] = {"/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}}
    groups: dict[str, list[str]] = {}
    lists: dict[str, list[dict[str, Any]]] = {}
    for group, version, plural, kind, namespaced in resources:
        path = f"/apis/{group}/{version}" if group else f"/api/{version}"
        if group and version not in groups.setdefault(group, []):
            groups[group].append(version)
        for name, verbs in ((plural, VERBS), (f"{plural}/status", ["get", "patch", "update"])):
            lists.setdefault(path, []).append(
                {"name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": verbs}
            )
    docs["/apis"] = {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [
            {
                "name": group,
                "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in versions],
                "preferredVersion": {"groupVersion": f"{group}/{versions[0]}", "version": versions[0]},
            }
            for group, versions in groups.items()
        ],
    }
    for path, items in lists.items():
        group_version = path.removeprefix("/apis/").removeprefix("/api/")
        docs[path] = {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": items}
    return docs


@contextmanager
def serve_discovery(crds: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """Serve discovery for the built-in kinds and ``crds``; yields the server's URL."""
    docs = _documents(_resources(crds))
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0].rstrip("/")
            seen.append(path)
            if path in docs:
                self._answer(200, docs[path])
            else:
                status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}
                self._answer(404, {**status, "message": f"{path} not found"})

        def _answer(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="discovery-stub", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def kubeconfig(url: str, path: Path) -> Path:
    """A kubeconfig that points kubectl at ``url`` without credentials."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "stub", "cluster": {"server": url}}],
        "users": [{"name": "stub", "user": {}}],
        "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub", "namespace": "default"}}],
        "current-context": "stub",
    }
    path.write_text(json.dumps(config))
    return path
