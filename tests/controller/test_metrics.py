"""The controller's ``GET /metrics`` (port 5721), on each store: the GC's releases after a real one, the pool and
subnet totals and their debug gauges while leading, nothing of the leader's from a standby, off by default."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import trio

from actors.controller.leader import LeaderElector
from actors.controller.main import ControllerSettings, open_controller
from actors.ipam.pool import PoolRegistry
from actors.ipam.service import IpamService
from actors.runtime.supervisor import Supervisor
from actors.servers.metrics import MetricsSettings
from actors.stores.port import Store
from actors.stores.validating import ValidatingStore
from tests.controller.support import eventually, pool, subnet
from tests.controller.test_controller import ready, settings
from tests.controller.test_gc import FAST, NODE, add, pod, released, running
from tests.controller.test_leader import candidate
from tests.servers.test_metrics import scrape, value

TIMEOUT = 30
METRICS = MetricsSettings(enabled=True, debug=True, host="127.0.0.1", port=0)


async def test_a_gc_release_and_the_pool_totals_are_scraped_from_the_leader(
    private_store: Store, tmp_path: Path
) -> None:
    store = private_store
    lease = f"lease-{secrets.token_hex(3)}"
    await store.create(pool("gc", ips=["10.6.0.10-10.6.0.20"]))
    await store.create(subnet("s1"))
    with trio.fail_after(TIMEOUT):
        async with open_controller(settings(tmp_path, "a", lease, gc=FAST, metrics=METRICS), store) as controller:
            await eventually(ready(controller), within=TIMEOUT)
            port = controller.metrics_port
            assert port is not None
            async with trio.open_nursery() as agent:  # an agent's IPAM service on the same store
                ipam = IpamService(store, PoolRegistry(store, Supervisor(agent)), NODE)
                created = await running(store, pod("lost"))
                ip = await add(ipam, created)
                await store.delete("Pod", "lost", "default", grace_seconds=0)  # the node died: no CNI DEL ever comes
                await eventually(released(store, ip), within=TIMEOUT, what="the address released by the GC")
                agent.cancel_scope.cancel()
            assert controller.gc is not None
            # NB: the auto pools' controller writes pool specs through admission, as an API client would
            assert controller.applications is not None
            assert isinstance(controller.applications.store, ValidatingStore)

            async def subnet_counted_and_release_done() -> bool:  # NB: the GC counts once the endpoint is dropped
                got = await scrape(port)
                subnet_pools = got.get("spiderpool_debug_subnet_ippool_counts", {}).get((("SpiderSubnet", "s1"),))
                return subnet_pools == 1 and got.get("spider_gc_released_total", {}).get((), 0) >= 1

            await eventually(subnet_counted_and_release_done, within=TIMEOUT, what="the subnet's pool counted")
            got = await scrape(port)
            gc = controller.gc
            host = controller.pool_host  # an API server store only

    # NB: the leader keeps working between the scrape and its end: a counter read afterwards may have grown
    if host is not None:
        assert value(got, "spider_pool_host_batches_total") <= host.batches
        assert value(got, "spider_pool_host_refused_total") <= host.refused
    else:
        assert "spider_pool_host_batches_total" not in got

    assert 1 <= value(got, "spiderpool_ip_gc_counts_total") == value(got, "spider_gc_released_total") <= gc.released
    failures = value(got, "spiderpool_ip_gc_failure_counts_total")
    assert failures == value(got, "spider_gc_failures_total") <= gc.failures
    assert 1 <= value(got, "spider_gc_scans_total") <= gc.scans
    assert value(got, "spiderpool_total_ippool_counts") == 1
    assert value(got, "spiderpool_total_subnet_counts") == 1
    assert value(got, "spiderpool_debug_ippool_total_ip_counts", SpiderIPPool="gc") == 11
    assert value(got, "spiderpool_debug_ippool_available_ip_counts", SpiderIPPool="gc") == 11  # its one came back
    assert value(got, "spiderpool_debug_subnet_total_ip_counts", SpiderSubnet="s1") == 100
    assert value(got, "spiderpool_debug_subnet_available_ip_counts", SpiderSubnet="s1") == 100 - 11


async def test_a_standby_serves_its_metrics_without_the_leaders_totals(private_store: Store, tmp_path: Path) -> None:
    store = private_store
    lease = f"lease-{secrets.token_hex(3)}"
    await store.create(pool("p1"))
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            other = LeaderElector(store, settings(tmp_path, "other", lease).leader_settings())
            await nursery.start(candidate, other, trio.sleep_forever)

            async def leading() -> bool:
                return other.leading

            await eventually(leading, within=TIMEOUT)
            async with open_controller(settings(tmp_path, "b", lease, metrics=METRICS), store) as standby:
                await eventually(ready(standby), within=TIMEOUT)
                assert standby.metrics_port is not None
                got = await scrape(standby.metrics_port)
            nursery.cancel_scope.cancel()
    assert "spiderpool_total_ippool_counts" not in got
    assert "spiderpool_debug_ippool_total_ip_counts" not in got
    assert value(got, "spiderpool_ip_gc_counts_total") == 0


def test_the_controllers_metrics_are_off_by_default_on_port_5721(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_IP", raising=False)
    assert ControllerSettings().metrics == MetricsSettings(enabled=False, debug=False, host=None, port=5721)
