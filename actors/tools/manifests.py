"""Objects from YAML or JSON files into a store, as ``kubectl apply`` would put them: the tools' shared writer.

Owns reading documents (files, directories, stdin, ``List`` kinds) and creating or updating one object
(spec, labels, annotations; the status only of kinds without a status subresource and core kinds a real API
server would default).  The CLI, the demo and the load test all apply through here.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

from actors.stores.port import AlreadyExists, NotFound, Obj, Store, meta
from spider.errors import InvalidInput
from spider.kinds import kind_info
from spider.pool import IPPool


def load_documents(target: str) -> Iterator[Obj]:
    """Objects from a YAML/JSON file (several documents allowed), a directory of them, or ``-``."""
    if target == "-":
        texts = [("<stdin>", sys.stdin.read())]
    else:
        path = Path(target)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
        elif path.exists():
            files = [path]
        else:
            raise InvalidInput(reason=f"{target}: no such file or directory")
        texts = [(str(p), p.read_text()) for p in files]
    for name, text in texts:
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            raise InvalidInput(reason=f"{name}: not YAML: {exc}") from None
        for doc in docs:
            if doc is None:
                continue
            if not isinstance(doc, dict) or "kind" not in doc:
                raise InvalidInput(reason=f"{name}: every document needs a 'kind'")
            if doc["kind"] == "List":
                yield from doc.get("items", [])
            else:
                yield doc


async def apply(store: Store, obj: Obj) -> str:
    """Create or update one object (spec, labels, annotations; status is the agents'); says which."""
    info = kind_info(obj["kind"])
    obj["kind"] = info.kind
    m = meta(obj)
    if not m.get("name"):
        raise InvalidInput(reason=f"{info.kind} without metadata.name")
    if info.namespaced:
        m.setdefault("namespace", "default")
    else:
        m.pop("namespace", None)
    try:
        current = await store.get(info.kind, m["name"], m.get("namespace", ""))
    except NotFound:
        try:
            created = await store.create(obj)
            status = obj.get("status") if info.status_subresource and info.group == "" else None
            if info.kind == "SpiderIPPool":  # what the controller does on a cluster: counts from the start
                status = {"allocatedIPCount": 0, "totalIPCount": len(IPPool.from_object(created).total)}
            if status:  # core kinds (Pod phase, Node conditions) get a status only from the API server
                created["status"] = status
                await store.update_status(created)
            return "created"
        except AlreadyExists:
            current = await store.get(info.kind, m["name"], m.get("namespace", ""))
    merged = dict(current)
    cm = dict(current["metadata"])
    for key in ("labels", "annotations", "finalizers", "ownerReferences"):
        if key in m:
            cm[key] = m[key]
    merged["metadata"] = cm
    for key, value in obj.items():
        if key not in ("metadata", "status", "apiVersion", "kind"):
            merged[key] = value
    if "status" in obj and not info.status_subresource:
        merged["status"] = obj["status"]
    if merged == current:
        return "unchanged"
    written = await store.update(merged)
    if written["metadata"]["resourceVersion"] == current["metadata"]["resourceVersion"]:
        return "unchanged"  # the store's defaults (mutation) made it the object it already had
    if "status" in obj and info.status_subresource and info.group == "":
        fresh = await store.get(info.kind, m["name"], m.get("namespace", ""))
        fresh["status"] = obj["status"]
        await store.update_status(fresh)
    return "configured"
