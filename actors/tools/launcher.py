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

With ``self_contained`` (``install-cni --self-contained``) the launchers run with a copy of this Python laid out in
one sub-folder ``spider-runtime-VERSION-HASH`` of the bin directory: the interpreter, its shared libraries and the
dynamic loader (the interpreter patched with ``patchelf`` to load them from that folder), and the few stdlib
modules the shims can import, byte-compiled.  The plugins then need nothing of the node: no ``python3``, no
``/lib``, no ``/usr``.  A new runtime is written beside under a temporary name and renamed; the launchers switch
to it by rename; the runtime they named before stays (a call still running may import from it), older ones go.

Every file and folder is fsync'ed before its final name appears, so a power loss leaves no name without its
data.  A runtime's last file, ``spider-runtime.json``, lists its files and their sizes; a later install reuses
the runtime only when they match, and lays it out again otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import marshal
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from spider.errors import SpiderError

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
    """Write atomically: a runtime exec'ing the plugin never sees half a file, nor does the node after a power
    loss (the data reaches the disk before the new name does)."""
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if executable:
        tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    tmp.replace(target)
    _fsync_dir(target.parent)


def _fsync_dir(path: Path) -> None:
    """Make the names in directory ``path`` (a rename into it) survive a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _compiled(source: Path, python: str, same_python: bool = False) -> bytes | None:
    """The ``.pyc`` bytes for ``python`` (``same_python``: a copy of this one), or ``None`` when that interpreter
    cannot be asked here."""
    if same_python or os.path.realpath(python) == os.path.realpath(sys.executable):
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


def install_launched(bin_dir: Path, name: str, source: str, python: str, same_python: bool = False) -> Path:
    """Install ``source`` (a shim's text, without a shebang) as plugin ``name``; returns the launcher's path."""
    module = bin_dir / f"{name}.py"
    _write(module, source.encode())
    compiled = _compiled(module, python, same_python)
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
PLUGINS = ("spiderpool", "coordinator", "ifacer")


def install_cni(
    bin_dir: Path, python: str = sys.executable, self_contained: bool = False, host_bin_dir: Path | None = None
) -> list[Path]:
    """Copy the stdlib shims to ``bin_dir`` (``spiderpool`` first, then ``coordinator`` and ``ifacer``), run by
    ``python -IS`` (no site, fast start), or with ``self_contained`` by a runtime copied beside them (``python``
    is then unused).  ``host_bin_dir``: where the node sees ``bin_dir`` (an init container writes the host's
    ``/opt/cni/bin`` through a mount); the launchers name paths under it.  Default: ``bin_dir``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    host_dir = Path(os.path.abspath(host_bin_dir or bin_dir))
    previous = _runtimes_named(bin_dir)
    runtime = None
    if self_contained:
        runtime = build_runtime(bin_dir, host_dir)
        python = str(host_dir / runtime.name / "python3")
    if len(f"#!{python} -IS".encode()) > SHEBANG_MAX:
        raise RuntimeBuildError(f"the interpreter path {python!r} is too long for a #! line ({SHEBANG_MAX} bytes)")
    # Each plugin is a launcher plus the byte-compiled shim beside it: an exec does not compile the source
    # (docs/benchmarks.md).  The coordinator's shim goes under both plugin names it serves (it reads its own name).
    sources = {"spiderpool": SHIM_SOURCE, "coordinator": COORDINATOR_SOURCE, "ifacer": COORDINATOR_SOURCE}
    installed = []
    for name in PLUGINS:
        source = sources[name].read_text().split("\n", 1)[1]  # drop the development shebang
        installed.append(install_launched(bin_dir, name, source, python, same_python=self_contained))
    if runtime is not None:
        _remove_runtimes(bin_dir, keep={runtime.name, *previous})
    return installed


# --- The self-contained runtime (``install-cni --self-contained``) ---------------------------------------------

RUNTIME_PREFIX = "spider-runtime-"
# What the shims may import: sys, posix and _socket on every exec (_socket is an extension module in some
# builds), ``json`` on their slow and error paths.
SHIM_MODULES = ("sys", "posix", "_socket", "json")
# Written into a runtime last, before its rename: each of its files (relative path) and its size.  A runtime
# whose files do not match it (or without one) is made again.
RUNTIME_MANIFEST = "spider-runtime.json"
# Where the image keeps the runtimes it built at build time (Dockerfile): one whose name (version and hash of
# its files and of the place it was patched for) matches is copied as is, without patchelf.
PREBUILT_RUNTIMES = Path("/opt/spider/cni")
# Run by the interpreter being copied: imports the shims' modules (and the single-byte text codecs a node's locale
# may name; not the CJK ones, nor the bytes-to-bytes ones, which need zlib, bz2 or unicodedata)
# and prints where each module it loaded from a file came from.  ``os`` is frozen: its file is the landmark by
# which Python finds its home (without it, start-up warns on stderr).
_PROBE = (
    "import sys, json, os, encodings\n"
    "for n in sys.argv[1:]: __import__(n)\n"
    "skip = ('_codec.py', 'idna.py', 'punycode.py', 'mbcs.py', 'oem.py')\n"
    "for f in os.listdir(encodings.__path__[0]):\n"
    "    path = os.path.join(encodings.__path__[0], f)\n"
    "    if f.endswith('.py') and not f.endswith(skip) and b'_multibytecodec' not in open(path, 'rb').read():\n"
    "        __import__('encodings.' + f[:-3])\n"
    "found = {n: m.__spec__.origin for n, m in sys.modules.items()\n"
    "         if getattr(m, '__spec__', None) is not None and m.__spec__.has_location}\n"
    "found['os'] = os.__file__\n"
    "print(json.dumps({'stdlib': os.path.dirname(os.__file__), 'modules': found}))\n"
)


SHEBANG_MAX = 255
"""The longest ``#!`` line Linux reads (``BINPRM_BUF_SIZE`` 256, less the newline)."""


class RuntimeBuildError(SpiderError):
    """The self-contained runtime cannot be built here (no ``patchelf`` or ``ldd``, a statically linked Python)."""


def _needed_libraries(elf: Path) -> tuple[dict[str, Path], Path | None]:
    """``ldd``'s answer for ``elf``: its shared libraries by soname, and the dynamic loader (``None``: none)."""
    try:
        out = subprocess.run(["ldd", str(elf)], capture_output=True, text=True, check=False, timeout=60).stdout
    except OSError as error:
        raise RuntimeBuildError(f"ldd is needed to build the self-contained runtime: {error}") from None
    libraries: dict[str, Path] = {}
    loader = None
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "=>" and parts[2].startswith("/"):
            libraries[parts[0]] = Path(parts[2])
        elif parts and parts[0].startswith("/"):
            loader = Path(parts[0])
    return libraries, loader


def _patchelf(*args: str) -> str:
    try:
        done = subprocess.run(["patchelf", *args], check=True, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        raise RuntimeBuildError(
            f"patchelf (Debian: patchelf) is needed for the self-contained runtime: {error}"
        ) from None
    return done.stdout


def build_runtime(bin_dir: Path, host_bin_dir: Path) -> Path:
    """Lay out this Python as ``bin_dir/spider-runtime-VERSION-HASH`` (kept when it already exists); its binaries
    are patched to load from that folder as the node sees it (under ``host_bin_dir``), not from ``/lib``."""
    python = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
    libraries, loader = _needed_libraries(python)
    if loader is None:
        raise RuntimeBuildError(f"{python} names no dynamic loader")
    probe = subprocess.run(
        [str(python), "-I", "-S", "-c", _PROBE, *SHIM_MODULES], capture_output=True, text=True, check=True, timeout=60
    )
    found = json.loads(probe.stdout)
    stdlib = Path(found["stdlib"])
    modules = sorted(Path(origin) for origin in found["modules"].values())
    extensions = [path for path in modules if path.suffix == ".so"]
    for extension in extensions:
        libraries.update(_needed_libraries(extension)[0])
    digest = hashlib.sha256(str(host_bin_dir).encode())
    for path in sorted({python, loader, *libraries.values(), *modules}):
        digest.update(str(path).encode() + b"\0" + path.read_bytes())
    major, minor, micro = sys.version_info[:3]
    name = f"{RUNTIME_PREFIX}{major}.{minor}.{micro}-{digest.hexdigest()[:12]}"
    final = bin_dir / name
    for left in bin_dir.glob(f".{RUNTIME_PREFIX}*.damaged*"):  # NB: by an earlier install: no call runs from it now
        shutil.rmtree(left, ignore_errors=True)
    if _runtime_intact(final):
        return final
    if final.exists():  # damaged (or laid out before runtimes had a manifest): made again, under its name
        aside = bin_dir / f".{name}.damaged{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):  # another install moved it meanwhile
            final.rename(aside)  # NB: not deleted now: a plugin call may still be running from it
    home = host_bin_dir / name  # what the patched binaries name: the folder as the node sees it
    tmp = bin_dir / f".{name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    prebuilt = PREBUILT_RUNTIMES / name
    if prebuilt.resolve() != final.resolve() and _runtime_intact(prebuilt):
        # The image built it for this place: same name, same bytes.
        shutil.copytree(prebuilt, tmp, symlinks=True, ignore=shutil.ignore_patterns(RUNTIME_MANIFEST))
        return _rename_into_place(tmp, final)
    lib = tmp / "lib" / f"python{major}.{minor}"
    (lib / "lib-dynload").mkdir(parents=True)  # the second landmark Python looks for (its exec prefix)
    shutil.copyfile(python, tmp / "python3")
    shutil.copyfile(loader, tmp / loader.name)
    for soname, path in libraries.items():
        shutil.copyfile(path, tmp / soname)
    for path in modules:
        if path in extensions:
            shutil.copyfile(path, lib / "lib-dynload" / path.name)
            continue
        relative = path.relative_to(stdlib)
        target = (lib / relative).with_suffix(".pyc")  # sourceless: loaded as is, never checked or recompiled
        target.parent.mkdir(parents=True, exist_ok=True)
        code = compile(path.read_bytes(), str(home / "lib" / f"python{major}.{minor}" / relative), "exec")
        target.write_bytes(importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(code))
    # The loader and library path are absolute: $ORIGIN needs /proc, which a chrooted or early exec may not have.
    _patchelf(
        "--set-interpreter", str(home / loader.name), "--force-rpath", "--set-rpath", str(home), str(tmp / "python3")
    )
    for elf in [*(tmp / soname for soname in libraries), *(lib / "lib-dynload").iterdir()]:
        if _patchelf("--print-rpath", str(elf)).strip():
            _patchelf("--set-rpath", str(home), str(elf))
    for path in tmp.rglob("*"):
        path.chmod(0o755 if path.is_dir() or path.parent == tmp else 0o644)
    return _rename_into_place(tmp, final)


def _rename_into_place(tmp: Path, final: Path) -> Path:
    """Seal the runtime laid out in ``tmp`` (its files on disk, then its manifest, last) and rename it ``final``."""
    files = {}
    for path in sorted(tmp.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        files[str(path.relative_to(tmp))] = path.lstat().st_size
        if not path.is_symlink():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    manifest = tmp / RUNTIME_MANIFEST
    with open(manifest, "w") as f:
        json.dump(files, f, indent=0, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    manifest.chmod(0o644)
    for path in sorted((p for p in tmp.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        _fsync_dir(path)
    _fsync_dir(tmp)
    try:
        tmp.rename(final)
    except OSError:  # another install laid out the same runtime meanwhile: it is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(final.parent)
    return final


def _runtime_intact(runtime: Path) -> bool:
    """Whether ``runtime`` holds every file its manifest lists, each of the size listed.

    Sizes, not hashes: a runtime is renamed into place only once its files are on disk (fsync'ed), so what a
    crash can leave behind is a runtime written before that was so, whose files are missing, empty or short.
    Sizes see that for a ``stat`` of each file (a few ms); hashing the same 11-27 MB would add tens of ms
    (more from a cold cache) to every node start, for damage (bit rot, a hand edit) that is not a crash's."""
    try:
        listed = json.loads((runtime / RUNTIME_MANIFEST).read_bytes())
        return (
            isinstance(listed, dict)
            and bool(listed)
            and all((runtime / relative).lstat().st_size == size for relative, size in listed.items())
        )
    except (OSError, ValueError, TypeError):
        return False


def _runtimes_named(bin_dir: Path) -> set[str]:
    """The runtime folders the installed launchers start today (from their shebangs)."""
    named = set()
    for plugin in PLUGINS:
        try:
            with open(bin_dir / plugin, "rb") as f:
                shebang = f.readline().decode(errors="replace")
        except OSError:
            continue
        for part in Path(shebang[2:].split(" ", 1)[0]).parts:
            if part.startswith(RUNTIME_PREFIX):
                named.add(part)
    return named


def _remove_runtimes(bin_dir: Path, keep: set[str]) -> None:
    """Remove the runtime folders not in ``keep``: the one just installed and the ones the launchers named before
    this install (a plugin started just before the switch may still be loading from it) stay."""
    for path in bin_dir.iterdir():
        if path.name.startswith(RUNTIME_PREFIX) and path.name not in keep and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
