"""A ``CNI_NETNS`` that is no network namespace, black-box against a running agent: the installed coordinator
plugin refuses a FIFO with CNI 4 at once, the agent refuses it with CNI 4 too when a request reaches it on the
wire unchecked, and the agent's netlink thread keeps serving (ifacer CHECK reads the host through it)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.controller.coordinator_sync import CoordinatorSyncSettings, sync_once
from cni import coordinator as shim
from tests.support import RunningAgent, pod_args, run_plugin

COORDINATOR = {
    "apiVersion": "spiderpool.spidernet.io/v2beta1",
    "kind": "SpiderCoordinator",
    "metadata": {"name": "default"},
    "spec": {"podCIDRType": "cluster"},
}
PREV = {"cniVersion": "1.0.0", "ips": [{"address": "10.6.0.20/24", "gateway": "10.6.0.1"}]}
KUBEADM_CONFIG = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
    "data": {"ClusterConfiguration": "networking:\n  podSubnet: 10.244.0.0/16\n  serviceSubnet: 10.96.0.0/12\n"},
}


@pytest.fixture
def fifo(agent: RunningAgent) -> Iterator[str]:
    path = agent.dir / "netns-fifo"
    os.mkfifo(path)
    yield str(path)
    path.unlink()


async def synced(agent: RunningAgent) -> None:
    """The SpiderCoordinator and the kubeadm-config a cluster offers, its status written by the controller's sync."""
    await agent.apply(json.loads(json.dumps(COORDINATOR)), json.loads(json.dumps(KUBEADM_CONFIG)))
    assert await sync_once(agent.store, CoordinatorSyncSettings(cni_config_dir=None)) == 1
    assert (await agent.store.get("SpiderCoordinator", "default"))["status"]["phase"] == "Synced"


def env(command: str, netns: str) -> dict[str, str]:
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "0123456789abcdef",
        "CNI_NETNS": netns,
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": pod_args("web", "uid-1"),
    }


def conf(agent: RunningAgent, **fields: Any) -> dict[str, Any]:
    base = {"cniVersion": "1.0.0", "name": "n", "type": "coordinator", "ipam_unix_socket_path": str(agent.socket)}
    return base | fields


def plugin(agent: RunningAgent, name: str) -> Path:
    return agent.shim.parent / name


def unchecked(agent: RunningAgent, plugin_name: str, environ: dict[str, str], stdin: dict[str, Any]) -> Any:
    """One request on the agent's wire as a plugin without the local check would send it."""
    request = shim._request(
        plugin_name, {k.encode(): v.encode() for k, v in environ.items()}, json.dumps(stdin).encode()
    )
    _, body = shim._parse_reply(shim._exchange(str(agent.socket).encode(), request))
    return json.loads(body)


async def host_still_served(agent: RunningAgent) -> None:
    code, out = await run_plugin(plugin(agent, "ifacer"), env("CHECK", "/unused"), conf(agent, interfaces=["lo"]))
    assert (code, out) == (0, None)


@pytest.mark.parametrize("command", ["ADD", "CHECK"])
async def test_the_coordinator_plugin_refuses_a_fifo_namespace_and_the_agent_keeps_serving(
    agent: RunningAgent, fifo: str, command: str
) -> None:
    await synced(agent)
    with trio.fail_after(30):
        code, error = await run_plugin(plugin(agent, "coordinator"), env(command, fifo), conf(agent, prevResult=PREV))
        assert code == 1
        assert error["code"] == 4
        assert (
            error["msg"] == f"environment variable CNI_NETNS {fifo!r} is a FIFO (named pipe), not a network namespace"
        )
        await host_still_served(agent)


@pytest.mark.parametrize(
    ("netns", "what"),
    [("fifo", "a FIFO (named pipe)"), ("/proc/self/ns/mnt", "a mount namespace"), ("/dev/null", "a character device")],
)
async def test_the_agent_itself_refuses_what_is_no_network_namespace_and_keeps_serving(
    agent: RunningAgent, fifo: str, netns: str, what: str
) -> None:
    path = fifo if netns == "fifo" else netns
    await synced(agent)
    with trio.fail_after(30):
        error = await trio.to_thread.run_sync(
            unchecked, agent, "coordinator", env("ADD", path), conf(agent, prevResult=PREV)
        )
        assert error["code"] == 4
        assert error["msg"] == f"environment variable CNI_NETNS {path!r} is {what}, not a network namespace"
        await host_still_served(agent)
