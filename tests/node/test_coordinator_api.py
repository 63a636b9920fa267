"""The coordinator's seams that need no network namespace: ``GET /v1/coordinator/config`` as Spiderpool's
agent answers it, the installed ``coordinator`` shim's protocol and errors, and the batch release a detected
conflict uses.  (What the coordinator does to interfaces is in ``tests/netns/test_coordinator.py``.)
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors.controller.coordinator_sync import CoordinatorSyncSettings, sync_once
from cni import coordinator as shim
from tests.support import ROOT, RunningAgent, http_call, pod_args, pool_object, run_plugin, short_tmp

COORDINATOR = {
    "apiVersion": "spiderpool.spidernet.io/v2beta1",
    "kind": "SpiderCoordinator",
    "metadata": {"name": "default"},
    "spec": {"podCIDRType": "cluster", "hijackCIDR": ["169.254.0.0/16"], "podMACPrefix": "0a:1b"},
}
PREV = {"cniVersion": "1.0.0", "ips": [{"address": "10.6.0.20/24", "gateway": "10.6.0.1"}]}
KUBEADM_CONFIG = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
    "data": {"ClusterConfiguration": "networking:\n  podSubnet: 10.244.0.0/16\n  serviceSubnet: 10.96.0.0/12\n"},
}


async def synced(agent: RunningAgent) -> None:
    """The SpiderCoordinator and the kubeadm-config a cluster offers, its status written by the controller's sync."""
    await agent.apply(json.loads(json.dumps(COORDINATOR)), json.loads(json.dumps(KUBEADM_CONFIG)))
    assert await sync_once(agent.store, CoordinatorSyncSettings(cni_config_dir=None)) == 1
    status = (await agent.store.get("SpiderCoordinator", "default"))["status"]
    assert status == {"phase": "Synced", "overlayPodCIDR": ["10.244.0.0/16"], "serviceCIDR": ["10.96.0.0/12"]}


def spider(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "actors", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def coordinator_path(agent: RunningAgent) -> Path:
    return agent.shim.parent / "coordinator"


def env(command: str, **extra: str) -> dict[str, str]:
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "0123456789abcdef",
        "CNI_NETNS": "/var/run/netns/not-used-here",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": pod_args("web", "uid-1"),
        **extra,
    }


def conf(agent: RunningAgent, **fields: Any) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "n",
        "type": "coordinator",
        "ipam_unix_socket_path": str(agent.socket),
        **fields,
    }


async def test_without_a_spidercoordinator_the_config_is_not_found(agent: RunningAgent) -> None:
    with trio.fail_after(10):
        status, body, headers = await http_call(agent.socket, "GET", "/v1/coordinator/config", {})
    assert (status, body) == (500, "coordinator config not found")
    assert headers["X-Cni-Code"] == "11"


async def test_a_spidercoordinator_that_is_not_synced_is_not_ready(agent: RunningAgent) -> None:
    await agent.apply(json.loads(json.dumps(COORDINATOR)))  # no controller yet: its status stays empty
    with trio.fail_after(10):
        status, body, _ = await http_call(agent.socket, "GET", "/v1/coordinator/config", {})
    assert (status, body) == (500, "spidercoordinator: default no ready")


async def test_a_synced_spidercoordinator_is_the_coordinator_config(agent: RunningAgent) -> None:
    await synced(agent)
    with trio.fail_after(10):
        status, body, _ = await http_call(
            agent.socket, "GET", "/v1/coordinator/config", {"podName": "web", "podNamespace": "default"}
        )
    assert status == 200
    assert body["mode"] == "auto"
    assert body["overlayPodCIDR"] == ["10.244.0.0/16"]
    assert body["serviceCIDR"] == ["10.96.0.0/12"]
    assert body["hijackCIDR"] == ["169.254.0.0/16"]
    assert body["podMACPrefix"] == "0a:1b"
    assert (body["tunePodRoutes"], body["hostRuleTable"], body["vethMTU"], body["podRPFilter"]) == (True, 500, 1500, 0)


