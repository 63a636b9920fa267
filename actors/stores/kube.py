"""The Kubernetes store: the ``Store`` port on a real API server, through kubernetes-asyncio.

Owns everything that talks to Kubernetes; it is the only module that imports kubernetes-asyncio or aiohttp
(import-linter keeps it so).  That is: the asyncio event loop on its own thread and the bridge trio tasks
await it through; client configuration (kubeconfig, in-cluster service account) and keeping credentials
fresh; the REST paths of every kind in ``spider.kinds``; the mapping of HTTP answers to the port's errors;
and watches that resume from the last version they saw.

The bridge (DESIGN §9).  kubernetes-asyncio is built on aiohttp, which needs asyncio: every request runs on
the asyncio loop of ``actors.stores.asyncio_thread.AsyncioThread``, which a trio task awaits without blocking.

Requests.  Every kind goes through ``ApiClient.call_api`` with ``_preload_content=False``: one code path for
custom resources (``/apis/spiderpool.spidernet.io/v2beta1/...``, what ``CustomObjectsApi`` calls) and for
built-in kinds (``/api/v1/...``, ``/apis/apps/v1/...``), and the JSON exactly as the API server sends it,
never the generated model classes.  Every request has a timeout (kubernetes-asyncio sets none), and every
response is read and released, every watch response closed.

Errors.  404 ``NotFound`` (a 404 that is not a ``Status``, the API server's "page not found", means the kind
is not served: a get finds nothing, anything else is ``StoreUnavailable`` asking whether the CRDs are
installed); 409 ``AlreadyExists`` or ``Conflict`` by the ``Status`` reason; 410
``Gone``; 400, 413 and 422 ``Invalid``; 429, 5xx, timeouts and connection errors ``StoreUnreachable`` (the server
may be back in a moment: ``actors.stores.retrying`` waits for it); 401, 403 and a credential plugin that fails
``StoreUnavailable`` (CNI 11 both: the runtime retries).  A 401 first makes the credentials re-read (token
file, exec plugin) and the request is sent once more.  (aiohttp sends a GET, PUT or DELETE once more by itself
when a kept-alive connection drops before the answer: a PUT that was applied then answers ``Conflict``, a
DELETE ``NotFound``.)  Some 500s are no outage: a ``resourceVersion`` the server
cannot parse (a watch's or list's "resourceVersion: Invalid value", a PUT's "strconv.ParseUint: ...", what
kube-apiserver answers for them) is ``Invalid``, so a watch from such a version fails at once instead of
reconnecting to the same answer, and such a write is not retried as if the server were down; so is an object
larger than etcd stores ("etcdserver: request is too large", a 500 too) and a body over the server's limit (413).

Where the API server and the port differ, this adapter keeps the port (the contract tests run on both):
- create with a ``resourceVersion``: the server answers 500; we refuse with ``Invalid`` before sending.
- update without a ``resourceVersion``: custom resources refuse it (422 "must be specified for an update");
  we read the current version and write with it, again on a conflict, so last write wins as the port says.
- update carrying the uid of another incarnation: the server answers 409 (a uid precondition); we compare
  uids on that read and answer ``Invalid`` as the embedded store does.
- list items of built-in kinds carry no ``apiVersion``/``kind``; we fill them in.
- watch from ``""`` is served from the watch cache with a synthetic ``ADDED`` per object; the port means
  "from now", so we take the version of a one-item list and watch from there.  Watch from ``"0"`` is a
  consistent list (yielded as ``ADDED``) and a watch from its version, never the possibly stale cache.

Watches.  ``allowWatchBookmarks`` is asked for, and bookmarks only move the version a watch resumes from.
When the server ends a watch (``timeoutSeconds``) or the connection drops (API server restart, network), the
watch reconnects from the last version seen, with jittered backoff while it fails; after
``watch_reconnect_budget`` seconds of failures it raises the last ``StoreUnavailable``.  The list a watch from
``""`` or ``"0"`` starts with is retried the same way while it is unreachable.  A watch the server ends at
once with nothing in it is re-opened after a growing pause (``QUICK_WATCH_END``), never in a hot loop.
A 410 (an ``ERROR`` event with code 410, or an HTTP 410) raises ``Gone``: the caller re-lists, as the port
says.

Credentials.  A kubeconfig (``--kubeconfig`` or ``$KUBECONFIG`` or ``~/.kube/config``) with client
certificates, a token, a ``tokenFile`` (re-read whenever the file changes), or an exec plugin (run again
shortly before its credential expires, and on a 401); or the in-cluster service account, whose projected
token kubelet rotates on disk: it is re-read whenever the file changes.  Exec plugins that return client
certificates are read once at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import random
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
import attrs
import trio
import yaml
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.config.config_exception import ConfigException
from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader
from kubernetes_asyncio.config.kube_config import KubeConfigLoader, load_kube_config

from actors.stores.asyncio_thread import AsyncioThread
from actors.stores.port import (
    AlreadyExists,
    Conflict,
    Gone,
    Invalid,
    NotFound,
    Obj,
    ObjectList,
    StoreUnreachable,
    WatchEvent,
)
from spider.errors import SpiderError, StoreUnavailable
from spider.fields import parse_field_selector
from spider.kinds import Kind, kind_info
from spider.selector import parse_selector

T = TypeVar("T")
log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
"""Where kubelet mounts a pod's service account token and the cluster's CA."""
READ_BUFFER_BYTES = 1 << 21
"""aiohttp's read buffer: one watch event carries a whole object, and etcd's limit for one is 1.5 MiB."""
QUICK_WATCH_END = 1.0
"""Seconds: a watch the server ends sooner than this, having sent nothing, is re-opened only after a backoff."""
_BLIND_WRITE_ATTEMPTS = 10  # read-then-write rounds of an update without resourceVersion before Conflict
_HEADERS = {"Accept": "application/json", "Content-Type": "application/json", "Accept-Encoding": "identity"}
"""Every request's headers.  Answers uncompressed: kube-apiserver gzips an answer over 128 KiB (a pool of some
600 records and more) for a client that accepts it, as aiohttp does unless told otherwise, and on the loopback
or a cluster network that costs the server and us CPU, on the nodes' cores, for bytes that cost next to nothing
to send (kubectl and kubeconfig got ``disable-compression`` in Kubernetes 1.26 for the same reason)."""
_METADATA_ONLY = {
    **_HEADERS,
    "Accept": "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json",
}
"""A GET of the object's metadata alone (what client-go's metadata client asks for); a server that cannot
answer so sends the whole object, which has the same ``metadata``."""
EventType = Literal["ADDED", "MODIFIED", "DELETED"]
_EVENT_TYPES: dict[str, EventType] = {"ADDED": "ADDED", "MODIFIED": "MODIFIED", "DELETED": "DELETED"}


# --- configuration and credentials -------------------------------------------------------------------------


@attrs.frozen
class KubeSettings:
    """How the Kubernetes store talks to the API server."""

    request_timeout: float = 10.0
    """Seconds a request may take from connecting to the last byte of the answer."""
    connect_timeout: float = 5.0
    """Seconds to open a connection (TCP and TLS)."""
    watch_timeout: int = 300
    """Seconds the server keeps one watch request open (``timeoutSeconds``, jittered up to twice this)."""
    watch_read_slack: float = 30.0
    """Seconds of silence past ``timeoutSeconds`` after which a watch connection counts as dead."""
    watch_reconnect_budget: float = 60.0
    """Seconds a watch keeps reconnecting through failures before it raises ``StoreUnavailable``."""
    list_page_size: int = 500
    """Items per list request (``limit``); later pages follow ``continue``."""
    max_connections: int = 100
    """Connections to the API server at once (each open watch holds one)."""
    service_account_dir: Path = attrs.field(default=SERVICE_ACCOUNT_DIR, converter=Path)
    """Where the in-cluster token (``token``) and CA (``ca.crt``) are."""


@attrs.define(eq=False)
class _Credentials:
    """Keeps the bearer token of one client fresh; called before every request on the loop thread."""

    config: Configuration
    token_file: Path | None = None
    exec_loader: KubeConfigLoader | None = None
    skew: dt.timedelta = dt.timedelta(seconds=10)
    _stamp: tuple[int, int, int] | None = None
    _lock: asyncio.Lock = attrs.Factory(asyncio.Lock)

    async def before_request(self, _config: Configuration) -> None:
        """kubernetes-asyncio's ``refresh_api_key_hook``."""
        if self.token_file is not None:
            self._read_token_file(force=False)
        if self.exec_loader is not None and self._exec_expiring():
            await self._run_exec()

    async def rejected(self) -> bool:
        """The server answered 401: refresh whatever can be refreshed; whether a retry may help."""
        retry = False
        if self.token_file is not None:
            retry = self._read_token_file(force=True)
        if self.exec_loader is not None:
            await self._run_exec()
            retry = True
        return retry

    def _read_token_file(self, *, force: bool) -> bool:
        """Re-read the token when the file changed (kubelet swaps a symlink); whether the token changed."""
        assert self.token_file is not None
        try:
            st = self.token_file.stat()
        except OSError:
            return False  # NB: keep the last token; the server will say if it is no good
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp and not force:
            return False
        self._stamp = stamp
        token = self.token_file.read_text().strip()
        new = f"Bearer {token}"
        changed = self.config.api_key.get("BearerToken") != new
        if token:
            self.config.api_key["BearerToken"] = new
        return changed

    def _exec_expiring(self) -> bool:
        expiry: dt.datetime | None = getattr(self.exec_loader, "exec_plugin_expiry", None)
        if expiry is None:
            return False  # NB: no expiry given: the credential is good until the server says 401
        if expiry.tzinfo is None:
            expiry = expiry.replace(tzinfo=dt.UTC)
        return expiry - self.skew <= dt.datetime.now(dt.UTC)

    async def _run_exec(self) -> None:
        loader = self.exec_loader
        assert loader is not None
        async with self._lock:
            if hasattr(loader, "exec_plugin_expiry"):
                del loader.exec_plugin_expiry  # NB: the loader caches until this passes; we decide when
            await loader.load_from_exec_plugin()
            token = getattr(loader, "token", None)
            if token:
                self.config.api_key["BearerToken"] = token


