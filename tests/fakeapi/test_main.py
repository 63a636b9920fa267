"""``python -m tests.fakeapi`` as a process of its own, as the benchmarks start it: the kubeconfig appears once
it listens; with ``--tls`` it speaks HTTPS with a certificate of its own CA, which the kubeconfig names, so a
client pays for TLS as against a real API server and trusts nothing else; on the way out it writes what it
served."""

from __future__ import annotations

import json
import ssl
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from actors.stores.kube import KubeStore
from tests.support import pool_object

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30


async def written(kubeconfig: Path) -> dict[str, Any]:
    """The kubeconfig, once the server has written it (it appears whole, once the server listens)."""
    path = trio.Path(kubeconfig)
    with trio.fail_after(TIMEOUT):
        while not await path.exists():  # noqa: ASYNC110  (another process writes it: no event to wait on)
            await trio.sleep(0.05)
    config: dict[str, Any] = yaml.safe_load(await path.read_text())
    return config


async def test_with_tls_a_client_trusting_the_named_ca_talks_to_it_and_it_says_what_it_served(
    tmp_path: Path,
) -> None:
    kubeconfig, stats = tmp_path / "not-yet" / "fake.kubeconfig", tmp_path / "stats.json"  # its folder is made
    cmd = [sys.executable, "-m", "tests.fakeapi", "--kubeconfig", str(kubeconfig), "--latency", "off", "--tls"]
    process = await trio.lowlevel.open_process([*cmd, "--stats", str(stats)], cwd=ROOT)
    try:
        cluster = (await written(kubeconfig))["clusters"][0]["cluster"]
        assert cluster["server"].startswith("https://127.0.0.1:")
        store = await KubeStore.open(kubeconfig)
        try:
            with trio.fail_after(TIMEOUT):
                await store.create(pool_object("p", "10.9.0.0/24", ["10.9.0.10"]))
                assert (await store.get("SpiderIPPool", "p"))["spec"]["subnet"] == "10.9.0.0/24"
        finally:
            await store.aclose()
        port = int(cluster["server"].rsplit(":", 1)[1])
        untrusting = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=ssl.create_default_context())
        with pytest.raises(trio.BrokenResourceError) as refused:
            await untrusting.do_handshake()
        await trio.aclose_forcefully(untrusting)
        assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)  # no CA of the machine's vouches
        trusting = ssl.create_default_context(cafile=cluster["certificate-authority"])
        stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=trusting)
        await stream.do_handshake()
        await stream.aclose()
    finally:
        process.terminate()
        with trio.fail_after(TIMEOUT):
            assert await process.wait() == 0
    served = json.loads(await trio.Path(stats).read_text())
    assert served["served"]["create 201"] == 1
    assert served["served"]["get 200"] >= 1
