"""The controller's unauthenticated ports cost no API call per request and bind the pod's address.

Readiness answers from the elector's last Lease call (it never reads the Lease itself), and the webhook,
like the health server, binds ``$POD_IP`` when it is known and every address only when it is not.
"""

from __future__ import annotations

import errno
import logging
import secrets
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio

from actors.controller.main import open_controller
from actors.servers.certs import generate, write_bundle
from actors.stores.port import Store
from actors.stores.sqlite import SqliteStore
from actors.tools.cli import build_parser
from tests.controller.support import FaultyStore, eventually
from tests.controller.test_controller import get, ready, settings
from tests.deploy.rbac import request_attributes
from tests.servers.test_webhook import SERVICE_DNS
from tests.stores.kube_backends import KubeFakeBackend

TIMEOUT = 30
PROBES = 30


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[KubeFakeBackend]:
    backend = KubeFakeBackend(tmp_path)
    try:
        yield backend
    finally:
        await backend.aclose()


async def lease_calls(backend: KubeFakeBackend) -> list[str]:
    """The Lease requests the fake API server has received so far (``verb name``)."""
    seen = [request_attributes(method, target) for method, target in await backend.logged()]
    return [f"{r.verb} {r.name}" for r in seen if r.resource == "leases"]


async def test_readiness_probes_read_no_lease(fake: KubeFakeBackend, tmp_path: Path) -> None:
    store = await fake.open()
    lease = f"lease-{secrets.token_hex(3)}"
    # NB: slow renewals (one every 5 s), so that the elector's own Lease calls cannot hide a probe's
    slow = attrs.evolve(settings(tmp_path, "a", lease), lease_duration=15, renew_deadline=10.0, retry_period=5.0)
    with trio.fail_after(TIMEOUT):
        async with open_controller(slow, store) as controller:
            await eventually(ready(controller), 10, "ready")
            before = await lease_calls(fake)
            for _ in range(PROBES):
                assert await get(controller, "/v1/runtime/readiness") == (200, None)
            during = (await lease_calls(fake))[len(before) :]
            assert len(during) <= 2  # at most one renewal of the elector (a get and an update) in the meantime


async def test_readiness_says_when_the_store_stops_answering_the_lease_calls(store: Store, tmp_path: Path) -> None:
    faulty = FaultyStore(store)
    with trio.fail_after(TIMEOUT):
        async with open_controller(settings(tmp_path, "a", f"lease-{secrets.token_hex(3)}"), faulty) as controller:
            await eventually(ready(controller))
            faulty.hang = True  # the elector's next call never returns: only its silence tells

            async def silent() -> bool:
                status, why = await get(controller, "/v1/runtime/readiness")
                return status == 500 and "store unreachable: no Lease call answered for" in why

            await eventually(silent, 10, "readiness reporting the silent store")
            faulty.hang = False


def refused(host: str, port: int) -> bool:
    """Whether a TCP connection to ``host:port`` is refused (nothing listens on that address)."""
    with socket.socket() as probe:
        probe.settimeout(5)
        code = probe.connect_ex((host, port))
    return code == errno.ECONNREFUSED


@pytest.mark.parametrize("pod_ip", ["127.0.0.1", ""])
async def test_the_webhook_binds_the_pod_ip_and_every_address_only_without_one(
    pod_ip: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if pod_ip:
        monkeypatch.setenv("POD_IP", pod_ip)
    else:
        monkeypatch.delenv("POD_IP", raising=False)
    write_bundle(tmp_path / "tls", generate((SERVICE_DNS,)))
    chosen = attrs.evolve(  # NB: no webhook_host given: the default, read from the environment
        settings(tmp_path, "a", f"lease-{secrets.token_hex(3)}"),
        webhook=True,
        webhook_port=0,
        webhook_cert_dir=tmp_path / "tls",
    )
    assert chosen.webhook_settings().host == (pod_ip or None)
    caplog.set_level(logging.INFO, logger="actors.servers.webhook")
    with trio.fail_after(TIMEOUT):
        async with await SqliteStore.open(tmp_path / "store.db") as store, open_controller(chosen, store) as c:
            assert c.webhook is not None
            assert c.webhook.port is not None
            port = c.webhook.port
            assert not await trio.to_thread.run_sync(refused, "127.0.0.1", port)
            # NB: 127.0.0.2 is this machine too; only a socket bound to every address answers there
            assert await trio.to_thread.run_sync(refused, "127.0.0.2", port) == bool(pod_ip)
    where = pod_ip or "every address (no $POD_IP known)"
    assert f"admission webhook serving HTTPS on {where} port {port}" in caplog.text


@pytest.mark.parametrize(("environ", "default"), [({"POD_IP": "10.0.0.7"}, "10.0.0.7"), ({}, "")])
def test_spider_controller_defaults_the_webhook_address_to_the_pod_ip(
    environ: dict[str, str], default: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POD_IP", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    args = build_parser().parse_args(["controller"])
    assert (args.webhook_host, args.health_host) == (default, default)