def _expanded(path: str | Path | None) -> Path | None:
    return None if path is None else Path(path).expanduser()


def _user_token_file(loader: KubeConfigLoader, kubeconfig: Path | None) -> Path | None:
    user = getattr(loader, "_user", None)  # NB: the loader keeps the selected user only privately
    if user is None or "tokenFile" not in user:
        return None
    path = Path(str(user["tokenFile"])).expanduser()
    if not path.is_absolute() and kubeconfig is not None:
        path = kubeconfig.parent / path
    return path


async def _configure(
    kubeconfig: Path | None,
    context: str | None,
    in_cluster: bool,
    settings: KubeSettings,
    environ: Mapping[str, str],
) -> tuple[ApiClient, _Credentials]:
    """Loop thread: the configured client (aiohttp sessions must be made on their loop)."""
    config = Configuration()
    if in_cluster:
        token_file = settings.service_account_dir / "token"
        InClusterConfigLoader(
            token_filename=str(token_file),
            cert_filename=str(settings.service_account_dir / "ca.crt"),
            try_refresh_token=False,  # NB: ours re-reads on every change, not once a minute
            environ=dict(environ),
        ).load_and_set(config)
        credentials = _Credentials(config, token_file=token_file)
    else:
        loader = await load_kube_config(
            config_file=None if kubeconfig is None else str(kubeconfig),
            context=context,
            client_configuration=config,
            persist_config=False,
        )
        credentials = _Credentials(
            config,
            token_file=_user_token_file(loader, kubeconfig),
            exec_loader=loader if "exec" in (getattr(loader, "_user", None) or {}) else None,
        )
    if credentials.token_file is not None:
        credentials._read_token_file(force=True)
    config.refresh_api_key_hook = credentials.before_request
    config.connection_pool_maxsize = settings.max_connections
    if not config.proxy:  # NB: a kubeconfig's proxy-url wins, as with kubectl
        config.proxy = proxy_from(environ, config.host or "")
    client = ApiClient(configuration=config)
    client.user_agent = "spider-ipam (kubernetes-asyncio)"
    # NB: kubernetes-asyncio's session trusts the environment, so aiohttp looks for ~/.netrc in a worker thread
    # and scans the proxy variables on every request; the proxy is decided once, above, and ~/.netrc is no
    # credential for an API server
    session = client.rest_client.pool_manager
    client.rest_client.pool_manager = aiohttp.ClientSession(
        connector=session.connector, trust_env=False, read_bufsize=READ_BUFFER_BYTES
    )
    session.detach()
    return client, credentials


