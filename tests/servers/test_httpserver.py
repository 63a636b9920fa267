"""The HTTP server's own guarantees, on plain TCP: an accept loop outlives an unexpected error on the same
listener, a handler's bug is one 500 on one connection, and the bounds answer with their status."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import trio.testing

from actors.servers.httpserver import HttpServer, Request, Response, bound_port

TIMEOUT = 10


@attrs.define
class FlakyListener(trio.abc.Listener[trio.SocketStream]):
    """A TCP listener whose first ``accept`` fails with an error no one planned for."""

    inner: trio.SocketListener
    failures: int = 1

    async def accept(self) -> trio.SocketStream:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("an unexpected failure in accept")
        return await self.inner.accept()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def handler(request: Request) -> Response:
    if request.path == "/bug":
        raise KeyError("a bug in a handler")
    return Response(200, request.path.encode())


@asynccontextmanager
async def serving(listener: trio.abc.Listener[Any], **options: Any) -> AsyncIterator[HttpServer]:
    server = HttpServer(handler, name="test", **options)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, [listener])
        yield server
        nursery.cancel_scope.cancel(reason="test over")


async def get(port: int, raw: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw)
        await stream.send_eof()
        out = b""
        while chunk := await stream.receive_some(65536):
            out += chunk
        return out


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()


async def test_an_unexpected_error_in_the_accept_loop_leaves_the_listener_serving() -> None:
    (tcp,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    with trio.fail_after(TIMEOUT):
        async with serving(FlakyListener(tcp)) as server:
            reply = await get(bound_port(tcp), request("/after"))
    assert reply.startswith(b"HTTP/1.1 200")
    assert reply.endswith(b"/after")
    assert server.accept_errors == 1


async def test_a_handlers_bug_is_a_500_on_its_connection_and_the_server_serves_on() -> None:
    (tcp,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = bound_port(tcp)
    with trio.fail_after(TIMEOUT):
        async with serving(tcp) as server:
            assert (await get(port, request("/bug"))).startswith(b"HTTP/1.1 500")
            assert (await get(port, request("/fine"))).startswith(b"HTTP/1.1 200")
    assert server.connection_errors == 1


async def test_a_request_with_a_body_over_the_limit_gets_a_413_it_can_read_over_tcp() -> None:
    (tcp,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = bound_port(tcp)
    with trio.fail_after(TIMEOUT):
        async with serving(tcp, max_body=1000):
            head = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1500\r\n\r\n"
            assert (await get(port, head + b"x" * 1500)).startswith(b"HTTP/1.1 413")
            chunked = b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + b"400\r\n" + b"x" * 1024
            assert (await get(port, chunked + b"\r\n0\r\n\r\n")).startswith(b"HTTP/1.1 413")


async def test_a_drain_closes_idle_keep_alive_connections_at_once_and_finishes_requests_in_flight() -> None:
    release = trio.Event()

    async def slow_or_fast(request: Request) -> Response:
        if request.path == "/slow":
            await release.wait()
        return Response(200, request.path.encode())

    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = bound_port(listener)
    server = HttpServer(slow_or_fast, name="test", read_timeout=600, grace=600)  # NB: neither may be waited out
    keep_alive = b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n"
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, [listener])
            idle = await trio.open_tcp_stream("127.0.0.1", port)
            await idle.send_all(keep_alive % b"fast")
            assert (await idle.receive_some(65536)).startswith(b"HTTP/1.1 200")  # and it stays open, idle
            busy = await trio.open_tcp_stream("127.0.0.1", port)
            await busy.send_all(keep_alive % b"slow")
            await trio.testing.wait_all_tasks_blocked()
            server.stop_accepting()
            assert await idle.receive_some(65536) == b""  # closed by the drain, not by the read timeout
            release.set()
            assert (await busy.receive_some(65536)).startswith(b"HTTP/1.1 200")  # the request in flight is served
            await idle.aclose()
            await busy.aclose()
        # NB: serve returned: the drain waited for nothing but the request in flight


async def test_a_head_request_gets_the_head_of_its_answer_and_no_body() -> None:
    (tcp,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = bound_port(tcp)
    with trio.fail_after(TIMEOUT):
        async with serving(tcp, max_body=10) as server:
            for raw in (b"HEAD /there HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                        b"HEAD /x HTTP/1.1\r\nHost: x\r\nContent-Length: 99\r\n\r\n"):  # fmt: skip
                reply = await get(port, raw)
                assert reply.startswith((b"HTTP/1.1 200", b"HTTP/1.1 413")), reply
                assert reply.endswith(b"\r\n\r\n"), "a head, and nothing after it"
    assert b"Content-Length: 6" in (await _head_of(b"/there"))
    assert server.connection_errors == 0


async def _head_of(path: bytes) -> bytes:
    (tcp,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with serving(tcp):
        return await get(bound_port(tcp), b"HEAD " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")


async def test_connections_beyond_the_cap_are_closed_unanswered_and_served_again_once_some_close() -> None:
    (tcp,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = bound_port(tcp)
    with trio.fail_after(TIMEOUT):
        async with serving(tcp, max_connections=2, read_timeout=600) as server:
            idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
            await trio.testing.wait_all_tasks_blocked()
            third = await trio.open_tcp_stream("127.0.0.1", port)
            with contextlib.suppress(trio.BrokenResourceError):  # NB: closed at once, maybe reset
                assert await third.receive_some(65536) == b""
            await third.aclose()
            assert server.refused_connections == 1
            for stream in idle:
                await stream.aclose()
            await trio.testing.wait_all_tasks_blocked()
            assert (await get(port, request("/again"))).startswith(b"HTTP/1.1 200")


async def test_bodies_held_at_once_past_the_budget_get_a_503_and_the_budget_is_given_back() -> None:
    (tcp,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = bound_port(tcp)
    with trio.fail_after(TIMEOUT):
        async with serving(tcp, max_buffered=1000, read_timeout=600) as server:
            slow = await trio.open_tcp_stream("127.0.0.1", port)
            await slow.send_all(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\n" + b"x" * 800)
            await trio.testing.wait_all_tasks_blocked()
            head = b"POST /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 300\r\n\r\n"
            assert (await get(port, head + b"y" * 300)).startswith(b"HTTP/1.1 503")
            await slow.send_all(b"x" * 100)
            assert (await slow.receive_some(65536)).startswith(b"HTTP/1.1 200")
            await slow.aclose()
            assert (await get(port, head + b"y" * 300)).startswith(b"HTTP/1.1 200")
            assert server._buffered == 0


async def test_a_head_that_check_head_refuses_is_answered_at_once_without_waiting_for_its_body() -> None:
    async def tokens_only(request: Request) -> Response | None:
        return None if request.headers.get("authorization") == "yes" else Response(401, b"who are you")

    (tcp,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = bound_port(tcp)
    with trio.fail_after(TIMEOUT):
        async with serving(tcp, check_head=tokens_only, read_timeout=600) as server:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")  # no body comes
            reply = await stream.receive_some(65536)
            assert reply.startswith(b"HTTP/1.1 401")
            assert reply.endswith(b"who are you")
            await stream.aclose()
            head = (
                b"POST /ok HTTP/1.1\r\nHost: x\r\nAuthorization: yes\r\nConnection: close\r\nContent-Length: 2\r\n\r\n"
            )
            assert (await get(port, head + b"{}")).endswith(b"/ok")
            assert server._buffered == 0
