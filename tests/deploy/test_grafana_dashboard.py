"""deploy/grafana/ipam-dashboard.json: every query names a metric a running agent or controller exports, and the
panels the IPAM dashboard promises are there."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any

import trio

from actors.controller.main import open_controller
from actors.servers.metrics import MetricsSettings
from actors.stores.sqlite import SqliteStore
from tests.controller.support import eventually, pool, subnet
from tests.controller.test_controller import ready, settings
from tests.deploy.files import DEPLOY
from tests.servers.test_agent_api import add_args, del_args
from tests.servers.test_metrics import metered_agent, scrape
from tests.support import http_call

DASHBOARD = DEPLOY / "grafana" / "ipam-dashboard.json"
OURS = re.compile(r"\b(?:spiderpool|spider|rdma)_[a-zA-Z0-9_]+")
TIMEOUT = 30


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


async def exported_names(tmp_path: Path) -> set[str]:
    """The sample names of a scrape of an agent after an ADD and a DEL, and of a leading controller with a pool
    and a subnet, both with the debug metrics."""
    names: set[str] = set()
    async with metered_agent(debug=True) as agent:
        await http_call(agent.socket, "POST", "/v1/ipam/ip", add_args("web-0", "uid-0", "c0"))
        await http_call(agent.socket, "DELETE", "/v1/ipam/ip", del_args("web-0", "uid-0", "c0"))
        names |= set(await scrape(agent.port))
    store = await SqliteStore.open(tmp_path / "controller.db")
    try:
        await store.create(pool("p1"))
        await store.create(subnet("s1"))
        metrics = MetricsSettings(enabled=True, debug=True, host="127.0.0.1", port=0)
        lease = f"lease-{secrets.token_hex(3)}"
        async with open_controller(settings(tmp_path, "a", lease, metrics=metrics), store) as controller:
            await eventually(ready(controller), within=TIMEOUT)
            assert controller.metrics_port is not None
            names |= set(await scrape(controller.metrics_port))
    finally:
        await store.aclose()
    return names


async def test_every_query_of_the_dashboard_names_a_metric_we_export(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    with trio.fail_after(TIMEOUT):
        exported = await exported_names(tmp_path)
    used = {name for expr in expressions(dashboard) for name in OURS.findall(expr)}
    assert used, "the dashboard queries nothing of ours"
    assert used - exported == set()
    # the counters are queried with the _total the exposition gives them
    assert "spiderpool_ipam_allocation_counts_total" in used


def test_the_dashboard_shows_what_ipam_operators_alert_on() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = {panel["title"] for panel in dashboard["panels"]}
    for wanted in (
        "Allocation rate",
        "Allocation failures by reason",
        "Allocation latency",
        "Release rate",
        "Write conflicts",
        "Pool usage",
        "IP GC",
    ):
        assert wanted in titles
    exprs = " ".join(expressions(dashboard))
    assert "histogram_quantile(0.99, sum by (le) (rate(spiderpool_ipam_allocation_duration_seconds_bucket" in exprs
    assert "histogram_quantile(0.5, sum by (le) (rate(spiderpool_ipam_allocation_duration_seconds_bucket" in exprs
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        refs = [target["refId"] for target in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]
