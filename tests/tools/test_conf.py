"""``spider agent --config-path`` and ``spider controller --config-path``: conf.yml read once at start under the
flags and environment variables, bad files refused in one line, ignored keys named in the log, and the
shipped ConfigMap giving the same settings as no file."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml

from actors.tools.cli import build_parser, main
from actors.tools.conf import load_conf, resolve_config_path
from tests.deploy.test_manifests import BASE, one

SHIPPED_CONF = one(BASE, "ConfigMap", "spiderpool-conf")["data"]["conf.yml"]


@pytest.fixture(autouse=True)
def no_spiderpool_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from the test's flags and files, not from the machine's environment."""
    monkeypatch.delenv("SPIDERPOOL_ENABLE_CLEAN_OUTDATED_ENDPOINT", raising=False)


def conf_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "conf.yml"
    path.write_text(text)
    return str(path)


def agent_settings(argv: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """The AgentSettings ``spider agent ARGV`` would run with."""
    import actors.agent

    seen: list[Any] = []

    async def run_agent(settings: Any) -> None:
        seen.append(settings)

    monkeypatch.setattr(actors.agent, "run_agent", run_agent)
    args = build_parser().parse_args(["agent", "--store", str(tmp_path / "store.db"), "--node", "n1", *argv])
    assert args.func(args) == 0
    [settings] = seen
    return settings


def controller_settings(argv: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """The ControllerSettings ``spider controller ARGV`` would run with."""
    import actors.controller.main

    seen: list[Any] = []

    async def run_controller(settings: Any) -> None:
        seen.append(settings)

    monkeypatch.setattr(actors.controller.main, "run_controller", run_controller)
    argv = ["controller", "--store", str(tmp_path / "store.db"), "--identity", "c1", *argv]
    args = build_parser().parse_args(argv)
    assert args.func(args) == 0
    [settings] = seen
    return settings


# --- where the file is ---------------------------------------------------------------------------------------


def test_the_default_path_is_read_only_when_it_exists_and_an_empty_flag_reads_none(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yml"
    assert resolve_config_path(None, missing) is None
    present = Path(conf_file(tmp_path, "enableStatefulSet: false\n"))
    assert resolve_config_path(None, present) == present
    assert resolve_config_path("", present) is None
    assert load_conf(None, "agent", present).enable_statefulset is False
    assert load_conf("", "agent", present).enable_statefulset is True


def test_the_manifests_name_the_file_they_mount() -> None:
    from tests.deploy.test_manifests import container, pod_spec

    components = (("DaemonSet", "spiderpool-agent", "agent"), ("Deployment", "spiderpool-controller", "controller"))
    for kind, name, command in components:
        spec = pod_spec(kind, name)
        args = build_parser().parse_args(container(spec, command)["args"])
        [mount] = [m for m in container(spec, command)["volumeMounts"] if m["name"] == "config"]
        assert args.config_path == f"{mount['mountPath']}/conf.yml"


# --- precedence: flag > environment variable > file > default ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "argv", "expected"),
    [
        ("", [], (Path("/var/run/spidernet/spiderpool.sock"), True, True, 0)),
        (
            "ipamUnixSocketPath: /run/s.sock\nenableStatefulSet: false\nenableSpiderSubnet: false\n"
            "clusterSubnetAutoPoolDefaultRedundantIPNumber: 2\n",
            [],
            (Path("/run/s.sock"), False, False, 2),
        ),
        (
            "ipamUnixSocketPath: /run/s.sock\nenableStatefulSet: false\nenableSpiderSubnet: false\n"
            "clusterSubnetAutoPoolDefaultRedundantIPNumber: 2\n",
            ["--socket", "/run/flag.sock", "--statefulset-ips", "--spider-subnet", "--auto-pool-redundant-ips", "0"],
            (Path("/run/flag.sock"), True, True, 0),
        ),
        (
            "",
            ["--no-statefulset-ips", "--no-spider-subnet"],
            (Path("/var/run/spidernet/spiderpool.sock"), False, False, 0),
        ),
    ],
    ids=["default", "file", "flags-over-file", "flags-over-default"],
)
def test_the_agent_takes_a_flag_over_the_file_and_the_file_over_the_default(
    text: str, argv: list[str], expected: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = agent_settings(["--config-path", conf_file(tmp_path, text), *argv], monkeypatch, tmp_path)
    auto = settings.ipam.auto_pools
    got = (settings.socket_path, settings.ipam.enable_statefulset, auto.enable_spider_subnet, auto.default_redundant)
    assert got == expected


def test_the_agent_reads_kubevirt_and_auto_pool_switches_from_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = conf_file(tmp_path, "enableKubevirtStaticIP: false\nenableAutoPoolForApplication: false\n")
    settings = agent_settings(["--config-path", path], monkeypatch, tmp_path)
    assert (settings.ipam.enable_kubevirt_static_ip, settings.ipam.auto_pools.enable_auto_pool) == (False, False)
    settings = agent_settings(["--config-path", path, "--kubevirt-ips", "--auto-pool"], monkeypatch, tmp_path)
    assert (settings.ipam.enable_kubevirt_static_ip, settings.ipam.auto_pools.enable_auto_pool) == (True, True)


@pytest.mark.parametrize(
    ("file_value", "variable", "argv", "cleaning"),
    [
        (None, None, [], False),
        (True, None, [], True),
        (True, "false", [], False),
        (False, "true", [], True),
        (True, "true", ["--no-clean-outdated-endpoints"], False),
        (False, "false", ["--clean-outdated-endpoints"], True),
    ],
    ids=["default", "file", "env-over-file", "env-over-file-on", "flag-over-env", "flag-over-env-on"],
)
def test_the_controllers_outdated_endpoint_cleaning_is_flag_then_variable_then_file_then_off(
    file_value: bool | None,
    variable: str | None,
    argv: list[str],
    cleaning: bool,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    text = "" if file_value is None else yaml.safe_dump({"enableCleanOutdatedEndpoint": file_value})
    if variable is not None:
        monkeypatch.setenv("SPIDERPOOL_ENABLE_CLEAN_OUTDATED_ENDPOINT", variable)
    settings = controller_settings(["--config-path", conf_file(tmp_path, text), *argv], monkeypatch, tmp_path)
    assert settings.gc.clean_outdated_endpoints is cleaning


def test_the_controller_takes_pod_injection_subnets_and_families_from_the_file_under_its_flags(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = conf_file(
        tmp_path,
        "enableIPv6: false\nenableSpiderSubnet: false\nenableAutoPoolForApplication: false\n"
        "clusterSubnetAutoPoolDefaultRedundantIPNumber: 4\n"
        "podResourceInject: {enabled: true, namespacesExclude: [kube-system], namespacesInclude: [ai]}\n",
    )
    settings = controller_settings(["--config-path", path], monkeypatch, tmp_path)
    assert (settings.enable_spider_subnet, settings.enable_auto_pool, settings.auto_pool_default_redundant) == (
        False,
        False,
        4,
    )
    assert (settings.admission.enable_ipv4, settings.admission.enable_ipv6, settings.admission.enable_subnet) == (
        True,
        False,
        False,
    )
    inject = settings.pod_inject
    assert (inject.enabled, inject.namespaces_exclude, inject.namespaces_include) == (True, ("kube-system",), ("ai",))
    argv = ["--config-path", path, "--spider-subnet", "--no-pod-resource-inject", "--pod-inject-include-namespace", "x"]
    settings = controller_settings(argv, monkeypatch, tmp_path)
    assert (settings.enable_spider_subnet, settings.admission.enable_subnet, settings.enable_auto_pool) == (
        True,
        True,
        False,
    )
    assert (settings.pod_inject.enabled, settings.pod_inject.namespaces_include) == (False, ("x",))


# --- the shipped ConfigMap -----------------------------------------------------------------------------------


def test_the_shipped_configmap_gives_both_components_the_settings_of_no_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    shipped = ["--config-path", conf_file(tmp_path, SHIPPED_CONF)]
    none = ["--config-path", ""]
    assert agent_settings(shipped, monkeypatch, tmp_path) == agent_settings(none, monkeypatch, tmp_path)
    # the one difference docs/operations.md names: the ConfigMap lists the chart's excluded namespaces, which
    # need not be the pod webhook's built-in list (Spiderpool's Go default)
    charts = yaml.safe_load(SHIPPED_CONF)["podResourceInject"]["namespacesExclude"]
    without = controller_settings(none, monkeypatch, tmp_path)
    expected = attrs.evolve(without, pod_inject=attrs.evolve(without.pod_inject, namespaces_exclude=tuple(charts)))
    assert controller_settings(shipped, monkeypatch, tmp_path) == expected


def test_the_shipped_configmap_logs_its_not_implemented_keys_once_as_information(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="actors.tools.conf")
    load_conf(conf_file(tmp_path, SHIPPED_CONF), "agent")
    [record] = [r for r in caplog.records if "ignored" in r.getMessage()]
    assert record.levelno == logging.INFO
    message = record.getMessage()
    ignored = (
        "enableIPConflictDetection",
        "enableGatewayDetection",
        "tuneSysctlConfig",
        "iaasNetworkProvider.serverUrl",
    )
    for key in ignored:
        assert key in message
    for honoured in ("enableStatefulSet", "enableCleanOutdatedEndpoint", "podResourceInject.enabled"):
        assert honoured not in message


def test_a_key_asking_for_missing_behaviour_or_an_unknown_key_is_a_warning_naming_it(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="actors.tools.conf")
    load_conf(conf_file(tmp_path, "enableGatewayDetection: true\nenableIPv5: true\n"), "controller")
    [record] = [r for r in caplog.records if "ignored" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "not as asked: enableGatewayDetection" in record.getMessage()
    assert "unknown to Spiderpool: enableIPv5" in record.getMessage()


# --- bad files -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["agent", "controller"])
@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("enableStatefulSet: maybe\n", "key 'enableStatefulSet' is invalid: expected true or false, got 'maybe'"),
        ("podResourceInject: {enabled: [x\n", "is invalid: not YAML"),
    ],
    ids=["wrong-type", "not-yaml"],
)
def test_a_bad_file_stops_the_component_at_start_with_one_line_naming_the_key(
    command: str, text: str, said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = conf_file(tmp_path, text)
    code = main([command, "--store", str(tmp_path / "store.db"), "--config-path", path])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith(f"spider {command}: ")
    assert said in err
    assert path in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_config_path_that_is_not_there_is_an_error_not_the_defaults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.yml"
    assert main(["agent", "--store", str(tmp_path / "store.db"), "--config-path", str(missing)]) == 1
    assert f"settings file '{missing}' is invalid: cannot be read" in capsys.readouterr().err
