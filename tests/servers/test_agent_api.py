"""Spiderpool's agent API over the unix socket: paths, schemas, status codes, and the IPAM flow behind them."""

from __future__ import annotations

import json
from typing import Any

import trio

from tests.support import RunningAgent, http_call, pool_object


def add_args(
    name: str = "web-0", uid: str = "uid-1", container: str = "c1", ifname: str = "eth0", **extra: Any
) -> dict[str, Any]:
    return {
        "containerID": container,
        "ifName": ifname,
        "netNamespace": "/var/run/netns/x",
        "podNamespace": "default",
        "podName": name,
        "podUID": uid,
        **extra,
    }


def del_args(name: str = "web-0", uid: str = "uid-1", container: str = "c1", ifname: str = "eth0") -> dict[str, Any]:
    return {
        "containerID": container,
        "ifName": ifname,
        "podNamespace": "default",
        "podName": name,
        "podUID": uid,
    }


V4 = pool_object("v4", "10.1.0.0/24", ["10.1.0.10-10.1.0.12"], gateway="10.1.0.1", default=True)
V6 = pool_object("v6", "fd00:1::/120", ["fd00:1::10-fd00:1::11"], gateway="fd00:1::1")


async def test_healthy_answers_200(agent: RunningAgent) -> None:
    with trio.fail_after(10):
        status, _, _ = await http_call(agent.socket, "GET", "/v1/ipam/healthy")
    assert status == 200


async def test_a_head_of_a_get_path_is_answered_as_its_get_without_a_body(agent: RunningAgent) -> None:
    with trio.fail_after(10):
        status, body, headers = await http_call(agent.socket, "HEAD", "/v1/spider/stats")
        assert (await http_call(agent.socket, "HEAD", "/v1/ipam/healthy"))[0] == 200
        assert (await http_call(agent.socket, "HEAD", "/v1/ipam/ip"))[0] == 405
    assert (status, body) == (200, None)
    assert int(headers["Content-Length"]) > 0


