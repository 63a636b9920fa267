"""The installed ``spiderpool`` plugin exec'd as a runtime execs it, against a real agent: every verb and every
spec version, and bad input that must get the right CNI error code and change nothing."""

from __future__ import annotations

import json

import pytest
import trio

from actors.ipam.check import check_store
from tests.support import VERSIONS, RunningAgent, cni_env, netconf, pod_args, pool_object, run_plugin

POOL = pool_object("net-a", "10.2.0.0/24", ["10.2.0.10-10.2.0.11"], gateway="10.2.0.1")


def add_env(n: int = 0, command: str = "ADD", ifname: str = "eth0") -> dict[str, str]:
    return cni_env(command, f"ctr{n}", ifname, pod_args(f"pod-{n}", f"uid-{n}"))


async def snapshot(agent: RunningAgent) -> list[object]:
    pools = (await agent.store.list("SpiderIPPool")).items
    endpoints = (await agent.store.list("SpiderEndpoint")).items
    return [(p["metadata"]["name"], p.get("status")) for p in pools] + [e["status"] for e in endpoints]


@pytest.mark.parametrize("version", VERSIONS)
async def test_add_prints_the_result_format_of_each_spec_version(agent: RunningAgent, version: str) -> None:
    await agent.apply(POOL)
    conf = netconf(agent.socket, version, default_ipv4_ippool=["net-a"])
    with trio.fail_after(20):
        code, result = await run_plugin(agent.shim, add_env(), conf)
    assert code == 0, result
    ip = {"address": "10.2.0.10/24", "gateway": "10.2.0.1"}
    if version < "1.0.0":
        ip = {"version": "4", **ip}
    assert result == {
        "cniVersion": version,
        "ips": [ip],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.2.0.1"}],
        "dns": {},
    }


@pytest.mark.parametrize("version", VERSIONS)
async def test_del_twice_succeeds_and_frees_the_address(agent: RunningAgent, version: str) -> None:
    await agent.apply(POOL)
    conf = netconf(agent.socket, version, default_ipv4_ippool=["net-a"])
    with trio.fail_after(20):
        assert (await run_plugin(agent.shim, add_env(), conf))[0] == 0
        assert await run_plugin(agent.shim, add_env(command="DEL"), conf) == (0, None)
        assert await run_plugin(agent.shim, add_env(command="DEL"), conf) == (0, None)
    assert (await agent.pool_status("net-a"))["allocatedIPCount"] == 0


async def test_del_without_an_ipam_section_releases_from_stored_state(agent: RunningAgent) -> None:
    await agent.apply(POOL)
    with trio.fail_after(20):
        assert (await run_plugin(agent.shim, add_env(), netconf(agent.socket, default_ipv4_ippool=["net-a"])))[0] == 0
        bare = {
            "cniVersion": "1.0.0",
            "name": "testnet",
            "type": "macvlan",
            "ipam": {"type": "spiderpool", "ipam_unix_socket_path": str(agent.socket)},
        }
        bare["ipam"] = {"ipam_unix_socket_path": str(agent.socket), "default_ipv4_ippool": "not-a-list"}
        assert await run_plugin(agent.shim, add_env(command="DEL"), bare) == (0, None)
    assert (await agent.pool_status("net-a"))["allocatedIPCount"] == 0


async def test_repeated_add_through_the_plugin_returns_the_same_address(agent: RunningAgent) -> None:
    await agent.apply(POOL)
    conf = netconf(agent.socket, default_ipv4_ippool=["net-a"])
    with trio.fail_after(20):
        first = await run_plugin(agent.shim, add_env(), conf)
        second = await run_plugin(agent.shim, add_env(), conf)
    assert first == second
    assert first[0] == 0


async def test_exhaustion_is_a_clear_error_with_code_100(agent: RunningAgent) -> None:
    await agent.apply(POOL)
    conf = netconf(agent.socket, default_ipv4_ippool=["net-a"])
    with trio.fail_after(20):
        for n in range(2):
            assert (await run_plugin(agent.shim, add_env(n), conf))[0] == 0
        code, error = await run_plugin(agent.shim, add_env(2), conf)
    assert code == 1
    assert error["code"] == 100
    assert "exhausted" in error["msg"]


