"""The CNI shim's cost: start-to-exit time of one ADD through the installed ``spiderpool`` plugin, against the
bare interpreter start (``python -I -S -c pass``, the same interpreter the plugin runs with) and against
Debian's host-local ADD.

    python -m bench.shim

Each round runs every command once, in turn (so load changes hit them alike): the bare interpreter, the
shim's VERSION (answered without the agent: start-up alone), the shim's ADD against a running agent process
(a new pod each time), the same two through the self-contained install (``install-cni --self-contained``: the
runtime copied beside the plugin; skipped when ``patchelf`` is missing), the ``coordinator`` plugin's VERSION
as installed (its launcher and compiled code) and from its source (``python -I -S coordinator.py``, how it was
installed before), and host-local's ADD (its own data directory).  Times are wall clock around the exec.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from actors.stores.selection import StoreSettings
from actors.stores.sqlite import SqliteStore
from actors.tools.launcher import RuntimeBuildError, install_cni
from actors.tools.loadtest.fleet import AgentFleet
from actors.tools.loadtest.scenario import HOST_LOCAL
from actors.tools.manifests import apply
from bench.common import Result, stats_ms


def timed(argv: list[str], env: dict[str, str], stdin: bytes) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, input=stdin, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {done.stdout!r} {done.stderr!r}")
    return elapsed


def cni_env(command: str, n: int) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": f"{n:064x}",
        "CNI_NETNS": "/var/run/netns/x",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=bench-{n};K8S_POD_UID=u-{n}",
        "CNI_PATH": "/usr/lib/cni",
    }


async def prepare(directory: Path) -> AgentFleet:
    store = await SqliteStore.open(directory / "store.db")
    try:
        pool = {"subnet": "10.3.0.0/20", "gateway": "10.3.0.1", "ips": ["10.3.0.2-10.3.15.254"]}
        await apply(
            store,
            {
                "apiVersion": "spiderpool.spidernet.io/v2beta1",
                "kind": "SpiderIPPool",
                "metadata": {"name": "shim"},
                "spec": pool,
            },
        )
    finally:
        await store.aclose()
    fleet = AgentFleet(directory, 1, StoreSettings(directory / "store.db"))
    await fleet.start()
    return fleet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--json", default=None, metavar="FILE")
    args = parser.parse_args(argv)
    result = Result("shim start-to-exit", "python -m bench.shim")
    directory = Path(tempfile.mkdtemp(prefix="spider-shim-", dir="/tmp"))
    fleet = trio.run(prepare, directory)
    try:
        shim = install_cni(directory / "bin")[0]
        coordinator = directory / "bin" / "coordinator"
        try:
            contained: Path | None = install_cni(directory / "contained", self_contained=True)[0]
        except RuntimeBuildError as error:
            print(f"no self-contained runtime here: {error}", file=sys.stderr)
            contained = None
        ours = json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "bench",
                "type": "macvlan",
                "ipam": {
                    "type": "spiderpool",
                    "ipam_unix_socket_path": str(fleet.socket(0)),
                    "default_ipv4_ippool": ["shim"],
                },
            }
        ).encode()
        theirs = json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "bench",
                "type": "macvlan",
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.4.0.0/20"}]],
                    "dataDir": str(directory / "hl"),
                },
            }
        ).encode()
        bare_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        keys = ("bare", "version", "add", "contained-version", "contained-add", "coordinator", "coordinator-source")
        keys += ("host-local",)
        times: dict[str, list[float]] = {k: [] for k in keys}
        for n in range(args.rounds):
            times["bare"].append(timed([sys.executable, "-I", "-S", "-c", "pass"], bare_env, b""))
            times["version"].append(timed([str(shim)], cni_env("VERSION", n), ours))
            times["add"].append(timed([str(shim)], cni_env("ADD", n), ours))
            if contained is not None:
                times["contained-version"].append(timed([str(contained)], cni_env("VERSION", n), ours))
                times["contained-add"].append(timed([str(contained)], cni_env("ADD", args.rounds + n), ours))
            times["coordinator"].append(timed([str(coordinator)], cni_env("VERSION", n), ours))
            from_source = [sys.executable, "-I", "-S", f"{coordinator}.py"]
            times["coordinator-source"].append(timed(from_source, cni_env("VERSION", n), ours))
            times["host-local"].append(timed([str(HOST_LOCAL)], cni_env("ADD", n), theirs))
    finally:
        trio.run(fleet.stop)
        shutil.rmtree(directory, ignore_errors=True)
    labels = {
        "bare": f"{Path(sys.executable).name} -I -S -c pass",
        "version": "spiderpool VERSION (no agent)",
        "add": "spiderpool ADD (agent answers)",
        "contained-version": "self-contained spiderpool VERSION",
        "contained-add": "self-contained spiderpool ADD",
        "coordinator": "coordinator VERSION (no agent)",
        "coordinator-source": "coordinator VERSION, run from its source",
        "host-local": "host-local ADD",
    }
    base = stats_ms(times["bare"])["p50_ms"]
    for key, label in labels.items():
        if not times[key]:
            continue
        s = stats_ms(times[key])
        result.add(command=label, **s, vs_bare=round(s["p50_ms"] / base, 2))
    add = stats_ms(times["add"])["p50_ms"]
    extra = {}
    if times["contained-add"]:
        extra["contained_add_vs_add"] = round(stats_ms(times["contained-add"])["p50_ms"] / add, 2)
    result.finish(
        args.json,
        **extra,
        add_vs_bare=round(add / base, 2),
        add_vs_host_local=round(add / stats_ms(times["host-local"])["p50_ms"], 2),
        target="shim ADD p50 <= 1.5x the bare interpreter start",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