async def test_add_answers_with_spiderpools_response_schema(agent: RunningAgent) -> None:
    await agent.apply(V4)
    with trio.fail_after(10):
        status, body, _ = await http_call(agent.socket, "POST", "/v1/ipam/ip", add_args())
    assert status == 200
    assert body == {
        "ips": [
            {
                "version": 4,
                "address": "10.1.0.10/24",
                "nic": "eth0",
                "ipPool": "v4",
                "gateway": "10.1.0.1",
                "vlan": 0,
            }
        ],
        "routes": [{"ifName": "eth0", "dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
    }


async def test_repeated_add_returns_the_same_address(agent: RunningAgent) -> None:
    await agent.apply(V4)
    with trio.fail_after(10):
        first = await http_call(agent.socket, "POST", "/v1/ipam/ip", add_args())
        again = await http_call(agent.socket, "POST", "/v1/ipam/ip", add_args(container="c2"))
    assert first[1]["ips"] == again[1]["ips"]
    assert (await agent.pool_status("v4"))["allocatedIPCount"] == 1


async def test_missing_field_is_a_400_with_a_json_string_naming_it(agent: RunningAgent) -> None:
    body = add_args()
    del body["podUID"]
    with trio.fail_after(10):
        status, message, headers = await http_call(agent.socket, "POST", "/v1/ipam/ip", body)
    assert status == 400
    assert isinstance(message, str)
    assert "podUID" in message
    assert headers["X-Cni-Code"] == "102"


async def test_workload_endpoint_is_200_then_404_after_release(agent: RunningAgent) -> None:
    await agent.apply(V4)
    with trio.fail_after(10):
        await http_call(agent.socket, "POST", "/v1/ipam/ip", add_args())
        status, body, _ = await http_call(
            agent.socket, "GET", "/v1/workloadendpoint?podNamespace=default&podName=web-0"
        )
        assert status == 200
        assert body == {
            "podNamespace": "default",
            "podName": "web-0",
            "podUID": "uid-1",
            "node": "node-1",
            "interfaces": [
                {
                    "interface": "eth0",
                    "ipv4": "10.1.0.10/24",
                    "ipv4Pool": "v4",
                    "ipv4Gateway": "10.1.0.1",
                }
            ],
        }
        assert (await http_call(agent.socket, "DELETE", "/v1/ipam/ip", del_args()))[0] == 200
        status, message, _ = await http_call(
            agent.socket, "GET", "/v1/workloadendpoint?podNamespace=default&podName=web-0"
        )
    assert status == 404
    assert message == "SpiderEndpoint not found for pod default/web-0"


async def test_workload_endpoint_needs_both_query_parameters(agent: RunningAgent) -> None:
    with trio.fail_after(10):
        status, _, _ = await http_call(agent.socket, "GET", "/v1/workloadendpoint?podName=web-0")
    assert status == 400


async def test_delete_releases_and_a_second_delete_succeeds(agent: RunningAgent) -> None:
    await agent.apply(V4)
    with trio.fail_after(10):
        await http_call(agent.socket, "POST", "/v1/ipam/ip", add_args())
        assert (await http_call(agent.socket, "DELETE", "/v1/ipam/ip", del_args()))[0] == 200
        assert (await http_call(agent.socket, "DELETE", "/v1/ipam/ip", del_args()))[0] == 200
    status = await agent.pool_status("v4")
    assert status["allocatedIPCount"] == 0
    assert "allocatedIPs" not in status


async def test_batch_delete_releases_every_nic_of_the_sandbox(agent: RunningAgent) -> None:
    await agent.apply(V4)
    with trio.fail_after(10):
        await http_call(agent.socket, "POST", "/v1/ipam/ip", add_args())
        body = del_args()
        del body["ifName"]
        assert (await http_call(agent.socket, "DELETE", "/v1/ipam/ips", body))[0] == 200
    assert (await agent.pool_status("v4"))["allocatedIPCount"] == 0


async def test_a_delete_from_an_older_sandbox_frees_nothing(agent: RunningAgent) -> None:
    await agent.apply(V4)
    with trio.fail_after(10):
        await http_call(agent.socket, "POST", "/v1/ipam/ip", add_args(container="old"))
        await http_call(agent.socket, "POST", "/v1/ipam/ip", add_args(container="new"))
        await http_call(agent.socket, "DELETE", "/v1/ipam/ip", del_args(container="old"))
    assert (await agent.pool_status("v4"))["allocatedIPCount"] == 1


async def test_same_name_pod_with_a_new_uid_gets_a_fresh_allocation(agent: RunningAgent) -> None:
    await agent.apply(V4)
    with trio.fail_after(10):
        await http_call(agent.socket, "POST", "/v1/ipam/ip", add_args(uid="old-uid"))
        _, body, _ = await http_call(agent.socket, "POST", "/v1/ipam/ip", add_args(uid="new-uid", container="c2"))
        # The old pod's late DEL must not free the new pod's address.
        await http_call(agent.socket, "DELETE", "/v1/ipam/ip", del_args(uid="old-uid"))
    records = json.loads((await agent.pool_status("v4"))["allocatedIPs"])
    assert [r["podUid"] for r in records.values()] == ["new-uid"]
    assert body["ips"][0]["address"] in {f"{ip}/24" for ip in records}


async def test_a_live_pod_keeps_its_address_on_delete(agent: RunningAgent) -> None:
    await agent.apply(V4, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0", "namespace": "default"}})
    uid = (await agent.store.get("Pod", "web-0", "default"))["metadata"]["uid"]
    with trio.fail_after(10):
        await http_call(agent.socket, "POST", "/v1/ipam/ip", add_args(uid=uid))
        await http_call(agent.socket, "DELETE", "/v1/ipam/ip", del_args(uid=uid))
    assert (await agent.pool_status("v4"))["allocatedIPCount"] == 1
    await agent.store.delete("Pod", "web-0", "default")
    with trio.fail_after(10):
        await http_call(agent.socket, "DELETE", "/v1/ipam/ip", del_args(uid=uid))
    assert (await agent.pool_status("v4"))["allocatedIPCount"] == 0


async def test_a_terminating_pod_gets_no_address(agent: RunningAgent) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "default", "finalizers": ["x"]},
    }
    await agent.apply(V4, pod)
    await agent.store.delete("Pod", "web-0", "default")
    with trio.fail_after(10):
        status, message, headers = await http_call(agent.socket, "POST", "/v1/ipam/ip", add_args())
    assert status == 500
    assert "terminating" in message
    assert headers["X-Cni-Code"] == "103"


async def test_dual_stack_is_all_or_nothing(agent: RunningAgent) -> None:
    annotation = json.dumps({"ipv4": ["v4"], "ipv6": ["v6"]})
    pods = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"p{i}",
                "namespace": "default",
                "annotations": {"ipam.spidernet.io/ippool": annotation},
            },
        }
        for i in range(3)
    ]
    await agent.apply(V4, V6, *pods)
    with trio.fail_after(10):
        for i in range(2):
            uid = (await agent.store.get("Pod", f"p{i}", "default"))["metadata"]["uid"]
            status, body, _ = await http_call(agent.socket, "POST", "/v1/ipam/ip", add_args(name=f"p{i}", uid=uid))
            assert status == 200
            assert sorted(ip["version"] for ip in body["ips"]) == [4, 6]
        # v6 has two addresses: the third pod fails, and its IPv4 address is given back.
        uid = (await agent.store.get("Pod", "p2", "default"))["metadata"]["uid"]
        status, message, headers = await http_call(agent.socket, "POST", "/v1/ipam/ip", add_args(name="p2", uid=uid))
    assert status == 500
    assert "used out" in message
    assert headers["X-Cni-Code"] == "100"
    assert (await agent.pool_status("v4"))["allocatedIPCount"] == 2
    assert await agent.store.list("SpiderEndpoint", namespace="default") is not None
    names = [o["metadata"]["name"] for o in (await agent.store.list("SpiderEndpoint")).items]
    assert sorted(names) == ["p0", "p1"]


async def test_unknown_paths_are_404_and_wrong_methods_405(agent: RunningAgent) -> None:
    with trio.fail_after(10):
        assert (await http_call(agent.socket, "GET", "/v1/nothing"))[0] == 404
        assert (await http_call(agent.socket, "PUT", "/v1/ipam/ip", {}))[0] == 405


async def test_a_named_pool_that_does_not_exist_is_reported(agent: RunningAgent) -> None:
    with trio.fail_after(10):
        status, message, _ = await http_call(agent.socket, "POST", "/v1/ipam/ip", add_args(defaultIPv4IPPool=["nope"]))
    assert status == 500
    assert message == "pool 'nope' does not exist"


async def test_no_pool_rule_at_all_is_reported(agent: RunningAgent) -> None:
    with trio.fail_after(10):
        status, message, _ = await http_call(agent.socket, "POST", "/v1/ipam/ip", add_args())
    assert status == 500
    assert "no pool selection rules" in message
