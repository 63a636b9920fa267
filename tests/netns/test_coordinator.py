"""The coordinator with real interfaces: Debian's macvlan with our IPAM, then our coordinator, chained as libcni
runs a conflist, in namespaces the test makes (a host with a bridge as the underlay switch, a router, pods).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest
import trio

from tests.netns.coordinator_topology import (
    GATEWAY_V4,
    HOST_V4,
    HOST_V6,
    SERVICE,
    CoordinatorLab,
    container_id,
    coordinator_lab,
    host_state,
    in_ns,
    ip,
    ping,
    why_not,
)
from tests.netns.reachability import needs_ping
from tests.support import pool_object

WHY_NOT = why_not()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")]

POOL = pool_object("under-v4", "10.77.0.0/24", ["10.77.0.20-10.77.0.29"], gateway=GATEWAY_V4, default=True)


@pytest.fixture
async def lab() -> AsyncIterator[CoordinatorLab]:
    async with coordinator_lab() as made:
        await made.apply(POOL)
        await made.coordinator_synced()
        yield made


def routes(netns: str, *args: str) -> list[dict[str, object]]:
    result: list[dict[str, object]] = json.loads(ip("-j", "route", "show", *args, netns=netns) or "[]")
    return result


@needs_ping
async def test_an_underlay_pod_reaches_its_host_another_pod_and_a_service_through_the_host(
    lab: CoordinatorLab,
) -> None:
    first, second = lab.pod(), lab.pod()
    with trio.fail_after(30):
        code, result = await lab.add(first)
        assert code == 0, result
        assert (await lab.add(second))[0] == 0
    assert result["ips"][0]["address"] == "10.77.0.20/24"  # the coordinator answers macvlan's result unchanged
    assert "veth0" in ip("link", netns=first)
    assert ping(first, HOST_V4), "the pod cannot reach its host"
    assert ping(first, "10.77.0.21"), "the pod cannot reach the other pod"
    assert ping(first, SERVICE), "the pod cannot reach the service address through its host"
    assert ping(first, GATEWAY_V4), "the pod lost its underlay gateway"
    via_veth = [r for r in routes(first) if r.get("dev") == "veth0"]
    assert any(r.get("dst") == "10.96.0.0/16" and r.get("gateway") == HOST_V4 for r in via_veth)


@needs_ping
async def test_replies_to_a_connection_the_host_opens_from_a_foreign_address_go_back_through_the_veth(
    lab: CoordinatorLab,
) -> None:
    pod = lab.pod()
    with trio.fail_after(30):
        assert (await lab.add(pod))[0] == 0
    # 192.0.2.1 is nowhere in the pod's routes: without the connection mark the reply would leave through eth0
    # towards the underlay gateway (kube-proxy's NodePort with externalTrafficPolicy=Local looks like this).
    ip("addr", "add", "192.0.2.1/32", "dev", "lo", netns=lab.host)
    assert ping(lab.host, "10.77.0.20", source="192.0.2.1")
    table = in_ns(pod, "ip", "route", "show", "table", "100").stdout
    assert f"default via {HOST_V4} dev veth0" in table


def test_the_host_snapshot_ignores_the_link_local_routes_the_kernel_adds_late_but_not_other_ipv6_routes() -> None:
    # What the kernel does a second or two after a link comes up (the link-local address, then its local route
    # once DAD is done), done here at once by hand, so the snapshots are taken on either side of it for sure.
    netns = f"spsnap-{uuid.uuid4().hex[:6]}"
    ip("netns", "add", netns)
    try:
        ip("link", "add", "a0", "type", "veth", "peer", "name", "b0", netns=netns)
        for link in ("a0", "b0"):
            ip("link", "set", link, "addrgenmode", "none", netns=netns)  # no link-local of the kernel's own
            ip("link", "set", link, "up", netns=netns)
        raw_before, before = ip("-6", "route", "show", "table", "all", netns=netns), host_state(netns)
        ip("addr", "add", "fe80::1/64", "dev", "a0", "nodad", netns=netns)
        assert ip("-6", "route", "show", "table", "all", netns=netns) != raw_before
        assert host_state(netns) == before
        ip("addr", "add", "fd99::1/64", "dev", "a0", "nodad", netns=netns)
        assert host_state(netns) != before
    finally:
        ip("netns", "del", netns, check=False)


async def test_del_leaves_the_host_as_it_was_before_the_first_add(lab: CoordinatorLab) -> None:
    before = host_state(lab.host, ("10.77.0.20", "10.77.0.21"))
    pods = [lab.pod(), lab.pod()]
    results = []
    with trio.fail_after(30):
        for pod in pods:
            code, result = await lab.add(pod)
            assert code == 0, result
            results.append(result)
    during = host_state(lab.host, ("10.77.0.20", "10.77.0.21"))
    assert during != before
    assert "500" in json.dumps(during["rules"])
    with trio.fail_after(30):
        for pod, result in zip(pods, results, strict=True):
            assert await lab.delete(pod, result) == (0, 0)
    assert host_state(lab.host, ("10.77.0.20", "10.77.0.21")) == before
    assert (await lab.store.get("SpiderIPPool", "under-v4"))["status"]["allocatedIPCount"] == 0


async def test_del_after_the_pods_namespace_is_gone_still_cleans_the_host(lab: CoordinatorLab) -> None:
    before = host_state(lab.host, ("10.77.0.20",))
    pod = lab.pod()
    with trio.fail_after(30):
        code, result = await lab.add(pod)
    assert code == 0, result
    ip("netns", "del", pod)
    lab.pods.remove(pod)
    with trio.fail_after(30):
        # The runtime still knows the netns path it used; no prevResult this time (older runtimes send none).
        assert await lab.delete(pod) == (0, 0)
    assert host_state(lab.host, ("10.77.0.20",)) == before


@pytest.mark.parametrize("overlay", [False, True], ids=["underlay", "overlay"])
async def test_a_late_repeated_del_leaves_the_host_routes_of_the_pod_that_has_the_address_now(
    lab: CoordinatorLab, overlay: bool
) -> None:
    first, second = lab.pod(), lab.pod()
    with trio.fail_after(60):
        code, old = await lab.add(first)
        assert code == 0, old
        assert await lab.delete(first, old) == (0, 0)
        if overlay:  # NB: its host route goes through the overlay CNI's veth (cali...), which a DEL once took too
            lab.overlay_eth0(second)
            code, new = await lab.add(second, macvlan=lab.macvlan_conf(clean_gateway=True), ifname="net1")
        else:
            code, new = await lab.add(second)
        assert code == 0, new
        address = old["ips"][0]["address"].partition("/")[0]
        assert new["ips"][0]["address"] == old["ips"][0]["address"], "the address went to the second pod"
        ip("netns", "del", first)
        lab.pods.remove(first)
        before = host_state(lab.host, (address,))
        assert [r["dst"] for r in routes(lab.host, "table", "500")] == [address]
        # NB: the runtime repeats the first pod's DEL (CNI allows it); it once deleted the second pod's routes
        assert (await lab.coordinator("DEL", first, {**lab.coordinator_conf(), "prevResult": old}))[0] == 0
    assert host_state(lab.host, (address,)) == before
    if not overlay:
        assert ping(second, HOST_V4)


async def test_a_conflicting_address_fails_the_add_and_is_released(lab: CoordinatorLab) -> None:
    ip("addr", "add", "10.77.0.20/24", "dev", "gw0", netns=lab.router)  # someone already uses the first address
    pod = lab.pod()
    with trio.fail_after(30):
        code, error = await lab.add(pod, coordinator=lab.coordinator_conf(detectIPConflict=True))
    assert code != 0
    assert error["code"] == 105
    assert "10.77.0.20" in error["msg"]
    assert "already in use" in error["msg"]
    status = (await lab.store.get("SpiderIPPool", "under-v4"))["status"]
    assert status["allocatedIPCount"] == 0


async def test_a_free_address_passes_conflict_and_gateway_detection(lab: CoordinatorLab) -> None:
    pod = lab.pod()
    conf = lab.coordinator_conf(detectIPConflict=True, detectGateway=True)
    with trio.fail_after(30):
        code, result = await lab.add(pod, coordinator=conf)
    assert code == 0, result


async def test_a_missing_gateway_is_reported_when_gateway_detection_is_on(lab: CoordinatorLab) -> None:
    await lab.apply(
        pool_object("lonely", "10.78.0.0/24", ["10.78.0.20-10.78.0.29"], gateway="10.78.0.254", default=False)
    )
    pod = lab.pod()
    macvlan = lab.macvlan_conf(default_ipv4_ippool=["lonely"])
    with trio.fail_after(30):
        code, error = await lab.add(pod, macvlan=macvlan, coordinator=lab.coordinator_conf(detectGateway=True))
    assert code != 0
    assert error["code"] == 106
    assert "10.78.0.254" in error["msg"]
    assert (await lab.store.get("SpiderIPPool", "lonely"))["status"]["allocatedIPCount"] == 0


async def test_check_passes_after_add_and_fails_once_the_host_route_is_gone(lab: CoordinatorLab) -> None:
    pod = lab.pod()
    with trio.fail_after(30):
        code, result = await lab.add(pod)
        assert code == 0, result
        conf = {**lab.coordinator_conf(), "prevResult": result}
        assert (await lab.coordinator("CHECK", pod, conf)) == (0, None)
        ip("route", "del", "10.77.0.20/32", "table", "500", netns=lab.host)
        code, error = await lab.coordinator("CHECK", pod, conf)
    assert code != 0
    assert error["code"] == 104
    assert "10.77.0.20/32" in error["msg"]


@needs_ping
async def test_mac_prefix_txqueuelen_rp_filters_and_the_veth_link_address_are_applied(lab: CoordinatorLab) -> None:
    pod = lab.pod()
    conf = lab.coordinator_conf(
        podMACPrefix="0a:1b", txQueueLen=3000, podRPFilter=2, hostRPFilter=1, vethLinkAddress="169.254.200.1"
    )
    with trio.fail_after(30):
        code, result = await lab.add(pod, coordinator=conf)
    assert code == 0, result
    link = json.loads(ip("-j", "link", "show", "eth0", netns=pod))[0]
    assert link["address"] == "0a:1b:0a:4d:00:14"  # the prefix, then 10.77.0.20
    assert link["txqlen"] == 3000
    assert in_ns(pod, "cat", "/proc/sys/net/ipv4/conf/all/rp_filter").stdout.strip() == "2"
    veth = next(x["ifname"] for x in json.loads(ip("-j", "link", netns=lab.host)) if x["ifname"].startswith("veth"))
    assert in_ns(lab.host, "cat", f"/proc/sys/net/ipv4/conf/{veth}/rp_filter").stdout.strip() == "1"
    assert "169.254.200.1/32" in ip("addr", "show", "veth0", netns=pod)  # for service meshes (Istio)
    assert ping(pod, GATEWAY_V4)
    assert ping(pod, HOST_V4)


@needs_ping
async def test_a_gratuitous_arp_tells_the_neighbours_the_new_mac(lab: CoordinatorLab) -> None:
    pod = lab.pod()
    with trio.fail_after(30):
        code, result = await lab.macvlan("ADD", pod, lab.macvlan_conf())
        assert code == 0, result
        assert ping(lab.router, "10.77.0.20")  # the router caches macvlan's MAC for the pod
        # macvlan turns arp_notify on, and then the kernel itself announces a MAC change: turn it off, so the
        # router can only learn the new MAC from the coordinator's own gratuitous ARP.
        in_ns(pod, "sysctl", "-qw", "net.ipv4.conf.eth0.arp_notify=0")
        conf = {**lab.coordinator_conf(podMACPrefix="0a:1b"), "prevResult": result}
        code, result = await lab.coordinator("ADD", pod, conf)
    assert code == 0, result
    # No traffic since: only our announcement can have told the router about the new MAC.
    neigh = json.loads(ip("-j", "neigh", "show", "10.77.0.20", netns=lab.router) or "[]")
    assert [n.get("lladdr") for n in neigh] == ["0a:1b:0a:4d:00:14"]


async def test_a_disabled_coordinator_passes_the_result_through_untouched(lab: CoordinatorLab) -> None:
    pod = lab.pod()
    with trio.fail_after(30):
        code, result = await lab.add(pod, coordinator=lab.coordinator_conf(mode="disable"))
    assert code == 0, result
    assert "veth0" not in ip("link", netns=pod)


async def test_without_a_synced_spidercoordinator_add_fails_with_spiderpools_message(lab: CoordinatorLab) -> None:
    obj = await lab.store.get("SpiderCoordinator", "default")
    obj["status"] = {"phase": "NotReady"}
    await lab.store.update_status(obj)
    pod = lab.pod()
    with trio.fail_after(30):
        code, error = await lab.add(pod)
    assert code != 0
    assert error["code"] == 11
    assert error["msg"] == "spidercoordinator: default no ready"


@needs_ping
async def test_a_dual_stack_pod_reaches_the_host_over_both_families(lab: CoordinatorLab) -> None:
    await lab.apply(pool_object("under-v6", "fd77::/64", ["fd77::20-fd77::29"], gateway="fd77::1"))
    pod = lab.pod()
    macvlan = lab.macvlan_conf(default_ipv4_ippool=["under-v4"], default_ipv6_ippool=["under-v6"])
    with trio.fail_after(30):
        code, result = await lab.add(pod, macvlan=macvlan)
    assert code == 0, result
    assert ping(pod, HOST_V4)
    assert in_ns(pod, "ping", "-6", "-c", "1", "-W", "2", HOST_V6).returncode == 0


@needs_ping
async def test_overlay_mode_gives_the_underlay_nic_its_own_table_and_keeps_the_default_on_eth0(
    lab: CoordinatorLab,
) -> None:
    pod = lab.pod()
    host_side = lab.overlay_eth0(pod)
    macvlan = lab.macvlan_conf(clean_gateway=True)  # the default route stays with the overlay's eth0
    with trio.fail_after(30):
        code, result = await lab.add(pod, macvlan=macvlan, ifname="net1")
    assert code == 0, result
    assert "veth0" not in ip("link", netns=pod)  # overlay mode rides on the overlay's veth
    main = routes(pod)
    assert [r["dev"] for r in main if r["dst"] == "default"] == ["eth0"]
    assert not any(r.get("dev") == "net1" for r in main)  # net1's routes moved to its table
    assert any(r["dst"] == "10.77.0.0/24" and r["dev"] == "net1" for r in routes(pod, "table", "101"))
    rules = in_ns(pod, "ip", "rule").stdout
    assert "from 10.77.0.20 lookup 101" in rules
    assert "from 10.244.1.5 lookup 100" in rules
    assert ping(pod, HOST_V4)  # through eth0 and the host side of the overlay veth
    assert ping(pod, GATEWAY_V4, source="10.77.0.20")  # underlay traffic leaves through net1
    host_routes = routes(lab.host, "table", "500")
    assert [(r["dst"], r["dev"]) for r in host_routes] == [("10.77.0.20", host_side)]
    with trio.fail_after(30):
        assert (await lab.coordinator("DEL", pod, {**lab.coordinator_conf(), "prevResult": result}, "net1"))[0] == 0
    assert routes(lab.host, "table", "500") == []
    assert host_side in ip("link", netns=lab.host)  # the overlay's veth is not ours to delete


@needs_ping
async def test_add_cleans_dirty_host_routes_and_neighbours_left_for_the_pods_address(lab: CoordinatorLab) -> None:
    # A crashed earlier pod of this address left a route in table 500 and a neighbour entry behind (C00010).
    ip("link", "add", "stale0", "type", "veth", "peer", "name", "stale1", netns=lab.host)
    ip("link", "set", "stale0", "up", netns=lab.host)
    ip("route", "add", "10.77.0.20/32", "dev", "stale0", "table", "500", netns=lab.host)
    ip("neigh", "add", "10.77.0.20", "lladdr", "02:00:00:00:de:ad", "dev", "stale0", "nud", "permanent", netns=lab.host)
    pod = lab.pod()
    with trio.fail_after(30):
        code, result = await lab.add(pod)
    assert code == 0, result
    devs = [r["dev"] for r in routes(lab.host, "table", "500")]
    assert len(devs) == 1
    assert str(devs[0]).startswith("veth")
    neighbours = json.loads(ip("-j", "neigh", "show", "10.77.0.20", netns=lab.host))
    assert [n["dev"] for n in neighbours] == devs
    assert ping(pod, HOST_V4)


@needs_ping
async def test_a_repeated_add_keeps_the_pods_veth_and_a_repeated_del_is_fine(lab: CoordinatorLab) -> None:
    before = host_state(lab.host, ("10.77.0.20",))
    pod = lab.pod()
    with trio.fail_after(30):
        code, result = await lab.add(pod)
        assert code == 0, result
        veth = json.loads(ip("-j", "link", "show", "veth0", netns=pod))[0]
        again = await lab.coordinator("ADD", pod, {**lab.coordinator_conf(), "prevResult": result})
        assert again[0] == 0, again
        assert json.loads(ip("-j", "link", "show", "veth0", netns=pod))[0]["address"] == veth["address"]
        assert ping(pod, HOST_V4)
        for _ in range(2):
            assert (await lab.coordinator("DEL", pod, {**lab.coordinator_conf(), "prevResult": result}))[0] == 0
        assert (await lab.macvlan("DEL", pod, lab.macvlan_conf()))[0] == 0
    assert host_state(lab.host, ("10.77.0.20",)) == before


async def test_an_add_that_fails_half_way_leaves_nothing_on_the_host(lab: CoordinatorLab) -> None:
    before = host_state(lab.host, ("10.77.0.20",))
    pod = lab.pod()
    # a policy route through a gateway nobody can reach: the kernel refuses it after the veth pair exists
    conf = lab.coordinator_conf(policyRoutes=[{"dst": "192.168.0.0/16", "gw": "172.16.0.1"}])
    with trio.fail_after(30):
        code, error = await lab.add(pod, coordinator=conf)
    assert code != 0
    assert error["code"] == 5
    assert "192.168.0.0/16" in error["msg"]
    assert host_state(lab.host, ("10.77.0.20",)) == before
    assert "veth0" not in ip("link", netns=pod)


@needs_ping
@needs_ping
async def test_a_container_whose_id_shares_the_host_veths_name_leaves_the_other_pods_veth(
    lab: CoordinatorLab,
) -> None:
    first, second = lab.pod(), lab.pod()
    before = host_state(lab.host, ("10.77.0.20", "10.77.0.21"))
    with trio.fail_after(60):
        code, kept = await lab.add(first)
        assert code == 0, kept
        veth = f"veth{container_id(first)[:11]}"
        assert json.loads(ip("-j", "link", "show", veth, netns=lab.host))[0]["ifalias"] == (
            f"spiderpool {container_id(first)}"
        )
        clash = container_id(first)[:11] + "-another-sandbox"  # the host veth's name is its first 11 characters
        code, made = await lab.macvlan("ADD", second, lab.macvlan_conf())
        assert code == 0, made
        conf = {**lab.coordinator_conf(), "prevResult": made}
        code, error = await lab.coordinator("ADD", second, conf, CNI_CONTAINERID=clash)
        assert code != 0
        assert f"{veth!r} already exists" in error["msg"]
        # the refused ADD cleaned up after itself, and the runtime's DEL follows: neither touches the first pod
        assert (await lab.coordinator("DEL", second, conf, CNI_CONTAINERID=clash))[0] == 0
        assert veth in ip("link", "show", netns=lab.host)
        assert [r["dst"] for r in routes(lab.host, "table", "500")] == [kept["ips"][0]["address"].partition("/")[0]]
        assert ping(first, HOST_V4)
        assert (await lab.macvlan("DEL", second, {**lab.macvlan_conf(), "prevResult": made}))[0] == 0
        assert await lab.delete(first, kept) == (0, 0)
    assert host_state(lab.host, ("10.77.0.20", "10.77.0.21")) == before


@pytest.mark.slow
async def test_a_host_with_fifty_thousand_routes_and_neighbours_gets_pods_set_up_and_torn_down(
    lab: CoordinatorLab,
) -> None:
    # NB: ADD and DEL once parsed every host route and neighbour several times (about 70 and 120 us each) and ran
    # out of the 5 s a netlink transaction may take; they now ask the kernel for hostRuleTable's routes only, and
    # delete a pod address's neighbours device by device
    lab.add_host_routes(50_000)
    lab.add_host_neighbours(50_000)
    before = host_state(lab.host, ("10.77.0.20",))
    pod = lab.pod()
    with trio.fail_after(60):
        code, result = await lab.add(pod)
        assert code == 0, result
        assert [r["dst"] for r in routes(lab.host, "table", "500")] == ["10.77.0.20"]
        code, error = await lab.coordinator("CHECK", pod, {**lab.coordinator_conf(), "prevResult": result})
        assert code == 0, error
        assert await lab.delete(pod, result) == (0, 0)
    assert host_state(lab.host, ("10.77.0.20",)) == before


async def test_the_nodes_own_namespace_as_cni_netns_is_refused_and_left_alone(lab: CoordinatorLab) -> None:
    pod = lab.pod()
    with trio.fail_after(30):
        code, made = await lab.macvlan("ADD", pod, lab.macvlan_conf())
        assert code == 0, made
        before = host_state(lab.host, ("10.77.0.20",))
        conf = {**lab.coordinator_conf(), "prevResult": made}
        node = f"/var/run/netns/{lab.host}"  # NB: a runtime's mistake, or a caller of the agent's socket
        code, error = await lab.coordinator("ADD", pod, conf, CNI_NETNS=node)
        assert (code, error["code"]) == (1, 4), error
        assert "the node's own network namespace" in error["msg"]
        assert host_state(lab.host, ("10.77.0.20",)) == before  # no veth0, rule or marking on the node
        assert (await lab.coordinator("DEL", pod, conf, CNI_NETNS=node))[0] == 0
        assert host_state(lab.host, ("10.77.0.20",)) == before
        assert await lab.delete(pod, made) == (0, 0)


async def test_a_scoped_prevresult_address_is_cni_7_and_the_agent_serves_on(lab: CoordinatorLab) -> None:
    pod = lab.pod()
    with trio.fail_after(60):
        code, made = await lab.macvlan("ADD", pod, lab.macvlan_conf())
        assert code == 0, made
        prev = {**made, "ips": [*made["ips"], {"address": "fe80::1%eth0/64", "interface": 0}]}
        code, error = await lab.coordinator("ADD", pod, {**lab.coordinator_conf(), "prevResult": prev})
        assert (code, error["code"]) == (1, 7), error  # NB: it once reached netlink and stopped the agent
        assert "scoped" in error["msg"]
        code, result = await lab.add(lab.pod())
        assert code == 0, result


async def test_a_del_whose_prevresult_names_no_address_succeeds(lab: CoordinatorLab) -> None:
    pod = lab.pod()
    with trio.fail_after(60):
        for address in ("not-an-ip/24", "fe80::1%eth0/64"):  # NB: each once failed the DEL for good (CNI 5)
            prev = {"cniVersion": "1.0.0", "ips": [{"address": address}]}
            code, error = await lab.coordinator("DEL", pod, {**lab.coordinator_conf(), "prevResult": prev})
            assert code == 0, error


async def test_a_custom_host_rule_table_is_used_and_cleaned(lab: CoordinatorLab) -> None:
    before = host_state(lab.host, ("10.77.0.20",))
    pod = lab.pod()
    conf = lab.coordinator_conf(hostRuleTable=600)
    with trio.fail_after(30):
        code, result = await lab.add(pod, coordinator=conf)
        assert code == 0, result
        assert [r["dst"] for r in routes(lab.host, "table", "600")] == ["10.77.0.20"]
        assert "1000:\tfrom all lookup 600" in ip("rule", netns=lab.host)
        assert ping(pod, HOST_V4)
        assert await lab.delete(pod, result, coordinator=conf) == (0, 0)
    assert host_state(lab.host, ("10.77.0.20",)) == before


@needs_ping
async def test_a_second_underlay_nic_gets_its_own_table_and_replies_leave_through_it(lab: CoordinatorLab) -> None:
    await lab.apply(pool_object("second", "10.77.0.0/24", ["10.77.0.40-10.77.0.49"], gateway=GATEWAY_V4))
    pod = lab.pod()
    with trio.fail_after(30):
        code, result = await lab.add(pod)
        assert code == 0, result
        net1 = lab.macvlan_conf(default_ipv4_ippool=["second"], clean_gateway=True)
        code, result = await lab.add(pod, macvlan=net1, ifname="net1")
    assert code == 0, result
    # veth0, eth0 and net1 are up: net1's table is 3 + 98 = 101 (Spiderpool's numbering)
    assert not any(r.get("dev") == "net1" for r in routes(pod))
    assert any(r["dst"] == "10.77.0.0/24" and r["dev"] == "net1" for r in routes(pod, "table", "101"))
    assert "from 10.77.0.40 lookup 101" in in_ns(pod, "ip", "rule").stdout
    assert ping(pod, GATEWAY_V4, source="10.77.0.40")
    assert ping(pod, HOST_V4)
    assert [r["dst"] for r in routes(lab.host, "table", "500")] == ["10.77.0.20", "10.77.0.40"]
