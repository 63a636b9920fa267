"""The agent's HTTP/1.1 API over its unix socket: Spiderpool's agent API plus the shims' endpoints.

Owns the routes, JSON bodies and the mapping of errors to HTTP statuses; the connections themselves are
``actors.servers.httpserver``'s, on a unix listener made here.

- Spiderpool-compatible paths and schemas (reference §4.2, §4.3), so any client written against Spiderpool's
  agent works: ``GET /v1/ipam/healthy``, ``POST|DELETE /v1/ipam/ip``, ``POST|DELETE /v1/ipam/ips``,
  ``GET /v1/workloadendpoint``, and with a NodeActor ``GET /v1/coordinator/config``.  Errors are a JSON
  string body with status 500, as Spiderpool answers; we add an ``X-Cni-Code`` header with the CNI code.
- Ours: ``POST /v1/cni`` takes a whole forwarded plugin invocation (environment and stdin) from the stdlib
  shim and answers with the plugin's stdout and an ``X-Cni-Exit`` header (``/v1/cni/coordinator`` and
  ``/v1/cni/ifacer`` likewise); ``GET /v1/spider/stats`` reports the pool actors' counters (requests,
  batches, writes, conflicts, largest batch) for ``spider loadtest`` and the benchmarks.
"""

from __future__ import annotations

import json
import logging
import os
import socket as stdsocket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from actors.ipam.plugin import Plugin, PluginOutput
from actors.ipam.service import IpamService, add_response
from actors.node.coordinating import Coordinator
from actors.servers.httpserver import HttpServer, Request, Response, json_response
from spider import cni
from spider.errors import AgentUnavailable, InvalidInput, SpiderError, TransientError
from spider.ipam_request import AddRequest, DelRequest

log = logging.getLogger(__name__)


def error_response(exc: SpiderError) -> Response:
    """Spiderpool's error shape: status 500 and the message as a JSON string; plus the CNI code."""
    return json_response(500, str(exc), ("X-Cni-Code", str(exc.cni_code)))


Route = Callable[[dict[str, list[str]], bytes], Awaitable[Response]]
"""A route's handler: query parameters and body in, an answer out."""


def _body(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"{}")
    except ValueError as exc:
        raise InvalidInput(reason=f"request body is not JSON: {exc}") from None


