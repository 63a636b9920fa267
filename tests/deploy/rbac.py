"""A small RBAC authorizer for the roles in ``deploy/``, and the request attributes it judges.

``request_attributes`` turns a logged API request (method and target, as ``FakeApiServer.log`` holds them)
into what kube-apiserver's authorizer sees: verb, API group, resource, subresource, namespace and name
(``k8s.io/apiserver/pkg/endpoints/request/requestinfo.go``).  ``Authorizer`` grants a ServiceAccount the
rules of the Roles and ClusterRoles bound to it, as the RBAC authorizer does
(``plugin/pkg/auth/authorizer/rbac/rbac.go``): a ClusterRoleBinding's rules apply everywhere, a RoleBinding's
only in its namespace; a rule matches when its apiGroups, resources (``resource/subresource`` for a
subresource), verbs and, if it has any, resourceNames all match (a create, list or watch has no name, so a
rule with resourceNames never allows one).  ``rule_comments`` reads the comment above each rule, which YAML
parsers drop.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import yaml

Obj = dict[str, Any]

DISCOVERY_PATHS = ("/api", "/apis", "/version", "/healthz", "/livez", "/readyz", "/openapi")
"""Non-resource paths every authenticated user may read (the ``system:discovery`` and
``system:public-info-viewer`` ClusterRoles every cluster has)."""


@attrs.frozen
class Attributes:
    """One request as the authorizer sees it."""

    verb: str
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""
    """The path of a non-resource request (then ``resource`` is empty)."""

    @property
    def resource_path(self) -> str:
        """``resource`` or ``resource/subresource``, as rules spell them."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource

    def __str__(self) -> str:
        if not self.resource:
            return f"{self.verb} {self.path}"
        where = f" in {self.namespace}" if self.namespace else ""
        named = f" {self.name}" if self.name else ""
        return f"{self.verb} {self.group or 'core'}/{self.resource_path}{named}{where}"


def request_attributes(method: str, target: str) -> Attributes:
    """The authorizer's view of one request (paths as kubernetes-asyncio builds them)."""
    split = urlsplit(target)
    parts = [p for p in split.path.split("/") if p]
    query = parse_qs(split.query)
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    else:
        return Attributes(verb=method.lower(), path=split.path)
    namespace = ""
    # NB: /namespaces/NAME/SUB would be the namespace's own subresource; no code of ours asks for one
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    resource, name, sub = ([*rest, "", "", ""])[:3]
    if method == "GET":
        verb = "get" if name else ("watch" if query.get("watch", [""])[-1] in ("true", "1") else "list")
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
        if verb == "delete" and not name:
            verb = "deletecollection"
    return Attributes(verb, group, resource, sub, namespace, name)


@attrs.frozen
class Rule:
    """One rule of a Role or ClusterRole, where it applies, and the comment above it."""

    role: str
    """``Kind/name`` of the role it belongs to."""
    index: int
    groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    names: tuple[str, ...]
    namespace: str
    """Where it applies: a RoleBinding's namespace, or "" (everywhere) for a ClusterRoleBinding."""
    comment: str

    def allows(self, request: Attributes) -> bool:
        """Whether this rule alone allows ``request``."""
        return (
            bool(request.resource)
            and (not self.namespace or self.namespace == request.namespace)
            and request.group in self.groups
            and request.resource_path in self.resources
            and request.verb in self.verbs
            and (not self.names or request.name in self.names)
        )

    def grants(self) -> set[tuple[str, str, str]]:
        """``(group, resource, verb)`` of everything this rule grants."""
        return {(g, r, v) for g in self.groups for r in self.resources for v in self.verbs}

    def __str__(self) -> str:
        names = f" {list(self.names)}" if self.names else ""
        return f"{self.role} rule {self.index}: {list(self.groups)} {list(self.resources)}{names} {list(self.verbs)}"


def rule_comments(path: Path) -> dict[str, list[str]]:
    """``{"Kind/name": [the comment above each of its rules, in order]}`` for one file of roles."""
    out: dict[str, list[str]] = {}
    for chunk in re.split(r"^---\s*$", path.read_text(), flags=re.MULTILINE):
        doc = yaml.safe_load(chunk)
        if not doc or doc.get("kind") not in ("Role", "ClusterRole"):
            continue
        comments, block = [], []
        for line in chunk.splitlines():
            stripped = line.strip()
            if stripped.startswith("#"):
                block.append(stripped.lstrip("# "))
            elif stripped.startswith("- apiGroups:"):
                comments.append(" ".join(block))
                block = []
            else:
                block = []
        key = f"{doc['kind']}/{doc['metadata']['name']}"
        assert len(comments) == len(doc["rules"]), f"{path.name}: {key}: rules not each on a '- apiGroups:' line"
        out[key] = comments
    return out


@attrs.define
class Authorizer:
    """The RBAC rules of a set of manifests, by ServiceAccount."""

    objects: list[Obj]
    comments: dict[str, list[str]] = attrs.Factory(dict)

    @classmethod
    def of(cls, objects: list[Obj], files: Iterable[Path]) -> Authorizer:
        comments: dict[str, list[str]] = {}
        for path in files:
            comments.update(rule_comments(path))
        return cls(objects, comments)

    def _role(self, kind: str, name: str, namespace: str) -> Obj:
        [found] = [
            o
            for o in self.objects
            if o["kind"] == kind
            and o["metadata"]["name"] == name
            and (kind == "ClusterRole" or o["metadata"].get("namespace") == namespace)
        ]
        return found

    def rules(self, namespace: str, account: str) -> list[Rule]:
        """Every rule bound to the ServiceAccount ``namespace/account``."""
        out = []
        for binding in self.objects:
            if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
                continue
            subject = {"kind": "ServiceAccount", "name": account, "namespace": namespace}
            if not any(s.items() >= subject.items() for s in binding["subjects"]):
                continue
            where = binding["metadata"]["namespace"] if binding["kind"] == "RoleBinding" else ""
            ref = binding["roleRef"]
            role = self._role(ref["kind"], ref["name"], where)
            key = f"{ref['kind']}/{ref['name']}"
            for index, rule in enumerate(role["rules"]):
                out.append(
                    Rule(
                        key,
                        index,
                        tuple(rule["apiGroups"]),
                        tuple(rule["resources"]),
                        tuple(rule["verbs"]),
                        tuple(rule.get("resourceNames") or ()),
                        where,
                        self.comments.get(key, [""] * (index + 1))[index],
                    )
                )
        return out


def allowed(rules: list[Rule], request: Attributes) -> bool:
    """Whether any rule allows ``request`` (non-resource discovery paths are every user's)."""
    if not request.resource:
        return request.verb == "get" and request.path.startswith(DISCOVERY_PATHS)
    return any(rule.allows(request) for rule in rules)
