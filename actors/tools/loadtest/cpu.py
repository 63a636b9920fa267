"""Where a load test's CPU goes, per phase: the plugins the run exec'd, our agents, the controller, the load
test itself, and the rest of the machine (against a real cluster on the same machine: the API server, etcd, the
kubelet; on the fake API server: the fake).

Owns ``CpuSample`` (read from ``/proc`` and ``os.times``, Linux) and ``spent``, the difference of two samples
in CPU seconds per part.  The plugins are this process's children that have exited and been waited for (a call
waits for its plugin), so between two samples they are the calls made in between.  The machine's busy time is
every CPU's time outside idle, iowait and steal; "rest" is what it did beyond the parts measured (never below
0: the parts are read a moment apart).  A process that is gone counts as 0.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import attrs

TICKS = os.sysconf("SC_CLK_TCK")
PARTS = ("plugins", "agents", "controller", "load_test")


@attrs.frozen
class CpuSample:
    """CPU seconds used so far: by the whole machine, and by each part of the run."""

    machine: float
    plugins: float
    agents: float
    controller: float
    load_test: float


def process_seconds(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` so far; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()  # NB: the command name may hold spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine_seconds() -> float:
    """Busy CPU seconds of every CPU since boot (``/proc/stat``: all but idle, iowait and steal); 0 without it."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq = (ticks + [0] * 7)[:7]
    return (user + nice + system + irq + softirq) / TICKS


def sample(agents: Iterable[int] = (), controller: int | None = None) -> CpuSample:
    """The CPU seconds so far of the machine, the exited plugins, the agents ``agents`` and the ``controller``
    (process IDs), and this process."""
    own = os.times()
    return CpuSample(
        machine=machine_seconds(),
        plugins=own.children_user + own.children_system,
        agents=sum((process_seconds(pid) for pid in agents), 0.0),
        controller=process_seconds(controller) if controller is not None else 0.0,
        load_test=own.user + own.system,
    )


def spent(before: CpuSample, after: CpuSample) -> dict[str, float]:
    """CPU seconds between two samples, per part and ``rest`` (the machine beyond the parts), and ``machine``."""
    out = {part: round(max(getattr(after, part) - getattr(before, part), 0.0), 2) for part in PARTS}
    machine = max(after.machine - before.machine, 0.0)
    out["rest"] = round(max(machine - sum(out[part] for part in PARTS), 0.0), 2)
    out["machine"] = round(machine, 2)
    return out
