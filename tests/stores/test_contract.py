"""The ``Store`` contract: Kubernetes' semantics, checked against every backend in ``conftest.BACKENDS``.

Only the port is used here, so the same tests can run against the fake API server or a real cluster.  Names
carry a per-test suffix and every object a per-test ``test-run`` label, so a shared cluster is fine too.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
import trio

from actors.stores.port import (
    AlreadyExists,
    Conflict,
    Gone,
    Invalid,
    NotFound,
    Obj,
    Store,
    WatchEvent,
    meta,
)
from spider.errors import InvalidInput
from spider.kinds import SPIDER_API_VERSION
from spider.pool import Owner, PoolLedger
from tests.stores.conftest import Backend, take

TIMEOUT = 10  # seconds; an absolute bound on every test's I/O


@pytest.fixture
def run() -> str:
    """A suffix unique to this test, for names and the ``test-run`` label."""
    return secrets.token_hex(3)


def pool(run: str, name: str = "pool", *, labels: dict[str, str] | None = None, **fields: Any) -> Obj:
    """A SpiderIPPool (cluster scoped, with a status subresource)."""
    return {
        "apiVersion": SPIDER_API_VERSION,
        "kind": "SpiderIPPool",
        "metadata": {"name": f"{name}-{run}", "labels": {"test-run": run, **(labels or {})}},
        "spec": {"subnet": "10.6.0.0/16", "ips": ["10.6.0.10-10.6.0.20"]},
        **fields,
    }


def endpoint(run: str, name: str = "pod", namespace: str | None = None, **fields: Any) -> Obj:
    """A SpiderEndpoint (namespaced, no status subresource)."""
    m: dict[str, Any] = {"name": f"{name}-{run}", "labels": {"test-run": run}}
    if namespace is not None:
        m["namespace"] = namespace
    return {"apiVersion": SPIDER_API_VERSION, "kind": "SpiderEndpoint", "metadata": m, **fields}


def rv(obj: Obj) -> int:
    return int(meta(obj)["resourceVersion"])


def summary(events: list[WatchEvent]) -> list[tuple[str, str]]:
    return [(e.type, meta(e.object)["name"]) for e in events]


# --- create / get / list -----------------------------------------------------------------------------------


async def test_create_fills_in_what_the_server_owns(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        created = await store.create(pool(run))
        m = meta(created)
        assert m["name"] == f"pool-{run}"
        assert m["uid"]
        assert m["resourceVersion"]
        assert m["generation"] == 1
        assert m["creationTimestamp"].endswith("Z")
        assert created["apiVersion"] == SPIDER_API_VERSION
        assert await store.get("SpiderIPPool", m["name"]) == created


async def test_create_fills_api_version_from_the_kind(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        obj = pool(run)
        del obj["apiVersion"]
        assert (await store.create(obj))["apiVersion"] == SPIDER_API_VERSION


async def test_create_does_not_touch_the_callers_object(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        obj = pool(run)
        await store.create(obj)
        assert obj == pool(run)


async def test_get_returns_a_copy_the_caller_may_mutate(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        created = await store.create(pool(run))
        got = await store.get("SpiderIPPool", meta(created)["name"])
        got["spec"]["ips"].append("10.6.0.99")
        meta(got)["labels"]["x"] = "y"
        assert await store.get("SpiderIPPool", meta(created)["name"]) == created


async def test_get_metadata_is_the_objects_metadata_as_stored_now(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        created = await store.create(pool(run))
        name = meta(created)["name"]
        assert await store.get_metadata("SpiderIPPool", name) == meta(created)
        written = await store.update_status({**created, "status": {"allocatedIPCount": 1}})
        assert await store.get_metadata("SpiderIPPool", name) == meta(written) != meta(created)
        ep = await store.create(endpoint(run, namespace="default"))
        assert await store.get_metadata("SpiderEndpoint", meta(ep)["name"], "default") == meta(ep)
        with pytest.raises(NotFound):
            await store.get_metadata("SpiderIPPool", f"nope-{run}")
        with pytest.raises(NotFound):
            await store.get_metadata("SpiderEndpoint", meta(ep)["name"], "kube-system")


async def test_create_of_a_taken_name_raises_already_exists(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        first = await store.create(pool(run))
        with pytest.raises(AlreadyExists):
            await store.create(pool(run, spec={"subnet": "10.7.0.0/16"}))
        assert await store.get("SpiderIPPool", meta(first)["name"]) == first


async def test_create_without_a_name_is_invalid(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        obj = pool(run)
        del meta(obj)["name"]
        with pytest.raises(Invalid):
            await store.create(obj)


async def test_create_with_generate_name_picks_a_fresh_name(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        obj = pool(run)
        del meta(obj)["name"]
        meta(obj)["generateName"] = f"auto-{run}-"
        a, b = await store.create(obj), await store.create(obj)
        assert meta(a)["name"].startswith(f"auto-{run}-")
        assert meta(a)["name"] != meta(b)["name"]


@pytest.mark.parametrize(("name", "prefix"), [("Upper_Case And Space", ""), ("", "Bad/Prefix_"), ("", "x" * 250)])
async def test_create_of_a_name_that_is_no_dns_subdomain_is_invalid(
    store: Store, run: str, name: str, prefix: str
) -> None:
    """As the API server (422); the embedded store once kept such names, and one made by a long generateName
    could never be updated again (its finalizer never removed)."""
    with trio.fail_after(TIMEOUT):
        obj = pool(run)
        meta(obj)["name"] = f"{name}-{run}" if name else ""
        if prefix:
            meta(obj)["generateName"] = prefix
        with pytest.raises(Invalid):
            await store.create(obj)


async def test_create_of_a_number_json_has_not_is_refused(store: Store, run: str) -> None:
    """A stray ``.nan`` from YAML: not JSON, so no API server stores it; the embedded store once did, and every
    ``get_metadata`` of the object failed from then on."""
    with trio.fail_after(TIMEOUT):
        with pytest.raises((Invalid, InvalidInput)):
            await store.create(pool(run, spec={"subnet": "10.7.0.0/16", "note": float("nan")}))
        with pytest.raises(NotFound):
            await store.get("SpiderIPPool", f"pool-{run}")


async def test_removing_the_last_finalizer_deletes_with_the_last_stored_state(store: Store, run: str) -> None:
    """The API server never stores the update that empties the finalizers of an object being deleted: the
    DELETED event carries the object as last stored (finalizers and all), the answer the version it had."""
    with trio.fail_after(TIMEOUT):
        obj = pool(run)
        meta(obj)["finalizers"] = ["example.com/hold"]
        name = meta(await store.create(obj))["name"]
        await store.delete("SpiderIPPool", name)
        marked = await store.get("SpiderIPPool", name)
        start = meta(marked)["resourceVersion"]
        meta(marked)["finalizers"] = []
        answer = await store.update(marked)
        (event,) = await take(store.watch("SpiderIPPool", resource_version=start), 1)
        assert (event.type, meta(event.object).get("finalizers")) == ("DELETED", ["example.com/hold"])
        assert int(meta(event.object)["resourceVersion"]) > int(start)
        assert meta(answer)["resourceVersion"] == start
        with pytest.raises(NotFound):
            await store.get("SpiderIPPool", name)


async def test_create_with_a_resource_version_is_invalid(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        obj = pool(run)
        meta(obj)["resourceVersion"] = "5"
        with pytest.raises(Invalid):
            await store.create(obj)


async def test_create_with_a_bad_label_is_invalid(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        with pytest.raises(Invalid):
            await store.create(pool(run, labels={"bad key!": "x"}))
        with pytest.raises(NotFound):
            await store.get("SpiderIPPool", f"pool-{run}")


OWNER = {"apiVersion": "v1", "kind": "Namespace", "name": "default", "uid": "u-1", "controller": True}


@pytest.mark.parametrize(
    "refs",
    ["x", ["junk"], [1], [{**OWNER, "apiVersion": None}], [{**OWNER, "uid": ""}], [OWNER, {**OWNER, "uid": "2"}]],
)
async def test_create_with_owner_references_the_api_server_refuses_is_invalid(
    store: Store, run: str, refs: Any
) -> None:
    # NB: the embedded store once took them, and one such NAD stopped the controller's multus reconciler
    with trio.fail_after(TIMEOUT):
        obj = pool(run)
        obj["metadata"]["ownerReferences"] = refs
        with pytest.raises(Invalid):
            await store.create(obj)
        with pytest.raises(NotFound):
            await store.get("SpiderIPPool", f"pool-{run}")


async def test_create_drops_the_status_of_a_kind_with_a_status_subresource(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        created = await store.create(pool(run, status={"allocatedIPCount": 3}))
        assert "status" not in created
        assert "status" not in await store.get("SpiderIPPool", meta(created)["name"])


async def test_missing_objects_raise_not_found(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        with pytest.raises(NotFound):
            await store.get("SpiderIPPool", f"nope-{run}")
        with pytest.raises(NotFound):
            await store.update(pool(run, "nope"))
        with pytest.raises(NotFound):
            await store.update_status(pool(run, "nope", status={"allocatedIPCount": 1}))
        with pytest.raises(NotFound):
            await store.delete("SpiderIPPool", f"nope-{run}")


async def test_unknown_kind_is_invalid_input(store: Store) -> None:
    with trio.fail_after(TIMEOUT), pytest.raises(InvalidInput):
        await store.get("NoSuchKind", "x")


async def test_list_returns_the_kind_and_the_current_version(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        a = await store.create(pool(run, "a"))
        b = await store.create(pool(run, "b"))
        await store.create(endpoint(run))
        listing = await store.list("SpiderIPPool", label_selector=f"test-run={run}")
        assert sorted(listing.items, key=lambda o: meta(o)["name"]) == [a, b]
        assert int(listing.resource_version) >= rv(b)


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", {"blue", "green", "plain"}),
        ("color=blue", {"blue"}),
        ("color==blue", {"blue"}),
        ("color!=blue", {"green", "plain"}),
        ("color in (blue, green)", {"blue", "green"}),
        ("color notin (blue)", {"green", "plain"}),
        ("color", {"blue", "green"}),
        ("!color", {"plain"}),
        ("color,tier=db", {"green"}),
        ("color=red", set()),
    ],
)
async def test_list_filters_by_label_selector(store: Store, run: str, selector: str, expected: set[str]) -> None:
    with trio.fail_after(TIMEOUT):
        await store.create(pool(run, "blue", labels={"color": "blue"}))
        await store.create(pool(run, "green", labels={"color": "green", "tier": "db"}))
        await store.create(pool(run, "plain"))
        full = f"test-run={run},{selector}" if selector else f"test-run={run}"
        listing = await store.list("SpiderIPPool", label_selector=full)
        assert {meta(o)["name"].removesuffix(f"-{run}") for o in listing.items} == expected


async def test_list_with_a_malformed_selector_raises_invalid_input(store: Store) -> None:
    with trio.fail_after(TIMEOUT), pytest.raises(InvalidInput):
        await store.list("SpiderIPPool", label_selector="a in (b")


def unscheduled_pod(run: str, name: str, scheduler: str) -> Obj:
    """A Pod for a scheduler that does not run: it stays Pending and bound to no node, so a real server deletes
    it at once (a Pod bound to a node without a kubelet would stay Terminating)."""
    containers = [{"name": "c", "image": "registry.k8s.io/pause:3.9"}]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{name}-{run}", "namespace": "default", "labels": {"test-run": run}},
            "spec": {"schedulerName": scheduler, "containers": containers}}  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ("spec.schedulerName=one-{run}", {"a", "c"}),
        ("spec.schedulerName==one-{run}", {"a", "c"}),
        ("spec.schedulerName!=one-{run}", {"b"}),
        ("spec.schedulerName=one-{run},metadata.name!=c-{run}", {"a"}),
        ("metadata.namespace=default,metadata.name=b-{run}", {"b"}),
        ("spec.nodeName=", {"a", "b", "c"}),
        ("spec.nodeName=node-1", set()),
    ],
)
async def test_list_filters_by_field_selector(store: Store, run: str, fields: str, expected: set[str]) -> None:
    with trio.fail_after(TIMEOUT):
        for name, scheduler in (("a", "one"), ("b", "two"), ("c", "one")):
            await store.create(unscheduled_pod(run, name, f"{scheduler}-{run}"))
        try:
            listing = await store.list(
                "Pod", namespace="default", label_selector=f"test-run={run}", field_selector=fields.format(run=run)
            )
        finally:
            for name in "abc":
                await store.delete("Pod", f"{name}-{run}", "default")
    assert {meta(o)["name"].removesuffix(f"-{run}") for o in listing.items} == expected


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("Pod", "spec.containers=x"),
        ("SpiderIPPool", "spec.subnet=10.6.0.0/16"),
        ("SpiderIPPool", "metadata.namespace=default"),
        ("Pod", "spec.nodeName"),
    ],
    ids=[
        "not-selectable-for-pods",
        "not-selectable-for-a-custom-resource",
        "no-namespace-when-cluster-scoped",
        "malformed",
    ],
)
async def test_list_by_a_field_its_kind_cannot_be_selected_by_raises_invalid_input(
    store: Store, kind: str, fields: str
) -> None:
    with trio.fail_after(TIMEOUT), pytest.raises(InvalidInput):
        await store.list(kind, field_selector=fields)


# --- scope -------------------------------------------------------------------------------------------------


async def test_namespaced_objects_default_to_the_default_namespace(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        created = await store.create(endpoint(run))
        assert meta(created)["namespace"] == "default"
        assert await store.get("SpiderEndpoint", meta(created)["name"], "default") == created


async def test_same_name_in_two_namespaces_is_two_objects(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        a = await store.create(endpoint(run, namespace="ns-a"))
        b = await store.create(endpoint(run, namespace="ns-b"))
        assert meta(a)["uid"] != meta(b)["uid"]
        assert await store.get("SpiderEndpoint", f"pod-{run}", "ns-a") == a
        with pytest.raises(NotFound):
            await store.get("SpiderEndpoint", f"pod-{run}", "ns-c")
        in_a = await store.list("SpiderEndpoint", namespace="ns-a", label_selector=f"test-run={run}")
        assert in_a.items == [a]
        everywhere = await store.list("SpiderEndpoint", label_selector=f"test-run={run}")
        assert sorted(meta(o)["namespace"] for o in everywhere.items) == ["ns-a", "ns-b"]


async def test_cluster_scoped_objects_have_no_namespace(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        created = await store.create(pool(run))
        assert not meta(created).get("namespace")
        assert await store.get("SpiderIPPool", meta(created)["name"]) == created


# --- update ------------------------------------------------------------------------------------------------


async def test_update_with_a_stale_version_conflicts_and_changes_nothing(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        created = await store.create(pool(run))
        winner = dict(created, spec={"subnet": "10.6.0.0/16", "ips": ["10.6.0.30"]})
        latest = await store.update(winner)
        loser = dict(created, spec={"subnet": "10.6.0.0/16", "ips": ["10.6.0.40"]})
        with pytest.raises(Conflict):
            await store.update(loser)
        assert await store.get("SpiderIPPool", meta(created)["name"]) == latest


async def test_update_with_a_version_no_store_could_have_given_is_invalid(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):  # NB: kube-apiserver answers 500 for it: not an outage to wait out
        created = await store.create(pool(run))
        made_up = dict(created, metadata=dict(meta(created), resourceVersion="not-a-version"))
        with pytest.raises(Invalid, match="not-a-version"):
            await store.update(dict(made_up, spec={"subnet": "10.6.0.0/16", "ips": ["10.6.0.30"]}))
        assert await store.get("SpiderIPPool", meta(created)["name"]) == created


async def test_update_without_a_version_wins(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        created = await store.create(pool(run))
        await store.update(dict(created, spec={"subnet": "10.6.0.0/16", "ips": ["10.6.0.30"]}))
        blind = pool(run, spec={"subnet": "10.6.0.0/16", "ips": ["10.6.0.50"]})
        updated = await store.update(blind)
        assert updated["spec"]["ips"] == ["10.6.0.50"]
        assert meta(updated)["uid"] == meta(created)["uid"]


async def test_update_keeps_uid_and_creation_timestamp(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        created = await store.create(pool(run))
        changed = pool(run, labels={"x": "y"})
        meta(changed)["creationTimestamp"] = "2000-01-01T00:00:00Z"
        updated = await store.update(changed)
        assert meta(updated)["uid"] == meta(created)["uid"]
        assert meta(updated)["creationTimestamp"] == meta(created)["creationTimestamp"]


async def test_update_carrying_the_uid_of_a_previous_incarnation_is_invalid(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        old = await store.create(pool(run))
        await store.delete("SpiderIPPool", meta(old)["name"])
        new = await store.create(pool(run))
        del meta(old)["resourceVersion"]
        with pytest.raises(Invalid):
            await store.update(dict(old, spec={"subnet": "10.7.0.0/16"}))
        assert await store.get("SpiderIPPool", meta(new)["name"]) == new


async def test_update_that_changes_nothing_keeps_the_version(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        created = await store.create(pool(run))
        assert await store.update(created) == created


async def test_update_ignores_status_of_a_kind_with_a_status_subresource(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        created = await store.create(pool(run))
        with_status = await store.update_status(dict(created, status={"allocatedIPCount": 1}))
        updated = await store.update(
            dict(
                with_status,
                spec={"subnet": "10.6.0.0/16", "ips": ["10.6.0.30"]},
                status={"allocatedIPCount": 9},
            )
        )
        assert updated["status"] == {"allocatedIPCount": 1}
        assert updated["spec"]["ips"] == ["10.6.0.30"]


async def test_update_status_ignores_spec_and_metadata(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        created = await store.create(pool(run))
        sent = dict(created, spec={"subnet": "10.9.0.0/16"}, status={"allocatedIPCount": 2})
        sent["metadata"] = dict(meta(created), labels={"sneaky": "yes"})
        updated = await store.update_status(sent)
        assert updated["status"] == {"allocatedIPCount": 2}
        assert updated["spec"] == created["spec"]
        assert meta(updated)["labels"] == meta(created)["labels"]
        assert rv(updated) > rv(created)


async def test_update_status_with_a_stale_version_conflicts(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        created = await store.create(pool(run))
        await store.update_status(dict(created, status={"allocatedIPCount": 1}))
        with pytest.raises(Conflict):
            await store.update_status(dict(created, status={"allocatedIPCount": 2}))
        assert (await store.get("SpiderIPPool", meta(created)["name"]))["status"] == {"allocatedIPCount": 1}


async def test_generation_follows_spec_not_status_or_metadata(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        created = await store.create(pool(run))
        relabelled = await store.update(pool(run, labels={"x": "y"}))
        assert meta(relabelled)["generation"] == 1
        with_status = await store.update_status(dict(relabelled, status={"allocatedIPCount": 1}))
        assert meta(with_status)["generation"] == 1
        respecced = await store.update(dict(with_status, spec={"subnet": "10.7.0.0/16"}))
        assert meta(respecced)["generation"] == 2
        assert meta(created)["generation"] == 1


def endpoint_status(uid: str) -> dict[str, Any]:
    """A SpiderEndpoint status that the CRD's schema accepts (a real API server checks it), with every field
    the schema defaults given (``vlan``), as our IPAM service writes it: an API server fills in absent defaulted
    fields (``vlan: 0``) and the embedded store does not, so only a status without absent defaults reads back
    the same from every backend.  (``tests/stores/test_kube.py`` checks the defaulting itself.)"""
    return {
        "current": {"uid": uid, "node": "node-1", "ips": [{"interface": "eth0", "vlan": 0}]},
        "ownerControllerType": "Pod",
        "ownerControllerName": "web",
    }


async def test_a_pool_status_as_the_pool_actors_write_it_reads_back_whole(store: Store, run: str) -> None:
    """Every field of a pool's status the ledger writes (ours included: ``releasedIPs``, ``freeIPCount``) is in
    the CRD's schema, so an API server, which prunes what its schema does not list, keeps all of it."""
    with trio.fail_after(TIMEOUT):
        created = await store.create(pool(run))
        ledger = PoolLedger.from_object(created)
        for n in (1, 2):
            ledger.allocate(Owner(f"uid-{n}", "eth0", "default", f"pod-{n}", f"ctr-{n}", "node-1", 1765000000.5))
        ledger.release(("uid-1", "eth0"), "ctr-1", now=1765000100.25)
        status = ledger.to_status()
        assert {"allocatedIPs", "releasedIPs", "freeIPCount"} <= set(status)
        written = await store.update_status(dict(created, status=status))
        assert written["status"] == status
        assert (await store.get("SpiderIPPool", meta(created)["name"]))["status"] == status