async def test_check_passes_for_a_live_allocation_and_fails_after_release(agent: RunningAgent) -> None:
    await agent.apply(POOL)
    conf = netconf(agent.socket, default_ipv4_ippool=["net-a"])
    with trio.fail_after(20):
        _, result = await run_plugin(agent.shim, add_env(), conf)
        assert await run_plugin(agent.shim, add_env(command="CHECK"), {**conf, "prevResult": result}) == (
            0,
            None,
        )
        wrong = {**result, "ips": [{"address": "10.2.0.99/24"}]}
        code, error = await run_plugin(agent.shim, add_env(command="CHECK"), {**conf, "prevResult": wrong})
        assert (code, error["code"]) == (1, 104)
        await run_plugin(agent.shim, add_env(command="DEL"), conf)
        code, error = await run_plugin(agent.shim, add_env(command="CHECK"), conf)
    assert (code, error["code"]) == (1, 104)


async def test_check_of_an_endpoint_edited_into_nonsense_fails_with_104_and_spider_check_reports_it(
    agent: RunningAgent,
) -> None:
    await agent.apply(POOL)
    conf = netconf(agent.socket, default_ipv4_ippool=["net-a"])
    with trio.fail_after(20):
        _, result = await run_plugin(agent.shim, add_env(), conf)
        (endpoint,) = (await agent.store.list("SpiderEndpoint")).items
        endpoint["status"]["current"]["ips"][0]["ipv4"] = "10.2.0.300/24"
        await agent.store.update(endpoint)
        code, error = await run_plugin(agent.shim, add_env(command="CHECK"), {**conf, "prevResult": result})
        assert (code, error["code"]) == (1, 104)
        report = await check_store(agent.store)
    assert {(f.problem, f.ip) for f in report.findings} == {
        ("dangling-endpoint", "10.2.0.300/24"),
        ("reclaimable", result["ips"][0]["address"].partition("/")[0]),
    }


async def test_gc_releases_attachments_the_runtime_no_longer_knows(agent: RunningAgent) -> None:
    await agent.apply(POOL)
    conf = netconf(agent.socket, "1.1.0", default_ipv4_ippool=["net-a"])
    with trio.fail_after(20):
        for n in range(2):
            assert (await run_plugin(agent.shim, add_env(n), conf))[0] == 0
        gc = {**conf, "cni.dev/valid-attachments": [{"containerID": "ctr1", "ifname": "eth0"}]}
        assert await run_plugin(agent.shim, cni_env("GC"), gc) == (0, None)
    records = json.loads((await agent.pool_status("net-a"))["allocatedIPs"])
    assert [r["containerID"] for r in records.values()] == ["ctr1"]


async def test_gc_of_another_network_leaves_ours_alone(agent: RunningAgent) -> None:
    await agent.apply(POOL)
    conf = netconf(agent.socket, "1.1.0", default_ipv4_ippool=["net-a"])
    with trio.fail_after(20):
        assert (await run_plugin(agent.shim, add_env(), conf))[0] == 0
        gc = {**conf, "name": "othernet", "cni.dev/valid-attachments": []}
        assert await run_plugin(agent.shim, cni_env("GC"), gc) == (0, None)
    assert (await agent.pool_status("net-a"))["allocatedIPCount"] == 1


async def test_status_is_ok_while_the_pool_has_room_and_50_when_exhausted(agent: RunningAgent) -> None:
    await agent.apply(POOL)
    conf = netconf(agent.socket, "1.1.0", default_ipv4_ippool=["net-a"])
    with trio.fail_after(20):
        assert await run_plugin(agent.shim, cni_env("STATUS"), conf) == (0, None)
        for n in range(2):
            await run_plugin(agent.shim, add_env(n), conf)
        code, error = await run_plugin(agent.shim, cni_env("STATUS"), conf)
    assert (code, error["code"]) == (1, 50)


