"""The fake API server refuses a Pod that kube-apiserver refuses: one without containers, or a container without
a name or an image (422 ``Invalid``, naming the field), so a test cannot pass here on a Pod a real server would
never store."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakeapi.cluster import ApiError, Cluster
from tests.support import pod_spec


def pod(spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}
    if spec is not None:
        body["spec"] = spec
    return body


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (None, "spec.containers"),
        ({}, "spec.containers"),
        ({"containers": []}, "spec.containers"),
        ({"containers": "app"}, "spec.containers"),
        ({"containers": [{"name": "app"}]}, "spec.containers[0].image"),
        ({"containers": [{"image": "pause"}]}, "spec.containers[0].name"),
        ({"containers": [{"name": "a", "image": "pause"}, "b"]}, "spec.containers[1].name"),
    ],
)
def test_a_pod_without_a_named_container_with_an_image_is_invalid(spec: Any, field: str) -> None:
    cluster = Cluster.new()
    pods = cluster.resource("", "v1", "pods")
    with pytest.raises(ApiError) as refused:
        cluster.create(pods, "default", pod(spec))
    assert refused.value.code == 422
    assert f"is invalid: {field}: Required value" in refused.value.message
    assert cluster.create(pods, "default", pod(pod_spec()))["status"] == {"phase": "Pending"}
