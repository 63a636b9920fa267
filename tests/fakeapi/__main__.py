"""``python -m tests.fakeapi``: the fake API server as a process of its own, for benchmarks and by hand.

Owns the command line: where to listen, where to write the kubeconfig (written once the server listens, so
its appearance means "ready"), and the latency model (``--latency``, default ``$SPIDER_FAKEAPI_LATENCY`` or
``measured``; ``off`` for none), and ``--tls``: HTTPS, as a real API server speaks, with a certificate from a
CA of its own, written beside the kubeconfig (``KUBECONFIG.ca.crt``) and named in it, so that clients pay for
TLS as they would.  Serves until SIGINT or SIGTERM; on the way out, prints what it served per request kind and
answer code as one JSON line on stdout (``--stats``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import ssl
import sys
from pathlib import Path

import trio
import trustme

from actors.runtime.heap import settle_heap
from tests.fakeapi.cluster import Cluster
from tests.fakeapi.latency import ENV, LatencyModel
from tests.fakeapi.server import FakeApiServer


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fakeapi", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (the kubeconfig names it)")
    parser.add_argument("--kubeconfig", type=Path, required=True, help="write a kubeconfig for the server here")
    parser.add_argument(
        "--latency",
        default=os.environ.get(ENV, "measured"),
        help=f"off | measured | measured*F | JSON (tests/fakeapi/latency.py); default ${ENV} or measured",
    )
    parser.add_argument("--jitter", type=float, default=None, help="fraction, e.g. 0.2 (measured's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stats", type=Path, default=None, help="write the served counts here as JSON on exit")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS (CA written to KUBECONFIG.ca.crt)")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace, server: FakeApiServer) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        partial = args.kubeconfig.with_name(args.kubeconfig.name + ".partial")
        ca_file = ca_path(args.kubeconfig) if server.ssl_context is not None else None
        server.kubeconfig(partial, ca_file=ca_file).replace(args.kubeconfig)  # NB: appears whole, once listening
        settle_heap()  # NB: kube-apiserver's collector runs beside its requests; ours stops them while it walks
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


def ca_path(kubeconfig: Path) -> Path:
    return kubeconfig.with_name(kubeconfig.name + ".ca.crt")


def server_tls(host: str, ca_file: Path) -> ssl.SSLContext:
    """A certificate for ``host`` from a new CA, whose certificate is written to ``ca_file``."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(host).configure_cert(context)
    ca.cert_pem.write_to_path(str(ca_file))
    return context


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    latency = LatencyModel.parse(args.latency, jitter=args.jitter, seed=args.seed)
    args.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
    tls = server_tls(args.host, ca_path(args.kubeconfig)) if args.tls else None
    server = FakeApiServer(Cluster.new(), host=args.host, port=args.port, latency=latency, ssl_context=tls)
    trio.run(serve, args, server)
    stats = {
        "latency": latency.describe(),
        "served": {f"{kind} {code}": n for (kind, code), n in sorted(server.served.items())},
        "served_by_resource": {
            f"{kind} {resource} {code}": n for (kind, resource, code), n in sorted(server.served_by_resource.items())
        },
        "writes": server.cluster.writes,
        "gzipped": server.gzipped,
    }
    if args.stats is not None:
        args.stats.write_text(json.dumps(stats, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
