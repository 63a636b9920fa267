"""How an API server serves per-pod writes under contention: ``--objects`` SpiderEndpoint creates, then their
deletes, ``--concurrent`` at a time from one ``KubeStore``, against the fake API server of ``tests/fakeapi``
(latency model ``measured``) or, with ``--kubeconfig``, a real one.

    python -m bench.store_contention [--objects 1000] [--concurrent 10] [--latency MODEL] [--kubeconfig FILE]
                                     [--json FILE]

A real kube-apiserver v1.24 with etcd 3.4 on this kind of machine (2 cores, loopback) created 1,000
SpiderEndpoints in 1.2 s and deleted them in 1.0 s with 10 concurrent requests, a create's median 11 ms
(``REAL_SERVER``; the design's notes), where one create alone takes about 3 ms: under contention the server's
own work queues the requests.  The fake is faithful only if it shows the same; each row prints the ratio of the
phase's wall time to the real server's.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import trio

from actors.stores.kube import KubeStore
from bench.common import Result, fake_api_server, stats_ms
from spider.kinds import SPIDER_API_VERSION

NAMESPACE = "default"
REAL_SERVER = {"create": {"wall_s": 1.2, "p50_ms": 11.0}, "delete": {"wall_s": 1.0}}
"""kube-apiserver v1.24 + etcd 3.4, 2 cores, 1,000 objects, 10 concurrent (the figures this bench compares to)."""


async def phase(store: KubeStore, verb: str, names: list[str], concurrent: int) -> dict[str, float]:
    """Every name's create (or delete), ``concurrent`` at a time: wall time and each request's latency."""
    latencies: list[float] = []
    pending: Iterator[str] = iter(names)

    async def worker() -> None:
        for name in pending:
            began = time.perf_counter()
            if verb == "create":
                body = {"apiVersion": SPIDER_API_VERSION, "kind": "SpiderEndpoint"}
                await store.create({**body, "metadata": {"name": name, "namespace": NAMESPACE}})
            else:
                await store.delete("SpiderEndpoint", name, NAMESPACE)
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrent):
            nursery.start_soon(worker)
    return {"wall_s": round(time.perf_counter() - began, 3), **stats_ms(latencies)}


async def run(kubeconfig: Path, objects: int, concurrent: int, result: Result) -> None:
    store = await KubeStore.open(kubeconfig)
    names = [f"spider-contention-{secrets.token_hex(4)}-{i}" for i in range(objects)]
    try:
        for verb in ("create", "delete"):
            row = await phase(store, verb, names, concurrent)
            real = REAL_SERVER[verb]["wall_s"]
            result.add(
                verb=verb,
                objects=objects,
                concurrent=concurrent,
                **row,
                real_wall_s=real,
                vs_real=round(row["wall_s"] / real, 2),
            )
    finally:
        with trio.CancelScope(shield=True):
            for name in names:  # NB: a phase that failed half-way leaves objects behind on a real server
                with contextlib.suppress(Exception):
                    await store.delete("SpiderEndpoint", name, NAMESPACE)
            await store.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.store_contention", description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--concurrent", type=int, default=10)
    parser.add_argument("--latency", default="measured", help="the fake's latency model (tests/fakeapi/latency.py)")
    parser.add_argument("--kubeconfig", type=Path, default=None, help="a real API server instead of the fake")
    parser.add_argument("--json", default=None, metavar="FILE")
    args = parser.parse_args(argv)
    target = str(args.kubeconfig) if args.kubeconfig else f"the fake API server, latency model {args.latency}"
    result = Result(f"Per-pod writes under contention ({target})", "python -m bench.store_contention")
    with contextlib.ExitStack() as stack:
        kubeconfig = args.kubeconfig
        if kubeconfig is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="spider-contention-")))
            kubeconfig, _served = stack.enter_context(fake_api_server(directory, args.latency))
        trio.run(run, kubeconfig, args.objects, args.concurrent, result)
    result.finish(args.json, server=target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
