"""The ``spider`` command as people use it: apply, get, delete, check, install-cni, agent shutdown, demo; its
help, and which commands may create a store."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from actors.stores.sqlite import SqliteStore
from actors.tools import demo
from actors.tools.cli import build_parser, main
from tests.support import ROOT, AgentProcess, http_call_sync, pool_object, short_tmp


def spider(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "actors", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        input=stdin,
        check=False,
    )


@pytest.fixture
def store() -> Iterator[Path]:
    with short_tmp() as d:
        yield d / "store.db"


def test_apply_a_directory_then_get_shows_pools_with_counts(store: Path) -> None:
    applied = spider("apply", "-f", "deploy/examples", "--store", str(store))
    assert applied.returncode == 0, applied.stderr
    assert "spiderippool/demo-v4 created" in applied.stdout
    table = spider("get", "sp", "--store", str(store))
    assert table.returncode == 0
    header, *rows = table.stdout.splitlines()
    assert header.split() == [
        "NAME",
        "VERSION",
        "SUBNET",
        "ALLOCATED-IP-COUNT",
        "TOTAL-IP-COUNT",
        "FREE",
        "DEFAULT",
        "DISABLE",
    ]
    # demo-v4: 191 listed, 1 excluded => total 190; 2 reserved => 188 free.
    assert rows[0].split() == ["demo-v4", "4", "10.210.0.0/24", "0", "190", "188", "true", "false"]


def test_apply_again_reports_unchanged_and_a_change_reports_configured(store: Path) -> None:
    spider("apply", "-f", "deploy/examples/10-ippool-v4.yaml", "--store", str(store))
    again = spider("apply", "-f", "deploy/examples/10-ippool-v4.yaml", "--store", str(store))
    assert "unchanged" in again.stdout
    doc = yaml.safe_load(Path(ROOT / "deploy/examples/10-ippool-v4.yaml").read_text())
    doc["spec"]["disable"] = True
    changed = spider("apply", "-f", "-", "--store", str(store), stdin=yaml.safe_dump(doc))
    assert "spiderippool/demo-v4 configured" in changed.stdout
    got = json.loads(spider("get", "sp", "demo-v4", "-o", "json", "--store", str(store)).stdout)
    assert got["spec"]["disable"] is True
    assert got["status"]["totalIPCount"] == 190


def test_an_invalid_pool_is_refused_with_a_clear_error_and_stores_nothing(store: Path) -> None:
    bad = {"apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderIPPool", "metadata": {"name": "bad"}}
    bad["spec"] = {"subnet": "10.0.0.1/24", "ips": ["10.0.0.10"]}
    done = spider("apply", "-f", "-", "--store", str(store), stdin=json.dumps(bad))
    assert done.returncode == 1
    assert "unformatted subnet 10.0.0.1/24, please change it to 10.0.0.0/24" in done.stderr
    assert json.loads(spider("get", "sp", "-o", "json", "--store", str(store)).stdout)["items"] == []


def test_pods_namespaces_and_nodes_can_be_applied_and_read_back_as_yaml(store: Path) -> None:
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a", "labels": {"tier": "gold"}}},
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "labels": {"zone": "z1"}}},
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": "team-a", "annotations": {"ipam.spidernet.io/ippool": "{}"}},
            "status": {"phase": "Running"},
        },
    ]
    done = spider("apply", "-f", "-", "--store", str(store), stdin=yaml.safe_dump_all(docs))
    assert done.returncode == 0, done.stderr
    pod = yaml.safe_load(spider("get", "pod", "web", "-n", "team-a", "-o", "yaml", "--store", str(store)).stdout)
    assert pod["metadata"]["annotations"] == {"ipam.spidernet.io/ippool": "{}"}
    assert pod["status"] == {"phase": "Running"}
    assert pod["metadata"]["uid"]
    listed = json.loads(spider("get", "ns", "-l", "tier=gold", "-o", "json", "--store", str(store)).stdout)
    assert [o["metadata"]["name"] for o in listed["items"]] == ["team-a"]


def test_delete_removes_an_object_and_a_missing_one_is_an_error(store: Path) -> None:
    spider("apply", "-f", "deploy/examples/30-reservedip.yaml", "--store", str(store))
    assert spider("delete", "sr", "demo-reserved", "--store", str(store)).returncode == 0
    missing = spider("delete", "sr", "demo-reserved", "--store", str(store))
    assert missing.returncode == 1
    assert "not found" in missing.stderr


def test_unknown_kinds_are_named_in_the_error(store: Path) -> None:
    done = spider("get", "frobs", "--store", str(store))
    assert done.returncode == 1
    assert "unknown kind 'frobs'" in done.stderr


def test_install_cni_writes_an_executable_plugin_that_answers_version() -> None:
    with short_tmp() as d:
        done = spider("install-cni", "--bin-dir", str(d))
        assert done.returncode == 0
        plugin = d / "spiderpool"
        assert os.access(plugin, os.X_OK)
        assert plugin.read_text().startswith(f"#!{sys.executable} -IS\n")
        answer = subprocess.run(
            [str(plugin)],
            input=b'{"cniVersion":"0.4.0"}',
            env={"CNI_COMMAND": "VERSION"},
            capture_output=True,
            check=False,
        )
    assert json.loads(answer.stdout)["cniVersion"] == "0.4.0"


def test_check_of_an_empty_store_is_consistent(store: Path) -> None:
    spider("apply", "-f", "deploy/examples", "--store", str(store))
    done = spider("check", "--store", str(store))
    assert done.returncode == 0
    assert "consistent" in done.stdout


def test_check_exits_1_while_an_address_is_held_twice_also_with_reclaim(store: Path) -> None:
    """Two overlapping pools record one address for two live pods: ``--reclaim`` cannot fix that, and once exited 0
    whatever it left (a cron job never saw the duplicate)."""

    async def seed() -> None:
        made = await SqliteStore.open(store, create=True)
        try:
            for name in ("a", "b"):
                await made.create(pool_object(name, "10.8.0.0/24", ["10.8.0.10-10.8.0.20"]))
                pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p-{name}", "namespace": "default"}}
                uid = (await made.create({**pod, "spec": {}}))["metadata"]["uid"]
                record = {"10.8.0.10": {"pod": f"default/p-{name}", "podUid": uid}}
                obj = await made.get("SpiderIPPool", name)
                await made.update_status({**obj, "status": {"allocatedIPs": json.dumps(record), "allocatedIPCount": 1}})
        finally:
            await made.aclose()

    trio.run(seed)
    for extra in ((), ("--reclaim",)):
        done = spider("check", "--store", str(store), *extra)
        assert (done.returncode, "held-twice" in done.stdout) == (1, True), done.stdout + done.stderr


def test_the_agent_drains_and_exits_cleanly_on_sigterm() -> None:
    with short_tmp() as d:
        agent = AgentProcess(d / "store.db", d / "agent.sock", "node-9", d / "agent.log")
        agent.start()
        assert http_call_sync(agent.socket_path, "GET", "/v1/ipam/healthy")[0] == 200
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.proc.wait(30) == 0
        assert not agent.socket_path.exists()
        assert "draining" in agent.log.read_text()


def test_the_agent_replaces_a_stale_socket_left_by_a_crash() -> None:
    with short_tmp() as d:
        first = AgentProcess(d / "store.db", d / "agent.sock", "node-9", d / "agent.log")
        first.start()
        first.kill()
        assert first.socket_path.exists()
        second = AgentProcess(d / "store.db", d / "agent.sock", "node-9", d / "agent.log")
        second.start()
        assert http_call_sync(second.socket_path, "GET", "/v1/ipam/healthy")[0] == 200
        assert second.stop() == 0


async def test_the_demo_without_interfaces_runs_the_ipam_part_and_says_what_it_skipped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo, "can_make_interfaces", lambda: "not running as root")
    with trio.fail_after(60):
        code = await demo.run_demo(2)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "skipping real interfaces (not running as root)" in out
    assert "demo passed" in out
    assert "demo-pod-2" in out
    assert "the pool goes" in out.partition("SpiderSubnet: an application's own pool")[2]  # the scene needs no root


def every_action(parser: argparse.ArgumentParser, path: str = "spider") -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield path, action
            for name, child in action.choices.items():
                yield from every_action(child, f"{path} {name}")
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield path, action


def test_every_option_and_argument_has_help_that_states_its_default() -> None:
    checked = 0
    for command, action in every_action(build_parser()):
        where = f"{command} {'/'.join(action.option_strings) or action.dest}"
        assert action.help, f"{where} has no help"
        assert action.help != argparse.SUPPRESS, f"{where} hides its help"
        text = action.help % {**vars(action), "prog": command}
        default = action.default
        if default is None or default is False:
            continue
        if default in ("", []):  # nothing to print: the help must say what happens without it
            assert "default" in text, f"{where}: {text!r} does not say what happens by default"
        else:
            shown = {str(default)} | ({f"{default:g}"} if isinstance(default, float) else set())
            assert any(s in text for s in shown), f"{where}: {text!r} does not mention its default {default!r}"
        checked += 1
    assert checked > 30  # the walk reached every subcommand's options


def test_help_names_the_defaults_people_asked_about() -> None:
    parser = build_parser()
    helps = {
        (command, "/".join(a.option_strings) or a.dest): (a.help or "") % {**vars(a), "prog": command}
        for command, a in every_action(parser)
    }
    assert "(default /opt/cni/bin)" in helps[("spider install-cni", "--bin-dir")]
    assert "(default 3)" in helps[("spider demo", "--pods")]
    assert "spiderpool-controller-leases" in helps[("spider controller", "--lease-name")]
    assert "(default 10)" in helps[("spider controller", "--renew-deadline")]
    assert "5722" in helps[("spider controller", "--webhook-port")]
    assert "list every one" in helps[("spider get", "name")]
    assert helps[("spider delete", "name")]
    from actors.node.netlink import NETLINK_TIMEOUT  # NB: the CLI does not import pyroute2 to print its help

    assert f"(default {NETLINK_TIMEOUT:g})" in helps[("spider agent", "--netlink-timeout")]


# --- which commands may create a store ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["get", "sp"], ["get", "sp", "demo-v4"], ["check"], ["check", "--reclaim"], ["delete", "sp", "demo-v4"]],
    ids=" ".join,
)
def test_commands_that_only_read_refuse_a_missing_store_and_create_nothing(command: list[str]) -> None:
    with short_tmp() as d:
        missing = d / "typo" / "store.db"
        done = spider(*command, "--store", str(missing))
        assert done.returncode == 1
        assert done.stderr.strip() == f"spider {command[0]}: store unavailable: no store file at '{missing}'"
        assert done.stdout == ""
        assert not (d / "typo").exists()


def test_apply_still_creates_a_new_store_where_none_exists() -> None:
    with short_tmp() as d:
        store = d / "new" / "store.db"
        done = spider("apply", "-f", "deploy/examples/10-ippool-v4.yaml", "--store", str(store))
        assert done.returncode == 0, done.stderr
        assert store.stat().st_size > 0
        assert spider("get", "sp", "demo-v4", "--store", str(store)).returncode == 0


@pytest.mark.parametrize("command", [["get", "sp"], ["check"], ["apply", "-f", "deploy/examples/10-ippool-v4.yaml"]])
def test_an_empty_store_file_is_an_error_for_every_command_and_stays_empty(command: list[str]) -> None:
    with short_tmp() as d:
        empty = d / "store.db"
        empty.touch()
        done = spider(*command, "--store", str(empty))
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert lines == [
            f"spider {command[0]}: store unavailable: '{empty}' is an empty file, not a store (remove it to start anew)"
        ]
        assert empty.stat().st_size == 0


def test_the_agent_refuses_an_empty_store_file_and_exits_1() -> None:
    with short_tmp() as d:
        empty = d / "store.db"
        empty.touch()
        done = subprocess.run(
            [sys.executable, "-m", "actors", "agent", "--store", str(empty), "--socket", str(d / "a.sock")],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1
        assert "is an empty file, not a store" in done.stderr
        assert empty.stat().st_size == 0


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], {"netlink_timeout": 5.0, "pool_idle_timeout": 300.0}),
        (["--netlink-timeout", "2", "--pool-idle-timeout", "60"], {"netlink_timeout": 2.0, "pool_idle_timeout": 60.0}),
        (["--pool-idle-timeout", "0"], {"pool_idle_timeout": None}),
    ],
)
def test_spider_agent_passes_its_timeouts_to_the_agent(
    argv: list[str], expected: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import actors.agent

    seen: list[Any] = []

    async def run_agent(settings: Any) -> None:
        seen.append(settings)

    monkeypatch.setattr(actors.agent, "run_agent", run_agent)
    args = build_parser().parse_args(["agent", *argv])
    assert args.func(args) == 0
    assert [{key: getattr(s, key) for key in expected} for s in seen] == [expected]


# --- the controller's switches -----------------------------------------------------------------------------


def controller_settings_for(argv: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """The ControllerSettings ``spider controller ARGV`` would run with (the parser built after any setenv)."""
    import actors.controller.main

    seen: list[Any] = []

    async def run_controller(settings: Any) -> None:
        seen.append(settings)

    monkeypatch.setattr(actors.controller.main, "run_controller", run_controller)
    args = build_parser().parse_args(["controller", "--store", str(tmp_path / "store.db"), *argv])
    assert args.func(args) == 0
    [settings] = seen
    return settings


def test_the_controller_manages_subnets_auto_pools_and_multus_configs_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from actors.controller.multus import MultusSettings

    for name in ("SPIDERPOOL_MULTUS_CONFIG_ENABLED", "SPIDERPOOL_MULTUS_CONFIG_INFORMER_RESYNC_PERIOD"):
        monkeypatch.delenv(name, raising=False)
    settings = controller_settings_for([], monkeypatch, tmp_path)
    assert (settings.enable_spider_subnet, settings.enable_auto_pool, settings.auto_pool_default_redundant) == (
        True,
        True,
        0,
    )
    assert settings.multus == MultusSettings(resync_period=60.0)


def test_the_controllers_flags_turn_off_subnets_auto_pools_and_multus_configs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    argv = ["--no-spider-subnet", "--no-auto-pool", "--auto-pool-redundant-ips", "2", "--no-multus-config"]
    settings = controller_settings_for(argv, monkeypatch, tmp_path)
    assert (settings.enable_spider_subnet, settings.enable_auto_pool, settings.auto_pool_default_redundant) == (
        False,
        False,
        2,
    )
    assert settings.multus is None


@pytest.mark.parametrize(
    ("value", "argv", "enabled"),
    [("false", [], False), ("0", [], False), ("true", [], True), ("1", [], True), ("false", ["--multus-config"], True)],
)
def test_spiderpool_multus_config_enabled_is_the_multus_switchs_default_and_the_flag_wins(
    value: str, argv: list[str], enabled: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SPIDERPOOL_MULTUS_CONFIG_ENABLED", value)
    monkeypatch.setenv("SPIDERPOOL_MULTUS_CONFIG_INFORMER_RESYNC_PERIOD", "30")
    settings = controller_settings_for(argv, monkeypatch, tmp_path)
    assert (settings.multus is not None) is enabled
    if enabled:
        assert settings.multus.resync_period == 30.0


def test_the_agent_and_the_controller_spell_their_subnet_switches_alike() -> None:
    parser = build_parser()
    commands = {
        command: {
            a.option_strings[0]: a.default
            for path, a in every_action(parser)
            if path == f"spider {command}" and a.option_strings
        }
        for command in ("agent", "controller")
    }
    for flag in ("--no-spider-subnet", "--no-auto-pool", "--auto-pool-redundant-ips"):
        assert flag in commands["agent"], flag
        assert commands["agent"][flag] == commands["controller"].get(flag, "missing"), flag


@pytest.mark.parametrize("command", [["get", "sp"], ["check"], ["ip", "show", "10.0.0.1"]])
def test_a_kubeconfig_that_is_no_yaml_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("clusters: [\n")  # NB: a truncated edit; once a traceback
    assert main([*command, "--kubeconfig", str(kubeconfig)]) == 1
    assert "cannot configure a Kubernetes client from the kubeconfig" in capsys.readouterr().err


def test_a_pool_host_without_a_port_is_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "--store", str(tmp_path / "s.db"), "--pool-host", "controller.example"]) == 1
    assert "--pool-host must be HOST:PORT, not 'controller.example'" in capsys.readouterr().err