@attrs.define
class AgentApi:
    """Routes requests to the IPAM service and the CNI plugin."""

    ipam: IpamService
    plugin: Plugin
    grace: float = 30.0
    """Seconds requests in flight may take to finish once the agent stops accepting."""
    requests: int = 0
    coordinator: Coordinator | None = None
    """The coordinator and ifacer plugins and ``GET /v1/coordinator/config`` (``None``: not served)."""
    _server: HttpServer = attrs.field(init=False)
    _routes: dict[tuple[str, str], Route] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._server = HttpServer(self.handle, "agent", grace=self.grace)
        self._routes = self.routes()

    def routes(self) -> dict[tuple[str, str], Route]:
        """``(method, path) -> handler``."""
        return {
            ("GET", "/v1/ipam/healthy"): self._healthy,
            ("POST", "/v1/ipam/ip"): self._add,
            ("DELETE", "/v1/ipam/ip"): self._delete,
            ("POST", "/v1/ipam/ips"): self._batch_add,
            ("DELETE", "/v1/ipam/ips"): self._batch_delete,
            ("GET", "/v1/workloadendpoint"): self._endpoint,
            ("POST", "/v1/cni"): self._cni,
            ("POST", "/v1/cni/coordinator"): self._coordinator_cni,
            ("POST", "/v1/cni/ifacer"): self._ifacer_cni,
            ("GET", "/v1/coordinator/config"): self._coordinator_config,
            ("GET", "/v1/spider/stats"): self._stats,
        }

    async def _healthy(self, query: dict[str, list[str]], body: bytes) -> Response:
        return Response(200)

    async def _stats(self, query: dict[str, list[str]], body: bytes) -> Response:
        # Ours (not Spiderpool's): what the group commit did, for ``spider loadtest`` and the benchmarks.
        pools = self.ipam.pools.statistics()
        return json_response(200, {"node": self.ipam.node, "requests": self.requests, "pools": pools})

    async def _add(self, query: dict[str, list[str]], body: bytes) -> Response:
        results = await self.ipam.allocate(AddRequest.from_api(_body(body)))
        return json_response(200, add_response(results))

    async def _delete(self, query: dict[str, list[str]], body: bytes) -> Response:
        await self.ipam.release(DelRequest.from_api(_body(body)))
        return Response(200)

    async def _batch_add(self, query: dict[str, list[str]], body: bytes) -> Response:
        # Spiderpool declares this path and answers 200 without doing anything; so do we.
        return Response(200)

    async def _batch_delete(self, query: dict[str, list[str]], body: bytes) -> Response:
        await self.ipam.release_ips(DelRequest.from_api(_body(body), batch=True))
        return Response(200)

    async def _endpoint(self, query: dict[str, list[str]], body: bytes) -> Response:
        namespace = (query.get("podNamespace") or [""])[0]
        name = (query.get("podName") or [""])[0]
        if not namespace or not name:
            return json_response(400, "podNamespace and podName are required")
        endpoint = await self.ipam.endpoint(namespace, name)
        if endpoint is None:
            return json_response(404, f"SpiderEndpoint not found for pod {namespace}/{name}")
        return json_response(200, endpoint.to_api())

    async def _cni(self, query: dict[str, list[str]], body: bytes) -> Response:
        try:
            env, stdin = cni.split_forwarded(body)
        except SpiderError as exc:
            out = cni.render(cni.error_from("", exc))
            return Response(200, out, (("X-Cni-Exit", "1"),))
        result = await self.plugin.handle(env, stdin)
        return Response(200, result.stdout, (("X-Cni-Exit", str(result.exit_code)),))

    def _coordinating(self) -> Coordinator:
        if self.coordinator is None:
            raise AgentUnavailable(reason="this agent runs without a NodeActor (no coordinator)")
        return self.coordinator

    async def _coordinator_config(self, query: dict[str, list[str]], body: bytes) -> Response:
        # Spiderpool's GET with a body (GetCoordinatorArgs); query parameters work too.
        args = _body(body)
        if not isinstance(args, dict):
            raise InvalidInput(reason="GetCoordinatorArgs must be a JSON object")
        namespace = str(args.get("podNamespace") or (query.get("podNamespace") or [""])[0])
        name = str(args.get("podName") or (query.get("podName") or [""])[0])
        config = await self._coordinating().cluster_config(namespace, name)
        return json_response(200, config.to_api())

    async def _forwarded(
        self, body: bytes, serve: Callable[[dict[str, str], bytes], Awaitable[PluginOutput]]
    ) -> Response:
        try:
            env, stdin = cni.split_forwarded(body)
        except SpiderError as exc:
            return Response(200, cni.render(cni.error_from("", exc)), (("X-Cni-Exit", "1"),))
        result = await serve(env, stdin)
        return Response(200, result.stdout, (("X-Cni-Exit", str(result.exit_code)),))

    async def _coordinator_cni(self, query: dict[str, list[str]], body: bytes) -> Response:
        return await self._forwarded(body, self._coordinating().handle)

    async def _ifacer_cni(self, query: dict[str, list[str]], body: bytes) -> Response:
        return await self._forwarded(body, self._coordinating().handle_ifacer)

    async def handle(self, request: Request) -> Response:
        """Route one request; domain errors become error responses, bugs propagate."""
        self.requests += 1
        handler = self._routes.get((request.method, request.path))
        if handler is None:
            known = any(path == request.path for _, path in self._routes)
            return json_response(405 if known else 404, f"no route for {request.method} {request.path}")
        try:
            return await handler(request.query, request.body)
        except SpiderError as exc:
            if not isinstance(exc, TransientError):
                log.info("%s %s: %s", request.method, request.path, exc)
            return error_response(exc)

    async def serve(self, path: str | Path, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on the unix socket until ``stop_accepting``; then finish the requests in flight."""
        listener = await open_unix_listener(path)
        try:
            await self._server.serve([listener], task_status=task_status)
        finally:
            Path(path).unlink(missing_ok=True)  # noqa: ASYNC240  (one unlink at shutdown, no await needed)

    def stop_accepting(self) -> None:
        """Close the listener; connections already accepted are served to the end."""
        self._server.stop_accepting("agent is shutting down")


async def open_unix_listener(path: str | Path, backlog: int = 4096) -> trio.SocketListener:
    """A listener on a fresh unix socket; a stale socket file from a crashed agent is removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        path.unlink()
    sock = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    await sock.bind(os.fspath(path))
    sock.listen(backlog)
    return trio.SocketListener(sock)
