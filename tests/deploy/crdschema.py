"""Checking objects against a CRD's OpenAPI v3 schema offline, the way the API server would.

A CRD schema is OpenAPI v3 with Kubernetes' own rules and ``x-kubernetes-*`` extensions, not plain JSON Schema.
This module turns one into a JSON Schema (draft 2020-12) validator that behaves like the API server with strict
field validation (kubectl's default since 1.27):

- unknown fields are errors: an object node with ``properties`` gets ``additionalProperties: false`` unless it
  says ``x-kubernetes-preserve-unknown-fields`` (the API server would reject them, or prune them silently when
  field validation is off, which is worse);
- ``nullable``, ``x-kubernetes-int-or-string`` and the ``int32``/``int64`` formats mean what they mean there;
- ``x-kubernetes-list-type: set`` and ``map`` (with ``x-kubernetes-list-map-keys``) reject duplicates;
- ``x-kubernetes-embedded-resource`` requires ``apiVersion`` and ``kind``;
- ``metadata`` gets the checks the API server makes of every object's metadata that matter here (a name).

``structural_problems`` lists what makes a schema non-structural or otherwise refused by ``apiextensions/v1``.
CEL rules (``x-kubernetes-validations``) cannot be evaluated here, so they are reported as a problem: add them
together with a way to test them.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from typing import Any

import jsonschema
from jsonschema import validators

Schema = dict[str, Any]

INT_BOUNDS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
FORBIDDEN_KEYS = ("$ref", "$schema", "definitions", "dependencies", "patternProperties", "additionalItems", "id")
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _list_type(validator: Any, value: Any, instance: Any, schema: Mapping[str, Any]) -> Iterator[Any]:
    if not isinstance(instance, list):
        return
    if value == "set":
        seen: list[Any] = []
        for item in instance:
            if item in seen:
                yield jsonschema.ValidationError(f"duplicate entry {item!r} in a list of type set")
            seen.append(item)
    elif value == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen_keys: set[tuple[Any, ...]] = set()
        for item in instance:
            if not isinstance(item, dict):
                continue
            key = tuple(repr(item.get(k)) for k in keys)
            if key in seen_keys:
                yield jsonschema.ValidationError(f"duplicate entry for keys {keys} in a list of type map: {item!r}")
            seen_keys.add(key)


def _embedded(validator: Any, value: Any, instance: Any, schema: Mapping[str, Any]) -> Iterator[Any]:
    if value and isinstance(instance, dict):
        for key in ("apiVersion", "kind"):
            if not isinstance(instance.get(key), str) or not instance[key]:
                yield jsonschema.ValidationError(f"an embedded resource needs {key!r}")


KubeValidator = validators.extend(  # type: ignore[no-untyped-call]
    jsonschema.Draft202012Validator,
    {"x-kubernetes-list-type": _list_type, "x-kubernetes-embedded-resource": _embedded},
)


def to_json_schema(node: Mapping[str, Any], *, at_root: bool = True) -> Schema:
    """The JSON Schema that accepts what the API server accepts for a CRD schema node (see the module doc)."""
    out: Schema = {}
    for key, value in node.items():
        if key == "properties":
            out["properties"] = {name: to_json_schema(sub, at_root=False) for name, sub in value.items()}
        elif key == "items":
            out["items"] = to_json_schema(value, at_root=False)
        elif key == "additionalProperties" and isinstance(value, Mapping):
            out["additionalProperties"] = to_json_schema(value, at_root=False)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_json_schema(sub, at_root=False) for sub in value]
        elif key == "not":
            out["not"] = to_json_schema(value, at_root=False)
        elif key in ("nullable", "format", "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields"):
            continue  # handled below
        else:
            out[key] = copy.deepcopy(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", []).extend([{"type": "integer"}, {"type": "string"}])
    bounds = INT_BOUNDS.get(str(node.get("format")))
    if bounds is not None and node.get("type") == "integer":
        low, high = bounds
        out["minimum"] = max(out.get("minimum", low), low)
        out["maximum"] = min(out.get("maximum", high), high)
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    closed = "properties" in node and "additionalProperties" not in node
    if closed and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if at_root:
        props = out.setdefault("properties", {})
        props["metadata"] = {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "pattern": NAME.pattern, "maxLength": 253}},
        }
    return out


def validator_for(crd: Mapping[str, Any], version: str | None = None) -> Any:
    """A validator of objects for one served version of a CRD (its storage version by default)."""
    versions = crd["spec"]["versions"]
    chosen = next(v for v in versions if (v["name"] == version if version else v.get("storage")))
    schema = to_json_schema(chosen["schema"]["openAPIV3Schema"])
    KubeValidator.check_schema(schema)
    return KubeValidator(schema)


def errors(crd: Mapping[str, Any], obj: Mapping[str, Any]) -> list[str]:
    """Every schema violation of ``obj``, as ``path: message`` lines (empty when the object is accepted)."""
    found = []
    for err in validator_for(crd).iter_errors(obj):
        path = ".".join(str(p) for p in err.absolute_path) or "<root>"
        found.append(f"{path}: {err.message}")
    return sorted(found)


def walk(node: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every schema node with its path (``.spec.ips[]``)."""
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), Mapping):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), Mapping):
        yield from walk(node["additionalProperties"], f"{path}{{}}")
    for key in ("allOf", "anyOf", "oneOf"):
        for i, sub in enumerate(node.get(key) or ()):
            yield from walk(sub, f"{path}<{key}{i}>")


