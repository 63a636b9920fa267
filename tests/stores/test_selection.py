"""Choosing the store: ``StoreSettings`` precedence, and ``spider apply/get/delete`` on the Kubernetes store
(the fake API server in a thread) through ``--kubeconfig`` and ``$SPIDER_KUBECONFIG``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from actors.stores.selection import StoreSettings
from actors.tools.cli import main
from tests.fakeapi import FakeApiServer, served_in_thread

POOL = {
    "apiVersion": "spiderpool.spidernet.io/v2beta1",
    "kind": "SpiderIPPool",
    "metadata": {"name": "cli-pool"},
    "spec": {"subnet": "10.8.0.0/24", "ips": ["10.8.0.10-10.8.0.19"]},
}


def test_the_embedded_store_is_the_default() -> None:
    settings = StoreSettings.from_env({}, store_path=Path("/tmp/x.db"))
    assert not settings.kubernetes
    assert settings.describe() == "embedded (/tmp/x.db)"


def test_the_environment_names_a_kubeconfig_and_flags_win_over_it() -> None:
    env = {"SPIDER_KUBECONFIG": "/etc/spider/kubeconfig"}
    assert StoreSettings.from_env(env).kubeconfig == Path("/etc/spider/kubeconfig")
    assert StoreSettings.from_env(env, kubeconfig=Path("/k")).kubeconfig == Path("/k")
    in_cluster = StoreSettings.from_env(env, in_cluster=True)
    assert in_cluster.kubeconfig is None
    assert in_cluster.kubernetes
    assert in_cluster.describe() == "kubernetes (in-cluster)"


def test_a_kubeconfig_and_in_cluster_together_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        StoreSettings(kubeconfig=Path("/k"), in_cluster=True)


def test_the_cli_applies_gets_and_deletes_on_the_kubernetes_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = tmp_path / "pool.yaml"
    manifest.write_text(yaml.safe_dump(POOL))
    unused = str(tmp_path / "never.db")
    with served_in_thread(FakeApiServer(tokens={"cli"})) as api:
        kubeconfig = str(api.server.kubeconfig(tmp_path / "kubeconfig", token="cli"))
        assert main(["apply", "-f", str(manifest), "--kubeconfig", kubeconfig, "--store", unused]) == 0
        assert "spiderippool/cli-pool created" in capsys.readouterr().out
        monkeypatch.setenv("SPIDER_KUBECONFIG", kubeconfig)
        assert main(["get", "sp", "cli-pool", "-o", "json", "--store", unused]) == 0
        got = json.loads(capsys.readouterr().out)
        assert got["status"] == {"allocatedIPCount": 0, "totalIPCount": 10}
        assert main(["delete", "sp", "cli-pool", "--store", unused]) == 0
        capsys.readouterr()
        assert main(["get", "sp", "cli-pool", "-o", "json", "--store", unused]) == 0
        assert json.loads(capsys.readouterr().out)["metadata"]["deletionTimestamp"]  # its finalizer holds it
        assert main(["get", "sp", "no-such-pool", "--store", unused]) == 1
        assert "not found" in capsys.readouterr().err
        monkeypatch.delenv("SPIDER_KUBECONFIG")
        assert main(["get", "sp", "--kubeconfig", kubeconfig, "--in-cluster"]) == 1
        assert "not both" in capsys.readouterr().err
    assert not Path(unused).exists()
