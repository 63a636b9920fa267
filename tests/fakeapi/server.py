"""The fake API server's HTTP side: trio + h11 serving a ``Cluster`` the way kube-apiserver does.

Owns the wire: routing of ``/api/v1/...`` and ``/apis/GROUP/VERSION/...`` paths (namespaced and cluster
scoped, the ``status`` subresource), JSON answers and ``Status`` errors, plain-text "404 page not found" for
resources it does not serve, watch streams (chunked JSON lines, ``allowWatchBookmarks``, ``timeoutSeconds``,
``ERROR`` events), bearer-token authentication (401), TokenReviews of minted ServiceAccount tokens
(``Cluster.mint_token``), optional TLS, and what tests need on top: injected faults (an answer code, a hang,
a dropped connection), a request log, outages and restarts on the same port (the storage survives, as etcd
does; a restart's watch cache starts empty, so watches from before it get 410), kubeconfig files, and a host
thread so that code outside trio, or other processes, can use it.

Metadata-only reads: a GET (or list) whose ``Accept`` asks for ``as=PartialObjectMetadata`` (or
``PartialObjectMetadataList``) ``;g=meta.k8s.io;v=v1`` (or ``v1beta1``) is answered with the objects' metadata
alone, as ``meta.k8s.io`` ``PartialObjectMetadata``, as kube-apiserver does (client-go's metadata client).  The
server still reads and decodes the whole stored object for it, so its latency is that of the whole object.

Compression: an answer over 128 KiB to a request whose ``Accept-Encoding`` names ``gzip`` is gzipped (level 1),
as kube-apiserver's ``APIResponseCompression`` (on by default since 1.16; level 1 since kubernetes#112299, 4
before) does for every non-watch answer; aiohttp asks for it unless told not to.

Latency (``tests.fakeapi.latency``, off unless given): each request is served after the time the model gives
for its kind and size, concurrently with other requests (each connection's task sleeps on its own).  A write
sleeps *first* and is then checked and committed in one step, as etcd's compare-and-swap ends a write: of two
PUTs sent at one resourceVersion both wait, and the one that finishes second gets 409 Conflict.  A read is
answered from the state at its start and delivered after its latency; watch events are delayed per batch.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import re
import ssl
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import attrs
import h11
import trio
import yaml

from tests.fakeapi.cluster import ApiError, Cluster, NotServed, Obj, Resource
from tests.fakeapi.latency import LatencyModel

JSON = "application/json"
GZIP_THRESHOLD = 128 * 1024
"""Bytes an answer must exceed before it is compressed (kube-apiserver's ``defaultGzipThresholdBytes``)."""
GZIP_LEVEL = 1
"""kube-apiserver's ``defaultGzipContentEncodingLevel`` (kubernetes#112299)."""
T = TypeVar("T")
WRITES = frozenset({"create", "update", "updateStatus", "patch", "delete"})
BOOKMARK_BEFORE_TIMEOUT = 2.0
"""A watch with bookmarks gets one this many seconds before its ``timeoutSeconds`` end, so that it resumes from
its resource's newest version (``cache_watcher.go``'s ``nextBookmarkTime``)."""
MAX_REQUEST_BYTES = 3 * 1024 * 1024
"""kube-apiserver's ``MaxRequestBodyBytes``: a larger request body is 413 ``RequestEntityTooLarge``."""
TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
"""TokenReviews are created and answered, never stored (``Cluster.review_token``; tokens from ``mint_token``)."""
TOKEN_REQUEST = re.compile(r"/api/v1/namespaces/(?P<namespace>[^/]+)/serviceaccounts/(?P<account>[^/]+)/token")
"""TokenRequests of any ServiceAccount (none is stored) are answered with a token ``mint_token`` made."""


def field_manager(head: h11.Request) -> str:
    """The manager of a write without ``fieldManager``: the User-Agent up to its first ``/`` (kube-apiserver's
    ``prefixFromUserAgent``)."""
    return dict(head.headers).get(b"user-agent", b"").decode("latin-1").split("/")[0]


def accepts_gzip(head: h11.Request) -> bool:
    """Whether a request's ``Accept-Encoding`` names ``gzip`` (kube-apiserver's ``negotiateContentEncoding``: a
    comma-separated token that is exactly ``gzip``, quality values not read)."""
    accepted = dict(head.headers).get(b"accept-encoding", b"").decode("latin-1")
    return any(token.strip() == "gzip" for token in accepted.split(","))


def metadata_only(accept: str) -> str:
    """The ``apiVersion`` of the ``PartialObjectMetadata`` an ``Accept`` header asks for, or ``""`` for the whole
    object: the first JSON clause decides (this server speaks no protobuf)."""
    for clause in accept.split(","):
        media, *params = (part.strip() for part in clause.split(";"))
        if media not in ("application/json", "*/*"):
            continue
        asked = dict(param.partition("=")[::2] for param in params)
        partial = asked.get("as", "").startswith("PartialObjectMetadata") and asked.get("g") == "meta.k8s.io"
        if partial and asked.get("v") in ("v1", "v1beta1"):
            return f"meta.k8s.io/{asked['v']}"
        return ""
    return ""


def partial_metadata(answer: Obj, api_version: str) -> Obj:
    """An object, or a list, as ``PartialObjectMetadata`` (``...List``): its kind and metadata alone."""
    if "items" in answer:
        items = [partial_metadata(item, api_version) for item in answer["items"]]
        return {
            "apiVersion": api_version,
            "kind": "PartialObjectMetadataList",
            "metadata": answer["metadata"],
            "items": items,
        }
    return {"apiVersion": api_version, "kind": "PartialObjectMetadata", "metadata": answer["metadata"]}


UNDECODABLE = object()
"""A request body that is not JSON (``_decoded``): 400 once the request is dispatched."""


def _decoded(body: bytes) -> object:
    """A request's body as JSON, decoded once for every step that reads it; ``None`` when empty.  ``NaN`` and
    ``Infinity``, which Python's decoder takes, are not JSON: Go's decoder (the API server's) refuses them."""
    try:
        return json.loads(body, parse_constant=_not_json) if body else None
    except ValueError:
        return UNDECODABLE


def _not_json(constant: str) -> object:
    raise ValueError(f"{constant} is not JSON")


def request_kind(method: str, name: str, subresource: str, watch: bool = False) -> str:
    """The latency model's kind of a request (``tests.fakeapi.latency.VERBS``)."""
    if method == "GET":
        return "watch-event" if watch and not name else "get" if name else "list"
    if method == "PUT":
        return "updateStatus" if subresource == "status" else "update"
    return {"POST": "create", "PATCH": "patch", "DELETE": "delete"}.get(method, "get")


@attrs.define
class Fault:
    """Answer matching requests badly: with ``status`` (a ``Status`` body), or never (``hang``), or by
    closing the connection (``drop``); ``times`` requests, then the fault is spent.  With ``applied`` the
    request is carried out first and only its answer is lost (a ``drop``) or replaced (a ``status``)."""

    method: str = ""
    path_contains: str = ""
    watch: bool | None = None
    status: int = 503
    hang: bool = False
    drop: bool = False
    times: int = 1
    applied: bool = False

    def matches(self, method: str, path: str, watch: bool) -> bool:
        return (
            self.times > 0
            and (not self.method or self.method == method)
            and self.path_contains in path
            and (self.watch is None or self.watch == watch)
        )


class _Drop(Exception):
    """Close the connection without an answer."""


@attrs.define(eq=False)
class FakeApiServer:
    """An API server on 127.0.0.1 for one ``Cluster``; run it with ``nursery.start(server.run)``."""

    cluster: Cluster = attrs.Factory(Cluster.new)
    host: str = "127.0.0.1"
    port: int = 0
    ssl_context: ssl.SSLContext | None = None
    tokens: set[str] | None = None
    """Accepted bearer tokens; ``None`` accepts any request."""
    bookmark_interval: float = 60.0
    """Seconds between a quiet watch's bookmarks (``cacher.go``'s ``defaultBookmarkFrequency``)."""
    max_watch_seconds: float = 1800.0
    """Longest a watch stays open, whatever ``timeoutSeconds`` asks."""
    faults: list[Fault] = attrs.Factory(list)
    log: list[tuple[str, str]] = attrs.Factory(list)
    """(method, path?query) of every request, in order."""
    answers: Counter[int] = attrs.Factory(Counter)
    """How many answers of each HTTP code were sent (watch streams not counted)."""
    gzipped: int = 0
    """Answers sent gzipped (``Accept-Encoding: gzip`` and over ``GZIP_THRESHOLD``)."""
    latency: LatencyModel = attrs.Factory(LatencyModel)
    """How long requests take (``LatencyModel()``: no time at all, the default for tests)."""
    served: Counter[tuple[str, int]] = attrs.Factory(Counter)
    """(request kind, HTTP code) of every answered request that reached the storage; a metadata-only read is
    kind ``get (metadata)`` (or ``list (metadata)``)."""
    served_by_resource: Counter[tuple[str, str, int]] = attrs.Factory(Counter)
    """The same, per resource (its plural, and the subresource): (kind, resource, HTTP code)."""
    _scope: trio.CancelScope | None = None
    _up: trio.Event = attrs.Factory(trio.Event)
    _resume: trio.Event = attrs.Factory(trio.Event)

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.host}:{self.port}"

    # --- life cycle --------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[FakeApiServer] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``go_down`` drops every connection and stops listening until ``come_up``."""
        started = False
        while True:
            listeners: list[Any] = await trio.open_tcp_listeners(self.port, host=self.host)
            self.port = listeners[0].socket.getsockname()[1]
            if self.ssl_context is not None:
                listeners = [trio.SSLListener(lst, self.ssl_context, https_compatible=True) for lst in listeners]
            try:
                with trio.CancelScope() as self._scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(trio.serve_listeners, self._connection, listeners)
                        self._up.set()
                        if not started:
                            started = True
                            task_status.started(self)
            finally:
                with trio.CancelScope(shield=True):
                    for lst in listeners:
                        await lst.aclose()
            await self._resume.wait()
            self._resume = trio.Event()

    def go_down(self) -> None:
        """An outage: close the listeners and every connection (watches end mid-stream)."""
        assert self._scope is not None
        self._up = trio.Event()  # NB: now, so that a come_up() right after waits for the new listeners
        self._scope.cancel(reason="fake API server outage")

    async def come_up(self, *, restarted: bool = False) -> None:
        """Listen again on the same port, with the same storage (etcd's).  ``restarted``: the server process
        started anew, so its watch cache did too: it holds no event from before, and a watch resuming from an
        older version gets 410 (``too old resource version``), as every informer does after a real restart.
        Without it, the outage was the network's (or another server answered meanwhile): watches resume."""
        if restarted:
            self.cluster.compact()
        self._resume.set()
        await self._up.wait()

    # --- HTTP --------------------------------------------------------------------------------------------

    async def _connection(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._receive(conn, stream)
                if request is None:
                    return
                head, body = request
                try:
                    await self._respond(conn, stream, head, body)
                except _Drop:
                    return
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.RemoteProtocolError, h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(1),
                suppress(trio.BrokenResourceError, trio.ClosedResourceError),
            ):
                await stream.aclose()

    @staticmethod
    async def _receive(conn: h11.Connection, stream: trio.abc.Stream) -> tuple[h11.Request, bytes] | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return head, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None

    @staticmethod
    async def _send(conn: h11.Connection, stream: trio.abc.Stream, *events: Any) -> None:
        data = b"".join(conn.send(e) or b"" for e in events)
        await stream.send_all(data)

    async def _answer(
        self,
        conn: h11.Connection,
        stream: trio.abc.Stream,
        code: int,
        body: object,
        content_type: str = JSON,
        *,
        gzip_ok: bool = False,
    ) -> None:
        """Send one whole answer; ``gzip_ok``: the client accepts gzip (compressed when over the threshold)."""
        self.answers[code] += 1
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = [("Content-Type", content_type)]
        if gzip_ok and len(data) > GZIP_THRESHOLD:
            data = gzip.compress(data, compresslevel=GZIP_LEVEL)
            self.gzipped += 1
            headers += [("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")]
        headers.append(("Content-Length", str(len(data))))
        await self._send(conn, stream, h11.Response(status_code=code, headers=headers), h11.Data(data=data))
        await self._send(conn, stream, h11.EndOfMessage())

    async def _respond(self, conn: h11.Connection, stream: trio.abc.Stream, head: h11.Request, body: bytes) -> None:
        method, target = head.method.decode(), head.target.decode()
        self.log.append((method, target))
        split = urlsplit(target)
        path, query = unquote(split.path), {k: v[-1] for k, v in parse_qs(split.query).items()}
        watch = query.get("watch") in ("true", "1")
        for fault in self.faults:
            if fault.matches(method, path, watch):
                fault.times -= 1
                if fault.applied:
                    with suppress(ApiError, NotServed):
                        resource, namespace, name, sub = self._route(path)
                        self._dispatch(method, resource, namespace, name, sub, query, _decoded(body))
                if fault.drop:
                    raise _Drop
                if fault.hang:
                    await trio.sleep_forever()
                error = ApiError(fault.status, "ServiceUnavailable", "injected fault")
                await self._answer(conn, stream, fault.status, error.status())
                return
        if self.tokens is not None:
            auth = dict(head.headers).get(b"authorization", b"").decode()
            if not auth.startswith("Bearer ") or auth.removeprefix("Bearer ") not in self.tokens:
                await self._answer(conn, stream, 401, ApiError(401, "Unauthorized", "Unauthorized").status())
                return
        if path in ("/version", "/healthz", "/readyz", "/livez"):
            await self._answer(conn, stream, 200, {"major": "1", "minor": "34", "gitVersion": "v1.34.0-fake"})
            return
        if path == TOKEN_REVIEWS and method == "POST":  # not stored: answered from the cluster's minted tokens
            try:
                code, review = 201, self.cluster.review_token(json.loads(body or b"null"))
            except ValueError:
                code, review = 400, ApiError(400, "BadRequest", "the body is not JSON").status()
            except ApiError as exc:
                code, review = exc.code, exc.status()
            await self._wait("create", len(body))
            await self._answer(conn, stream, code, review)
            return
        requested = TOKEN_REQUEST.fullmatch(path)
        if requested and method == "POST":  # a TokenRequest (kubectl create token): a minted token, not stored
            try:
                spec = dict(json.loads(body or b"{}").get("spec") or {})
                seconds = int(spec.get("expirationSeconds") or 3600)  # NB: kube-apiserver's default: an hour
            except (ValueError, TypeError, AttributeError):
                await self._answer(conn, stream, 400, ApiError(400, "BadRequest", "not a TokenRequest").status())
                return
            token = self.cluster.mint_token(requested["namespace"], requested["account"])
            expires = datetime.now(UTC) + timedelta(seconds=seconds)
            answer = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {**spec}}
            answer["spec"]["expirationSeconds"] = seconds
            answer["status"] = {"token": token, "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}
            await self._wait("create", len(body))
            await self._answer(conn, stream, 201, answer)
            return
        try:
            resource, namespace, name, sub = self._route(path)
            if sub and (sub != "status" or not resource.status_subresource):
                raise NotServed(path)
            if method == "GET" and not name and watch:
                await self._watch(conn, stream, resource, namespace, query)
                return
        except NotServed:
            await self._answer(conn, stream, 404, b"404 page not found\n", "text/plain; charset=utf-8")
            return
        except ApiError as exc:
            await self._answer(conn, stream, exc.code, exc.status())
            return
        kind = request_kind(method, name, sub)
        if len(body) > MAX_REQUEST_BYTES:  # NB: the server's own limit, twice etcd's (JSON is larger than protobuf)
            why = f"Request entity too large: limit is {MAX_REQUEST_BYTES}"
            await self._answer(conn, stream, 413, ApiError(413, "RequestEntityTooLarge", why).status())
            return
        decoded = _decoded(body)
        if kind in WRITES and self.cluster.stale_at_arrival(resource, namespace, name, kind, decoded):
            await self._wait("get", len(body))  # NB: decoded and compared with the cached object: no etcd write
        elif kind in WRITES:  # NB: the wait first, then check and commit in one step: etcd's compare-and-swap
            await self._wait(kind, len(body))
        try:
            manager = query.get("fieldManager") or field_manager(head)
            code, answer = self._dispatch(method, resource, namespace, name, sub, query, decoded, manager)
        except ApiError as exc:
            code, answer = exc.code, exc.status()
        data = json.dumps(answer).encode()
        partial = metadata_only(dict(head.headers).get(b"accept", b"").decode()) if method == "GET" else ""
        served_kind = f"{kind} (metadata)" if partial else kind
        self.served[served_kind, code] += 1
        self.served_by_resource[served_kind, resource.plural + (f"/{sub}" if sub else ""), code] += 1
        if kind not in WRITES:
            await self._wait(kind, len(data))  # NB: a metadata-only read costs the server the whole object too
        if partial and code == 200:
            data = json.dumps(partial_metadata(answer, partial)).encode()
        await self._answer(conn, stream, code, data, gzip_ok=accepts_gzip(head))

    async def _wait(self, kind: str, size: int) -> None:
        """The latency model's time for one request (nothing when the model is off)."""
        seconds = self.latency.seconds(kind, size)
        if seconds > 0:
            await trio.sleep(seconds)

    def _route(self, path: str) -> tuple[Resource, str, str, str]:
        """(resource, namespace, name, subresource) of a REST path."""
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise NotServed(path)
        namespace = ""
        if len(rest) >= 3 and rest[0] == "namespaces" and self.cluster.namespaced_plural(group, version, rest[2]):
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise NotServed(path)
        resource = self.cluster.resource(group, version, rest[0])
        if resource.namespaced and not namespace and len(rest) > 1:
            raise NotServed(path)  # a namespaced object needs its namespace in the path
        return resource, namespace, rest[1] if len(rest) > 1 else "", rest[2] if len(rest) > 2 else ""

    def _dispatch(
        self,
        method: str,
        r: Resource,
        namespace: str,
        name: str,
        sub: str,
        query: dict[str, str],
        decoded: object,
        manager: str = "",
    ) -> tuple[int, Obj]:
        c = self.cluster
        if decoded is UNDECODABLE:
            raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
        if method == "GET" and name:
            return 200, c.get(r, namespace, name)
        if method == "GET":
            limit = int(query.get("limit", "0") or 0)
            selectors = query.get("labelSelector", ""), query.get("fieldSelector", "")
            return 200, c.list(r, namespace, *selectors, limit=limit, token=query.get("continue", ""))
        if method == "POST" and not name:
            return 201, c.create(r, namespace, decoded, manager=manager)
        if method == "PUT" and name:
            return 200, c.update(r, namespace, name, decoded, status=sub == "status", manager=manager)
        if method == "DELETE" and name:
            return 200, c.delete(r, namespace, name, decoded)
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    async def _watch(
        self, conn: h11.Connection, stream: trio.abc.Stream, r: Resource, namespace: str, query: dict[str, str]
    ) -> None:
        selector = query.get("labelSelector", "")
        try:
            initial, cursor = self.cluster.watch_start(r, namespace, selector, query.get("resourceVersion", ""))
            expired: ApiError | None = None
        except ApiError as exc:
            if exc.code != 410:
                raise
            initial, cursor, expired = [], 0, exc
        headers = [("Content-Type", JSON), ("Transfer-Encoding", "chunked")]
        await self._send(conn, stream, h11.Response(status_code=200, headers=headers))

        async def send(events: list[Obj]) -> None:
            if events:
                lines = b"".join(json.dumps(e).encode() + b"\n" for e in events)
                await self._wait("watch-event", len(lines))
                await self._send(conn, stream, h11.Data(data=lines))

        seconds = min(float(query.get("timeoutSeconds") or math.inf), self.max_watch_seconds)
        bookmarks = query.get("allowWatchBookmarks") == "true"
        deadline = trio.current_time() + seconds
        gone = False
        with trio.move_on_after(seconds) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._cancel_on_eof, conn, stream, scope)
                try:
                    if expired is not None:
                        await send([{"type": "ERROR", "object": expired.status()}])
                    else:
                        await send(initial)
                        await self._stream(send, r, namespace, selector, cursor, bookmarks, deadline)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    gone = True  # NB: the client went away mid-send; raised from here, the nursery would wrap it
                nursery.cancel_scope.cancel()
        if gone:
            raise _Drop
        await self._send(conn, stream, h11.EndOfMessage())

    async def _stream(
        self, send: Callable[[list[Obj]], Awaitable[None]], r: Resource, namespace: str, selector: str, cursor: int,
        bookmarks: bool, deadline: float,
    ) -> None:  # fmt: skip
        """Send a watch's events as they happen, and bookmarks while it is quiet (every ``bookmark_interval``,
        and once ``BOOKMARK_BEFORE_TIMEOUT`` before its deadline, as ``cache_watcher.go`` times them); until an
        ``ERROR``."""
        quiet, told = trio.current_time(), cursor  # told: the version the client knows it has seen up to
        last_call = deadline - BOOKMARK_BEFORE_TIMEOUT
        while True:
            changed = self.cluster.next_change  # NB: before the read, so a write during the sends below wakes us
            try:
                events, seen = self.cluster.watch_since(r, namespace, selector, cursor)
            except ApiError as exc:  # compacted under a slow watcher
                await send([{"type": "ERROR", "object": exc.status()}])
                return
            await send(events)
            now = trio.current_time()
            if events:
                quiet, told = now, int(events[-1]["object"]["metadata"]["resourceVersion"])
            elif bookmarks and (now - quiet >= self.bookmark_interval or now >= last_call):
                head = self.cluster.resource_versions.get((r.group, r.plural), 0)  # NB: this resource's, not all's
                if head > told:
                    mark = {"kind": r.kind, "apiVersion": r.api_version, "metadata": {"resourceVersion": str(head)}}
                    await send([{"type": "BOOKMARK", "object": mark}])
                    told = head
                quiet = now
                if now >= last_call:
                    last_call = math.inf
            cursor = seen
            patience = min(self.bookmark_interval, max(last_call - now, 0.0)) if bookmarks else 60.0
            with trio.move_on_after(patience):
                await changed.wait()

    @staticmethod
    async def _cancel_on_eof(conn: h11.Connection, stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        """The client closed the watch: stop streaming to it.  (It sends nothing else meanwhile; anything
        that does arrive is kept for h11.)"""
        try:
            while data := await stream.receive_some(4096):
                conn.receive_data(bytes(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    # --- clients -----------------------------------------------------------------------------------------

    def kubeconfig(
        self,
        path: Path,
        *,
        token: str | None = None,
        token_file: Path | None = None,
        exec_argv: list[str] | None = None,
        ca_file: Path | None = None,
    ) -> Path:
        """Write a kubeconfig for this server (one cluster, one user, one context) and return its path."""
        cluster: Obj = {"server": self.url}
        if ca_file is not None:
            cluster["certificate-authority"] = str(ca_file)
        user: Obj = {}
        if token is not None:
            user["token"] = token
        if token_file is not None:
            user["tokenFile"] = str(token_file)
        if exec_argv is not None:
            user["exec"] = {
                "apiVersion": "client.authentication.k8s.io/v1",
                "command": exec_argv[0],
                "args": exec_argv[1:],
                "interactiveMode": "Never",
            }
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": cluster}],
            "users": [{"name": "fake-user", "user": user}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake-user"}}],
            "current-context": "fake",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        return path


class ServedInThread:
    """A ``FakeApiServer`` in its own thread and trio run, for tests whose clients are other threads or
    processes; ``call`` runs a function in the server's thread (cluster state is only touched there)."""

    def __init__(self, server: FakeApiServer) -> None:
        self.server = server
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="fake-api-server", daemon=True)

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # reported by start() or stop()
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.server.run)
            self._token, self._scope = trio.lowlevel.current_trio_token(), nursery.cancel_scope
            self._ready.set()

    def start(self, timeout: float = 10) -> ServedInThread:
        self._thread.start()
        if not self._ready.wait(timeout) or self._failure is not None:
            raise RuntimeError(f"the fake API server did not start: {self._failure!r}")
        return self

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the server's thread (blocking this one briefly)."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def call_async(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await afn(*args)`` in the server's thread."""
        return trio.from_thread.run(afn, *args, trio_token=self._token)

    def go_down(self) -> None:
        """An outage of the server (``FakeApiServer.go_down``), from this thread."""
        self.call(self.server.go_down)

    def come_up(self, *, restarted: bool = False) -> None:
        """The end of an outage (``FakeApiServer.come_up``): back on the same port, from this thread."""
        self.call_async(functools.partial(self.server.come_up, restarted=restarted))

    def stop(self) -> None:
        if self._scope is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(10)
        if self._failure is not None:
            raise RuntimeError("the fake API server failed") from self._failure


@contextmanager
def served_in_thread(server: FakeApiServer | None = None) -> Iterator[ServedInThread]:
    """A fake API server running in a thread for the body of the ``with``."""
    host = ServedInThread(server or FakeApiServer()).start()
    try:
        yield host
    finally:
        host.stop()