def structural_problems(schema: Mapping[str, Any]) -> list[str]:
    """Why ``apiextensions.k8s.io/v1`` would refuse this schema, or why it is not structural (empty if none)."""
    problems = []
    if schema.get("type") != "object":
        problems.append("<root>: the root must be of type object")
    for path, node in walk(schema):
        where = path or "<root>"
        in_junctor = "<" in path
        lenient = node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        if not in_junctor and not node.get("type") and not lenient:
            problems.append(f"{where}: needs a type")
        if node.get("type") == "array" and "items" not in node:
            problems.append(f"{where}: an array needs items")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{where}: properties and additionalProperties are mutually exclusive")
        if node.get("additionalProperties") is False:
            problems.append(f"{where}: additionalProperties cannot be false")
        if node.get("uniqueItems"):
            problems.append(f"{where}: uniqueItems cannot be true")
        problems.extend(f"{where}: {key!r} is not allowed" for key in FORBIDDEN_KEYS if key in node)
        if "x-kubernetes-validations" in node:
            problems.append(f"{where}: CEL rules are not checked offline by these tests")
        if in_junctor:
            problems.extend(
                f"{where}: {key!r} is not allowed inside allOf/anyOf/oneOf/not"
                for key in ("description", "type", "default", "additionalProperties", "nullable")
                if key in node
            )
        if path == ".metadata" and set(node) - {"type", "description"}:
            problems.append(".metadata: only name and generateName may be restricted (we restrict nothing)")
        if "default" in node:
            sub = to_json_schema(node, at_root=False)
            sub.pop("default", None)
            for err in KubeValidator(sub).iter_errors(node["default"]):
                problems.append(f"{where}: the default {node['default']!r} is invalid: {err.message}")
    return problems


def schema_at(schema: Mapping[str, Any], json_path: str) -> Mapping[str, Any] | None:
    """The schema node a printer column's simple JSONPath points at (``.status.current.ips[0].ipv4``)."""
    node: Mapping[str, Any] | None = schema
    for step in re.findall(r"\.([A-Za-z0-9_]+)|\[(\d+)\]|\['((?:[^'\\]|\\.)*)'\]", json_path):
        if node is None:
            return None
        name, index, quoted = step
        if index:
            node = node.get("items") if node.get("type") == "array" else None
        elif quoted:
            extra = node.get("additionalProperties")
            node = extra if isinstance(extra, Mapping) else (node.get("properties") or {}).get(quoted)
        else:
            node = (node.get("properties") or {}).get(name)
    return node
