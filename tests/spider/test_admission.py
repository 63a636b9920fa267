"""AdmissionReview in and out, JSONPatch, and the rules that always hold (deletes and finalizer-only updates)."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spider.admission import (
    json_patch,
    mutate_review,
    parse_review,
    respond,
    validate_review,
    webhook_path,
)
from spider.errors import DecodeFailure, InvalidInput
from spider.kinds import FINALIZER

POOL = {
    "apiVersion": "spiderpool.spidernet.io/v2beta1",
    "kind": "SpiderIPPool",
    "metadata": {"name": "p"},
    "spec": {"subnet": "172.18.40.0/24", "ips": ["172.18.40.20-172.18.40.30", "172.18.40.10-172.18.40.19"]},
}


MUTATED = {**POOL, "spec": {**POOL["spec"], "ipVersion": 4}}  # as the validating webhook receives it


def review(operation: str, obj: Any, old: Any = None, kind: str = "SpiderIPPool", version: str = "v1") -> bytes:
    return json.dumps(
        {
            "apiVersion": f"admission.k8s.io/{version}",
            "kind": "AdmissionReview",
            "request": {
                "uid": "7f0b2ad6-1b7a-4b4c-9a36-6cd3ab1f0a11",
                "kind": {"group": "spiderpool.spidernet.io", "version": "v2beta1", "kind": kind},
                "resource": {"group": "spiderpool.spidernet.io", "version": "v2beta1", "resource": "x"},
                "name": "p",
                "operation": operation,
                "userInfo": {"username": "admin"},
                "object": obj,
                "oldObject": old,
                "dryRun": False,
            },
        }
    ).encode()


def apply_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """A small RFC 6902 applier (add, remove, replace on objects), to check the patches we send."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        if not parts:
            doc = op["value"]
            continue
        parent = doc
        for part in parts[:-1]:
            parent = parent[part]
        if op["op"] == "remove":
            del parent[parts[-1]]
        elif op["op"] == "add":
            parent[parts[-1]] = op["value"]
        else:
            assert op["op"] == "replace"
            assert parts[-1] in parent, "replace needs an existing member"
            parent[parts[-1]] = op["value"]
    return doc


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text("ab/~", max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text("ab/~", max_size=3), inner, max_size=3),
    max_leaves=12,
)


@given(old=st.dictionaries(st.text("ab/~", max_size=3), json_values, max_size=4), new=json_values)
def test_a_json_patch_turns_the_old_object_into_the_new_one(old: dict[str, Any], new: Any) -> None:
    if not isinstance(new, dict):
        new = {"value": new}
    assert apply_patch(old, json_patch(old, new)) == new
    assert json_patch(new, copy.deepcopy(new)) == []


def test_json_patch_escapes_slashes_and_tildes_in_keys() -> None:
    ops = json_patch({"metadata": {}}, {"metadata": {"labels": {"ipam.spidernet.io/ippool-cidr": "x", "a~b": "y"}}})
    assert ops == [
        {"op": "add", "path": "/metadata/labels", "value": {"ipam.spidernet.io/ippool-cidr": "x", "a~b": "y"}}
    ]
    ops = json_patch({"l": {"a/b": 1, "c~d": 2}}, {"l": {"a/b": 3, "c~d": 2}})
    assert ops == [{"op": "replace", "path": "/l/a~1b", "value": 3}]
    assert json_patch({"x": 1}, {"x": True}) == [{"op": "replace", "path": "/x", "value": True}]


def test_spiderpools_webhook_paths() -> None:
    assert webhook_path("validate", "SpiderIPPool") == "/validate-spiderpool-spidernet-io-v2beta1-spiderippool"
    assert webhook_path("mutate", "SpiderReservedIP") == "/mutate-spiderpool-spidernet-io-v2beta1-spiderreservedip"


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_the_answer_echoes_the_uid_in_the_request_s_version(version: str) -> None:
    request = parse_review(review("CREATE", MUTATED, version=version))
    answer = respond(request, validate_review(request))
    assert answer == {
        "apiVersion": f"admission.k8s.io/{version}",
        "kind": "AdmissionReview",
        "response": {"uid": "7f0b2ad6-1b7a-4b4c-9a36-6cd3ab1f0a11", "allowed": True},
    }


def test_an_invalid_pool_is_denied_with_spiderpools_reason() -> None:
    bad = {**POOL, "spec": {**POOL["spec"], "subnet": "172.18.40.1/24", "ipVersion": 4}}
    answer = validate_review(parse_review(review("CREATE", bad)))
    assert answer["allowed"] is False
    assert answer["status"]["code"] == 422
    assert answer["status"]["reason"] == "Invalid"
    assert "unformatted subnet" in answer["status"]["message"]


def test_mutation_is_a_patch_that_fills_in_spiderpools_defaults() -> None:
    answer = mutate_review(parse_review(review("CREATE", POOL)))
    assert answer["allowed"] is True
    assert answer["patchType"] == "JSONPatch"
    mutated = apply_patch(POOL, json.loads(base64.b64decode(answer["patch"])))
    assert mutated["metadata"]["finalizers"] == [FINALIZER]
    assert mutated["metadata"]["labels"] == {"ipam.spidernet.io/ippool-cidr": "172-18-40-0-24"}
    assert mutated["spec"]["ipVersion"] == 4
    assert mutated["spec"]["ips"] == ["172.18.40.10-172.18.40.30"]  # merged into canonical ranges


def test_deletes_and_finalizer_only_updates_are_always_allowed_and_never_patched() -> None:
    broken = {**POOL, "spec": {"subnet": "not a cidr"}}
    dying = {**broken, "metadata": {**POOL["metadata"], "deletionTimestamp": "2024-01-01T00:00:00Z"}}
    old = {**dying, "metadata": {**dying["metadata"], "finalizers": [FINALIZER], "resourceVersion": "9"}}
    drained = {**dying, "metadata": {**dying["metadata"], "finalizers": [], "resourceVersion": "9"}}
    for request in (parse_review(review("UPDATE", drained, old)), parse_review(review("DELETE", None, old))):
        assert validate_review(request) == {"allowed": True}
        assert mutate_review(request) == {"allowed": True}
    # but a real change to a terminating pool is refused, as Spiderpool refuses it
    changed = {**old, "spec": {**POOL["spec"], "ipVersion": 4}}
    assert validate_review(parse_review(review("UPDATE", changed, old)))["allowed"] is False


def test_a_live_pool_whose_finalizer_is_removed_gets_it_back_by_mutation_only_on_a_spec_change() -> None:
    old = {**POOL, "metadata": {"name": "p", "finalizers": [FINALIZER]}}
    only = {**POOL, "metadata": {"name": "p"}}
    assert mutate_review(parse_review(review("UPDATE", only, old))) == {"allowed": True}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"not json", DecodeFailure),
        (b"[]", InvalidInput),
        (json.dumps({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v2"}).encode(), InvalidInput),
        (
            json.dumps({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {}}).encode(),
            InvalidInput,
        ),
        (review("PATCH", POOL), InvalidInput),
        (review("CREATE", "a string"), InvalidInput),
        (review("UPDATE", POOL, {**POOL, "spec": ["not", "an", "object"]}), InvalidInput),  # NB: once a 500
        (review("CREATE", {**POOL, "metadata": None}), InvalidInput),
    ],
)
def test_what_is_not_an_admission_review_is_refused_with_a_reason(body: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_review(body)
