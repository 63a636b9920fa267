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
  batches, writes, conflicts, largest batch) for ``spider loadtest`` and the benchmarks, and ``forwarded``:
  requests sent to the controller's pool host, ADDs' last looks it answered, the calls they took, requests
  served here as its fallback.

A request body that is not the JSON its schema says (not JSON, nested too deep, a field missing, of the wrong
type or over its bound: ``spider.limits``) is answered 400, with the same JSON string and ``X-Cni-Code``; what
the wire refuses (413, 431, 408, 400) carries an ``X-Cni-Code`` too, so the shims report a permanent error
with that code instead of "agent unreachable".

The socket belongs to one agent: ``open_unix_listener`` refuses a path another agent answers on, replaces a
stale socket file nobody answers on, and at shutdown removes only the socket it made.  Whoever can connect can
allocate and release addresses, so the socket is mode 0600 (the agent's user only), or 0660 with a group given
(``socket_group``: a name or a gid).  The mode is set between ``bind`` and ``listen``, when nothing can connect
yet whatever the umask made, and checked before the agent listens: a socket whose mode or group is not the one
asked for is refused (``SocketUnusable``), never served.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import socket as stdsocket
import stat
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

from actors.ipam.plugin import Plugin, PluginOutput
from actors.ipam.remote import ForwardStatistics, PoolForwarder
from actors.ipam.service import IpamService, add_response
from actors.node.coordinating import Coordinator
from actors.servers.httpserver import READ_TIMEOUT, HttpServer, Request, Response, json_response
from spider import cni, limits
from spider.errors import (
    AgentUnavailable,
    ConflictReleaseForbidden,
    DecodeFailure,
    MalformedRequest,
    SocketUnusable,
    SpiderError,
    TransientError,
)
from spider.ipam_request import AddRequest, DelRequest

log = logging.getLogger(__name__)


class ServedMetrics(Protocol):
    """The agent's metrics as the rest of the agent sees them (``actors.servers.metrics.AgentMetrics``, which
    reads this API's counters: named here by shape only, so neither module imports the other's)."""

    def render(self) -> bytes:
        """The exposition text of every family."""
        ...

    def add_source(self, source: Callable[[], Iterable[Any]]) -> None:
        """Serve the samples ``source`` returns at each scrape too."""
        ...


PROBE_TIMEOUT = 2.0
"""Seconds ``open_unix_listener`` waits for an existing socket to accept a connection."""
OWNER_ONLY = 0o600
"""The socket's mode without a group: only the agent's user (root, as the CNI runtime) may connect."""
OWNER_AND_GROUP = 0o660
"""The socket's mode with a group: the agent's user and that group's members may connect."""


def socket_group_id(group: str | int, path: str | Path = "") -> int:
    """The gid of ``group`` (a group name, or a gid as a number or digits); ``SocketUnusable`` for the socket at
    ``path`` when there is no such group."""
    if isinstance(group, int) or group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise SocketUnusable(path=str(path), reason=f"no group {group!r} to give it") from None


def error_response(exc: SpiderError, status: int = 500) -> Response:
    """Spiderpool's error shape: status 500 (or ``status``) and the message as a JSON string; plus the CNI code."""
    return json_response(status, str(exc), ("X-Cni-Code", str(exc.cni_code)))


def _status_of(exc: SpiderError) -> int:
    """The HTTP status of a domain error: Spiderpool's 500, but 400 for a malformed request and 521 or 522 for
    a forbidden conflict release."""
    if isinstance(exc, MalformedRequest):
        return 400
    if isinstance(exc, ConflictReleaseForbidden):
        return exc.http_status
    return 500


def wire_refusal(status: int, reason: str) -> Response:
    """The answer to a request the HTTP server refused (413, 431, 408, 400: undecodable, CNI code 6) or that
    failed on a bug (500: CNI code 11, as another agent or a restarted one may well serve it)."""
    if status >= 500:
        return json_response(status, reason, ("X-Cni-Code", str(TransientError.cni_code)))
    return error_response(DecodeFailure(what="HTTP request", reason=reason), status)


Route = Callable[[dict[str, list[str]], bytes], Awaitable[Response]]
"""A route's handler: query parameters and body in, an answer out."""


def _body(raw: bytes) -> Any:
    try:
        return limits.loads(raw or b"{}")
    except ValueError as exc:
        raise MalformedRequest(reason=f"request body is not JSON: {exc}") from None


@attrs.define
class AgentApi:
    """Routes requests to the IPAM service and the CNI plugin."""

    ipam: IpamService
    plugin: Plugin
    grace: float = 30.0
    """Seconds requests in flight may take to finish once the agent stops accepting."""
    read_timeout: float = READ_TIMEOUT
    """Seconds a client may take to send one request; an idle connection is closed after it."""
    requests: int = 0
    coordinator: Coordinator | None = None
    """The coordinator and ifacer plugins and ``GET /v1/coordinator/config`` (``None``: not served)."""
    metrics: ServedMetrics | None = None
    """The agent's metrics when they are served (more families: ``AgentMetrics.add_source``)."""
    metrics_port: int | None = None
    """The TCP port of ``GET /metrics`` when served."""
    _server: HttpServer = attrs.field(init=False)
    _routes: dict[tuple[str, str], Route] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._server = HttpServer(
            self.handle, "agent", read_timeout=self.read_timeout, grace=self.grace, refuse=wire_refusal
        )
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
        route = self.ipam.pools.route
        forwarded = attrs.asdict(route.stats if isinstance(route, PoolForwarder) else ForwardStatistics())
        answer = {"node": self.ipam.node, "requests": self.requests, "pools": pools, "forwarded": forwarded}
        return json_response(200, answer)

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
            raise MalformedRequest(reason="GetCoordinatorArgs must be a JSON object")
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
            return error_response(exc, _status_of(exc))

    @property
    def server(self) -> HttpServer:
        """The HTTP server (its counters say what it survived)."""
        return self._server

    async def serve(
        self,
        where: str | Path | trio.SocketListener,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on the unix socket (a path, or a listener ``open_unix_listener`` made) until
        ``stop_accepting``; then finish the requests in flight and remove the socket file if it is still ours."""
        listener = where if isinstance(where, trio.SocketListener) else await open_unix_listener(where)
        path, made = _socket_identity(listener)
        try:
            await self._server.serve([listener], task_status=task_status)
        finally:
            _remove_if_ours(path, made)

    def stop_accepting(self) -> None:
        """Close the listener; connections already accepted are served to the end."""
        self._server.stop_accepting("agent is shutting down")


async def open_unix_listener(
    path: str | Path, backlog: int = 4096, *, group: str | int | None = None
) -> trio.SocketListener:
    """A listener on a fresh unix socket at ``path``; ``SocketUnusable`` says why there can be none.

    A socket another process answers on is left alone (another agent serves it); a socket file nobody answers
    on (left by an agent that was killed) is replaced.  The directory is made when missing.  The socket is
    mode 0600, or 0660 owned by ``group`` (a name or a gid) when one is given, checked before it listens.
    """
    path = Path(path)
    gid = None if group is None else socket_group_id(group, path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SocketUnusable(path=str(path), reason=f"cannot make its directory: {exc.strerror or exc}") from None
    if path.is_symlink() or (path.exists() and not path.is_socket()):
        raise SocketUnusable(path=str(path), reason="the path exists and is not a socket")
    if path.is_socket():
        if await _answers(path):
            raise SocketUnusable(path=str(path), reason="another agent serves this socket (it accepts connections)")
        log.info("replacing the stale socket %s (nothing answers on it)", path)
        path.unlink(missing_ok=True)
    sock = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    try:
        await sock.bind(os.fspath(path))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:  # another agent bound it between our probe and our bind
            raise SocketUnusable(path=str(path), reason="another agent serves this socket (it was just made)") from None
        raise SocketUnusable(path=str(path), reason=exc.strerror or str(exc)) from None
    made: tuple[int, int] | None = None
    try:
        bound = os.lstat(path)
        made = (bound.st_dev, bound.st_ino)
        # NB: bound but not listening: a connect is refused whatever mode the umask gave, so there is no window
        _restrict(path, gid)
        sock.listen(backlog)
    except BaseException as exc:
        sock.close()
        _remove_if_ours(str(path), made)
        if isinstance(exc, OSError):
            raise SocketUnusable(path=str(path), reason=exc.strerror or str(exc)) from None
        raise
    mode = OWNER_ONLY if gid is None else OWNER_AND_GROUP
    log.info("socket %s made with mode %04o%s", path, mode, "" if gid is None else f", group {gid}")
    return trio.SocketListener(sock)


def _restrict(path: Path, gid: int | None) -> None:
    """Give the socket just bound at ``path`` its mode (and group), then check it; ``SocketUnusable`` if not so.

    The group bits are set only after the group is, so no other group is ever let in.
    """
    os.chmod(path, OWNER_ONLY)
    if gid is not None:
        os.chown(path, -1, gid)
        os.chmod(path, OWNER_AND_GROUP)
    info = os.lstat(path)
    want = OWNER_ONLY if gid is None else OWNER_AND_GROUP
    if not stat.S_ISSOCK(info.st_mode) or stat.S_IMODE(info.st_mode) != want:
        raise SocketUnusable(path=str(path), reason=f"its mode is {stat.S_IMODE(info.st_mode):04o}, not {want:04o}")
    if gid is not None and info.st_gid != gid:
        raise SocketUnusable(path=str(path), reason=f"its group is {info.st_gid}, not {gid}")


async def _answers(path: Path) -> bool:
    """Whether a process accepts connections on the unix socket ``path``."""
    probe = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    with probe:
        with trio.move_on_after(PROBE_TIMEOUT):
            try:
                await probe.connect(os.fspath(path))
            except (ConnectionRefusedError, FileNotFoundError):
                return False
            except OSError as exc:  # EAGAIN: its backlog is full, so someone is there
                return exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
            return True
    return True  # it neither accepts nor refuses: a live process too busy to answer


def close_unix_listener(listener: trio.SocketListener) -> None:
    """Close a listener ``open_unix_listener`` made but never served, and remove its socket file if it is still
    the one it made (serving does both itself at its end: then this does nothing)."""
    if listener.socket.fileno() == -1:
        return
    path, made = _socket_identity(listener)
    listener.socket.close()
    _remove_if_ours(path, made)


def _socket_identity(listener: trio.SocketListener) -> tuple[str, tuple[int, int] | None]:
    """The path of a unix listener and the (device, inode) of the file it made there."""
    path = listener.socket.getsockname()
    path = path.decode() if isinstance(path, bytes) else str(path)
    try:
        info = os.stat(path)
    except OSError:
        return path, None
    return path, (info.st_dev, info.st_ino)


def _remove_if_ours(path: str, made: tuple[int, int] | None) -> None:
    """Remove the socket file at shutdown unless it is no longer the one we made (another agent's now)."""
    try:
        info = os.stat(path)
    except OSError:
        return
    if made == (info.st_dev, info.st_ino):
        os.unlink(path)