async def test_the_pods_annotation_names_its_default_route_nic(agent: RunningAgent) -> None:
    await synced(agent)
    annotations = {"ipam.spidernet.io/default-route-nic": "net1"}
    await agent.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "annotations": annotations}})
    with trio.fail_after(10):
        _, body, _ = await http_call(
            agent.socket, "GET", "/v1/coordinator/config", {"podName": "web", "podNamespace": "default"}
        )
    assert body["podDefaultRouteNIC"] == "net1"


async def test_a_batch_release_frees_a_live_pods_address_after_a_conflict(agent: RunningAgent) -> None:
    await agent.apply(pool_object("v4", "10.6.0.0/24", ["10.6.0.20-10.6.0.29"], default=True))
    await agent.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}, "spec": {"nodeName": "node-1"}})
    uid = (await agent.store.get("Pod", "web", "default"))["metadata"]["uid"]
    args = {"containerID": "c1", "podNamespace": "default", "podName": "web", "podUID": uid}
    with trio.fail_after(10):
        status, _, _ = await http_call(
            agent.socket, "POST", "/v1/ipam/ip", {**args, "ifName": "eth0", "netNamespace": "/x"}
        )
        assert status == 200
        # a plain DEL keeps a live pod's address (sandbox re-creation) ...
        assert (await http_call(agent.socket, "DELETE", "/v1/ipam/ip", {**args, "ifName": "eth0"}))[0] == 200
        assert (await agent.pool_status("v4"))["allocatedIPCount"] == 1
        # ... the batch release a conflict uses does not
        assert (await http_call(agent.socket, "DELETE", "/v1/ipam/ips", args))[0] == 200
    assert (await agent.pool_status("v4"))["allocatedIPCount"] == 0


