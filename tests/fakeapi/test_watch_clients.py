"""Watch clients that go away: the fake API server, like a real one, drops their connection and goes on serving.

A watcher that resets its connection (RST) while the server is sending it events once made the server fail as
a whole (the send's error left the watch's nursery wrapped in an ExceptionGroup that nothing caught), which
failed an unrelated controller test now and then in CI.
"""

from __future__ import annotations

import socket
import struct

import h11
import trio

from tests.fakeapi import FakeApiServer
from tests.fakeapi.test_latency import POOLS, call, pool

WATCHERS = 30
TIMEOUT = 20


async def reset_while_watching(server: FakeApiServer) -> None:
    """Open a watch of the pools, read its head and a first event, then reset the connection."""
    stream = await trio.open_tcp_stream(server.host, server.port)
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(method="GET", target=POOLS + "?watch=true", headers=[("Host", "fake")])
    await stream.send_all((conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b""))
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(65536)))
        elif isinstance(event, h11.Data):
            break
    stream.socket.close()


async def test_watchers_resetting_mid_stream_leave_the_server_serving(nursery: trio.Nursery) -> None:
    server: FakeApiServer = await nursery.start(FakeApiServer().run)
    writing = True

    async def write() -> None:
        n = 0
        while writing:
            assert (await call(server, "POST", POOLS, pool(f"p{n}")))[0] == 201
            n += 1

    with trio.fail_after(TIMEOUT):
        assert (await call(server, "POST", POOLS, pool("first")))[0] == 201  # every watch begins with its event
        nursery.start_soon(write)
        async with trio.open_nursery() as watchers:
            for _ in range(WATCHERS):
                watchers.start_soon(reset_while_watching, server)
        writing = False
        code, listed = await call(server, "GET", POOLS)
    assert code == 200
    assert listed["items"]
