"""Pools that overlap (written with the optional webhook off, or two creates racing): an address one pool holds
is never handed out by another, also while the holder is being deleted or its spec no longer parses (a typo in
its ``ips``: nobody allocates from it, but its pods keep their addresses).  The SubnetActor and admission count
such a pool's addresses too, and a subnet's unreadable status never stops admission."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.ipam.subnet import SubnetRegistry
from actors.runtime.supervisor import Supervisor
from actors.stores.sqlite import SqliteStore
from spider.addr import IPSet
from spider.errors import InvalidSpec
from spider.overlap import Footprint
from spider.reconcile import subnet_status
from spider.validation import mutate, validate
from tests.ipam.test_semantics import add, addresses, pod, records
from tests.ipam.test_subnet_actor import manual_pool, subnet_object
from tests.support import RunningAgent, pool_object

LISTED = 1.2
"""Seconds after which the agent lists the pools again (its cache keeps a listing for a second)."""


def finalized(obj: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"]["finalizers"] = ["spiderpool.spidernet.io"]
    return obj


async def test_a_pool_being_deleted_keeps_its_addresses_from_an_overlapping_pool(agent: RunningAgent) -> None:
    raw = agent.store.inner  # type: ignore[attr-defined]  # NB: kubectl, the optional webhook off
    await raw.create(finalized(pool_object("left", "10.25.0.0/24", ["10.25.0.10-10.25.0.11"])))
    await agent.apply(pod("a"), pod("b"), pod("c"))
    assert addresses((await add(agent, "a", defaultIPv4IPPool=["left"]))[1]) == ["10.25.0.10/24"]
    await raw.create(finalized(pool_object("right", "10.25.0.0/24", ["10.25.0.10-10.25.0.12"])))
    await trio.sleep(LISTED)
    assert addresses((await add(agent, "b", defaultIPv4IPPool=["right"]))[1]) == ["10.25.0.12/24"]
    await agent.store.delete("SpiderIPPool", "left")  # Terminating while pod a holds 10.25.0.10
    assert "10.25.0.10" in await records(agent, "left")
    await trio.sleep(LISTED)
    status, answer = await add(agent, "c", defaultIPv4IPPool=["right"])
    assert status != 200, f"10.25.0.10 or .11 handed to pod c: {answer}"  # NB: once 10.25.0.10, pod a's


async def test_a_pool_whose_spec_no_longer_parses_keeps_its_addresses_from_an_overlapping_pool(
    agent: RunningAgent,
) -> None:
    raw = agent.store.inner  # type: ignore[attr-defined]
    await raw.create(finalized(pool_object("left", "10.26.0.0/24", ["10.26.0.10-10.26.0.11"])))
    await agent.apply(pod("a"), pod("c"))
    assert addresses((await add(agent, "a", defaultIPv4IPPool=["left"]))[1]) == ["10.26.0.10/24"]
    await raw.create(finalized(pool_object("right", "10.26.0.0/24", ["10.26.0.10-10.26.0.12"])))
    typo = await raw.get("SpiderIPPool", "left")
    typo["spec"]["ips"] = ["10.26.0.10-10.26.0.11", "10.26.0.300"]
    await raw.update(typo)
    await trio.sleep(LISTED)
    status, answer = await add(agent, "c", defaultIPv4IPPool=["right"])
    assert (status, addresses(answer)) == (200, ["10.26.0.12/24"])


def test_the_footprint_of_a_pool_that_does_not_parse_is_its_parseable_ranges_and_its_records() -> None:
    obj = pool_object("left", "10.26.0.0/24", ["10.26.0.10-10.26.0.11", "10.26.0.300"])
    obj["status"] = {"allocatedIPs": json.dumps({"10.26.0.40": {"pod": "default/a", "podUid": "u"}})}
    footprint = Footprint.of(obj)
    assert footprint is not None
    assert (footprint.name, footprint.ips.to_strings()) == ("left", ["10.26.0.10-10.26.0.11", "10.26.0.40"])
    assert Footprint.of({"spec": {"subnet": "nonsense"}}) is None
    assert Footprint.of({"spec": "nonsense"}) is None


HELD = json.dumps({"10.6.0.1": {"pod": "default/a", "podUid": "uid-a", "nic": "eth0"}})


async def test_a_manual_pool_with_a_typo_keeps_its_addresses_from_the_subnets_auto_pools(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "store.db")
    try:
        await store.create(subnet_object())  # s4: 10.6.0.0/24, ips 10.6.0.1-10.6.0.10
        created = await store.create(manual_pool("manual", "10.6.0.0/24", ["10.6.0.1-10.6.0.2"]))
        await store.update_status({**created, "status": {"allocatedIPs": HELD, "allocatedIPCount": 1}})
        sub = await store.get("SpiderSubnet", "s4")
        entry = {"manual": {"ips": ["10.6.0.1-10.6.0.2"]}}
        await store.update_status({**sub, "status": {"controlledIPPools": json.dumps(entry)}})
        typo = await store.get("SpiderIPPool", "manual")
        typo["spec"]["ips"] = ["10.6.0.1-10.6.0.2", "10.6.0.300"]
        await store.update(typo)
        sub = await store.get("SpiderSubnet", "s4")
        await store.update_status({**sub, "status": subnet_status(sub, [typo]) or sub["status"]})
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                handle = SubnetRegistry(store, Supervisor(nursery)).get("s4")
                claimed = await handle.claim("auto4-app", "apps_v1_Deployment_ns_app", 2, IPSet(4))
                nursery.cancel_scope.cancel(reason="test over")
        assert claimed.to_strings() == ["10.6.0.3-10.6.0.4"]  # NB: once 10.6.0.1-10.6.0.2, pod a's among them
        auto = mutate("SpiderIPPool", manual_pool("auto4-app", "10.6.0.0/24", ["10.6.0.1-10.6.0.2"]))
        with pytest.raises(InvalidSpec, match="overlap with IPPool manual"):
            validate("SpiderIPPool", auto, None, [typo, await store.get("SpiderSubnet", "s4")])
    finally:
        await store.aclose()


@pytest.mark.parametrize("unreadable", ["{not json", "[1, 2]"])
async def test_a_subnet_whose_status_does_not_parse_can_still_be_edited(agent: RunningAgent, unreadable: str) -> None:
    subnet = {"apiVersion": "spiderpool.spidernet.io/v2beta1", "kind": "SpiderSubnet", "metadata": {"name": "s"},
              "spec": {"subnet": "10.31.0.0/24", "ips": ["10.31.0.10-10.31.0.50"]}}  # fmt: skip
    await agent.apply(subnet)
    obj = await agent.store.get("SpiderSubnet", "s")
    await agent.store.update_status({**obj, "status": {"controlledIPPools": unreadable}})
    obj = await agent.store.get("SpiderSubnet", "s")
    obj["spec"]["ips"] = ["10.31.0.10-10.31.0.40"]
    # NB: once an unhandled JSONDecodeError or AttributeError, in the store layer and the webhook alike; an
    # unreadable status records no pool, so nothing it lists is lost by the edit
    await agent.store.update(obj)
    assert (await agent.store.get("SpiderSubnet", "s"))["spec"]["ips"] == ["10.31.0.10-10.31.0.40"]
