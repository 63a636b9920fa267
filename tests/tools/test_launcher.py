"""Each installed plugin (``spiderpool``, ``coordinator``, ``ifacer``) is a launcher that runs the byte-compiled
shim beside it, and falls back to the shim's source whenever that compiled code is missing or was made by another
Python."""

from __future__ import annotations

import importlib.util
import json
import marshal
import os
import subprocess
import sys
from pathlib import Path

import pytest

from actors.tools.launcher import SHEBANG_MAX, RuntimeBuildError, install_cni, install_launched
from tests.support import short_tmp


def version_of(plugin: Path) -> tuple[int, str]:
    done = subprocess.run(
        [str(plugin)],
        input=b'{"cniVersion":"0.4.0"}',
        env={"CNI_COMMAND": "VERSION"},
        capture_output=True,
        timeout=30,
        check=False,
    )
    return done.returncode, done.stdout.decode()


@pytest.mark.parametrize(
    ("name", "opening"),
    [
        ("spiderpool", '"""The ``spiderpool`` IPAM plugin'),
        ("coordinator", '"""The ``coordinator`` (and ``ifacer``) CNI plugin'),
        ("ifacer", '"""The ``coordinator`` (and ``ifacer``) CNI plugin'),
    ],
)
def test_install_cni_puts_each_compiled_shim_and_its_source_beside_its_launcher(name: str, opening: str) -> None:
    with short_tmp() as d:
        plugin = {p.name: p for p in install_cni(d)}[name]
        code, out = version_of(plugin)
        assert code == 0
        assert json.loads(out)["cniVersion"] == "0.4.0"
        assert (d / f"{name}.py").read_text().startswith(opening)
        assert (d / f"{name}.pyc").read_bytes()[:4] == importlib.util.MAGIC_NUMBER
        assert plugin.read_text().startswith(f"#!{sys.executable} -IS\n")
        assert not list(d.glob("*.tmp"))


def test_the_launcher_runs_the_compiled_code_not_the_source() -> None:
    with short_tmp() as d:
        plugin = install_cni(d)[0]
        decoy = compile('import sys; sys.stdout.write("from the pyc")', "decoy", "exec")
        (d / "spiderpool.pyc").write_bytes(importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(decoy))
        assert version_of(plugin) == (0, "from the pyc")


def test_compiled_code_of_another_python_is_ignored_for_the_source() -> None:
    with short_tmp() as d:
        plugin = install_cni(d)[0]
        pyc = d / "spiderpool.pyc"
        pyc.write_bytes(b"\x00\x00\r\n" + pyc.read_bytes()[4:])  # another interpreter's magic number
        code, out = version_of(plugin)
        assert code == 0
        assert json.loads(out)["cniVersion"] == "0.4.0"
        pyc.unlink()
        assert version_of(plugin)[0] == 0


def test_an_interpreter_that_cannot_run_here_gets_the_source_only() -> None:
    with short_tmp() as d:
        source = 'import sys\nsys.stdout.write("source ran")\n'
        launcher = install_launched(d, "demo", source, "/nonexistent/python3")
        assert not (d / "demo.pyc").exists()
        assert launcher.read_text().startswith("#!/nonexistent/python3 -IS\n")
        done = subprocess.run([sys.executable, "-I", "-S", str(launcher)], capture_output=True, timeout=30, check=False)
        assert done.stdout == b"source ran"


def test_an_interpreter_path_too_long_for_a_shebang_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(RuntimeBuildError, match="too long"):
        install_cni(tmp_path / "bin", python="/" + "p" * SHEBANG_MAX)
    assert not any((tmp_path / "bin").iterdir())


def test_each_file_and_its_folder_reach_the_disk_before_its_new_name_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    fsync, replace = os.fsync, Path.replace
    monkeypatch.setattr(
        os, "fsync", lambda fd: (events.append(f"sync {os.readlink(f'/proc/self/fd/{fd}')}"), fsync(fd))[1]
    )
    monkeypatch.setattr(
        Path, "replace", lambda self, target: (events.append(f"rename {self}"), replace(self, target))[1]
    )
    bin_dir = tmp_path / "bin"
    install_cni(bin_dir)
    renamed = [event.split()[1] for event in events if event.startswith("rename")]
    assert len(renamed) == 9  # three files for each of three plugins
    for tmp in renamed:
        assert events.index(f"sync {tmp}") < events.index(f"rename {tmp}")  # its data, then its name ...
        assert f"sync {bin_dir}" in events[events.index(f"rename {tmp}") :]  # ... then the folder's entry
