"""What every benchmark shares: where it ran (machine, load before and after), timing statistics, and
printing a result as a table and, with ``--json FILE``, as JSON; and starting the fake API server of
``tests/fakeapi`` as a process, latency model on, for runs against "a Kubernetes API server" on a machine
that has none.  Measures nothing itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from actors.tools.loadtest.report import machine, percentile


def stats_ms(seconds: Sequence[float]) -> dict[str, float]:
    """Median, p90, p99, min and mean of durations given in seconds, in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "min_ms": round(min(ms), 3),
        "mean_ms": round(sum(ms) / len(ms), 3),
    }


class Result:
    """A benchmark's rows, with the date, the machine and the load around the measurement."""

    def __init__(self, name: str, command: str) -> None:
        self.doc: dict[str, Any] = {
            "benchmark": name,
            "command": command,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "rows": [],
        }

    def add(self, **row: Any) -> dict[str, Any]:
        """One measured row."""
        self.doc["rows"].append(row)
        return row

    def finish(self, json_to: str | None, **summary: Any) -> None:
        """Record the load after, print the table, write the JSON."""
        self.doc["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
        self.doc.update(summary)
        console = Console(width=160)
        rows = self.doc["rows"]
        columns = list(dict.fromkeys(k for row in rows for k in row))
        table = Table(*columns, title=f"{self.doc['benchmark']} ({self.doc['date']})", header_style="bold")
        for row in rows:
            table.add_row(*(_cell(row.get(c)) for c in columns))
        console.print(table)
        for key, value in summary.items():
            console.print(f"{key}: {value}", highlight=False)
        m = self.doc["machine"]
        console.print(
            f"machine: {m['cores']} cores {m['cpu']}, {m['memory_gib']} GiB, Python {m['python']}; "
            f"load {m['load']} -> {m['load_after']}",
            highlight=False,
        )
        if json_to:
            Path(json_to).write_text(json.dumps(self.doc, indent=2) + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


FAKE_API_LATENCY_ENV = "SPIDER_FAKEAPI_LATENCY"


@contextmanager
def fake_api_server(
    directory: Path, latency: str = "measured", seed: int = 0, *, tls: bool = True
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """``python -m tests.fakeapi`` in its own process with the latency model ``latency`` (``off``, ``measured``,
    ``measured*F`` or JSON; ``tests/fakeapi/latency.py``), over HTTPS as a real API server unless not ``tls``:
    yields its kubeconfig and a dict that, once the ``with`` is over, holds what the server served (per request
    kind and code), the model's parameters and whether it spoke TLS."""
    kubeconfig, stats_file = directory / "fakeapi.kubeconfig", directory / "fakeapi-stats.json"
    cmd = [sys.executable, "-m", "tests.fakeapi", "--kubeconfig", str(kubeconfig), "--latency", latency]
    cmd += ["--seed", str(seed), "--stats", str(stats_file)] + (["--tls"] if tls else [])
    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(cmd, cwd=root)
    stats: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 30
        while not kubeconfig.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the fake API server did not start (exit code {process.poll()})")
            time.sleep(0.05)
        yield kubeconfig, stats
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if stats_file.exists():
            stats.update(json.loads(stats_file.read_text()), tls=tls)
