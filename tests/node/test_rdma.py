"""The RDMA exporter's samples (reference §8.2, e2e K00002) from a recorded node: sysfs, ``rdma`` and ``ethtool``
outputs under ``tests/node/data/rdma/`` (see its README for where each format comes from)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.node.rdma import (
    NETNS_PARALLELISM,
    MetricSample,
    NodePods,
    PodIndex,
    PodOwner,
    RdmaCollector,
    camel_to_snake,
    devices_from_rdma_tool,
    ethtool_counters,
    netlink_guid,
    parse_ethtool_stats,
    parse_netns_mode,
    parse_rdma_statistic,
    pods_by_address,
    read_devices,
    run_command,
)
from actors.stores.port import Store
from actors.stores.sqlite import SqliteStore
from spider.endpoint import Endpoint, NicAllocation
from spider.errors import DecodeFailure, StoreUnavailable

DATA = Path(__file__).parent / "data" / "rdma"
SYS = DATA / "sys"
COMMANDS = DATA / "commands"
NODE = "worker-1"
PF_GUID = "a2:e5:c3:00:03:4b:6b:50"  # sysfs 506b:4b03:00c3:e5a2, as Spiderpool's netlink library writes it


def recorded(*, netns_mode: str = "shared") -> dict[tuple[str, ...], str]:
    outputs = {
        ("rdma", "statistic", "-j"): "rdma-statistic.json",
        ("rdma", "system", "show", "-j"): f"rdma-system-show-{netns_mode}.json",
        ("ethtool", "-S", "ens1f0np0"): "ethtool-S-ens1f0np0.txt",
        ("ethtool", "-S", "ens1f0v0"): "ethtool-S-ens1f0v0.txt",
        ("ethtool", "-S", "ib0"): "ethtool-S-ib0.txt",
        ("ethtool", "-S", "ens2f0np0"): "ethtool-S-ens2f0np0.txt",
    }
    for netns in ("pod1", "pod2"):
        pod = ("ip", "netns", "exec", netns)
        outputs |= {
            (*pod, "rdma", "statistic", "-j"): f"netns-{netns}/rdma-statistic.json",
            (*pod, "rdma", "dev", "show", "-j"): f"netns-{netns}/rdma-dev-show.json",
            (*pod, "rdma", "link", "show", "-j"): f"netns-{netns}/rdma-link-show.json",
            (*pod, "ip", "-j", "-4", "route", "get", "1.0.0.0"): f"netns-{netns}/ip-route-get-4.json",
            (*pod, "ethtool", "-S", "net1"): f"netns-{netns}/ethtool-S-net1.txt",
        }
    return {argv: (COMMANDS / name).read_text() for argv, name in outputs.items()}


class Recorded:
    """A command runner answering from recordings (``None``, like a missing tool, for anything else)."""

    def __init__(self, outputs: dict[tuple[str, ...], str]) -> None:
        self.outputs = outputs
        self.calls: list[tuple[str, ...]] = []

    async def __call__(self, argv: Sequence[str]) -> str | None:
        self.calls.append(tuple(argv))
        return self.outputs.get(tuple(argv))


def find(samples: list[MetricSample], name: str, **labels: str) -> list[MetricSample]:
    return [s for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def one(samples: list[MetricSample], name: str, **labels: str) -> MetricSample:
    [found] = find(samples, name, **labels)
    return found


async def collect(
    tmp_path: Path, outputs: dict[tuple[str, ...], str], pods_by_ip: PodIndex | None = None
) -> list[MetricSample]:
    collector = RdmaCollector(NODE, sys_root=SYS, netns_dir=tmp_path, run=Recorded(outputs), pods_by_ip=pods_by_ip)
    with trio.fail_after(10):
        return await collector.collect()


# --- sysfs ---------------------------------------------------------------------------------------------------------


def test_devices_netdevs_guids_and_the_pf_of_each_vf_are_read_from_sysfs() -> None:
    devices = {d.name: d for d in read_devices(SYS)}
    assert sorted(devices) == ["mlx5_0", "mlx5_2", "mlx5_3", "mlx5_4", "mlx5_5"]
    pf, vf, moved, ib = devices["mlx5_0"], devices["mlx5_2"], devices["mlx5_4"], devices["mlx5_3"]
    assert (pf.netdevs, pf.node_guid, pf.is_root, pf.traffic_class) == (("ens1f0np0",), PF_GUID, True, 106)
    assert (vf.netdev, vf.sys_image_guid, vf.is_root, vf.physfn_device) == ("ens1f0v0", PF_GUID, False, "mlx5_0")
    assert (moved.netdev, moved.physfn_device) == ("", "mlx5_0")
    assert (ib.netdev, ib.is_root, ib.traffic_class) == ("ib0", True, 0)  # IPoIB: found through device/net
    assert devices["mlx5_5"].netdevs == ("ens2f0np0", "ens2f1np1")  # each port's GID table names its netdev


def test_a_node_without_class_infiniband_has_no_devices(tmp_path: Path) -> None:
    assert read_devices(tmp_path) == []


def test_guids_are_written_as_spiderpools_netlink_library_does() -> None:
    assert netlink_guid("506b:4b03:00c3:e5a2\n") == PF_GUID
    assert netlink_guid("not a guid") == "not a guid"


# --- parsing -------------------------------------------------------------------------------------------------------


def test_ethtool_keeps_the_vport_counters_and_folds_priorities_into_a_label() -> None:
    stats = parse_ethtool_stats((COMMANDS / "ethtool-S-ens1f0np0.txt").read_text())
    assert stats["rx_prio3_pause"] == 211
    counters = {(key, labels.get("priority")): value for key, labels, value in ethtool_counters(stats)}
    assert counters[("rx_vport_rdma_unicast_packets", None)] == 552101
    assert counters[("rx_vport_unicast_packets", None)] == 1870019  # every *vport* key, as Spiderpool
    assert counters[("rx_pause", "3")] == 211
    assert counters[("tx_pause", "3")] == 187
    assert counters[("rx_discards", "3")] == 5
    assert counters[("rx_pause", "0")] == 0
    assert not any(key.startswith(("rx_packets", "rx_prio3_pause_duration", "rx_discards_phy")) for key, _ in counters)
    assert ("rx_pause_transition", "3") not in counters


def test_unreadable_tool_outputs_are_decode_failures() -> None:
    with pytest.raises(DecodeFailure):
        parse_rdma_statistic("rdma: unknown command")
    with pytest.raises(DecodeFailure):
        parse_rdma_statistic('{"ifname": "mlx5_0"}')
    with pytest.raises(DecodeFailure):
        parse_netns_mode("[]")
    assert parse_netns_mode('{"netns": "exclusive"}') == "exclusive"
    assert parse_rdma_statistic('[{"port": 1}, 3, {"ifname": "mlx5_0", "port": 1}]') == [
        {"ifname": "mlx5_0", "port": 1}
    ]


def test_camel_case_counter_names_become_snake_case_as_spiderpools() -> None:
    assert camel_to_snake("rxWriteRequests") == "rx_write_requests"
    assert camel_to_snake("rx_write_requests") == "rx_write_requests"
    assert camel_to_snake("VL15Dropped") == "vl15_dropped"


def test_a_namespaces_devices_come_from_the_rdma_tool() -> None:
    [device] = devices_from_rdma_tool(
        (COMMANDS / "netns-pod1" / "rdma-dev-show.json").read_text(),
        (COMMANDS / "netns-pod1" / "rdma-link-show.json").read_text(),
    )
    assert (device.name, device.netdev, device.sys_image_guid, device.is_root) == ("mlx5_4", "net1", PF_GUID, False)


# --- K00002: the samples -------------------------------------------------------------------------------------------


async def test_k00002_every_counter_of_every_known_device_is_a_sample_with_its_labels(tmp_path: Path) -> None:
    samples = await collect(tmp_path, recorded())
    sample = one(samples, "rdma_rx_write_requests", ifname="mlx5_0")
    assert sample.value == 84217
    assert sample.type == "counter"
    assert sample.documentation == "The number of received WRITE requests for the associated QPs."
    assert sample.labels == {
        "node_name": NODE,
        "ifname": "mlx5_0",
        "port": "1",
        "net_dev_name": "ens1f0np0",
        "node_guid": PF_GUID,
        "sys_image_guid": PF_GUID,
        "is_root": "true",
        "rdma_parent_name": "ens1f0np0",  # Spiderpool's rule names a root device's own netdev too
    }
    assert one(samples, "rdma_np_cnp_sent", ifname="mlx5_0").value == 388
    assert find(samples, "rdma_rx_write_requests", ifname="mlx5_9") == []  # not on this node's sysfs
    assert find(samples, "rdma_ifindex") == find(samples, "rdma_port") == []


async def test_vfs_name_their_pf_and_a_vf_whose_netdev_left_has_no_ethtool_counters(tmp_path: Path) -> None:
    samples = await collect(tmp_path, recorded())
    vf = one(samples, "rdma_rx_write_requests", ifname="mlx5_2")
    assert vf.labels["is_root"] == "false"
    assert vf.labels["rdma_parent_name"] == "ens1f0np0"
    assert vf.labels["node_guid"] == "01:9d:03:fe:ff:4c:a1:e2"
    assert one(samples, "rdma_rx_vport_rdma_unicast_packets", ifname="mlx5_2").value == 5120
    assert find(samples, "rdma_vport_speed_mbps", ifname="mlx5_2") == []  # sysfs says -1: unknown
    moved = one(samples, "rdma_out_of_buffer", ifname="mlx5_4")
    assert (moved.labels["net_dev_name"], moved.labels["rdma_parent_name"]) == ("", "ens1f0np0")
    of_moved = [s.name for s in samples if s.labels.get("ifname") == "mlx5_4"]
    assert of_moved == ["rdma_rx_write_requests", "rdma_out_of_buffer"]


async def test_ethtool_priorities_speed_and_traffic_class_are_samples_too(tmp_path: Path) -> None:
    samples = await collect(tmp_path, recorded())
    pause = one(samples, "rdma_rx_pause", ifname="mlx5_0", priority="3")
    assert (pause.value, pause.labels["net_dev_name"], pause.labels["node_guid"]) == (211, "ens1f0np0", PF_GUID)
    speed = one(samples, "rdma_vport_speed_mbps", ifname="mlx5_0")
    assert (speed.value, speed.type) == (100000, "gauge")
    assert one(samples, "rdma_vport_speed_mbps", ifname="mlx5_3").value == 200000
    tos = find(samples, "rdma_device_tos")
    assert {s.labels["ifname"]: s.value for s in tos} == {"mlx5_0": 106, "mlx5_3": 0, "mlx5_5": 0}  # roots only
    assert tos[0].labels == {"node_name": NODE, "ifname": "mlx5_0", "net_dev_name": "ens1f0np0"}
    assert tos[0].type == "gauge"


async def test_in_exclusive_mode_each_pod_namespace_is_read_and_resolved_to_its_pod(tmp_path: Path) -> None:
    (tmp_path / "pod1").touch()
    (tmp_path / "idle").touch()  # a namespace without RDMA tools answering: skipped

    async def pods() -> dict[str, PodOwner]:
        return {"10.6.0.21": PodOwner("team", "trainer-0", "apps/v1", "StatefulSet", "team", "trainer")}

    samples = await collect(tmp_path, recorded(netns_mode="exclusive"), pods_by_ip=pods)
    in_pod = one(samples, "rdma_rp_cnp_handled", ifname="mlx5_4")
    assert in_pod.labels == {
        "node_name": NODE,
        "ifname": "mlx5_4",
        "port": "1",
        "net_dev_name": "net1",
        "node_guid": "02:9d:03:fe:ff:4c:a1:e2",
        "sys_image_guid": PF_GUID,
        "is_root": "false",
        "rdma_parent_name": "ens1f0np0",  # the host's PF, by the VF's system image GUID
        "pod_namespace": "team",
        "pod_name": "trainer-0",
        "owner_api_version": "apps/v1",
        "owner_kind": "StatefulSet",
        "owner_namespace": "team",
        "owner_name": "trainer",
    }
    assert one(samples, "rdma_rx_vport_rdma_unicast_packets", ifname="mlx5_4", pod_name="trainer-0").value == 77
    host = one(samples, "rdma_rx_write_requests", ifname="mlx5_0")
    assert "pod_name" not in host.labels


async def test_a_dual_port_device_gives_one_series_per_port_each_with_the_devices_ethtool_counters(
    tmp_path: Path,
) -> None:
    samples = await collect(tmp_path, recorded())
    writes = find(samples, "rdma_rx_write_requests", ifname="mlx5_5")
    assert {s.labels["port"]: s.value for s in writes} == {"1": 1, "2": 5}
    assert {s.labels["net_dev_name"] for s in writes} == {"ens2f0np0"}  # the device's, as Spiderpool labels it
    vport = find(samples, "rdma_rx_vport_rdma_unicast_packets", ifname="mlx5_5")
    assert {s.labels["port"]: s.value for s in vport} == {"1": 30125, "2": 30125}
    speed = find(samples, "rdma_vport_speed_mbps", ifname="mlx5_5")
    assert {s.labels["port"]: s.value for s in speed} == {"1": 200000, "2": 200000}


def label_sets_shared(samples: list[MetricSample]) -> list[tuple[str, dict[str, str]]]:
    """The samples whose family already has a sample with the same labels (Prometheus rejects those)."""
    seen: set[tuple[str, frozenset[tuple[str, str]]]] = set()
    shared = []
    for s in samples:
        key = (s.name, frozenset(s.labels.items()))
        if key in seen:
            shared.append((s.name, s.labels))
        seen.add(key)
    return shared


@pytest.mark.parametrize("netns_mode", ["shared", "exclusive"])
async def test_no_two_samples_of_one_family_share_a_label_set_in_any_recording(tmp_path: Path, netns_mode: str) -> None:
    for netns in ("pod1", "pod2", "idle"):
        (tmp_path / netns).touch()

    async def pods() -> dict[str, PodOwner]:
        return {"10.6.0.21": PodOwner("team", "trainer-0"), "10.233.74.12": PodOwner("team", "trainer-1")}

    for pods_by_ip in (pods, None):  # the pod namespaces resolved, and not
        samples = await collect(tmp_path, recorded(netns_mode=netns_mode), pods_by_ip=pods_by_ip)
        assert len(find(samples, "rdma_rx_write_requests", ifname="mlx5_5")) == 2
        assert label_sets_shared(samples) == []


async def test_pod_namespaces_are_read_several_at_a_time_but_no_more_than_the_bound(tmp_path: Path) -> None:
    names = [f"pod{n}" for n in range(1, 4 * NETNS_PARALLELISM)]
    for name in names:
        (tmp_path / name).touch()
    outputs = recorded(netns_mode="exclusive")
    pod1 = {argv[4:]: text for argv, text in outputs.items() if argv[:4] == ("ip", "netns", "exec", "pod1")}
    outputs |= {("ip", "netns", "exec", name, *rest): text for name in names for rest, text in pod1.items()}
    in_flight: set[str] = set()
    most = 0
    answer = Recorded(outputs)

    async def run(argv: Sequence[str]) -> str | None:
        nonlocal most
        if tuple(argv[:3]) != ("ip", "netns", "exec"):
            return await answer(argv)
        in_flight.add(argv[3])
        most = max(most, len(in_flight))
        await trio.sleep(0.001)  # a command takes a while: the others may start meanwhile
        in_flight.discard(argv[3])
        return await answer(argv)

    collector = RdmaCollector(NODE, sys_root=SYS, netns_dir=tmp_path, run=run)
    with trio.fail_after(10):
        samples = await collector.collect()
    assert 1 < most <= NETNS_PARALLELISM
    assert len(find(samples, "rdma_rp_cnp_handled", ifname="mlx5_4")) == len(names)  # every one was read


async def test_an_unresolved_pod_namespace_still_gives_its_samples_without_pod_labels(tmp_path: Path) -> None:
    (tmp_path / "pod1").touch()
    samples = await collect(tmp_path, recorded(netns_mode="exclusive"))
    assert "pod_name" not in one(samples, "rdma_rp_cnp_handled", ifname="mlx5_4").labels


@asynccontextmanager
async def cluster(tmp_path: Path) -> AsyncIterator[Store]:
    """A store holding trainer-1, a Deployment's pod on this node (overlay ``eth0`` 10.233.74.12, the address
    ``netns-pod2``'s default route leaves from), and trainer-0, whose SpiderEndpoint holds pod1's ``net1``."""
    async with await SqliteStore.open(tmp_path / "store.db") as store:
        await store.create(workload("apps", "Deployment", "trainer"))
        await store.create(workload("apps", "ReplicaSet", "trainer-7d9", ("apps/v1", "Deployment", "trainer")))
        await put_pod(store, "trainer-1", ["10.233.74.12", "fd00:10:233::12"], ("apps/v1", "ReplicaSet", "trainer-7d9"))
        endpoint = Endpoint(
            "team", "trainer-0", "uid-0", NODE, (NicAllocation("net1", ipv4="10.6.0.21/24"),), "StatefulSet", "trainer"
        )
        await store.create(endpoint.to_object())
        yield store


def workload(group: str, kind: str, name: str, owner: tuple[str, str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "team"}
    if owner:
        meta["ownerReferences"] = [
            {"apiVersion": owner[0], "kind": owner[1], "name": owner[2], "uid": f"uid-{owner[2]}", "controller": True}
        ]
    return {"apiVersion": f"{group}/v1", "kind": kind, "metadata": meta}


async def put_pod(
    store: Store,
    name: str,
    ips: list[str],
    owner: tuple[str, str, str] | None = None,
    node: str = NODE,
    phase: str = "Running",
    host_network: bool = False,
) -> None:
    pod = workload("", "Pod", name, owner) | {"apiVersion": "v1", "spec": {"nodeName": node}}
    if host_network:
        pod["spec"]["hostNetwork"] = True
    created = await store.create(pod)
    status = {"phase": phase, "podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips]}
    await store.update_status(created | {"status": status})


async def test_a_pod_whose_default_route_leaves_through_the_overlay_is_found_by_its_pod_ips(tmp_path: Path) -> None:
    (tmp_path / "pod1").touch()
    (tmp_path / "pod2").touch()
    async with cluster(tmp_path) as store:
        with trio.fail_after(10):
            samples = await collect(tmp_path, recorded(netns_mode="exclusive"), pods_by_address(store, NODE))
    overlay = one(samples, "rdma_rp_cnp_handled", ifname="mlx5_6")  # netns-pod2: default route through eth0
    assert {k: v for k, v in overlay.labels.items() if k.startswith(("pod_", "owner_"))} == {
        "pod_namespace": "team",
        "pod_name": "trainer-1",
        "owner_api_version": "apps/v1",
        "owner_kind": "Deployment",  # the ReplicaSet's owner
        "owner_namespace": "team",
        "owner_name": "trainer",
    }
    underlay = one(samples, "rdma_rp_cnp_handled", ifname="mlx5_4")  # netns-pod1: through net1, an endpoint's
    assert (underlay.labels["pod_name"], underlay.labels["owner_kind"]) == ("trainer-0", "StatefulSet")


async def test_only_this_nodes_running_pods_with_their_own_addresses_are_indexed(tmp_path: Path) -> None:
    async with await SqliteStore.open(tmp_path / "store.db") as store:
        await put_pod(store, "plain", ["10.233.74.20"])
        await put_pod(store, "elsewhere", ["10.233.75.3"], node="worker-2")
        await put_pod(store, "finished", ["10.233.74.21"], phase="Succeeded")
        await put_pod(store, "host", ["192.168.0.11"], host_network=True)
        with trio.fail_after(10):
            index = await NodePods(store, NODE)()
    assert index == {"10.233.74.20": PodOwner("team", "plain")}
    assert index["10.233.74.20"].labels()["owner_kind"] == "Pod"


async def test_this_nodes_pods_are_listed_at_most_once_per_max_age(tmp_path: Path) -> None:
    async with await SqliteStore.open(tmp_path / "store.db") as store:
        cached, fresh = NodePods(store, NODE, max_age=3600), NodePods(store, NODE, max_age=0)
        with trio.fail_after(10):
            assert await cached() == await fresh() == {}
            await put_pod(store, "late", ["10.233.74.30"])
            assert await cached() == {}  # the last list is still young
            assert list(await fresh()) == ["10.233.74.30"]


async def test_a_store_that_does_not_answer_means_samples_without_pod_labels(tmp_path: Path) -> None:
    (tmp_path / "pod2").touch()

    async def unreachable() -> dict[str, PodOwner]:
        raise StoreUnavailable(reason="connection refused")

    samples = await collect(tmp_path, recorded(netns_mode="exclusive"), pods_by_ip=unreachable)
    assert "pod_name" not in one(samples, "rdma_rp_cnp_handled", ifname="mlx5_6").labels


async def test_without_the_rdma_tool_or_devices_there_are_no_samples_and_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="actors.node.rdma")
    collector = RdmaCollector(NODE, sys_root=SYS, netns_dir=tmp_path, run=Recorded({}))
    with trio.fail_after(10):
        assert await collector.collect() == []
        assert await collector.collect() == []
    assert len([r for r in caplog.records if "cannot be run" in r.getMessage()]) == 1
    caplog.clear()
    bare = RdmaCollector(NODE, sys_root=tmp_path, netns_dir=tmp_path, run=Recorded({("rdma", "statistic", "-j"): "[]"}))
    with trio.fail_after(10):
        assert await bare.collect() == []
    assert [r.getMessage() for r in caplog.records] == ["RDMA metrics: no RDMA device on this node: no samples"]


async def test_a_garbled_statistic_is_no_samples_not_a_crash(tmp_path: Path) -> None:
    outputs = recorded() | {("rdma", "statistic", "-j"): "\x00garbage"}
    assert await collect(tmp_path, outputs) == []


async def test_the_collector_serves_the_last_collection_to_scrapes(tmp_path: Path) -> None:
    collector = RdmaCollector(NODE, sys_root=SYS, netns_dir=tmp_path, run=Recorded(recorded()), interval=3600)
    assert collector.samples() == []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(collector.serve)
            while not collector.samples():  # noqa: ASYNC110  (samples() is what a scrape reads: poll it)
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel(reason="test over")
    assert one(collector.samples(), "rdma_rx_write_requests", ifname="mlx5_0").value == 84217


async def test_a_missing_command_or_a_failing_one_is_none() -> None:
    with trio.fail_after(10):
        assert await run_command(["/nonexistent/rdma", "statistic"]) is None
        assert await run_command(["false"]) is None
        assert await run_command(["echo", "[]"]) == "[]\n"


async def test_the_samples_are_served_as_prometheus_families_by_the_agents_metrics(tmp_path: Path) -> None:
    from actors.servers.metrics import sample_families

    samples = await collect(tmp_path, recorded())
    families = {f.name: f for f in sample_families(samples)}
    assert len(families) == len({s.name for s in samples})  # none left out as invalid
    assert families["rdma_rx_write_requests"].type == "counter"
    assert families["rdma_vport_speed_mbps"].type == "gauge"
    pause = [s for s in families["rdma_rx_pause"].samples if s.labels.get("priority") == "3"]
    assert [(s.labels["ifname"], s.labels["port"], s.value) for s in pause] == [
        ("mlx5_0", "1", 211),
        ("mlx5_5", "1", 4),
        ("mlx5_5", "2", 4),  # the device's netdev's counters, under each port as Spiderpool merges them
    ]


async def test_on_this_machine_without_rdma_the_real_commands_give_no_samples(tmp_path: Path) -> None:
    if read_devices(Path("/sys")):
        pytest.skip("this machine has RDMA devices")
    collector = RdmaCollector(NODE, netns_dir=tmp_path)  # the real /sys and the real rdma tool, if any
    with trio.fail_after(30):
        assert await collector.collect() == []


async def test_the_agent_serves_the_rdma_samples_when_switched_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import functools

    import actors.agent
    from actors.agent import AgentSettings, open_agent
    from actors.servers.metrics import MetricsSettings
    from tests.support import short_tmp

    recorder = functools.partial(RdmaCollector, sys_root=SYS, netns_dir=tmp_path, run=Recorded(recorded()))
    monkeypatch.setattr(actors.agent, "RdmaCollector", recorder)  # the recorded node instead of this one
    with short_tmp() as d, trio.fail_after(30):
        metrics = MetricsSettings(enabled=True, host="127.0.0.1", port=0)
        for rdma in (False, True):
            settings = AgentSettings(
                store_path=d / f"{rdma}.db",
                socket_path=d / "a.sock",
                node="worker-1",
                node_actor=False,
                metrics=metrics,
                rdma_metrics=rdma,
            )
            async with open_agent(settings) as api:
                assert api.metrics is not None
                while rdma and b"rdma_" not in api.metrics.render():  # noqa: ASYNC110  (a scrape is the point)
                    await trio.sleep(0.01)
                text = api.metrics.render().decode()
            assert ("rdma_" in text) is rdma
    assert "rdma_rx_write_requests_total{" in text
    assert 'ifname="mlx5_0"' in text
    assert 'node_name="worker-1"' in text
