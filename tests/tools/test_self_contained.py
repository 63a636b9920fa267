"""``install-cni --self-contained``: the plugins run with a runtime copied beside them and need nothing of the
node.  Proved by ``chroot``ing into a directory holding only what was installed (and the agent's socket)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.tools import launcher
from actors.tools.launcher import RUNTIME_PREFIX, install_cni
from tests.support import RunningAgent, cni_env, netconf, pod_args, pool_object

needs_root_and_patchelf = [
    pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root"),
    pytest.mark.skipif(shutil.which("patchelf") is None, reason="the runtime is patched with patchelf"),
    pytest.mark.skipif(shutil.which("ldd") is None, reason="the runtime's libraries are found with ldd"),
]
pytestmark = needs_root_and_patchelf


def chrooted(root: Path, plugin: str, env: dict[str, str], conf: Any) -> tuple[int, Any, bytes]:
    """Exec ``/opt/cni/bin/PLUGIN`` inside ``root`` as a runtime would: its exit code, decoded stdout, stderr."""
    done = subprocess.run(
        [shutil.which("chroot") or "/usr/sbin/chroot", str(root), f"/opt/cni/bin/{plugin}"],
        input=conf if isinstance(conf, bytes) else json.dumps(conf).encode(),
        env=env,
        capture_output=True,
        timeout=60,
    )
    out = done.stdout.strip()
    return done.returncode, (json.loads(out) if out else None), done.stderr


def runtimes(bin_dir: Path) -> list[str]:
    return sorted(p.name for p in bin_dir.iterdir() if p.name.startswith(RUNTIME_PREFIX))


@pytest.mark.slow
async def test_the_plugins_serve_every_command_in_a_chroot_with_nothing_but_what_was_installed(
    agent: RunningAgent,
) -> None:
    root = agent.dir  # holds the agent's socket and store; gets opt/cni/bin; has no /usr, /lib or python3
    bin_dir = root / "opt" / "cni" / "bin"
    await trio.to_thread.run_sync(lambda: install_cni(bin_dir, self_contained=True, host_bin_dir=Path("/opt/cni/bin")))
    assert not any((root / name).exists() for name in ("usr", "lib", "lib64", "sbin"))
    await agent.apply(pool_object("v4", "10.9.0.0/24", ["10.9.0.10-10.9.0.20"]))
    conf = netconf("/" + agent.socket.name, "1.1.0", default_ipv4_ippool=["v4"])
    args = pod_args("pod-a", "uid-a")

    async def run(plugin: str, env: dict[str, str]) -> tuple[int, Any, bytes]:
        with trio.fail_after(60):
            return await trio.to_thread.run_sync(chrooted, root, plugin, env, conf)

    code, added, err = await run("spiderpool", cni_env("ADD", "ctr-1", "eth0", args))
    assert (code, err) == (0, b""), added
    assert added["ips"][0]["address"].startswith("10.9.0.")
    code, out, err = await run("spiderpool", cni_env("CHECK", "ctr-1", "eth0", args))
    assert (code, out, err) == (0, None, b"")
    code, out, err = await run("spiderpool", cni_env("STATUS"))
    assert (code, err) == (0, b""), out
    code, out, err = await run("spiderpool", cni_env("DEL", "ctr-1", "eth0", args))
    assert (code, out, err) == (0, None, b"")
    conf["cni.dev/valid-attachments"] = []
    code, out, err = await run("spiderpool", cni_env("GC"))
    assert (code, err) == (0, b""), out
    for plugin in ("spiderpool", "coordinator", "ifacer"):
        code, version, err = await run(plugin, cni_env("VERSION"))
        assert (code, err) == (0, b"")
        assert "1.1.0" in version["supportedVersions"]
    # The coordinator's launcher reaches the agent too: a DEL of a sandbox it never set up is a clean no-op.
    conf = {
        "cniVersion": "1.1.0",
        "name": "net",
        "type": "coordinator",
        "ipam_unix_socket_path": conf["ipam"]["ipam_unix_socket_path"],
    }
    code, out, err = await run("coordinator", cni_env("DEL", "ctr-1", "eth0", args))
    assert (code, out, err) == (0, None, b"")


def test_an_escaped_netconf_and_an_unreachable_agent_are_handled_with_the_runtimes_own_json(tmp_path: Path) -> None:
    bin_dir = tmp_path / "opt" / "cni" / "bin"
    install_cni(bin_dir, self_contained=True, host_bin_dir=Path("/opt/cni/bin"))
    # An escaped string sends the shim to its json path (json is loaded lazily: it must be in the runtime).
    conf = json.dumps(netconf("/absent.sock", "1.1.0", default_ipv4_ippool=["v4"])).replace("/absent", "\\/absent")
    assert "\\/absent" in conf
    code, out, err = chrooted(tmp_path, "spiderpool", cni_env("ADD", "c", "eth0", pod_args("p", "u")), conf.encode())
    assert code != 0, (out, err)
    assert out["code"] == 11, out  # CNI 11: try again later (the agent cannot be reached)
    assert "/absent.sock" in json.dumps(out), out
    assert b"Traceback" not in err


def test_a_new_runtime_is_installed_beside_and_the_one_before_it_is_kept_for_calls_in_flight(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    install_cni(bin_dir, self_contained=True, host_bin_dir=Path("/first"))
    [first] = runtimes(bin_dir)
    install_cni(bin_dir, self_contained=True, host_bin_dir=Path("/second"))  # another place: another runtime
    [second] = [name for name in runtimes(bin_dir) if name != first]
    assert runtimes(bin_dir) == sorted([first, second])
    assert (bin_dir / "spiderpool").read_text().startswith(f"#!/second/{second}/python3 -IS\n")
    install_cni(bin_dir, self_contained=True, host_bin_dir=Path("/second"))  # the same one: reused, first goes
    assert runtimes(bin_dir) == [second]
    assert not [p for p in bin_dir.iterdir() if p.name.endswith(".tmp") or ".tmp" in p.name]


def test_a_plain_install_names_the_interpreter_given_and_lays_out_no_runtime(tmp_path: Path) -> None:
    install_cni(tmp_path, python="/usr/bin/python3")
    assert (tmp_path / "spiderpool").read_text().startswith("#!/usr/bin/python3 -IS\n")
    assert runtimes(tmp_path) == []


def test_a_runtime_the_image_built_for_the_same_place_is_copied_without_patching(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = tmp_path / "image"
    install_cni(image, self_contained=True, host_bin_dir=Path("/opt/cni/bin"))  # as the Dockerfile does
    monkeypatch.setattr(launcher, "PREBUILT_RUNTIMES", image)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "patchelf").write_text("#!/bin/sh\nexit 1\n")
    (broken / "patchelf").chmod(0o755)
    monkeypatch.setenv("PATH", f"{broken}:{os.environ['PATH']}")
    root = tmp_path / "root"
    install_cni(root / "opt" / "cni" / "bin", self_contained=True, host_bin_dir=Path("/opt/cni/bin"))
    assert runtimes(root / "opt" / "cni" / "bin") == runtimes(image)
    code, version, err = chrooted(root, "spiderpool", cni_env("VERSION"), {"cniVersion": "1.1.0"})
    assert (code, err) == (0, b"")
    assert "1.1.0" in version["supportedVersions"]


def test_a_runtime_whose_files_a_crash_left_short_is_laid_out_again(tmp_path: Path) -> None:
    bin_dir = tmp_path / "opt" / "cni" / "bin"
    install_cni(bin_dir, self_contained=True, host_bin_dir=Path("/opt/cni/bin"))
    [runtime] = runtimes(bin_dir)
    (bin_dir / runtime / "libc.so.6").write_bytes(b"")  # renamed into place before its data reached the disk
    assert chrooted(tmp_path, "spiderpool", cni_env("VERSION"), {"cniVersion": "1.1.0"})[0] != 0
    install_cni(bin_dir, self_contained=True, host_bin_dir=Path("/opt/cni/bin"))  # the init container, rebooted
    assert runtimes(bin_dir) == [runtime]
    code, version, err = chrooted(tmp_path, "spiderpool", cni_env("VERSION"), {"cniVersion": "1.1.0"})
    assert (code, err) == (0, b"")
    assert "1.1.0" in version["supportedVersions"]


def test_every_file_and_folder_of_a_runtime_reaches_the_disk_before_the_runtime_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), fsync(fd))[1])
    install_cni(tmp_path, self_contained=True)
    [runtime] = runtimes(tmp_path)
    laid_out = tmp_path / f".{runtime}.tmp{os.getpid()}"  # its name while it was written
    every = [laid_out, *(laid_out / p.relative_to(tmp_path / runtime) for p in (tmp_path / runtime).rglob("*"))]
    assert len(every) > 100
    assert {str(p) for p in every} <= set(synced)
    assert synced.index(str(tmp_path)) > synced.index(str(laid_out))  # the rename itself, once it is whole