_bypass: Callable[[str, dict[str, str]], bool] = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
"""urllib's ``NO_PROXY`` rules (left out of its stubs)."""


def proxy_from(environ: Mapping[str, str], server: str) -> str | None:
    """The proxy the environment names for the API server at ``server`` (``HTTPS_PROXY`` or ``HTTP_PROXY`` by
    its scheme, the lower-case spelling first, unless ``NO_PROXY`` covers its host), or ``None``: connect
    directly.  The same rules as urllib's (and aiohttp's ``trust_env``), read once."""
    proxies: dict[str, str] = {}
    for name in sorted(environ, key=str.islower):  # NB: lower case last, so it wins
        if name.lower().endswith("_proxy") and environ[name]:
            proxies[name[: -len("_proxy")].lower()] = environ[name]
    url = urlsplit(server)
    proxy = proxies.get(url.scheme)
    if not proxy or _bypass(url.hostname or "", proxies):
        return None
    return proxy


# --- errors --------------------------------------------------------------------------------------------------


@attrs.frozen
class _Target:
    """What a request was about, for its errors."""

    kind: str
    name: str = ""
    namespace: str = ""
    sent_version: str = ""
    verb: str = ""


def _decode(data: bytes) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError:
        return None


def _is_status(body: object) -> bool:
    return isinstance(body, dict) and body.get("kind") == "Status"


