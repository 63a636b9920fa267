"""A StatefulSet pod's addresses are kept only while its ordinal is valid; a set whose numbers cannot be read
keeps them (the safe answer) instead of crashing the agent's or the GC's judgement."""

from __future__ import annotations

from typing import Any

import pytest

from spider.workload import int_or_none, statefulset_keeps


def statefulset(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "web"}, "spec": spec}


@pytest.mark.parametrize(
    ("spec", "pod", "kept"),
    [
        ({"replicas": 3}, "web-2", True),
        ({"replicas": 3}, "web-3", False),
        ({}, "web-0", True),
        ({}, "web-1", False),
        ({"replicas": 2, "ordinals": {"start": 5}}, "web-4", False),
        ({"replicas": 2, "ordinals": {"start": 5}}, "web-6", True),
        ({"replicas": 2, "ordinals": {"start": 5}}, "web-7", False),
    ],
)
def test_a_statefulset_pod_is_kept_only_while_its_ordinal_is_inside_the_set(
    spec: dict[str, Any], pod: str, kept: bool
) -> None:
    assert statefulset_keeps(statefulset(**spec), pod) is kept


@pytest.mark.parametrize(
    "spec",
    [
        {"replicas": None},
        {"replicas": "3"},
        {"replicas": True},
        {"replicas": 1, "ordinals": {"start": None}},
        {"replicas": 1, "ordinals": {"start": "0"}},
        {"replicas": 1, "ordinals": "zero"},
    ],
)
def test_a_statefulset_whose_replicas_or_start_is_not_an_integer_keeps_its_pods_addresses(
    spec: dict[str, Any],
) -> None:
    assert statefulset_keeps(statefulset(**spec), "web-9") is True


def test_a_statefulset_with_an_unreadable_spec_keeps_its_pods_addresses() -> None:
    assert statefulset_keeps({"metadata": {"name": "web"}, "spec": "broken"}, "web-9") is True


def test_a_deleting_or_missing_statefulset_keeps_nothing_whatever_its_numbers() -> None:
    deleting = {"metadata": {"name": "web", "deletionTimestamp": "now"}, "spec": {"replicas": None}}
    assert statefulset_keeps(deleting, "web-0") is False
    assert statefulset_keeps(None, "web-0") is False


@pytest.mark.parametrize(("value", "expected"), [(3, 3), (0, 0), (None, None), ("3", None), (True, None), (2.0, None)])
def test_only_a_true_integer_counts_as_one(value: object, expected: int | None) -> None:
    assert int_or_none(value) == expected
