"""Installing a stdlib CNI shim as a tiny launcher plus its byte-compiled code, so an exec does not compile it.

Owns the files ``spider install-cni`` writes for a shim called NAME in the CNI bin directory:
- ``NAME``: the launcher, run by ``python -IS``; it loads ``NAME.pyc`` with ``marshal`` (built in) and runs it
  as ``__main__``, or compiles ``NAME.py`` when the ``.pyc`` is missing or was made by another Python (its magic
  number differs): never wrong, only slower;
- ``NAME.py``: the shim's source, the fallback and what a person reads;
- ``NAME.pyc``: the source compiled by the interpreter the plugin runs with (a header with that interpreter's
  magic number, then the marshalled code).  When that interpreter is not this one, it is asked to compile;
  when it cannot be run here (the DaemonSet's init container names the host's ``python3``), there is none.
Measured in docs/benchmarks.md: compiling the shim's source took about 1.4 ms of each exec.
"""

from __future__ import annotations

import importlib.util
import marshal
import os
import stat
import subprocess
import sys
from pathlib import Path

LAUNCHER = """\
#!{python} -IS
# CNI plugin {name!r} (spider install-cni): runs {name}.pyc beside this file, or {name}.py when that .pyc is
# missing or was compiled by another Python.  Only modules built into the interpreter are used.
import marshal
from _frozen_importlib_external import MAGIC_NUMBER
_path = __file__
try:
    with open(_path + ".pyc", "rb") as _f:
        _data = _f.read()
    if _data[:4] != MAGIC_NUMBER:
        raise ValueError("compiled by another Python")
    _code = marshal.loads(_data[16:])
except (OSError, ValueError, EOFError, TypeError):
    with open(_path + ".py", "rb") as _f:
        _code = compile(_f.read(), _path + ".py", "exec")
exec(_code, {{"__name__": "__main__", "__file__": _path + ".py", "__builtins__": __builtins__}})
"""

_COMPILE = (
    "import importlib.util, marshal, sys\n"
    "src, dst = sys.argv[1], sys.argv[2]\n"
    "code = compile(open(src, 'rb').read(), src, 'exec')\n"
    "open(dst, 'wb').write(importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(code))\n"
)


def _write(target: Path, data: bytes, executable: bool = False) -> None:
    """Write atomically: a runtime exec'ing the plugin never sees half a file."""
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(data)
    if executable:
        tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    tmp.replace(target)


def _compiled(source: Path, python: str) -> bytes | None:
    """The ``.pyc`` bytes for ``python``, or ``None`` when that interpreter cannot be asked here."""
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        code = compile(source.read_bytes(), str(source), "exec")
        return importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(code)
    out = source.with_name(source.name + "c.tmp")
    try:
        subprocess.run([python, "-I", "-S", "-c", _COMPILE, str(source), str(out)], check=True, timeout=60)
        return out.read_bytes()
    except (OSError, subprocess.SubprocessError):
        return None
    finally:
        out.unlink(missing_ok=True)


def install_launched(bin_dir: Path, name: str, source: str, python: str) -> Path:
    """Install ``source`` (a shim's text, without a shebang) as plugin ``name``; returns the launcher's path."""
    module = bin_dir / f"{name}.py"
    _write(module, source.encode())
    compiled = _compiled(module, python)
    pyc = bin_dir / f"{name}.pyc"
    if compiled is None:
        pyc.unlink(missing_ok=True)  # NB: a stale one from another Python would be refused anyway; be tidy
    else:
        _write(pyc, compiled)
    launcher = bin_dir / name
    _write(launcher, LAUNCHER.format(python=python, name=name).encode(), executable=True)  # last: the switch
    return launcher


SHIM_SOURCE = Path(__file__).resolve().parent.parent.parent / "cni" / "shim.py"
COORDINATOR_SOURCE = Path(__file__).resolve().parent.parent.parent / "cni" / "coordinator.py"


def install_cni(bin_dir: Path, python: str = sys.executable) -> list[Path]:
    """Copy the stdlib shims to ``bin_dir`` (``spiderpool`` first, then ``coordinator`` and ``ifacer``), run by
    ``python -IS`` (no site, fast start)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    source = SHIM_SOURCE.read_text().split("\n", 1)[1]  # drop the development shebang
    # A launcher plus the byte-compiled shim beside it: an exec no longer compiles the source (docs/benchmarks.md).
    installed = [install_launched(bin_dir, "spiderpool", source, python)]
    # The coordinator's shim, installed under both plugin names it serves (it reads its own name).
    chained = COORDINATOR_SOURCE.read_text().split("\n", 1)[1]
    for name in ("coordinator", "ifacer"):
        target = bin_dir / name
        tmp = target.with_suffix(".tmp")
        tmp.write_text(f"#!{python} -IS\n{chained}")
        tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        tmp.replace(target)
        installed.append(target)
    return installed