def _error(status: int, data: bytes, target: _Target) -> SpiderError:
    """The port's error for an HTTP answer that is not a success."""
    body = _decode(data)
    if _is_status(body):
        reason, message = str(body.get("reason") or ""), str(body.get("message") or "")
        details = body.get("details") or {}
    else:
        reason, message, details = "", data[:200].decode(errors="replace").strip(), {}
    if any(fault in message for fault in _REQUEST_FAULTS):  # NB: kube-apiserver answers 500, but no retry can help
        return Invalid(kind=target.kind, name=target.name, reason=message)
    if status == 404:
        if not _is_status(body) and target.verb != "get":  # NB: a get of a kind not served finds nothing
            return StoreUnavailable(
                reason=f"the API server does not serve {target.kind} ({message or 'not found'}); "
                "are the CRDs installed (deploy/crds/)?"
            )
        if target.verb == "create" and details.get("kind") == "namespaces":
            return NotFound(kind="Namespace", name=str(details.get("name") or target.namespace))
        return NotFound(kind=target.kind, name=target.name, namespace=target.namespace)
    if status == 409:
        if reason == "AlreadyExists":
            return AlreadyExists(kind=target.kind, name=target.name, namespace=target.namespace)
        return Conflict(kind=target.kind, name=target.name, sent_version=target.sent_version)
    if status == 410:
        return Gone(resource_version=target.sent_version)
    if status in (400, 413, 422):
        return Invalid(kind=target.kind, name=target.name, reason=message or reason or f"HTTP {status}")
    why = f"{target.verb} {target.kind}: HTTP {status} {reason}: {message}".strip()
    if status == 429 or status >= 500:  # overloaded, restarting, or behind a proxy that lost it: wait
        return StoreUnreachable(reason=why)
    return StoreUnavailable(reason=why)


def _unavailable(target: _Target, exc: BaseException) -> StoreUnavailable:
    """The port's error for a request that got no answer: ``StoreUnreachable``, except for a credential plugin
    that failed (``ConfigException``), which waiting does not fix."""
    what = str(exc) or type(exc).__name__
    reason = f"{target.verb} {target.kind}: {type(exc).__name__}: {what}"
    return StoreUnavailable(reason=reason) if isinstance(exc, ConfigException) else StoreUnreachable(reason=reason)


_TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, OSError, ConfigException)
_INVALID_VERSION = "resourceVersion: Invalid value"
_REQUEST_FAULTS = (_INVALID_VERSION, "strconv.ParseUint: ", "etcdserver: request is too large")
"""What kube-apiserver's 500s say when the request itself is at fault: a ``resourceVersion`` it cannot parse (a
list's or watch's: the field's validation; a PUT's: the versioner's own parse error), an object larger than
etcd stores (1.5 MiB)."""


# --- the store ---------------------------------------------------------------------------------------------


def _path(info: Kind, namespace: str = "", name: str = "", subresource: str = "") -> str:
    """The REST path of a kind's collection, or of one object (and a subresource of it)."""
    path = f"/apis/{info.group}/{info.version}" if info.group else f"/api/{info.version}"
    if info.namespaced and namespace:
        path += f"/namespaces/{quote(namespace, safe='')}"
    path += f"/{info.plural}"
    if name:
        path += f"/{quote(name, safe='')}"
    if subresource:
        path += f"/{subresource}"
    return path


def _scope(info: Kind, namespace: str | None) -> str:
    """The namespace of one object: ``default`` when empty for namespaced kinds, none for the others."""
    return (namespace or "default") if info.namespaced else ""


def _typed(info: Kind, obj: Obj) -> Obj:
    """The object with ``apiVersion`` and ``kind`` (lists of built-in kinds leave them out)."""
    obj.setdefault("apiVersion", info.api_version)
    obj.setdefault("kind", info.kind)
    return obj


@attrs.define(eq=False)
class _Prepared:
    """A caller's object, deep-copied and checked against the kind table, with where it goes."""

    info: Kind
    namespace: str
    name: str
    body: Obj

    def target(self, verb: str) -> _Target:
        m = self.body["metadata"]
        return _Target(self.info.kind, self.name, self.namespace, str(m.get("resourceVersion") or ""), verb)


