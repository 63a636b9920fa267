"""How stored objects look to people: kubectl-like tables for ``spider get`` and the demo.

Owns the columns per kind (pools with their free count, endpoints one row per NIC, names for the rest) and a
console that keeps tables wide when piped.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from actors.stores.port import Obj
from spider.endpoint import Endpoint
from spider.errors import SpiderError
from spider.kinds import kind_info
from spider.pool import PoolLedger, ReservedIP, reserved_set


def _pool_row(obj: Obj, reserved: Sequence[ReservedIP]) -> list[str]:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    try:
        ledger = PoolLedger.from_object(obj)
        ledger = PoolLedger(ledger.pool, ledger.records, reserved_set(ledger.pool.version, reserved))
        free = str(ledger.free)
    except SpiderError:
        free = "?"
    return [
        obj["metadata"]["name"],
        str(spec.get("ipVersion") or ("6" if ":" in str(spec.get("subnet", "")) else "4")),
        str(spec.get("subnet", "")),
        str(status.get("allocatedIPCount", 0)),
        str(status.get("totalIPCount", len(ledger.pool.total) if free != "?" else "")),
        free,
        str(bool(spec.get("default", False))).lower(),
        str(bool(spec.get("disable", False))).lower(),
    ]


def _endpoint_rows(obj: Obj) -> list[list[str]]:
    ep = Endpoint.from_object(obj)
    return [
        [
            ep.namespace,
            ep.name,
            n.interface,
            n.ipv4_pool or "",
            n.ipv4 or "",
            n.ipv6_pool or "",
            n.ipv6 or "",
            ep.node,
        ]
        for n in ep.nics
    ] or [[ep.namespace, ep.name, "", "", "", "", "", ep.node]]


def print_table(console: Console, kind: str, items: Sequence[Obj], reserved: Sequence[ReservedIP] = ()) -> None:
    """kubectl-like columns for the kinds people look at most; names for the rest."""
    if kind == "SpiderIPPool":
        headers = [
            "NAME",
            "VERSION",
            "SUBNET",
            "ALLOCATED-IP-COUNT",
            "TOTAL-IP-COUNT",
            "FREE",
            "DEFAULT",
            "DISABLE",
        ]
        rows = [_pool_row(o, reserved) for o in items]
    elif kind == "SpiderEndpoint":
        headers = ["NAMESPACE", "NAME", "INTERFACE", "IPV4POOL", "IPV4", "IPV6POOL", "IPV6", "NODE"]
        rows = [row for o in items for row in _endpoint_rows(o)]
    else:
        headers = ["NAMESPACE", "NAME", "CREATED"] if kind_info(kind).namespaced else ["NAME", "CREATED"]
        rows = [
            ([o["metadata"].get("namespace", "")] if kind_info(kind).namespaced else [])
            + [o["metadata"]["name"], o["metadata"].get("creationTimestamp", "")]
            for o in items
        ]
    table = Table(*headers, box=None, pad_edge=False, header_style="bold")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def console() -> Console:
    """A console that does not squeeze tables to 80 columns when piped."""
    return Console(width=None if sys.stdout.isatty() else 120)