async def test_kind_without_status_subresource_writes_status_with_update(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        created = await store.create(endpoint(run, status=endpoint_status("u1")))
        assert created["status"] == endpoint_status("u1")
        updated = await store.update(dict(created, status=endpoint_status("u2")))
        assert updated["status"] == endpoint_status("u2")
        assert (await store.get("SpiderEndpoint", meta(created)["name"]))["status"] == endpoint_status("u2")


async def test_update_status_of_a_kind_without_status_subresource_is_invalid(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        created = await store.create(endpoint(run, status=endpoint_status("u1")))
        with pytest.raises(Invalid):
            await store.update_status(dict(created, status=endpoint_status("u2")))


async def test_resource_version_strictly_increases(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        versions = []
        obj = await store.create(pool(run))
        versions.append(rv(obj))
        obj = await store.update(dict(obj, spec={"subnet": "10.7.0.0/16"}))
        versions.append(rv(obj))
        obj = await store.update_status(dict(obj, status={"allocatedIPCount": 1}))
        versions.append(rv(obj))
        other = await store.create(endpoint(run))
        versions.append(rv(other))
        meta(obj)["finalizers"] = ["spiderpool.spidernet.io"]
        obj = await store.update(obj)
        versions.append(rv(obj))
        await store.delete("SpiderIPPool", meta(obj)["name"])
        versions.append(rv(await store.get("SpiderIPPool", meta(obj)["name"])))
        assert versions == sorted(set(versions))


# --- delete and finalizers ---------------------------------------------------------------------------------


async def test_delete_removes_an_object_without_finalizers(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        created = await store.create(pool(run))
        await store.delete("SpiderIPPool", meta(created)["name"])
        with pytest.raises(NotFound):
            await store.get("SpiderIPPool", meta(created)["name"])
        with pytest.raises(NotFound):
            await store.delete("SpiderIPPool", meta(created)["name"])


async def test_delete_of_an_object_with_finalizers_only_marks_it(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        name = f"pool-{run}"
        await store.create(pool(run, metadata={"name": name, "finalizers": ["spiderpool.spidernet.io"]}))
        await store.delete("SpiderIPPool", name)
        marked = await store.get("SpiderIPPool", name)
        assert meta(marked)["deletionTimestamp"]
        await store.delete("SpiderIPPool", name)
        assert await store.get("SpiderIPPool", name) == marked  # the mark is set once


async def test_removing_the_last_finalizer_of_a_marked_object_removes_it(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        name = f"pool-{run}"
        await store.create(pool(run, metadata={"name": name, "finalizers": ["a.example/x", "b.example/y"]}))
        await store.delete("SpiderIPPool", name)
        marked = await store.get("SpiderIPPool", name)
        meta(marked)["finalizers"] = ["b.example/y"]
        marked = await store.update(marked)
        assert meta(marked)["deletionTimestamp"]
        meta(marked)["finalizers"] = []
        await store.update(marked)
        with pytest.raises(NotFound):
            await store.get("SpiderIPPool", name)


async def test_update_keeps_the_deletion_timestamp(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        name = f"pool-{run}"
        await store.create(pool(run, metadata={"name": name, "finalizers": ["a.example/x"]}))
        await store.delete("SpiderIPPool", name)
        marked = await store.get("SpiderIPPool", name)
        del meta(marked)["deletionTimestamp"]
        updated = await store.update(dict(marked, spec={"subnet": "10.7.0.0/16"}))
        assert meta(updated)["deletionTimestamp"]


async def test_no_new_finalizer_on_an_object_being_deleted(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        name = f"pool-{run}"
        await store.create(pool(run, metadata={"name": name, "finalizers": ["a.example/x"]}))
        await store.delete("SpiderIPPool", name)
        marked = await store.get("SpiderIPPool", name)
        meta(marked)["finalizers"] = ["a.example/x", "b.example/y"]
        with pytest.raises(Invalid):
            await store.update(marked)


async def test_delete_with_a_stale_version_conflicts(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        created = await store.create(pool(run))
        updated = await store.update(dict(created, spec={"subnet": "10.7.0.0/16"}))
        with pytest.raises(Conflict):
            await store.delete("SpiderIPPool", meta(created)["name"], resource_version=meta(created)["resourceVersion"])
        assert await store.get("SpiderIPPool", meta(created)["name"]) == updated
        await store.delete("SpiderIPPool", meta(created)["name"], resource_version=meta(updated)["resourceVersion"])
        with pytest.raises(NotFound):
            await store.get("SpiderIPPool", meta(created)["name"])


# --- watch -------------------------------------------------------------------------------------------------


async def test_watch_sees_added_modified_deleted_in_order(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        start = await store.list("SpiderIPPool")
        events = store.watch("SpiderIPPool", resource_version=start.resource_version)
        created = await store.create(pool(run))
        updated = await store.update(dict(created, spec={"subnet": "10.7.0.0/16"}))
        await store.delete("SpiderIPPool", meta(created)["name"])
        seen = await take(events, 3)
        assert [e.type for e in seen] == ["ADDED", "MODIFIED", "DELETED"]
        assert seen[0].object == created
        assert seen[1].object == updated
        assert meta(seen[2].object)["name"] == meta(created)["name"]
        assert rv(seen[2].object) > rv(updated)


async def test_watch_sees_only_its_kind(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        start = await store.list("SpiderIPPool")
        events = store.watch("SpiderIPPool", resource_version=start.resource_version)
        await store.create(endpoint(run))
        await store.create(pool(run))
        assert summary(await take(events, 1)) == [("ADDED", f"pool-{run}")]


async def test_watch_runs_concurrently_with_writes(store: Store, run: str) -> None:
    seen: list[WatchEvent] = []

    async def watcher(rv: str) -> None:
        seen.extend(await take(store.watch("SpiderIPPool", resource_version=rv), 5))

    with trio.fail_after(TIMEOUT):
        start = await store.list("SpiderIPPool")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher, start.resource_version)
            for i in range(5):
                await store.create(pool(run, f"p{i}"))
                await trio.sleep(0.01)
        assert summary(seen) == [("ADDED", f"p{i}-{run}") for i in range(5)]


async def test_watch_from_an_old_version_replays(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        created = await store.create(pool(run))
        await store.update(dict(created, spec={"subnet": "10.7.0.0/16"}))
        await store.delete("SpiderIPPool", meta(created)["name"])
        seen = await take(store.watch("SpiderIPPool", resource_version=meta(created)["resourceVersion"]), 2)
        assert [e.type for e in seen] == ["MODIFIED", "DELETED"]


async def test_watch_from_now_skips_the_past(store: Store, run: str) -> None:
    seen: list[WatchEvent] = []

    async def watcher(done: trio.CancelScope) -> None:
        seen.extend(await take(store.watch("SpiderIPPool"), 1))
        done.cancel()

    with trio.fail_after(TIMEOUT):
        await store.create(pool(run, "old"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher, nursery.cancel_scope)
            # NB: "now" is fixed when the watch starts iterating, at a moment we cannot see; so keep making
            # new objects until the watch reports one.  What it must never report is the old one.
            for i in range(1000):
                await trio.sleep(0.05)
                await store.create(pool(run, f"new{i}"))
        assert [e.type for e in seen] == ["ADDED"]
        assert meta(seen[0].object)["name"].startswith("new")


async def test_watch_from_zero_starts_with_the_current_objects(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        a = await store.create(pool(run, "a"))
        await store.update(dict(a, spec={"subnet": "10.7.0.0/16"}))
        await store.create(pool(run, "b"))
        events = store.watch("SpiderIPPool", label_selector=f"test-run={run}", resource_version="0")
        first = await take(events, 2)
        assert sorted(summary(first)) == [("ADDED", f"a-{run}"), ("ADDED", f"b-{run}")]


async def test_watch_from_a_compacted_version_is_gone(backend: Backend, store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        created = await store.create(pool(run))
        await store.update(dict(created, spec={"subnet": "10.7.0.0/16"}))
        await backend.compact(store)
        with pytest.raises(Gone):
            await take(store.watch("SpiderIPPool", resource_version=meta(created)["resourceVersion"]), 1)
        # The recovery: re-list, then watch from the list's version.
        listing = await store.list("SpiderIPPool")
        events = store.watch("SpiderIPPool", resource_version=listing.resource_version)
        await store.delete("SpiderIPPool", meta(created)["name"])
        assert summary(await take(events, 1)) == [("DELETED", f"pool-{run}")]


async def test_watch_filters_by_namespace(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        start = await store.list("SpiderEndpoint")
        events = store.watch("SpiderEndpoint", namespace="ns-b", resource_version=start.resource_version)
        await store.create(endpoint(run, "a", namespace="ns-a"))
        await store.create(endpoint(run, "b", namespace="ns-b"))
        assert summary(await take(events, 1)) == [("ADDED", f"b-{run}")]


async def test_watch_with_a_selector_sees_objects_enter_and_leave(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        start = await store.list("SpiderIPPool")
        events = store.watch(
            "SpiderIPPool",
            label_selector=f"test-run={run},color=blue",
            resource_version=start.resource_version,
        )
        obj = await store.create(pool(run, labels={"color": "red"}))  # not selected: nothing
        meta(obj)["labels"]["color"] = "blue"
        obj = await store.update(obj)  # enters: ADDED
        obj = await store.update(dict(obj, spec={"subnet": "10.7.0.0/16"}))  # MODIFIED
        meta(obj)["labels"]["color"] = "green"
        obj = await store.update(obj)  # leaves: DELETED
        await store.delete("SpiderIPPool", meta(obj)["name"])  # not selected any more: nothing
        await store.create(pool(run, "last", labels={"color": "blue"}))
        seen = await take(events, 4)
        assert summary(seen) == [
            ("ADDED", f"pool-{run}"),
            ("MODIFIED", f"pool-{run}"),
            ("DELETED", f"pool-{run}"),
            ("ADDED", f"last-{run}"),
        ]


async def test_watch_sees_the_finalizer_dance(store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        start = await store.list("SpiderIPPool")
        events = store.watch("SpiderIPPool", resource_version=start.resource_version)
        name = f"pool-{run}"
        await store.create(pool(run, metadata={"name": name, "finalizers": ["a.example/x"]}))
        await store.delete("SpiderIPPool", name)
        marked = await store.get("SpiderIPPool", name)
        meta(marked)["finalizers"] = []
        await store.update(marked)
        seen = await take(events, 3)
        assert [e.type for e in seen] == ["ADDED", "MODIFIED", "DELETED"]
        assert meta(seen[1].object)["deletionTimestamp"]


async def test_watch_with_a_malformed_version_or_selector_fails(store: Store) -> None:
    with trio.fail_after(TIMEOUT):
        with pytest.raises(Invalid):
            await take(store.watch("SpiderIPPool", resource_version="yesterday"), 1)
        with pytest.raises(InvalidInput):
            await take(store.watch("SpiderIPPool", label_selector="a in"), 1)


# --- several clients ---------------------------------------------------------------------------------------


async def test_a_second_client_sees_the_first_clients_writes(backend: Backend, store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        other = await backend.open()
        created = await store.create(pool(run))
        assert await other.get("SpiderIPPool", meta(created)["name"]) == created
        updated = await other.update(dict(created, spec={"subnet": "10.7.0.0/16"}))
        with pytest.raises(Conflict):
            await store.update(dict(created, spec={"subnet": "10.8.0.0/16"}))
        assert await store.get("SpiderIPPool", meta(created)["name"]) == updated


async def test_a_second_clients_watch_sees_the_first_clients_writes(backend: Backend, store: Store, run: str) -> None:
    with trio.fail_after(TIMEOUT):
        other = await backend.open()
        start = await other.list("SpiderIPPool")
        events = other.watch("SpiderIPPool", resource_version=start.resource_version)
        created = await store.create(pool(run))
        await store.delete("SpiderIPPool", meta(created)["name"])
        assert summary(await take(events, 2)) == [("ADDED", f"pool-{run}"), ("DELETED", f"pool-{run}")]