def _prepare(obj: Obj) -> _Prepared:
    try:
        body: Obj = json.loads(json.dumps(obj))  # NB: also the deep copy the caller may keep mutating
    except (TypeError, ValueError) as exc:
        raise Invalid(kind=str(obj.get("kind", "")), name="", reason=f"not JSON: {exc}") from None
    info = kind_info(str(body.get("kind") or ""))
    m = body.get("metadata")
    if not isinstance(m, dict):
        raise Invalid(kind=info.kind, name="", reason="metadata must be an object")
    name = m.get("name") or ""
    if not isinstance(name, str):
        raise Invalid(kind=info.kind, name=str(name), reason="metadata.name must be a string")
    if body.get("apiVersion") and body["apiVersion"] != info.api_version:
        raise Invalid(kind=info.kind, name=name, reason=f"apiVersion must be {info.api_version!r}")
    body["apiVersion"], body["kind"] = info.api_version, info.kind
    namespace = m.get("namespace") or ""
    if not isinstance(namespace, str):
        raise Invalid(kind=info.kind, name=name, reason="metadata.namespace must be a string")
    namespace = _scope(info, namespace)
    if info.namespaced:
        m["namespace"] = namespace
    else:
        m.pop("namespace", None)
    return _Prepared(info, namespace, name, body)