async def test_the_coordinator_shim_answers_version_without_the_agent(agent: RunningAgent) -> None:
    with trio.fail_after(10):
        code, answer = await run_plugin(coordinator_path(agent), {"CNI_COMMAND": "VERSION"}, {"cniVersion": "0.4.0"})
    assert code == 0
    assert answer == {"cniVersion": "0.4.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


async def test_an_unreachable_agent_is_try_again_later_naming_the_socket(agent: RunningAgent) -> None:
    with trio.fail_after(10):
        code, error = await run_plugin(
            coordinator_path(agent), env("ADD"), conf(agent, ipam_unix_socket_path="/tmp/sp-nobody-here.sock")
        )
    assert code == 1
    assert error["code"] == 11
    assert "/tmp/sp-nobody-here.sock" in error["details"]


@pytest.mark.parametrize(
    ("command", "fields", "code", "message"),
    [
        ("ADD", {"prevResult": PREV, "mode": "sideways"}, 7, "mode must be one of"),
        ("ADD", {}, 7, "chained after the main CNI"),
        ("ADD", {"prevResult": PREV, "serviceCIDR": "10.96.0.0/12"}, 7, "serviceCIDR must be a list"),
        ("FROB", {}, 4, "CNI_COMMAND"),
        ("ADD", {"prevResult": PREV, "cniVersion": "0.2.0"}, 1, "unsupported CNI version"),
    ],
)
async def test_bad_invocations_fail_with_the_code_of_their_fault_and_touch_nothing(
    agent: RunningAgent, command: str, fields: dict[str, Any], code: int, message: str
) -> None:
    await synced(agent)
    with trio.fail_after(10):
        exit_code, error = await run_plugin(coordinator_path(agent), env(command), conf(agent, **fields))
    assert exit_code == 1
    assert error["code"] == code
    assert message in error["msg"]
    assert agent.api.coordinator is not None


async def test_add_without_a_synced_spidercoordinator_fails_with_spiderpools_message(agent: RunningAgent) -> None:
    with trio.fail_after(10):
        code, error = await run_plugin(coordinator_path(agent), env("ADD"), conf(agent, prevResult=PREV))
    assert code == 1
    assert (error["code"], error["msg"]) == (11, "coordinator config not found")


def test_only_a_top_level_socket_path_is_taken() -> None:
    data = json.dumps({"prevResult": {"ipam_unix_socket_path": "/nested"}, "ipam_unix_socket_path": "/top"}).encode()
    assert shim._top_level_string(data, b"ipam_unix_socket_path") == b"/top"
    nested = json.dumps({"prevResult": {"ipam_unix_socket_path": "/nested"}}).encode()
    assert shim._top_level_string(nested, b"ipam_unix_socket_path") is None


def test_the_shim_knows_which_plugin_it_is_by_its_installed_name() -> None:
    assert shim.plugin_name("/opt/cni/bin/ifacer") == "ifacer"
    assert shim.plugin_name("/opt/cni/bin/coordinator") == "coordinator"
    assert shim.plugin_name("coordinator.py") == "coordinator"


def test_status_of_an_unreachable_agent_is_not_available() -> None:
    out = io.BytesIO()
    code = shim.main(
        {b"CNI_COMMAND": b"STATUS"},
        b'{"cniVersion":"1.1.0","ipam_unix_socket_path":"/tmp/sp-nobody-here.sock"}',
        out,
        "coordinator",
    )
    assert code == 1
    assert json.loads(out.getvalue())["code"] == 50


def test_install_cni_writes_the_coordinator_and_ifacer_plugins_beside_spiderpool() -> None:
    with short_tmp() as d:
        done = spider("install-cni", "--bin-dir", str(d))
        assert done.returncode == 0, done.stderr
        for name in ("spiderpool", "coordinator", "ifacer"):
            plugin = d / name
            assert os.access(plugin, os.X_OK)
            assert plugin.read_text().startswith(f"#!{sys.executable} -IS\n")
            answer = subprocess.run(
                [str(plugin)], input=b'{"cniVersion":"1.0.0"}', env={"CNI_COMMAND": "VERSION"}, capture_output=True
            )
            assert json.loads(answer.stdout)["cniVersion"] == "1.0.0"
        assert f"installed {d / 'coordinator'}" in done.stdout


async def test_a_sandboxs_del_waits_for_its_add_while_another_sandbox_goes_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # NB: a DEL once ran beside the same sandbox's ADD (a runtime's timeout), tearing down under a setup
    from actors.node.coordinating import Coordinator

    order: list[str] = []
    adding = trio.Event()
    release = trio.Event()

    async def add(self: Coordinator, request: Any) -> dict[str, Any]:
        order.append(f"add {request.container_id} starts")
        adding.set()
        await release.wait()
        order.append(f"add {request.container_id} ends")
        return {"cniVersion": "1.0.0"}

    async def delete(self: Coordinator, request: Any) -> None:
        order.append(f"del {request.container_id}")

    monkeypatch.setattr(Coordinator, "add", add)
    monkeypatch.setattr(Coordinator, "delete", delete)
    coordinator = Coordinator(ipam=None, node=None)  # type: ignore[arg-type]
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.6.0.10/24"}], "interfaces": []}
    add_conf = json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "coordinator", "prevResult": prev}).encode()
    del_conf = json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "coordinator"}).encode()

    def env(command: str, container: str) -> dict[str, str]:
        return {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": "/var/run/netns/x",
                "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}  # fmt: skip

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(coordinator.handle, env("ADD", "c1"), add_conf)
            await adding.wait()
            nursery.start_soon(coordinator.handle, env("DEL", "c1"), del_conf)
            await coordinator.handle(env("DEL", "c2"), del_conf)  # another sandbox: not held up
            await trio.testing.wait_all_tasks_blocked()
            release.set()
    assert order == ["add c1 starts", "del c2", "add c1 ends", "del c1"]
