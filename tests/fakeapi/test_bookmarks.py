"""Watch streams as kube-apiserver's watch cache sends them: a watch's bookmark carries the version of its own
resource's latest event (one the watch was not sent, say outside its selector), never a version that only
other resources' writes reached, and none comes while the resource has had no event past what the watch saw;
bookmarks are rare (a minute apart), so an event must never wait for one to be sent."""

from __future__ import annotations

import json
from typing import Any

import h11
import trio

from spider.kinds import SPIDER_API_VERSION
from tests.fakeapi import Cost, FakeApiServer, LatencyModel
from tests.fakeapi.server import BOOKMARK_BEFORE_TIMEOUT
from tests.fakeapi.test_latency import POOLS, call, pool

ENDPOINTS = "/apis/spiderpool.spidernet.io/v2beta1/namespaces/default/spiderendpoints"


class Watch:
    """A raw watch of the pools labelled ``team=a``, with bookmarks, read line by line."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream, self.conn, self.buffer = stream, h11.Connection(h11.CLIENT), b""

    @classmethod
    async def open(cls, server: FakeApiServer, version: str, ends_in: int = 0) -> Watch:
        watch = cls(await trio.open_tcp_stream(server.host, server.port))
        query = f"?watch=true&allowWatchBookmarks=true&labelSelector=team%3Da&resourceVersion={version}"
        query += f"&timeoutSeconds={ends_in}" if ends_in else ""
        request = h11.Request(method="GET", target=POOLS + query, headers=[("Host", "fake")])
        await watch.stream.send_all((watch.conn.send(request) or b"") + (watch.conn.send(h11.EndOfMessage()) or b""))
        return watch

    async def events_for(self, seconds: float) -> list[dict[str, Any]]:
        """Every event that arrives within ``seconds``."""
        out: list[dict[str, Any]] = []
        with trio.move_on_after(seconds):
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    self.conn.receive_data(bytes(await self.stream.receive_some(65536)))
                elif isinstance(event, h11.Data):
                    self.buffer += bytes(event.data)
                    *lines, self.buffer = self.buffer.split(b"\n")
                    out += [json.loads(line) for line in lines if line.strip()]
        return out


async def test_a_bookmark_carries_its_resources_own_latest_version_only(nursery: trio.Nursery) -> None:
    server: FakeApiServer = await nursery.start(FakeApiServer(bookmark_interval=0.05).run)
    with trio.fail_after(20):
        _, listed = await call(server, "GET", POOLS)
        watch = await Watch.open(server, listed["metadata"]["resourceVersion"])
        for i in range(3):  # another resource's writes move the server's version, not the pools'
            endpoint = {"apiVersion": SPIDER_API_VERSION, "kind": "SpiderEndpoint", "metadata": {"name": f"e{i}"}}
            assert (await call(server, "POST", ENDPOINTS, endpoint))[0] == 201
        assert await watch.events_for(0.5) == []  # ten bookmark intervals: nothing to tell
        other = dict(pool("b"), metadata={"name": "b", "labels": {"team": "b"}})
        _, created = await call(server, "POST", POOLS, other)
        marks = await watch.events_for(0.5)
        assert [e["type"] for e in marks] == ["BOOKMARK"]  # once: then it has nothing new to tell
        assert marks[0]["object"]["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
        await watch.stream.aclose()


async def test_a_watch_gets_a_bookmark_shortly_before_its_timeout_however_long_the_interval(
    nursery: trio.Nursery,
) -> None:
    server: FakeApiServer = await nursery.start(FakeApiServer().run)  # NB: bookmarks every minute
    with trio.fail_after(20):
        _, listed = await call(server, "GET", POOLS)
        watch = await Watch.open(server, listed["metadata"]["resourceVersion"], ends_in=3)
        _, created = await call(server, "POST", POOLS, dict(pool("b"), metadata={"name": "b", "labels": {"team": "b"}}))
        assert await watch.events_for((3 - BOOKMARK_BEFORE_TIMEOUT) / 2) == []  # not yet: the interval is a minute
        marks = await watch.events_for(1.5)  # NB: the watch ends at 3 s; its bookmark is due at 1 s
        assert [e["type"] for e in marks] == ["BOOKMARK"]
        assert marks[0]["object"]["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
        await watch.stream.aclose()


async def test_an_event_written_while_the_previous_ones_are_being_sent_comes_at_once(nursery: trio.Nursery) -> None:
    server: FakeApiServer = await nursery.start(FakeApiServer(latency=LatencyModel({"watch-event": Cost(300)})).run)
    with trio.fail_after(20):
        _, listed = await call(server, "GET", POOLS)
        watch = await Watch.open(server, listed["metadata"]["resourceVersion"])
        team_a = {"name": "", "labels": {"team": "a"}}
        await call(server, "POST", POOLS, dict(pool("a1"), metadata=dict(team_a, name="a1")))
        await trio.sleep(0.1)  # NB: the server is now sending "a1", which takes it 0.3 s
        await call(server, "POST", POOLS, dict(pool("a2"), metadata=dict(team_a, name="a2")))
        events = await watch.events_for(2.0)  # two sends; a missed write would wait a minute for a bookmark
        assert [e["object"]["metadata"]["name"] for e in events] == ["a1", "a2"]
        await watch.stream.aclose()
