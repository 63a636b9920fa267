"""A small HTTP/1.1 server on h11 and trio, for the controller's health and admission-webhook endpoints.

Owns the wire only: reading one request at a time per connection (keep-alive allowed), bounding how long a
client may take to send it and how large its body may be, and writing the handler's ``Response``.  It serves
any trio listeners, so the same code runs plain TCP (health, port 5720) and TLS (webhook, port 5722, through
``trio.SSLListener``).  It knows nothing of routes or JSON schemas: the handler does.

The agent's unix-socket API (``actors.servers.agent_api``) serves through it too, with the graceful drain it needs:
``stop_accepting`` closes the listeners at once and gives the requests in flight ``grace`` seconds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import h11
import trio

log = logging.getLogger(__name__)

MAX_BODY = 4 * 1024 * 1024
"""Largest request body accepted; an AdmissionReview of the largest pool is far below this."""
READ_TIMEOUT = 30.0
"""Seconds a client may take to send one request (TLS handshake included)."""


@attrs.frozen
class Request:
    """One HTTP request, body read whole."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    """Header names in lower case; a repeated header keeps its last value."""
    body: bytes


@attrs.frozen
class Response:
    """An HTTP answer."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/json"


def json_response(status: int, obj: Any, *headers: tuple[str, str]) -> Response:
    """A JSON answer, with extra headers if given."""
    return Response(status, json.dumps(obj, separators=(",", ":")).encode(), headers)


Handler = Callable[[Request], Awaitable[Response]]


@attrs.define
class HttpServer:
    """Serves ``handler`` on listeners; run with ``await nursery.start(server.serve, listeners)``."""

    handler: Handler
    name: str = "http"
    read_timeout: float = READ_TIMEOUT
    max_body: int = MAX_BODY
    grace: float = 30.0
    """Seconds the requests in flight may take to finish after ``stop_accepting``."""
    _accepting: trio.CancelScope = attrs.field(factory=trio.CancelScope)

    async def serve(
        self,
        listeners: Sequence[trio.abc.Listener[Any]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections until cancelled or ``stop_accepting``; each one is served in its own task."""
        async with trio.open_nursery() as connections:
            with self._accepting:
                async with trio.open_nursery() as acceptors:
                    for listener in listeners:
                        acceptors.start_soon(self._accept, listener, connections)
                    task_status.started()
            # The listeners are closed (new clients are refused at once); the last requests get their grace.
            connections.cancel_scope.deadline = trio.current_time() + self.grace

    def stop_accepting(self, reason: str = "shutting down") -> None:
        """Close the listeners; connections already accepted are served to the end (within ``grace``)."""
        self._accepting.cancel(reason=reason)

    async def _accept(self, listener: trio.abc.Listener[Any], connections: trio.Nursery) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:  # EMFILE and friends: back off instead of spinning or dying
                    log.warning("%s: accept failed: %s", self.name, exc)
                    await trio.sleep(0.1)
                    continue
                connections.start_soon(self._connection, stream)

    async def _connection(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            async with stream:
                while True:
                    with trio.move_on_after(self.read_timeout):
                        request = await self._read(stream, conn)
                    if request is None:  # closed, or too slow
                        return
                    response = await self.handler(request)
                    await _send(stream, conn, response)
                    if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                        return
                    conn.start_next_cycle()
        except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # NB: a failed TLS handshake (a client that does not trust our CA) lands here too.
            log.debug("%s: connection dropped: %s", self.name, exc)

    async def _read(self, stream: trio.abc.Stream, conn: h11.Connection) -> Request | None:
        head: Any = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.max_body:
                    raise h11.RemoteProtocolError("request body too large")
            elif isinstance(event, h11.EndOfMessage):
                url = urlsplit(head.target.decode())
                return Request(
                    method=head.method.decode(),
                    path=url.path,
                    query=parse_qs(url.query),
                    headers={k.decode().lower(): v.decode() for k, v in head.headers},
                    body=bytes(body),
                )
            elif isinstance(event, h11.ConnectionClosed):
                return None


async def _send(stream: trio.abc.Stream, conn: h11.Connection, response: Response) -> None:
    headers = [
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(response.body))),
        *response.headers,
    ]
    data = conn.send(h11.Response(status_code=response.status, headers=headers))
    data += conn.send(h11.Data(data=response.body)) if response.body else b""
    data += conn.send(h11.EndOfMessage())
    await stream.send_all(data)


def bound_port(listener: trio.abc.Listener[Any]) -> int:
    """The TCP port a (possibly TLS-wrapped) listener is bound to; useful after binding port 0."""
    while isinstance(listener, trio.SSLListener):
        listener = listener.transport_listener
    if not isinstance(listener, trio.SocketListener):
        raise TypeError(f"not a socket listener: {listener!r}")
    port: int = listener.socket.getsockname()[1]
    return port
