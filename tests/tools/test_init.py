"""``spider init``: Spiderpool's install defaults from its environment names, created once, waiting for a
controller first."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from actors.stores.port import Obj, Store
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
        # Found here, not by the store once the coordinator is written (which names spec fields, not variables).
        ({"SPIDERPOOL_INIT_DEFAULT_IPV4_IPPOOL_SUBNET": "172.18.0.1/16"}, "IPV4_IPPOOL_SUBNET.*unformatted"),
        ({"SPIDERPOOL_INIT_DEFAULT_IPV4_IPPOOL_GATEWAY": "10.0.0.1"}, "IPV4_IPPOOL_GATEWAY.*not in"),
        ({"SPIDERPOOL_INIT_DEFAULT_IPV4_IPPOOL_IPRANGES": "172.18.40.1-nonsense"}, "IPV4_IPPOOL_IPRANGES"),
        ({"SPIDERPOOL_INIT_DEFAULT_IPV4_IPPOOL_IPRANGES": "fd00::1-fd00::10"}, "IPV4_IPPOOL_IPRANGES.*IPv4"),
        ({"SPIDERPOOL_INIT_DEFAULT_IPV4_IPPOOL_IPRANGES": "172.18.40.9-172.18.40.1"}, "IPV4_IPPOOL_IPRANGES.*after"),
        ({"SPIDERPOOL_INIT_DEFAULT_IPV4_IPPOOL_IPRANGES": "10.0.0.1-10.0.0.5"}, "IPV4_IPPOOL_IPRANGES.*not in"),
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


EXTRA_POOL = {"apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPPool", "metadata": {"name": "extra"}}


@pytest.mark.parametrize(
    ("kind", "name", "ips", "extra_ips"),
    [
        # The default subnet widened, another pool carved from the new part.
        ("SpiderSubnet", "default-v4-subnet", ["172.18.40.1-172.18.40.10", "172.18.41.1-172.18.41.10"],
         ["172.18.41.1-172.18.41.10"]),
        # The default pool shrunk, the rest of its range given to another pool (the subnet keeps the range).
        ("SpiderIPPool", "default-v4-ippool", ["172.18.40.1-172.18.40.5"], ["172.18.40.6-172.18.40.10"]),
    ],
)  # fmt: skip
async def test_a_default_an_admin_resized_since_is_left_as_it_is_though_creating_it_now_would_be_refused(
    store: Store, kind: str, name: str, ips: list[str], extra_ips: list[str]
) -> None:
    settings = InitSettings.from_env(ENV, wait=0)
    with trio.fail_after(10):
        await run_init(store, settings)
        obj = await store.get(kind, name)
        obj["spec"]["ips"] = ips
        await store.update(obj)
        await store.create(EXTRA_POOL | {"spec": {"subnet": "172.18.0.0/16", "ips": extra_ips}})
        assert [o.created for o in await run_init(store, settings)] == [False, False, False, False]
        assert (await store.get(kind, name))["spec"]["ips"] == ips


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


# --- the default SpiderMultusConfig ---------------------------------------------------------------------------

MULTUS = {"SPIDERPOOL_INIT_ENABLE_MULTUS_CONFIG": "true", "SPIDERPOOL_NAMESPACE": "kube-system"}


def cni_dir(tmp_path: Path, files: dict[str, object]) -> dict[str, str]:
    """A CNI configuration folder holding ``files`` (file name: its JSON), as the environment that names it."""
    directory = tmp_path / "net.d"
    directory.mkdir()
    for name, content in files.items():
        (directory / name).write_text(content if isinstance(content, str) else json.dumps(content))
    return MULTUS | {"SPIDERPOOL_INIT_DEFAULT_CNI_DIR": str(directory)}


CALICO = {"name": "k8s-pod-network", "cniVersion": "0.3.1", "plugins": [{"type": "calico"}, {"type": "portmap"}]}


async def made(store: Store, env: dict[str, str]) -> Obj:
    outcomes = await run_init(store, InitSettings.from_env(env, wait=0))
    [smc] = (await store.list("SpiderMultusConfig")).items
    assert outcomes[-1] == Outcome("SpiderMultusConfig", smc["metadata"]["name"], True)
    return smc


async def test_the_first_cni_configuration_but_multus_s_names_the_default_network(store: Store, tmp_path: Path) -> None:
    env = cni_dir(tmp_path, {"00-multus.conf": {"name": "multus-cni-network", "type": "multus"},
                             "10-calico.conflist": CALICO,
                             "20-flannel.conflist": {"name": "cbr0", "plugins": [{"type": "flannel"}]},
                             "05-loopback.json": {"name": "lo", "type": "loopback"}})  # fmt: skip
    with trio.fail_after(10):
        smc = await made(store, env)
    assert smc["metadata"]["name"] == "calico"  # NB: Calico's legacy name, renamed; the NAD keeps it
    assert smc["metadata"]["namespace"] == "kube-system"
    assert smc["metadata"]["annotations"] == {"multus.spidernet.io/cr-name": "k8s-pod-network"}
    assert smc["spec"]["cniType"] == "custom"
    assert smc["spec"]["enableCoordinator"] is False


@pytest.mark.parametrize(
    ("files", "name", "kind"),
    [
        ({"10-macvlan.conf": {"name": "underlay", "type": "macvlan"}}, "underlay", "macvlan"),
        ({"10-ib.conflist": {"name": "ib", "plugins": [{"type": "ib-sriov"}]}}, "ib", "ib-sriov"),
        ({"10-cilium.conflist": {"name": "cilium", "plugins": [{"type": "cilium-cni"}]}}, "cilium", "custom"),
        ({}, "default", "custom"),
    ],
    ids=["macvlan", "ib-sriov", "another-type", "none-at-all"],
)
def test_the_default_network_keeps_a_type_spiderpool_knows(
    tmp_path: Path, files: dict[str, object], name: str, kind: str
) -> None:
    settings = InitSettings.from_env(cni_dir(tmp_path, files))
    assert settings.multus is not None
    assert settings.multus.default_cni() == (name, kind)


def test_a_named_default_network_is_custom_and_nothing_is_made_unless_enabled(tmp_path: Path) -> None:
    env = cni_dir(tmp_path, {"10-calico.conflist": CALICO}) | {"SPIDERPOOL_INIT_DEFAULT_CNI_NAME": "kube-ovn"}
    settings = InitSettings.from_env(env | {"SPIDERPOOL_INIT_DEFAULT_CNI_NAMESPACE": "net"})
    assert settings.multus is not None
    assert settings.multus.default_cni() == ("kube-ovn", "custom")
    assert settings.multus.to_object("kube-ovn", "custom")["metadata"]["namespace"] == "net"
    assert InitSettings.from_env(env | {"SPIDERPOOL_INIT_ENABLE_MULTUS_CONFIG": "false"}).multus is None
    assert InitSettings.from_env({}).multus is None


@pytest.mark.parametrize(
    ("unreadable", "message"),
    [
        (False, r"10-broken\.conflist does not parse"),
        (True, r"cannot read .*10-broken\.conflist \(Permission denied\)"),
    ],
    ids=["does-not-parse", "unreadable"],
)
async def test_a_default_cni_configuration_that_cannot_be_read_fails_the_run_after_the_rest_is_made(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unreadable: bool, message: str
) -> None:
    env = cni_dir(tmp_path, {"10-broken.conflist": '{"name": "x", "plugins": []}'})
    if unreadable:  # NB: root reads any file: a user that may not (the Job's) is played by the read failing

        def denied(path: Path) -> bytes:
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(Path, "read_bytes", denied)
    with trio.fail_after(10), pytest.raises(InvalidInput, match=message):
        await run_init(store, InitSettings.from_env(env | ENV, wait=0))
    assert [o["metadata"]["name"] for o in (await store.list("SpiderCoordinator")).items] == ["default"]
    assert (await store.list("SpiderMultusConfig")).items == []


async def test_the_multus_configmap_gets_the_default_network_once_keeping_its_other_settings(
    store: Store, tmp_path: Path
) -> None:
    conf = {"cniVersion": "0.3.1", "name": "multus-cni-network", "type": "multus", "clusterNetwork": "",
            "confDir": "/etc/cni/net.d", "logLevel": "debug", "someFutureSetting": [1, 2]}  # fmt: skip
    await store.create({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "spiderpool-multus", "namespace": "kube-system"},
                        "data": {"cni-conf.json": json.dumps(conf), "other": "kept"}})  # fmt: skip
    env = cni_dir(tmp_path, {"10-calico.conflist": CALICO}) | {
        "SPIDERPOOL_INIT_INSTALL_MULTUS": "true",
        "SPIDERPOOL_INIT_MULTUS_CONFIGMAP": "spiderpool-multus",
    }
    settings = InitSettings.from_env(env, wait=0)
    with trio.fail_after(10):
        first = await run_init(store, settings)
        changed = await store.get("ConfigMap", "spiderpool-multus", "kube-system")
        second = await run_init(store, settings)
        after = await store.get("ConfigMap", "spiderpool-multus", "kube-system")
    assert [str(o) for o in first] == [
        "spidermultusconfig/calico created",
        "configmap/spiderpool-multus (clusterNetwork k8s-pod-network) changed",
    ]
    assert json.loads(changed["data"]["cni-conf.json"]) == conf | {"clusterNetwork": "k8s-pod-network"}
    assert changed["data"]["other"] == "kept"
    assert [o.created for o in second] == [False, False]
    assert after["metadata"]["resourceVersion"] == changed["metadata"]["resourceVersion"]


@pytest.mark.parametrize(
    ("change", "variable"),
    [
        ({"SPIDERPOOL_INIT_ENABLE_MULTUS_CONFIG": "maybe"}, "ENABLE_MULTUS_CONFIG"),
        ({"SPIDERPOOL_INIT_INSTALL_MULTUS": "true"}, "MULTUS_CONFIGMAP"),
    ],
)
def test_a_wrong_multus_setting_stops_the_run_naming_it(change: dict[str, str], variable: str) -> None:
    with pytest.raises(InvalidInput, match=variable):
        InitSettings.from_env(MULTUS | change)
