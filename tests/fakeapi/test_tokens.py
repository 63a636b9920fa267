"""TokenRequests in the fake API server: a token lasts what the request asks, an hour when it asks nothing, as
kube-apiserver answers (``expirationSeconds`` defaults to 3600)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import trio

from tests.fakeapi import FakeApiServer
from tests.fakeapi.test_latency import exchange

TOKEN = "/api/v1/namespaces/default/serviceaccounts/agent/token"


@pytest.mark.parametrize(("spec", "seconds"), [({}, 3600), ({"expirationSeconds": 86400}, 86400)])
async def test_a_token_lasts_what_was_asked_or_an_hour(
    nursery: trio.Nursery, spec: dict[str, int], seconds: int
) -> None:
    server: FakeApiServer = await nursery.start(FakeApiServer().run)
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
    with trio.fail_after(10):
        code, _, raw = await exchange(server, "POST", TOKEN, body)
    answer = json.loads(raw)
    assert code == 201
    assert answer["spec"]["expirationSeconds"] == seconds
    expires = datetime.strptime(answer["status"]["expirationTimestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs((expires - datetime.now(UTC)).total_seconds() - seconds) < 60
    assert server.cluster.review_token({"spec": {"token": answer["status"]["token"]}})["status"]["authenticated"]


async def test_a_body_that_is_not_a_token_request_is_a_bad_request(nursery: trio.Nursery) -> None:
    server: FakeApiServer = await nursery.start(FakeApiServer().run)
    with trio.fail_after(10):
        for body in (["a list"], {"spec": {"expirationSeconds": "soon"}}, {"spec": "x"}):
            code, _, _ = await exchange(server, "POST", TOKEN, body)
            assert code == 400
        code, _, _ = await exchange(server, "POST", TOKEN, {"spec": {}})
    assert code == 201