@attrs.define(eq=False)
class KubeStore:
    """The ``Store`` port on a Kubernetes API server; open with ``await KubeStore.open(...)``."""

    _bridge: AsyncioThread
    _client: ApiClient
    _credentials: _Credentials
    settings: KubeSettings
    server: str
    _closed: bool = False
    _watching: set[aiohttp.ClientResponse] = attrs.Factory(set)  # open watch responses, closed by aclose()

    @classmethod
    async def open(
        cls,
        kubeconfig: str | Path | None = None,
        *,
        context: str | None = None,
        in_cluster: bool = False,
        settings: KubeSettings | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> KubeStore:
        """A client of the cluster a kubeconfig names (default ``$KUBECONFIG``, ``~/.kube/config``), or of
        the cluster this pod runs in (``in_cluster``).  Nothing is sent until the first request."""
        settings = settings or KubeSettings()
        path = _expanded(kubeconfig)
        env = os.environ if environ is None else environ
        bridge = AsyncioThread()
        try:
            client, credentials = await bridge.run(_configure, path, context, in_cluster, settings, env)
        except (ConfigException, OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
            await bridge.aclose()
            where = "in-cluster service account" if in_cluster else f"kubeconfig {str(path or '(default)')!r}"
            raise StoreUnavailable(reason=f"cannot configure a Kubernetes client from the {where}: {exc}") from exc
        except BaseException:
            await bridge.aclose()
            raise
        return cls(bridge, client, credentials, settings, str(client.configuration.host))

    async def __aenter__(self) -> KubeStore:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # --- plumbing (the coroutines run on the loop thread) ---------------------------------------------------

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.settings.request_timeout, connect=self.settings.connect_timeout)

    async def _open_response(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]],
        body: Obj | None,
        limits: aiohttp.ClientTimeout,
        headers: Mapping[str, str] = _HEADERS,
    ) -> aiohttp.ClientResponse:
        """Loop thread: send a request; after a 401, refresh the credentials and send it once more."""

        async def send() -> aiohttp.ClientResponse:
            response: aiohttp.ClientResponse = await self._client.call_api(
                path,
                method,
                query_params=list(query),
                header_params=dict(headers),
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=limits,
            )
            return response

        response = await send()
        if response.status != 401:
            return response
        try:
            retry = await self._credentials.rejected()
        except BaseException:
            response.release()
            raise
        if not retry:
            return response
        response.release()
        return await send()

    async def _exchange(
        self, method: str, path: str, query: Sequence[tuple[str, str]], body: Obj | None, headers: Mapping[str, str]
    ) -> tuple[int, bytes]:
        """Loop thread: one request and its whole answer; the response is always released."""
        response = await self._open_response(method, path, query, body, self._timeout(), headers)
        try:
            return response.status, await response.read()
        finally:
            response.release()

    async def _call(
        self,
        method: str,
        path: str,
        target: _Target,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Obj | None = None,
        headers: Mapping[str, str] = _HEADERS,
    ) -> Any:
        """One request from trio: the decoded answer, or the port's error."""
        try:
            status, data = await self._bridge.run(self._exchange, method, path, query, body, headers)
        except _TRANSPORT_ERRORS as exc:
            raise _unavailable(target, exc) from exc
        if 200 <= status < 300:
            decoded = _decode(data)
            if decoded is None:
                raise StoreUnavailable(reason=f"{target.verb} {target.kind}: the API server sent no JSON")
            return decoded
        raise _error(status, data, target)

    # --- the Store port ------------------------------------------------------------------------------------

    async def get(self, kind: str, name: str, namespace: str = "") -> Obj:
        """The object, or ``NotFound``."""
        info = kind_info(kind)
        ns = _scope(info, namespace)
        target = _Target(info.kind, name, ns, verb="get")
        if not name:
            raise NotFound(kind=info.kind, name=name, namespace=ns)
        return _typed(info, await self._call("GET", _path(info, ns, name), target))

    async def get_metadata(self, kind: str, name: str, namespace: str = "") -> dict[str, Any]:
        """The object's metadata, or ``NotFound``: a ``PartialObjectMetadata`` GET, as fresh as ``get`` (read from
        etcd), whose answer leaves out the spec and status."""
        info = kind_info(kind)
        ns = _scope(info, namespace)
        target = _Target(info.kind, name, ns, verb="get")
        if not name:
            raise NotFound(kind=info.kind, name=name, namespace=ns)
        answer = await self._call("GET", _path(info, ns, name), target, headers=_METADATA_ONLY)
        metadata = answer.get("metadata")
        if not isinstance(metadata, dict):
            raise StoreUnavailable(reason=f"get {info.kind} {name}: the API server's answer has no metadata")
        return metadata

    async def _list_page(
        self, info: Kind, namespace: str, selector: str, limit: int, token: str = "", fields: str = ""
    ) -> tuple[list[Obj], str, str]:
        query = [("limit", str(limit))]
        if selector:
            query.append(("labelSelector", selector))
        if fields:
            query.append(("fieldSelector", fields))
        if token:
            query.append(("continue", token))
        target = _Target(info.kind, verb="list")
        answer = await self._call("GET", _path(info, namespace), target, query=query)
        m = answer.get("metadata") or {}
        items = [_typed(info, item) for item in answer.get("items") or []]
        return items, str(m.get("resourceVersion") or ""), str(m.get("continue") or "")

    async def list(
        self, kind: str, *, namespace: str | None = None, label_selector: str = "", field_selector: str = ""
    ) -> ObjectList:
        """Objects of a kind in name order, optionally in one namespace and matching a label and a field selector.

        Read in pages of ``list_page_size``, all at the version of the first page; when the server no
        longer has that version (410 on a ``continue``), the list starts over.
        """
        info = kind_info(kind)
        selector = str(parse_selector(label_selector))  # NB: our errors for bad selectors, not the server's
        fields = str(parse_field_selector(field_selector, info.kind, info.namespaced))
        ns = namespace if info.namespaced and namespace else ""
        size = self.settings.list_page_size
        for _attempt in range(3):
            items, version, token = await self._list_page(info, ns, selector, size, fields=fields)
            try:
                while token:
                    more, _, token = await self._list_page(info, ns, selector, size, token, fields)
                    items.extend(more)
            except Gone:
                continue
            items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
            return ObjectList(items=items, resource_version=version)
        raise StoreUnavailable(reason=f"list {info.kind}: the list kept expiring while it was paged")

    async def create(self, obj: Obj) -> Obj:
        """Store a new object; the server fills uid, resourceVersion, creationTimestamp; ``AlreadyExists``."""
        p = _prepare(obj)
        if p.body["metadata"].get("resourceVersion"):
            raise Invalid(kind=p.info.kind, name=p.name, reason="resourceVersion must not be set on create")
        answer = await self._call("POST", _path(p.info, p.namespace), p.target("create"), body=p.body)
        return _typed(p.info, answer)

    async def _put(self, p: _Prepared, subresource: str) -> Obj:
        verb = "update_status" if subresource else "update"
        answer = await self._call("PUT", _path(p.info, p.namespace, p.name, subresource), p.target(verb), body=p.body)
        return _typed(p.info, answer)

    async def _write(self, p: _Prepared, subresource: str = "") -> Obj:
        """PUT guarded by the object's resourceVersion; without one, by the version we read (last write wins)."""
        m = p.body["metadata"]
        if not p.name:
            raise Invalid(kind=p.info.kind, name="", reason="metadata.name is required")
        if m.get("resourceVersion"):
            return await self._put(p, subresource)
        sent_uid = str(m.get("uid") or "")
        conflict: Conflict | None = None
        for _attempt in range(_BLIND_WRITE_ATTEMPTS):
            current = await self.get(p.info.kind, p.name, p.namespace)
            stored_uid = current["metadata"]["uid"]
            if sent_uid and sent_uid != stored_uid:
                reason = f"metadata.uid is immutable (stored {stored_uid})"
                raise Invalid(kind=p.info.kind, name=p.name, reason=reason)
            m["resourceVersion"] = current["metadata"]["resourceVersion"]
            try:
                return await self._put(p, subresource)
            except Conflict as exc:
                conflict = exc
        assert conflict is not None
        raise conflict

    async def update(self, obj: Obj) -> Obj:
        """Replace metadata and spec (and status, for kinds without a status subresource).

        Guarded by ``metadata.resourceVersion`` when set (``Conflict``); without one, last write wins.
        """
        return await self._write(_prepare(obj))

    async def update_status(self, obj: Obj) -> Obj:
        """Replace only ``status`` through the status subresource, guarded like ``update``.

        ``Invalid`` for kinds without a status subresource: they carry status through ``update``.
        """
        p = _prepare(obj)
        if not p.info.status_subresource:
            reason = f"{p.info.kind} has no status subresource; its status is written by update"
            raise Invalid(kind=p.info.kind, name=p.name, reason=reason)
        return await self._write(p, "status")

    async def review_token(self, token: str) -> str | None:
        """Who a bearer token belongs to, by a TokenReview (``authentication.k8s.io/v1``): the user name, or
        ``None`` when the server does not accept the token.  The ``TokenReviewer`` capability of the port."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        target = _Target("TokenReview", verb="create")
        answer = await self._call("POST", "/apis/authentication.k8s.io/v1/tokenreviews", target, body=body)
        status = answer.get("status") or {}
        if not status.get("authenticated"):
            return None
        return str((status.get("user") or {}).get("username") or "") or None

    async def request_token(
        self, namespace: str, account: str, *, create: bool = False, seconds: int = 3600
    ) -> tuple[str, bool]:
        """A token of ServiceAccount ``namespace/account`` by a TokenRequest, as ``kubectl create token`` gets
        one, valid ``seconds`` (the server may cut it to its maximum), and whether the account was made here
        (``create``: when missing; a server that keeps no ServiceAccounts, 404, is asked anyway).  For ``spider
        loadtest``'s agents, which run outside a Pod."""
        created = False
        if create:
            body = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}}
            target = _Target("ServiceAccount", account, namespace, verb="create")
            # NB: StoreUnavailable too: a server without ServiceAccounts answers 404 without a Status; a server that
            # is down fails the TokenRequest below the same way
            with contextlib.suppress(AlreadyExists, NotFound, StoreUnavailable):
                await self._call("POST", f"/api/v1/namespaces/{quote(namespace)}/serviceaccounts", target, body=body)
                created = True
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": seconds},
        }
        target = _Target("TokenRequest", account, namespace, verb="create")
        path = f"/api/v1/namespaces/{quote(namespace)}/serviceaccounts/{quote(account)}/token"
        answer = await self._call("POST", path, target, body=request)
        return str((answer.get("status") or {}).get("token") or ""), created

    async def delete_service_account(self, namespace: str, account: str) -> None:
        """Delete a ServiceAccount (``request_token(create=True)`` made it); ``NotFound`` when it is gone."""
        target = _Target("ServiceAccount", account, namespace, verb="delete")
        await self._call("DELETE", f"/api/v1/namespaces/{quote(namespace)}/serviceaccounts/{quote(account)}", target)

    async def delete(
        self, kind: str, name: str, namespace: str = "", *, resource_version: str = "", grace_seconds: int | None = None
    ) -> None:
        """Delete, or mark for deletion when finalizers remain; ``NotFound``, ``Conflict``."""
        info = kind_info(kind)
        ns = _scope(info, namespace)
        target = _Target(info.kind, name, ns, resource_version, "delete")
        if not name:
            raise NotFound(kind=info.kind, name=name, namespace=ns)
        body: Obj = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if resource_version:
            body["preconditions"] = {"resourceVersion": resource_version}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        await self._call("DELETE", _path(info, ns, name), target, body=body)

    def watch(
        self, kind: str, *, namespace: str | None = None, label_selector: str = "", resource_version: str = ""
    ) -> AsyncIterator[WatchEvent]:
        """Changes after ``resource_version`` in order, until the caller stops iterating.

        Empty: from now; ``"0"``: a synthetic ``ADDED`` per current object first.  ``Gone`` when the server
        no longer has the events after that version.  Kind and selector are checked here, before iterating.
        """
        info = kind_info(kind)
        selector = str(parse_selector(label_selector))
        ns = namespace if info.namespaced and namespace else ""
        return self._watch(info, ns, selector, resource_version)

    async def _watch_start(self, info: Kind, namespace: str, selector: str, start: str) -> tuple[Sequence[Obj], str]:
        """The objects a watch from ``""`` (none) or ``"0"`` (all) starts with, and the version it goes on
        from; retried while the server is unreachable, within ``watch_reconnect_budget``."""
        failing_since: float | None = None
        delay = 0.1
        while True:
            try:
                if start == "":
                    _, version, _ = await self._list_page(info, namespace, selector, 1)
                    return [], version
                listing = await self.list(info.kind, namespace=namespace or None, label_selector=selector)
                return listing.items, listing.resource_version
            except StoreUnreachable as exc:
                now = trio.current_time()
                failing_since = now if failing_since is None else failing_since
                if now - failing_since > self.settings.watch_reconnect_budget:
                    raise
                log.warning("watch %s cannot start (%s); retrying", info.plural, exc)
            await trio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 5.0)

    async def _watch(self, info: Kind, namespace: str, selector: str, start: str) -> AsyncIterator[WatchEvent]:
        version = start
        if start in ("", "0"):
            initial, version = await self._watch_start(info, namespace, selector, start)
            for item in initial:
                yield WatchEvent("ADDED", item)
        failing_since: float | None = None
        delay = 0.1
        while True:
            opened, delivered = trio.current_time(), False
            try:
                async with contextlib.aclosing(self._watch_once(info, namespace, selector, version)) as events:
                    async for event in events:
                        version = event.version
                        delivered = True
                        if event.type is None:  # a bookmark: only the version moves
                            continue
                        failing_since, delay = None, 0.1
                        yield WatchEvent(event.type, event.object)
                if delivered or trio.current_time() - opened >= QUICK_WATCH_END:
                    failing_since, delay = None, 0.1  # NB: the server ended the watch (timeoutSeconds): go on at once
                    continue
                # ended at once with nothing in it (a proxy closing streams): no hot loop, but no budget spent
                await trio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, QUICK_WATCH_END)
                continue
            except StoreUnavailable as exc:
                now = trio.current_time()
                failing_since = now if failing_since is None else failing_since
                if now - failing_since > self.settings.watch_reconnect_budget:
                    raise
                log.warning("watch %s from resourceVersion %s failed (%s); reconnecting", info.plural, version, exc)
            await trio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 5.0)

    async def _watch_once(
        self, info: Kind, namespace: str, selector: str, version: str
    ) -> AsyncGenerator[_RawEvent, None]:
        """One watch request: its events until the server ends it; ``StoreUnavailable`` when it breaks."""
        query = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", version),
            ("timeoutSeconds", str(int(self.settings.watch_timeout * random.uniform(1.0, 2.0)))),
        ]
        if selector:
            query.append(("labelSelector", selector))
        target = _Target(info.kind, namespace=namespace, sent_version=version, verb="watch")
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.settings.connect_timeout,
            sock_read=2 * self.settings.watch_timeout + self.settings.watch_read_slack,
        )
        try:
            response = await self._bridge.run(
                self._open_response, "GET", _path(info, namespace), query, None, timeout, on_abandon=_close_response
            )
        except _TRANSPORT_ERRORS as exc:
            raise _unavailable(target, exc) from exc
        self._watching.add(response)
        try:
            if response.status != 200:
                try:
                    data = await self._bridge.run(response.read)
                except _TRANSPORT_ERRORS as exc:
                    raise _unavailable(target, exc) from exc
                raise _error(response.status, data, target)
            while True:
                try:
                    line = await self._bridge.run(response.content.readline)
                except _TRANSPORT_ERRORS as exc:
                    raise _unavailable(target, exc) from exc
                if not line:
                    return  # the server ended the watch
                if not line.strip():
                    continue
                event = _decode(line)
                if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
                    raise StoreUnavailable(reason=f"watch {info.kind}: undecodable event {line[:200]!r}")
                kind, obj = str(event.get("type")), event["object"]
                if kind == "ERROR":
                    code = obj.get("code")
                    if code == 410:
                        raise Gone(resource_version=version)
                    if _INVALID_VERSION in str(obj.get("message") or ""):
                        raise Invalid(kind=info.kind, name="", reason=str(obj["message"]))
                    raise StoreUnavailable(reason=f"watch {info.kind}: ERROR {code} {obj.get('message', '')}")
                obj_version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind == "BOOKMARK":
                    yield _RawEvent(None, obj, obj_version)
                elif kind in _EVENT_TYPES:
                    yield _RawEvent(_EVENT_TYPES[kind], _typed(info, obj), obj_version)
                else:
                    raise StoreUnavailable(reason=f"watch {info.kind}: unknown event type {kind!r}")
        finally:
            self._watching.discard(response)
            self._bridge.call_soon(response.close)

    async def aclose(self) -> None:
        """Close the HTTP sessions and stop the loop thread; later calls raise ``trio.ClosedResourceError``."""
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            try:
                watching, self._watching = list(self._watching), set()  # NB: the set is the trio thread's
                await self._bridge.run(self._close_client, watching)
            finally:
                await self._bridge.aclose()

    async def _close_client(self, watching: Sequence[aiohttp.ClientResponse]) -> None:
        """Loop thread: end the watches still open (their generators may never be resumed), then the client."""
        for response in watching:
            response.close()
        await self._client.close()


def _close_response(response: aiohttp.ClientResponse) -> None:
    response.close()


@attrs.frozen
class _RawEvent:
    """One line of a watch stream, bookmarks included."""

    type: EventType | None  # None for a bookmark
    object: Obj
    version: str
