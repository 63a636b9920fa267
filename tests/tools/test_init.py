"""``spider init``: Spiderpool's install defaults from its environment names, created once, waiting for a
controller first."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from actors.stores.port import Store
from actors.stores.sqlite import SqliteStore
from actors.stores.validating import ValidatingStore
from actors.tools.cli import main
from actors.tools.init import InitSettings, Outcome, run_init
from spider.errors import InvalidInput

ENV = {
    "SPIDERPOOL_INIT_DEFAULT_COORDINATOR_NAME": "default",
    "SPIDERPOOL_INIT_DEFAULT_COORDINATOR_MODE": "underlay",
    "SPIDERPOOL_INIT_DEFAULT_COORDINATOR_POD_CIDR_TYPE": "cluster",
    "SPIDERPOOL_INIT_DEFAULT_COORDINATOR_TUNE_POD_ROUTES": "false",
    "SPIDERPOOL_INIT_DEFAULT_COORDINATOR_HIJACK_CIDR": '["10.233.0.0/18","169.254.0.0/16"]',
    "SPIDERPOOL_INIT_DEFAULT_COORDINATOR_VETH_MTU": "9000",
    "SPIDERPOOL_INIT_DEFAULT_IPV4_SUBNET_NAME": "default-v4-subnet",
    "SPIDERPOOL_INIT_DEFAULT_IPV4_IPPOOL_NAME": "default-v4-ippool",
    "SPIDERPOOL_INIT_DEFAULT_IPV4_IPPOOL_SUBNET": "172.18.0.0/16",
    "SPIDERPOOL_INIT_DEFAULT_IPV4_IPPOOL_IPRANGES": '["172.18.40.1-172.18.40.10"]',
    "SPIDERPOOL_INIT_DEFAULT_IPV4_IPPOOL_GATEWAY": "172.18.0.1",
    "SPIDERPOOL_INIT_DEFAULT_IPV6_IPPOOL_NAME": "default-v6-ippool",
    "SPIDERPOOL_INIT_DEFAULT_IPV6_IPPOOL_SUBNET": "fc00:f853:ccd:e793::/64",
    "SPIDERPOOL_INIT_DEFAULT_IPV6_IPPOOL_IPRANGES": "fc00:f853:ccd:e793::41-fc00:f853:ccd:e793::4a",
}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    validating = ValidatingStore(await SqliteStore.open(tmp_path / "store.db", create=True))
    try:
        yield validating
    finally:
        await validating.aclose()


def test_nothing_is_made_without_names() -> None:
    assert InitSettings.from_env({}).objects() == []


def test_the_coordinator_gets_helms_defaults_where_the_environment_says_nothing() -> None:
    settings = InitSettings.from_env({"SPIDERPOOL_INIT_DEFAULT_COORDINATOR_NAME": "default"})
    [obj] = settings.objects()
    assert obj["spec"] == {"mode": "auto", "podCIDRType": "auto", "tunePodRoutes": True,
                           "hijackCIDR": ["169.254.0.0/16"], "detectGateway": False, "detectIPConflict": False,
                           "vethMTU": 1500}  # fmt: skip


def test_the_environment_settings_are_honoured() -> None:
    coordinator, subnet, pool4, pool6 = InitSettings.from_env(ENV).objects()
    assert coordinator["metadata"]["name"] == "default"
    assert coordinator["spec"] | {} == {"mode": "underlay", "podCIDRType": "cluster", "tunePodRoutes": False,
                                        "hijackCIDR": ["10.233.0.0/18", "169.254.0.0/16"], "detectGateway": False,
                                        "detectIPConflict": False, "vethMTU": 9000}  # fmt: skip
    assert (subnet["kind"], subnet["metadata"]["name"]) == ("SpiderSubnet", "default-v4-subnet")
    assert subnet["spec"] == {"ipVersion": 4, "subnet": "172.18.0.0/16", "ips": ["172.18.40.1-172.18.40.10"],
                              "gateway": "172.18.0.1"}  # fmt: skip
    assert (pool4["kind"], pool4["spec"]["default"], pool4["spec"]["ipVersion"]) == ("SpiderIPPool", True, 4)
    assert pool6["spec"] == {"ipVersion": 6, "subnet": "fc00:f853:ccd:e793::/64",
                             "ips": ["fc00:f853:ccd:e793::41-fc00:f853:ccd:e793::4a"], "default": True}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "variable"),
    [
        ({"SPIDERPOOL_INIT_DEFAULT_IPV4_IPPOOL_SUBNET": ""}, "SPIDERPOOL_INIT_DEFAULT_IPV4_IPPOOL_SUBNET"),
        ({"SPIDERPOOL_INIT_DEFAULT_IPV4_IPPOOL_SUBNET": "fd00::/64"}, "SPIDERPOOL_INIT_DEFAULT_IPV4_IPPOOL_SUBNET"),
        ({"SPIDERPOOL_INIT_DEFAULT_IPV4_IPPOOL_GATEWAY": "fd00::1"}, "SPIDERPOOL_INIT_DEFAULT_IPV4_IPPOOL_GATEWAY"),
        (
            {"SPIDERPOOL_INIT_DEFAULT_COORDINATOR_TUNE_POD_ROUTES": "maybe"},
            "SPIDERPOOL_INIT_DEFAULT_COORDINATOR_TUNE_POD_ROUTES",
        ),
        (
            {"SPIDERPOOL_INIT_DEFAULT_COORDINATOR_HIJACK_CIDR": "nonsense"},
            "SPIDERPOOL_INIT_DEFAULT_COORDINATOR_HIJACK_CIDR",
        ),
        ({"SPIDERPOOL_INIT_DEFAULT_COORDINATOR_VETH_MTU": "0"}, "SPIDERPOOL_INIT_DEFAULT_COORDINATOR_VETH_MTU"),
        (
            {"SPIDERPOOL_INIT_DEFAULT_COORDINATOR_POD_CIDR_TYPE": "weave"},
            "SPIDERPOOL_INIT_DEFAULT_COORDINATOR_POD_CIDR_TYPE",
        ),
        ({"SPIDERPOOL_INIT_DEFAULT_IPV6_IPPOOL_NAME": "default-v4-ippool"}, "IPPool"),
    ],
)
def test_a_wrong_setting_stops_the_run_naming_it(change: dict[str, str], variable: str) -> None:
    with pytest.raises(InvalidInput, match=variable):
        InitSettings.from_env(ENV | change)


async def test_a_second_run_changes_nothing(store: Store) -> None:
    settings = InitSettings.from_env(ENV, wait=0)
    with trio.fail_after(10):
        first = await run_init(store, settings)
        assert [o.created for o in first] == [True, True, True, True]
        versions = {o.name: (await store.get(o.kind, o.name))["metadata"]["resourceVersion"] for o in first}
        second = await run_init(store, settings)
        assert second == [Outcome(o.kind, o.name, False) for o in first]
        assert {o.name: (await store.get(o.kind, o.name))["metadata"]["resourceVersion"] for o in first} == versions


async def test_an_object_someone_changed_is_left_as_it_is(store: Store) -> None:
    settings = InitSettings.from_env({"SPIDERPOOL_INIT_DEFAULT_COORDINATOR_NAME": "default"}, wait=0)
    with trio.fail_after(10):
        await run_init(store, settings)
        obj = await store.get("SpiderCoordinator", "default")
        obj["spec"]["podCIDRType"] = "none"
        await store.update(obj)
        await run_init(store, settings)
        assert (await store.get("SpiderCoordinator", "default"))["spec"]["podCIDRType"] == "none"


async def test_without_a_leading_controller_it_gives_up_after_the_wait(store: Store) -> None:
    settings = InitSettings.from_env({"SPIDERPOOL_INIT_DEFAULT_COORDINATOR_NAME": "default"}, wait=0.3)
    with trio.fail_after(10), pytest.raises(InvalidInput, match=r"no controller leads after 0\.3s"):
        await run_init(store, settings)
    assert (await store.list("SpiderCoordinator")).items == []


async def test_it_creates_once_a_controller_leads(store: Store) -> None:
    settings = InitSettings.from_env({"SPIDERPOOL_INIT_DEFAULT_COORDINATOR_NAME": "default"}, wait=10)
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
             "metadata": {"name": "spiderpool-controller-leases", "namespace": "kube-system"},
             "spec": {"holderIdentity": "ctl_1"}}  # fmt: skip

    async def lead_later() -> None:
        await trio.sleep(0.2)
        await store.create(lease)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lead_later)
            assert [o.created for o in await run_init(store, settings)] == [True]


def test_the_command_reads_the_environment_and_runs_twice_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    argv = ["init", "--store", str(tmp_path / "store.db"), "--wait-controller", "0"]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines() == [
        "spidercoordinator/default created",
        "spidersubnet/default-v4-subnet created",
        "spiderippool/default-v4-ippool created",
        "spiderippool/default-v6-ippool created",
    ]
    assert main(argv) == 0
    assert capsys.readouterr().out.count("exists, left as it is") == 4
