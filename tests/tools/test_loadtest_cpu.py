"""Where a load test's CPU goes (``actors.tools.loadtest.cpu``): each part read from ``/proc`` and ``os.times``,
and the rest of the machine by difference."""

from __future__ import annotations

import subprocess
import sys
import time

from actors.tools.loadtest.cpu import CpuSample, machine_seconds, process_seconds, sample, spent

BURN = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"


def test_the_rest_of_the_machine_is_what_it_did_beyond_the_parts_and_never_below_zero() -> None:
    before = CpuSample(machine=100.0, plugins=1.0, agents=2.0, controller=3.0, load_test=4.0)
    after = CpuSample(machine=110.0, plugins=2.5, agents=4.0, controller=3.5, load_test=4.25)
    assert spent(before, after) == {
        "plugins": 1.5,
        "agents": 2.0,
        "controller": 0.5,
        "load_test": 0.25,
        "rest": 5.75,
        "machine": 10.0,
    }
    busier_parts = CpuSample(machine=101.0, plugins=2.5, agents=4.0, controller=3.5, load_test=4.25)
    assert spent(before, busier_parts)["rest"] == 0.0  # the parts read a moment after the machine
    gone = CpuSample(machine=110.0, plugins=1.0, agents=0.0, controller=3.0, load_test=4.0)  # agents exited
    assert spent(before, gone)["agents"] == 0.0


def test_a_plugin_that_ran_is_counted_once_it_was_waited_for_and_so_is_the_machine() -> None:
    before = sample()
    subprocess.run([sys.executable, "-c", BURN], check=True)
    used = spent(before, sample())
    assert used["plugins"] >= 0.25
    assert used["machine"] >= used["plugins"] - 0.05  # ticks are 10 ms apart
    assert used["agents"] == used["controller"] == 0.0


def test_a_running_process_is_read_by_its_id_and_a_gone_one_counts_as_nothing() -> None:
    child = subprocess.Popen([sys.executable, "-c", BURN + "\nimport sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        for _ in range(200):
            if process_seconds(child.pid) >= 0.25:
                break
            time.sleep(0.02)
        assert process_seconds(child.pid) >= 0.25
        assert sample(agents=[child.pid, child.pid]).agents >= 0.5  # the agents' CPU is summed
        assert sample(controller=child.pid).controller >= 0.25
    finally:
        child.communicate(b"")
    assert process_seconds(child.pid) == 0.0
    assert machine_seconds() > 0
