"""SpiderSubnet on the agent's side, end to end through the agent API on the embedded store: a pod's subnet
annotations select its application's auto-created pool (found by its labels, waited for until it holds the
desired count), and a third-party controller's pool is made by the agent at the first allocation.  Tests are
named after the Spiderpool e2e case they cover (reference §10); "the controller" here is the test making the
application's pool the way the controller does (``spider.autopool.auto_pool_object``, addresses taken from
the subnet by a SubnetActor), so these tests do not depend on the controller's informers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.agent import AgentSettings, open_agent
from actors.ipam.autopools import ActorRanges, AutoPoolSettings
from actors.ipam.service import IpamSettings
from actors.stores.port import Store
from actors.stores.sqlite import SqliteStore
from actors.stores.validating import ValidatingStore
from spider.addr import IPSet
from spider.autopool import (
    ANNO_IP_NUMBER,
    ANNO_RECLAIM,
    ANNO_SUBNET,
    ANNO_SUBNETS,
    LABEL_APP_UID,
    AppRef,
    auto_pool_name,
    auto_pool_object,
)
from spider.errors import InvalidInput
from spider.subnet import decode_controlled
from tests.stores.conftest import BACKENDS
from tests.support import RunningAgent, http_call, installed_shim, pod_spec, short_tmp

TIMEOUT = 20
FAST = AutoPoolSettings(wait_retries=60, wait_interval=0.05)


@asynccontextmanager
async def subnet_agent(
    auto: AutoPoolSettings = FAST, node: str = "node-1", inner: Store | None = None
) -> AsyncIterator[RunningAgent]:
    """An agent with these SpiderSubnet settings (a short wait by default) on ``inner``, else a fresh embedded
    store."""
    with short_tmp() as d:
        store = ValidatingStore(inner if inner is not None else await SqliteStore.open(d / "store.db"))
        settings = AgentSettings(
            store_path=d / "store.db",
            socket_path=d / "agent.sock",
            node=node,
            grace=5,
            node_actor=False,
            ipam=IpamSettings(auto_pools=auto),
        )
        try:
            async with open_agent(settings, store) as api:
                yield RunningAgent(api, store, settings.socket_path, installed_shim(d / "bin"), d)
        finally:
            await store.aclose()


@pytest.fixture
async def agent() -> AsyncIterator[RunningAgent]:
    with trio.fail_after(TIMEOUT):
        async with subnet_agent() as running:
            yield running


def subnet(name: str, cidr: str, ips: str, gateway: str) -> dict[str, Any]:
    return {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderSubnet",
        "metadata": {"name": name},
        "spec": {"subnet": cidr, "ips": [ips], "gateway": gateway},
    }


S4 = subnet("s4", "10.50.0.0/24", "10.50.0.10-10.50.0.99", "10.50.0.1")
S6 = subnet("s6", "fd50::/64", "fd50::10-fd50::99", "fd50::1")
T4 = subnet("t4", "10.51.0.0/24", "10.51.0.10-10.51.0.99", "10.51.0.1")


def app(kind: str, name: str, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    group = "batch/v1" if kind in ("Job", "CronJob") else "apps/v1"
    return {"apiVersion": group, "kind": kind, "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def owner(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    ref = {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"], "uid": meta.get("uid", "")}
    return {**ref, "controller": True}


def pod(name: str, parent: dict[str, Any] | None, annotations: dict[str, str], namespace: str = "default") -> Any:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "annotations": annotations}
    if parent is not None:
        meta["ownerReferences"] = [owner(parent)]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec(nodeName="node-1")}


async def create(agent: RunningAgent, obj: dict[str, Any]) -> dict[str, Any]:
    """Create an object and return it as stored (with its UID)."""
    stored: dict[str, Any] = await agent.store.create(obj)
    return stored


async def deployment(agent: RunningAgent, name: str, replicas: int, namespace: str = "default") -> Any:
    """A Deployment and its ReplicaSet (the pods' direct owner), as Kubernetes makes them."""
    deploy = await create(agent, app("Deployment", name, namespace, replicas=replicas))
    rs = app("ReplicaSet", f"{name}-7d4b9", namespace, replicas=replicas)
    rs["metadata"]["ownerReferences"] = [owner(deploy)]
    return deploy, await create(agent, rs)


async def controller_makes_pool(
    agent: RunningAgent, obj: dict[str, Any], subnet_name: str, count: int, nic: str = "eth0", version: int = 4
) -> str:
    """What the controller does for a built-in application: take ``count`` addresses, write the pool."""
    ref = AppRef.from_object(obj)
    name = auto_pool_name(ref, nic, version)
    ips = await ActorRanges(agent.store).take(subnet_name, name, ref, count, IPSet(version), IPSet(version))
    subnet_obj = await agent.store.get("SpiderSubnet", subnet_name)
    await agent.store.create(auto_pool_object(ref, nic, version, subnet_obj, ips.to_strings(), f"+{0}", True))
    return name


async def add(agent: RunningAgent, name: str, ifname: str = "eth0", namespace: str = "default") -> tuple[int, Any]:
    obj = await agent.store.get("Pod", name, namespace)
    uid = obj["metadata"]["uid"]
    body = {
        "containerID": f"ctr-{uid}",
        "ifName": ifname,
        "netNamespace": "/var/run/netns/x",
        "podNamespace": namespace,
        "podName": name,
        "podUID": uid,
    }
    with trio.fail_after(TIMEOUT):
        status, answer, _ = await http_call(agent.socket, "POST", "/v1/ipam/ip", body)
    return status, answer


def got(answer: Any) -> list[tuple[str, str]]:
    return sorted((ip["ipPool"], ip["address"]) for ip in answer["ips"])


async def pool_names(agent: RunningAgent) -> list[str]:
    return sorted(p["metadata"]["name"] for p in (await agent.store.list("SpiderIPPool")).items)


def sub(v4: str | None = None, v6: str | None = None, **extra: str) -> dict[str, str]:
    item: dict[str, Any] = {}
    if v4:
        item["ipv4"] = [v4]
    if v6:
        item["ipv6"] = [v6]
    return {ANNO_SUBNET: json.dumps(item), **extra}


# --- built-in applications: the controller's pool, found and waited for ---------------------------------------


async def test_i00013_a_deployment_pod_gets_its_address_from_the_deployments_auto_pool(agent: RunningAgent) -> None:
    await agent.apply(S4)
    deploy, rs = await deployment(agent, "web", replicas=2)
    pool = await controller_makes_pool(agent, deploy, "s4", 2)
    await agent.apply(pod("web-1", rs, sub("s4")))
    status, answer = await add(agent, "web-1")
    assert status == 200, answer
    assert got(answer) == [(pool, "10.50.0.10/24")]  # the lowest of the subnet, through the pool


async def test_e00010_a_dual_stack_cluster_allocates_only_the_family_the_subnet_annotation_names(
    agent: RunningAgent,
) -> None:
    await agent.apply(S4, S6)
    deploy, rs = await deployment(agent, "v6only", replicas=1)
    pool = await controller_makes_pool(agent, deploy, "s6", 1, version=6)
    await agent.apply(pod("v6only-1", rs, sub(v6="s6")))
    status, answer = await add(agent, "v6only-1")
    assert status == 200, answer
    assert got(answer) == [(pool, "fd50::10/64")]


async def test_the_agent_waits_until_the_controller_has_made_the_pool(agent: RunningAgent) -> None:
    await agent.apply(S4)
    deploy, rs = await deployment(agent, "late", replicas=1)
    await agent.apply(pod("late-1", rs, sub("s4")))
    answers: list[tuple[int, Any]] = []

    async def adding() -> None:
        answers.append(await add(agent, "late-1"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(adding)
        await trio.sleep(0.2)  # NB: the ADD is waiting; the pool appears only now
        assert answers == []
        pool = await controller_makes_pool(agent, deploy, "s4", 1)
    assert answers[0][0] == 200, answers
    assert got(answers[0][1]) == [(pool, "10.50.0.10/24")]


async def test_the_agent_waits_until_the_pool_holds_exactly_the_desired_count(agent: RunningAgent) -> None:
    await agent.apply(S4)
    deploy, rs = await deployment(agent, "grow", replicas=3)
    pool = await controller_makes_pool(agent, deploy, "s4", 1)  # still the size of before the scale-up
    await agent.apply(pod("grow-1", rs, sub("s4")))
    answers: list[tuple[int, Any]] = []

    async def adding() -> None:
        answers.append(await add(agent, "grow-1"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(adding)
        await trio.sleep(0.2)
        assert answers == []
        ref = AppRef.from_object(deploy)
        ips = await ActorRanges(agent.store).take("s4", pool, ref, 3, IPSet.parse(4, ["10.50.0.10"]), IPSet(4))
        obj = await agent.store.get("SpiderIPPool", pool)
        obj["spec"]["ips"] = ips.to_strings()
        await agent.store.update(obj)
    assert answers[0][0] == 200, answers
    assert [p for p, _ in got(answers[0][1])] == [pool]


async def test_the_wait_ends_with_a_retryable_error_naming_the_labels_it_looked_for() -> None:
    with trio.fail_after(TIMEOUT):
        async with subnet_agent(AutoPoolSettings(wait_retries=3, wait_interval=0.01)) as agent:
            await agent.apply(S4)
            _, rs = await deployment(agent, "never", replicas=1)
            await agent.apply(pod("never-1", rs, sub("s4")))
            status, message = await add(agent, "never-1")
    assert status == 500
    assert "no matching auto-created IPPool candidate with matchLabels" in message
    assert "ipam.spidernet.io/owner-application-name=never" in message
    assert "after 3 looks" in message


async def test_two_pools_for_one_application_are_an_error(agent: RunningAgent) -> None:
    await agent.apply(S4)
    deploy, rs = await deployment(agent, "twice", replicas=1)
    first = await controller_makes_pool(agent, deploy, "s4", 1)
    copy = await agent.store.get("SpiderIPPool", first)
    copy["metadata"] = {**copy["metadata"], "name": "twice-copy"}
    for key in ("uid", "resourceVersion", "creationTimestamp"):
        copy["metadata"].pop(key, None)
    copy["spec"]["ips"] = ["10.50.0.90"]
    await agent.store.create(copy)
    await agent.apply(pod("twice-1", rs, sub("s4")))
    status, message = await add(agent, "twice-1")
    assert status == 500
    assert "owns multiple matchLabels" in message


@pytest.mark.parametrize(
    ("kind", "spec", "replicas"),
    [
        pytest.param("StatefulSet", {"replicas": 2}, 2, id="statefulset"),
        pytest.param("Job", {"completions": 3, "parallelism": 1}, 3, id="job"),
        pytest.param("DaemonSet", {}, 4, id="daemonset"),
    ],
)
async def test_i00014_pods_of_each_controller_kind_find_their_pool_sized_by_that_kind(
    agent: RunningAgent, kind: str, spec: dict[str, Any], replicas: int
) -> None:
    await agent.apply(S4)
    obj = await create(agent, app(kind, "kinds", **spec))
    if kind == "DaemonSet":
        obj["status"] = {"desiredNumberScheduled": 4}
        obj = await agent.store.update_status(obj)
    pool = await controller_makes_pool(agent, obj, "s4", replicas)
    await agent.apply(pod("kinds-0", obj, sub("s4")))
    status, answer = await add(agent, "kinds-0")
    assert status == 200, answer
    assert [p for p, _ in got(answer)] == [pool]


async def test_i00014_a_cronjob_pod_belongs_to_the_cronjob_not_its_job(agent: RunningAgent) -> None:
    await agent.apply(S4)
    cron = await create(agent, app("CronJob", "nightly", jobTemplate={"spec": {"completions": 2}}))
    job = app("Job", "nightly-2890", completions=2)
    job["metadata"]["ownerReferences"] = [owner(cron)]
    job = await create(agent, job)
    pool = await controller_makes_pool(agent, cron, "s4", 2)
    await agent.apply(pod("nightly-2890-x", job, sub("s4")))
    status, answer = await add(agent, "nightly-2890-x")
    assert status == 200, answer
    assert [p for p, _ in got(answer)] == [pool]


async def test_i00012_each_nic_gets_its_own_auto_pools_in_both_families(agent: RunningAgent) -> None:
    await agent.apply(S4, S6, T4)
    deploy, rs = await deployment(agent, "multi", replicas=1)
    eth0_v4 = await controller_makes_pool(agent, deploy, "s4", 1)
    eth0_v6 = await controller_makes_pool(agent, deploy, "s6", 1, version=6)
    net1_v4 = await controller_makes_pool(agent, deploy, "t4", 1, nic="net1")
    nics = [{"interface": "eth0", "ipv4": ["s4"], "ipv6": ["s6"]}, {"interface": "net1", "ipv4": ["t4"]}]
    await agent.apply(pod("multi-1", rs, {ANNO_SUBNETS: json.dumps(nics)}))
    status, answer = await add(agent, "multi-1")
    assert status == 200, answer
    assert got(answer) == [(eth0_v4, "10.50.0.10/24"), (eth0_v6, "fd50::10/64")]
    status, answer = await add(agent, "multi-1", ifname="net1")
    assert status == 200, answer
    assert got(answer) == [(net1_v4, "10.51.0.10/24")]


async def test_i00021_applications_of_the_same_name_each_find_their_own_pools(agent: RunningAgent) -> None:
    await agent.apply(S4, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}})
    here, rs_here = await deployment(agent, "same", replicas=1)
    there, rs_there = await deployment(agent, "same", replicas=1, namespace="other")
    pool_here = await controller_makes_pool(agent, here, "s4", 1)
    pool_there = await controller_makes_pool(agent, there, "s4", 1)
    await agent.apply(pod("same-1", rs_here, sub("s4")), pod("same-1", rs_there, sub("s4"), namespace="other"))
    assert [p for p, _ in got((await add(agent, "same-1"))[1])] == [pool_here]
    assert [p for p, _ in got((await add(agent, "same-1", namespace="other"))[1])] == [pool_there]


async def test_i00017_an_application_with_a_very_long_name_finds_its_truncated_pool(agent: RunningAgent) -> None:
    await agent.apply(S4)
    long_name = "a" * 63  # NB: the longest a label value (owner-application-name, app-name) may be
    deploy, rs = await deployment(agent, long_name, replicas=1)
    pool = await controller_makes_pool(agent, deploy, "s4", 1)
    assert long_name in pool
    await agent.apply(pod("long-1", rs, sub("s4")))
    status, answer = await add(agent, "long-1")
    assert status == 200, answer
    assert [p for p, _ in got(answer)] == [pool]


async def test_i00020_the_spare_addresses_of_an_auto_pool_serve_no_other_application(agent: RunningAgent) -> None:
    await agent.apply(S4)
    deploy, _ = await deployment(agent, "owner", replicas=1)
    pool = await controller_makes_pool(agent, deploy, "s4", 3)  # two spare addresses
    _, rs_other = await deployment(agent, "intruder", replicas=1)
    await agent.apply(pod("intruder-1", rs_other, {"ipam.spidernet.io/ippool": json.dumps({"ipv4": [pool]})}))
    status, message = await add(agent, "intruder-1")
    assert status == 500
    assert "another application" in message


async def test_i00024_with_the_auto_pool_feature_off_the_pod_fails_and_no_pool_is_made() -> None:
    with trio.fail_after(TIMEOUT):
        async with subnet_agent(AutoPoolSettings(enable_auto_pool=False)) as agent:
            await agent.apply(S4)
            _, rs = await deployment(agent, "off", replicas=1)
            await agent.apply(pod("off-1", rs, sub("s4")))
            status, message = await add(agent, "off-1")
            assert await pool_names(agent) == []
    assert status == 500
    assert "when Auto-Pool feature is disabled" in message


async def test_with_the_subnet_feature_off_subnet_annotations_are_ignored() -> None:
    default = {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderIPPool",
        "metadata": {"name": "default-v4"},
        "spec": {"subnet": "10.60.0.0/24", "ips": ["10.60.0.10-10.60.0.20"], "default": True},
    }
    with trio.fail_after(TIMEOUT):
        async with subnet_agent(AutoPoolSettings(enable_spider_subnet=False)) as agent:
            await agent.apply(default)
            _, rs = await deployment(agent, "plain", replicas=1)
            await agent.apply(pod("plain-1", rs, sub("s4")))
            status, answer = await add(agent, "plain-1")
    assert status == 200, answer
    assert got(answer) == [("default-v4", "10.60.0.10/24")]


# --- third-party controllers: the agent makes the pool ---------------------------------------------------------

CLONESET = "apps.kruise.io/v1alpha1"


def third_party(kind: str, name: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": CLONESET, "kind": kind, "metadata": {"name": name, "namespace": "default", "uid": uid}}


async def test_t00002_the_agent_makes_a_third_party_applications_pool_of_the_fixed_size(agent: RunningAgent) -> None:
    await agent.apply(S4)
    clone = third_party("CloneSet", "kruise", "1111-2222-33333")
    await agent.apply(pod("kruise-a", clone, sub("s4", **{ANNO_IP_NUMBER: "3"})))
    await agent.apply(pod("kruise-b", clone, sub("s4", **{ANNO_IP_NUMBER: "3"})))
    first, second = await add(agent, "kruise-a"), await add(agent, "kruise-b")
    assert first[0] == second[0] == 200, (first, second)
    name = auto_pool_name(AppRef.from_object(clone), "eth0", 4)
    assert await pool_names(agent) == [name]
    assert got(first[1]) + got(second[1]) == [(name, "10.50.0.10/24"), (name, "10.50.0.11/24")]
    stored = await agent.store.get("SpiderIPPool", name)
    assert stored["spec"]["ips"] == ["10.50.0.10-10.50.0.12"]  # the subnet's three lowest free addresses
    recorded = decode_controlled(4, (await agent.store.get("SpiderSubnet", "s4"))["status"]["controlledIPPools"])
    assert recorded[name].ips.to_strings() == ["10.50.0.10-10.50.0.12"]
    assert recorded[name].application == "apps.kruise.io_v1alpha1_CloneSet_default_kruise"


async def test_t00002_pods_of_a_third_party_application_racing_make_one_pool(agent: RunningAgent) -> None:
    await agent.apply(S4)
    clone = third_party("CloneSet", "race", "4444-5555-66666")
    names = [f"race-{i}" for i in range(6)]
    await agent.apply(*(pod(n, clone, sub("s4", **{ANNO_IP_NUMBER: "6"})) for n in names))
    answers: dict[str, tuple[int, Any]] = {}

    async def adding(n: str) -> None:
        answers[n] = await add(agent, n)

    async with trio.open_nursery() as nursery:
        for n in names:
            nursery.start_soon(adding, n)
    assert all(status == 200 for status, _ in answers.values()), answers
    addresses = [a for _, answer in answers.values() for _, a in got(answer)]
    assert len(set(addresses)) == 6
    assert len(await pool_names(agent)) == 1


@pytest.mark.parametrize("ip_number", [None, "+1"])
async def test_t00002_a_third_party_application_must_say_a_fixed_pool_size(
    agent: RunningAgent, ip_number: str | None
) -> None:
    await agent.apply(S4)
    clone = third_party("CloneSet", "flex", "7777-8888-99999")
    extra = {ANNO_IP_NUMBER: ip_number} if ip_number else {}
    await agent.apply(pod("flex-a", clone, sub("s4", **extra)))
    status, message = await add(agent, "flex-a")
    assert status == 500
    assert "CloneSet/default/flex only supports fixed auto-created IPPool IP Number" in message
    assert await pool_names(agent) == []


async def test_t00004_a_new_third_party_application_of_the_same_kind_and_name_reuses_the_retained_pool(
    agent: RunningAgent,
) -> None:
    await agent.apply(S4)
    keep = {ANNO_IP_NUMBER: "2", ANNO_RECLAIM: "false"}
    old = third_party("CloneSet", "kept", "aaaa-bbbb-ccccc")
    await agent.apply(pod("kept-a", old, sub("s4", **keep)))
    assert (await add(agent, "kept-a"))[0] == 200
    (retained,) = await pool_names(agent)
    new = third_party("CloneSet", "kept", "dddd-eeee-fffff")  # deleted and made again: a new UID
    await agent.apply(pod("kept-b", new, sub("s4", **keep)))
    status, answer = await add(agent, "kept-b")
    assert status == 200, answer
    assert [p for p, _ in got(answer)] == [retained]
    assert await pool_names(agent) == [retained]
    labels = (await agent.store.get("SpiderIPPool", retained))["metadata"]["labels"]
    assert labels[LABEL_APP_UID] == "dddd-eeee-fffff"


async def test_t00005_a_third_party_application_of_another_kind_gets_a_new_pool(agent: RunningAgent) -> None:
    await agent.apply(S4)
    keep = {ANNO_IP_NUMBER: "2", ANNO_RECLAIM: "false"}
    await agent.apply(pod("kind-a", third_party("CloneSet", "kind", "1234-1234-aaaaa"), sub("s4", **keep)))
    assert (await add(agent, "kind-a"))[0] == 200
    (retained,) = await pool_names(agent)
    other = third_party("StatefulSet", "kind", "1234-1234-bbbbb")  # OpenKruise's StatefulSet: another kind
    await agent.apply(pod("kind-0", other, sub("s4", **keep)))
    status, answer = await add(agent, "kind-0")
    assert status == 200, answer
    (used,) = [p for p, _ in got(answer)]
    assert used != retained
    assert got(answer) == [(used, "10.50.0.12/24")]  # past the retained pool's two addresses


async def test_a_repeated_add_answers_the_recorded_address_without_waiting_for_the_pool_again() -> None:
    with trio.fail_after(TIMEOUT):
        async with subnet_agent(AutoPoolSettings(wait_retries=2, wait_interval=0.01)) as agent:
            await agent.apply(S4)
            deploy, rs = await deployment(agent, "again", replicas=1)
            await controller_makes_pool(agent, deploy, "s4", 1)
            await agent.apply(pod("again-1", rs, sub("s4")))
            first = await add(agent, "again-1")
            obj = await agent.store.get("Deployment", "again", "default")
            obj["spec"]["replicas"] = 5  # scaled: the pool no longer holds the desired count
            await agent.store.update(obj)
            second = await add(agent, "again-1")
    assert first[0] == second[0] == 200, (first, second)
    assert got(first[1]) == got(second[1])


def test_the_wait_comes_from_spiderpools_environment_variables() -> None:
    env = {"SPIDERPOOL_WAIT_SUBNET_POOL_MAX_RETRIES": "7", "SPIDERPOOL_WAIT_SUBNET_POOL_TIME_IN_SECOND": "0.5"}
    settings = AutoPoolSettings.from_env(env, enable_auto_pool=False)
    assert (settings.wait_retries, settings.wait_interval, settings.enable_auto_pool) == (7, 0.5, False)
    assert AutoPoolSettings.from_env({}) == AutoPoolSettings()


@pytest.mark.parametrize("retries", ["zero", "0"])
def test_a_wait_that_is_not_a_positive_count_is_refused(retries: str) -> None:
    with pytest.raises(InvalidInput, match="SPIDERPOOL_WAIT_SUBNET_POOL_MAX_RETRIES"):
        AutoPoolSettings.from_env({"SPIDERPOOL_WAIT_SUBNET_POOL_MAX_RETRIES": retries})


@pytest.mark.parametrize("backend", ["sqlite", "kube-fake"])
async def test_both_stores_serve_a_deployments_pool_and_a_third_party_pool_made_by_racing_pods(
    backend: str, tmp_path: Path
) -> None:
    made = BACKENDS[backend](tmp_path)
    try:
        with trio.fail_after(TIMEOUT):
            async with subnet_agent(inner=await made.open()) as agent:
                await agent.apply(S4)
                deploy, rs = await deployment(agent, "both", replicas=1)
                pool = await controller_makes_pool(agent, deploy, "s4", 1)
                await agent.apply(pod("both-1", rs, sub("s4")))
                status, answer = await add(agent, "both-1")
                assert (status, got(answer)) == (200, [(pool, "10.50.0.10/24")])
                clone = third_party("CloneSet", "both", "abab-cdcd-efefe")
                names = [f"both-c{i}" for i in range(3)]
                await agent.apply(*(pod(n, clone, sub("s4", **{ANNO_IP_NUMBER: "3"})) for n in names))
                answers: list[tuple[int, Any]] = []

                async def adding(n: str) -> None:
                    answers.append(await add(agent, n))

                async with trio.open_nursery() as nursery:
                    for n in names:
                        nursery.start_soon(adding, n)
                assert [status for status, _ in answers] == [200, 200, 200], answers
                third = auto_pool_name(AppRef.from_object(clone), "eth0", 4)
                assert sorted(a for _, answer in answers for _, a in got(answer)) == [
                    "10.50.0.11/24",
                    "10.50.0.12/24",
                    "10.50.0.13/24",
                ]
                assert await pool_names(agent) == sorted([pool, third])
    finally:
        await made.aclose()


@pytest.mark.parametrize(
    ("size", "ips"),
    [
        pytest.param("2", ["10.50.0.10", "10.50.0.12"], id="shrunk: the held one kept, the lowest free one back"),
        pytest.param("4", ["10.50.0.10-10.50.0.13"], id="grown: the old ones kept, the lowest free one added"),
    ],
)
async def test_t00004_a_reused_pool_is_resized_to_the_new_applications_fixed_size(
    agent: RunningAgent, size: str, ips: list[str]
) -> None:
    await agent.apply(S4)
    old = third_party("CloneSet", "resized", "aaaa-0000-11111")
    await agent.apply(pod("resized-a", old, sub("s4", **{ANNO_IP_NUMBER: "3", ANNO_RECLAIM: "false"})))
    assert (await add(agent, "resized-a"))[0] == 200  # holds 10.50.0.10, which a shrink must keep
    new = third_party("CloneSet", "resized", "bbbb-0000-22222")
    await agent.apply(pod("resized-b", new, sub("s4", **{ANNO_IP_NUMBER: size, ANNO_RECLAIM: "false"})))
    status, answer = await add(agent, "resized-b")
    assert status == 200, answer
    (pool,) = await pool_names(agent)
    assert (await agent.store.get("SpiderIPPool", pool))["spec"]["ips"] == ips
    recorded = decode_controlled(4, (await agent.store.get("SpiderSubnet", "s4"))["status"]["controlledIPPools"])
    assert recorded[pool].ips.to_strings() == ips