async def test_status_is_50_when_the_agent_is_unreachable(agent: RunningAgent) -> None:
    conf = netconf(agent.dir / "nobody.sock", "1.1.0")
    with trio.fail_after(20):
        code, error = await run_plugin(agent.shim, cni_env("STATUS"), conf)
    assert (code, error["code"]) == (1, 50)


async def test_add_is_11_when_the_agent_is_unreachable(agent: RunningAgent) -> None:
    conf = netconf(agent.dir / "nobody.sock")
    with trio.fail_after(20):
        code, error = await run_plugin(agent.shim, add_env(), conf)
    assert (code, error["code"]) == (1, 11)


@pytest.mark.parametrize(
    ("env_change", "stdin", "expected"),
    [
        ({"CNI_COMMAND": "FROB"}, None, 4),
        ({"CNI_CONTAINERID": ""}, None, 4),
        ({"CNI_IFNAME": "a/b"}, None, 4),
        ({"CNI_ARGS": "K8S_POD_NAME"}, None, 4),
        ({}, b'{"ipam": {"ipam_unix_socket_path": "SOCKET"}, not json', 6),
        ({}, {"cniVersion": "9.9.9", "name": "x", "type": "spiderpool", "ipam": {}}, 1),
        (
            {},
            {
                "cniVersion": "1.0.0",
                "name": "x",
                "type": "spiderpool",
                "ipam": {"default_ipv4_ippool": "net-a"},
            },
            7,
        ),
        ({}, b'{"cniVersion": "1.0.0", "name": "x", "ipam": 5, "x": {"ipam_unix_socket_path": "SOCKET"}}', 7),
    ],
    ids=[
        "unknown-command",
        "no-container",
        "bad-ifname",
        "bad-args",
        "not-json",
        "version",
        "bad-field",
        "no-ipam",
    ],
)
async def test_bad_input_gets_its_cni_code_and_changes_nothing(
    agent: RunningAgent, env_change: dict[str, str], stdin: object, expected: int
) -> None:
    await agent.apply(POOL)
    before = await snapshot(agent)
    env = {**add_env(), **env_change}
    env = {k: v for k, v in env.items() if v}
    if stdin is None:
        stdin = netconf(agent.socket, default_ipv4_ippool=["net-a"])
    elif isinstance(stdin, bytes):
        stdin = stdin.replace(b"SOCKET", str(agent.socket).encode())
    elif isinstance(stdin, dict) and "ipam" in stdin:
        stdin["ipam"]["ipam_unix_socket_path"] = str(agent.socket)
    with trio.fail_after(20):
        code, error = await run_plugin(agent.shim, env, stdin)
    assert code == 1
    assert error["code"] == expected, error
    assert error["msg"]
    assert await snapshot(agent) == before


async def test_version_needs_no_agent(agent: RunningAgent) -> None:
    with trio.fail_after(20):
        code, result = await run_plugin(agent.shim, cni_env("VERSION"), {"cniVersion": "1.0.0"})
    assert code == 0
    assert result["supportedVersions"] == list(VERSIONS)


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
async def test_check_works_in_every_version_that_defines_it(agent: RunningAgent, version: str) -> None:
    await agent.apply(POOL)
    conf = netconf(agent.socket, version, default_ipv4_ippool=["net-a"])
    with trio.fail_after(20):
        _, result = await run_plugin(agent.shim, add_env(), conf)
        assert await run_plugin(agent.shim, add_env(command="CHECK"), {**conf, "prevResult": result}) == (0, None)


@pytest.mark.parametrize(
    ("command", "version"),
    [("CHECK", "0.3.0"), ("CHECK", "0.3.1"), ("GC", "1.0.0"), ("STATUS", "0.4.0")],
)
async def test_a_verb_the_spec_version_lacks_is_an_incompatible_version(
    agent: RunningAgent, command: str, version: str
) -> None:
    conf = {**netconf(agent.socket, version), "cni.dev/valid-attachments": []}
    with trio.fail_after(20):
        code, error = await run_plugin(agent.shim, add_env(command=command), conf)
    assert (code, error["code"]) == (1, 1)
    assert command in error["msg"]
