"""The simulated nodes and the controller: real ``spider agent`` and ``spider controller`` processes on one store.

Owns ``AgentFleet`` (starting the agents, waiting until each is healthy, reading their counters and memory,
stopping them), ``ControllerProcess`` (with a Kubernetes store, the ``spider controller`` a cluster runs: its own
Lease, loopback ports no other run uses, waited for until it leads; its pool host's counters), ``AgentClient``
(HTTP/1.1 with keep-alive over an agent's unix socket; ``TcpClient`` the same over TCP), the pool the agents
allocate from, opening the store and cleaning up (the scratch directory; on a Kubernetes store the run's pool and
endpoints, our finalizer included, and the leftovers of an earlier run that crashed).  Load goes only to local
unix sockets, loopback ports and local processes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import h11
import trio

from actors.stores.port import Conflict, NotFound, Store
from actors.stores.selection import StoreSettings, open_store
from actors.stores.validating import ValidatingStore
from actors.tools.loadtest.scenario import NAMESPACE, AddressPlan
from spider.endpoint import KIND as ENDPOINT
from spider.endpoint import Endpoint
from spider.errors import SpiderError
from spider.kinds import FINALIZER
from spider.pool import KIND as POOL
from spider.reconcile import holds_addresses, terminating

LABEL = "spider.io/loadtest"
"""The label on every pool a load test makes (value ``"true"``): how a later run finds an earlier one's leftovers."""
OWNER = "spider.io/loadtest-owner"
"""The annotation naming the process that made a pool (``host:pid``): a live run's pool is never a leftover."""
POOL_PREFIX = "loadtest-"
"""Every load test pool's name starts with it."""
STATS_PATH = "/v1/spider/stats"
"""The counters, on an agent's socket and on the controller."""
AGENT_ACCOUNT = "spider-lt-agent"
"""The ServiceAccount the agents show the pool host a token of (made, and a token requested, by the run)."""


class ConnectionLost(Exception):
    """The agent closed a kept-alive connection; the request is sent again on a new one."""


@attrs.define
class AgentClient:
    """HTTP/1.1 with keep-alive over an agent's unix socket (h11): one connection, one request at a time."""

    path: Path
    _stream: trio.abc.Stream | None = None
    _conn: h11.Connection | None = None

    async def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names) and body; a stale kept-alive connection is re-opened once."""
        for attempt in range(2):
            fresh = self._stream is None
            try:
                return await self._exchange(method, target, body)
            except (ConnectionLost, trio.BrokenResourceError, h11.RemoteProtocolError):
                await self.aclose()
                if fresh or attempt:
                    raise
        raise AssertionError("unreachable")

    async def _open(self) -> trio.abc.Stream:
        return await trio.open_unix_socket(str(self.path))

    def _host(self) -> str:
        return "spider-agent"

    async def _exchange(self, method: str, target: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if self._stream is None:
            self._stream = await self._open()
            self._conn = h11.Connection(h11.CLIENT)
        stream, conn = self._stream, self._conn
        assert conn is not None
        headers = [("Host", self._host()), ("Content-Length", str(len(body)))]
        if body:
            headers.append(("Content-Type", "application/json"))
        data = conn.send(h11.Request(method=method, target=target, headers=headers))
        data += conn.send(h11.Data(data=body)) if body else b""
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)
        status, answer_headers, payload = 0, {}, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                chunk = await stream.receive_some(65536)
                if not chunk and status == 0:
                    raise ConnectionLost
                conn.receive_data(bytes(chunk))
            elif isinstance(event, h11.Response):
                status = event.status_code
                answer_headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                payload += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionLost
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            await self.aclose()
        else:
            conn.start_next_cycle()
        return status, answer_headers, bytes(payload)

    async def aclose(self) -> None:
        """Close the connection (the next request opens a new one)."""
        if self._stream is not None:
            await self._stream.aclose()
        self._stream, self._conn = None, None


@attrs.define
class TcpClient(AgentClient):
    """The same over TCP, or TLS for ``https://`` (loopback to a process we started: its certificate is not
    checked, since the controller's CA is its own and only counters are read)."""

    address: tuple[str, int] = ("127.0.0.1", 0)
    tls: bool = False

    @classmethod
    def for_url(cls, url: str) -> TcpClient:
        """A client for ``http://HOST:PORT`` or ``https://HOST:PORT`` (the URL's path is the caller's)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port:
            raise ValueError(f"{url!r} is not http(s)://HOST:PORT/...")
        return cls(Path(), address=(parts.hostname, parts.port), tls=parts.scheme == "https")

    async def _open(self) -> trio.abc.Stream:
        stream: trio.abc.Stream = await trio.open_tcp_stream(*self.address)
        if self.tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            stream = trio.SSLStream(stream, context, server_hostname=self.address[0], https_compatible=True)
        return stream

    def _host(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"


async def get_json(client: AgentClient, target: str, patience: float = 5.0) -> Any:
    """``GET target`` as JSON; ``None`` when it does not answer 200 with JSON in time (or at all)."""
    try:
        with trio.move_on_after(patience):
            status, _, body = await client.request("GET", target)
            return json.loads(body) if status == 200 else None
    except (OSError, ValueError, trio.BrokenResourceError, h11.ProtocolError, ConnectionLost):
        return None
    finally:
        with trio.CancelScope(shield=True):
            await client.aclose()
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the kernel's pick), so runs and tests sharing a machine do not collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


_FLAGS: dict[str, frozenset[str]] = {}


async def supported_flags(command: str) -> frozenset[str]:
    """The ``--flags`` ``spider COMMAND --help`` lists (asked once per process), so the harness passes only what
    the installed agent and controller know."""
    if command not in _FLAGS:
        done = await trio.run_process(
            [sys.executable, "-m", "actors", command, "--help"], capture_stdout=True, capture_stderr=True, check=False
        )
        _FLAGS[command] = frozenset(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", done.stdout.decode()))
    return _FLAGS[command]


async def start_process(command: list[str], log_path: Path, extra_env: Mapping[str, str] | None = None) -> trio.Process:
    """A child process logging to ``log_path``, in a session of its own: a Ctrl-C at the terminal reaches only
    the harness, which then stops its children itself after cleaning up with their help.  ``extra_env`` is
    added to the harness's environment."""
    env = {k: v for k, v in os.environ.items() if k != "SPIDER_KUBECONFIG"} | dict(extra_env or {})
    log = log_path.open("ab")
    try:
        return await trio.lowlevel.open_process(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
    finally:
        log.close()


async def stop_processes(processes: Sequence[trio.Process], grace: float) -> None:
    """SIGTERM each, wait for it to drain; SIGKILL what is still there after ``grace``."""
    for proc in processes:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    with trio.move_on_after(grace):
        for proc in processes:
            await proc.wait()
    for proc in processes:
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()


def log_tail(path: Path, chars: int = 1500) -> str:
    """The end of a child's log."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


@attrs.define
class ControllerProcess:
    """``spider controller`` as a cluster runs it, against the run's API server, with a Lease of its own (so runs
    sharing a server do not take each other's), its health endpoints and pool host on free loopback ports."""

    dir: Path
    store: StoreSettings
    run_id: str
    namespace: str = NAMESPACE
    """Where its Lease lives: ``default`` exists on every cluster."""
    host: str = "127.0.0.1"
    health_port: int = attrs.field(factory=free_port)
    pool_host_port: int = attrs.field(factory=free_port)
    webhook_port: int = attrs.field(factory=free_port)
    extra: tuple[str, ...] = ()
    """Options added to its command line as given."""
    token: AgentToken | None = None
    """The agents' ServiceAccount token for the pool host (``None``: they have none and forward nothing)."""
    token_problem: str = ""
    """Why there is no token, when there is none."""
    process: trio.Process | None = None

    @property
    def lease_name(self) -> str:
        """The run's own Lease."""
        return f"spider-lt-{self.run_id}"

    @property
    def identity(self) -> str:
        """Its leader-election identity."""
        return f"spider-lt-controller-{self.run_id}"

    @property
    def log(self) -> Path:
        """Its log file."""
        return self.dir / "controller.log"

    @property
    def stats_urls(self) -> list[str]:
        """Where its counters are asked for, in order: the health port, then the pool host's port."""
        return [
            f"http://{self.host}:{self.health_port}{STATS_PATH}",
            f"https://{self.host}:{self.pool_host_port}{STATS_PATH}",
        ]

    def command(self, known: frozenset[str] = frozenset()) -> list[str]:
        """Its command line; the pool host's options only when the controller knows them (``known``)."""
        cmd = [sys.executable, "-m", "actors", "controller", "--store", str(self.store.store_path)]
        if self.store.kubeconfig is not None:
            cmd += ["--kubeconfig", str(self.store.kubeconfig)]
            if self.store.context:
                cmd += ["--context", self.store.context]
        cmd += ["--namespace", self.namespace, "--identity", self.identity, "--lease-name", self.lease_name]
        cmd += ["--health-host", self.host, "--health-port", str(self.health_port)]
        cmd += ["--webhook-host", self.host, "--webhook-port", str(self.webhook_port)]
        return cmd + _flags(CONTROLLER_POOL_HOST_FLAGS, self, known) + list(self.extra)

    def agent_flags(self, known: frozenset[str]) -> list[str]:
        """What an agent is told to find this controller's pool host by (only the options it knows)."""
        return _flags(AGENT_POOL_HOST_FLAGS, self, known)

    async def start(self, patience: float = 120.0) -> None:
        """Start it, then wait until it leads and its informers have listed everything."""
        self.process = await start_process(self.command(await supported_flags("controller")), self.log)
        client = TcpClient(Path(), address=(self.host, self.health_port))
        with trio.fail_after(patience):
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the controller exited with {self.process.returncode}:\n{log_tail(self.log)}")
                info = await get_json(client, "/v1/runtime/leader", patience=2.0)
                if isinstance(info, dict) and info.get("leading") and info.get("synced"):
                    return
                await trio.sleep(0.1)

    @property
    def running(self) -> bool:
        """Started and not exited."""
        return self.process is not None and self.process.poll() is None

    async def statistics(self) -> dict[str, Any] | None:
        """Its ``GET /v1/spider/stats`` (the first of ``stats_urls`` that answers) with its memory (KiB) added;
        ``None`` when none answers (a controller without a pool host)."""
        if not self.running:
            return None
        for url in self.stats_urls:
            stats = await get_json(TcpClient.for_url(url), STATS_PATH)
            if isinstance(stats, dict):
                assert self.process is not None
                stats["rss_kib"], stats["peak_rss_kib"] = rss_kib(self.process.pid)
                return stats
        return None

    async def stop(self, grace: float = 30.0) -> None:
        """SIGTERM (it steps down and releases its Lease); SIGKILL after ``grace``."""
        if self.process is not None:
            await stop_processes([self.process], grace)


Flags = dict[str, Callable[[ControllerProcess], str | None]]
CONTROLLER_POOL_HOST_FLAGS: Flags = {
    "--pool-host-host": lambda c: c.host,
    "--pool-host-port": lambda c: str(c.pool_host_port),
    "--pool-host-client": lambda c: c.token.user if c.token else None,
}
"""The controller's pool host options the harness sets, when ``spider controller --help`` lists them."""
AGENT_POOL_HOST_FLAGS: Flags = {
    "--controller-namespace": lambda c: c.namespace,
    "--controller-lease": lambda c: c.lease_name,
    "--pool-host-port": lambda c: str(c.pool_host_port),
    "--pool-host": lambda c: f"{c.host}:{c.pool_host_port}",
    "--pool-host-token-file": lambda c: str(c.token.path) if c.token else None,
}
"""How an agent is told where the pool host is and who it is, when ``spider agent --help`` lists the option."""


def _flags(flags: Flags, controller: ControllerProcess, known: frozenset[str]) -> list[str]:
    out = []
    for flag, value in flags.items():
        given = value(controller)
        if flag in known and given is not None:
            out += [flag, given]
    return out


@attrs.frozen
class AgentToken:
    """A ServiceAccount token for the agents, in a file they read, and the user the pool host is to serve."""

    path: Path
    namespace: str
    account: str
    created_account: bool
    """The run made the ServiceAccount (and deletes it when done)."""

    @property
    def user(self) -> str:
        """The user a TokenReview names for it."""
        return f"system:serviceaccount:{self.namespace}:{self.account}"


def _backend(store: Store) -> Any:
    """The store under the validating layer (whose optional capabilities the harness looks up)."""
    return getattr(store, "inner", store)


AGENT_TOKEN_SECONDS = 24 * 3600
"""How long the agents' token is asked to last: longer than any run (a TokenRequest's default is an hour, after
which the pool host's TokenReviews fail and every agent falls back); the server may cut it to its maximum."""


async def request_agent_token(
    store: Store, directory: Path, namespace: str, account: str = AGENT_ACCOUNT
) -> AgentToken:
    """A token of ServiceAccount ``namespace/account`` (made when missing) by a TokenRequest, as ``kubectl create
    token`` asks for one (valid ``AGENT_TOKEN_SECONDS``), written to ``directory/agent-token``; ``LookupError``
    when the store cannot ask for one (the embedded store), else what the server answered."""
    request = getattr(_backend(store), "request_token", None)
    if request is None:
        raise LookupError("the store cannot request ServiceAccount tokens")
    token, created = await request(namespace, account, create=True, seconds=AGENT_TOKEN_SECONDS)
    if not token:
        raise LookupError(f"the TokenRequest for {namespace}/{account} was answered without a token")
    path = directory / "agent-token"
    path.write_text(token)
    path.chmod(0o600)
    return AgentToken(path, namespace, account, created)


async def delete_account(store: Store, namespace: str, account: str) -> None:
    """Delete a ServiceAccount the harness's agents used (their tokens stop working); gone already is fine."""
    delete = getattr(_backend(store), "delete_service_account", None)
    if delete is not None:
        with suppress(NotFound):
            await delete(namespace, account)


def rss_kib(pid: int) -> tuple[int, int]:
    """Resident set size now and at its peak (``VmRSS``, ``VmHWM``) in KiB; zeros when the process is gone."""
    now = peak = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    now = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1])
    except OSError:
        pass
    return now, peak


@attrs.define
class AgentFleet:
    """One ``spider agent`` process per simulated node, on one store."""

    dir: Path
    nodes: int
    store: StoreSettings
    pool_host: ControllerProcess | None = None
    """The controller whose pool host the agents are told about (also with ``--no-controller``: then nobody
    answers there and they fall back to their own pool actors)."""
    processes: list[trio.Process] = attrs.field(factory=list)
    env: Mapping[str, str] = attrs.field(factory=dict)
    """Added to every agent's environment (the SpiderSubnet scenario's wait for an application's pool)."""
    extra: tuple[str, ...] = ()
    """Options added to every agent's command line as given."""

    def socket(self, node: int) -> Path:
        """Node ``node``'s agent socket."""
        return self.dir / f"node-{node}.sock"

    def command(self, node: int, known: frozenset[str] = frozenset()) -> list[str]:
        """The agent's command line (the pool host's options only when the agent knows them: ``known``)."""
        cmd = [sys.executable, "-m", "actors", "agent", "--socket", str(self.socket(node))]
        cmd += ["--node", f"node-{node}", "--store", str(self.store.store_path)]
        if self.store.kubeconfig is not None:
            cmd += ["--kubeconfig", str(self.store.kubeconfig)]
            if self.store.context:
                cmd += ["--context", self.store.context]
        if self.pool_host is not None:
            cmd += self.pool_host.agent_flags(known)
        return cmd + list(self.extra)

    @property
    def running(self) -> bool:
        """Some agent started and not exited."""
        return any(proc.returncode is None for proc in self.processes)

    async def start(self, patience: float = 120.0) -> None:
        """Start every agent (again, once they all stopped), then wait until each answers ``/v1/ipam/healthy``."""
        if self.running:
            raise RuntimeError("the agents are running already")
        self.processes.clear()
        known = await supported_flags("agent") if self.pool_host is not None else frozenset[str]()
        for node in range(self.nodes):
            log = self.dir / f"node-{node}.log"
            self.processes.append(await start_process(self.command(node, known), log, self.env))
        with trio.fail_after(patience):
            for node, proc in enumerate(self.processes):
                while True:
                    if proc.poll() is not None:
                        tail = log_tail(self.dir / f"node-{node}.log")
                        raise RuntimeError(f"agent of node-{node} exited with {proc.returncode}:\n{tail}")
                    try:
                        client = AgentClient(self.socket(node))
                        status, _, _ = await client.request("GET", "/v1/ipam/healthy")
                        await client.aclose()
                        if status == 200:
                            break
                    except (OSError, trio.BrokenResourceError, ConnectionLost):
                        pass
                    await trio.sleep(0.05)

    async def statistics(self) -> list[dict[str, Any]]:
        """Every agent's ``GET /v1/spider/stats`` with its memory (KiB) added."""
        out = []
        for node, proc in enumerate(self.processes):
            client = AgentClient(self.socket(node))
            try:
                status, _, body = await client.request("GET", "/v1/spider/stats")
            finally:
                await client.aclose()
            stats = json.loads(body) if status == 200 else {"pools": {}}
            stats["rss_kib"], stats["peak_rss_kib"] = rss_kib(proc.pid)
            out.append(stats)
        return out

    async def stop(self, grace: float = 30.0) -> None:
        """SIGTERM every agent, wait for it to drain; SIGKILL what is still there after ``grace``."""
        await stop_processes(self.processes, grace)


POOL_COUNTERS = ("requests", "batches", "writes", "conflicts", "looks", "version_reads")
"""The pool actors' counters a load test sums (``PoolStatistics``)."""


def phase_largest_batch(before: Mapping[str, Any], after: Mapping[str, Any]) -> int:
    """One pool actor's largest batch over a phase, from its counters before and after (``largest_batch`` is
    the largest since it started): exact when the phase set a new largest, else an upper bound (no larger than
    the earlier largest, nor than the phase's requests less one for each of its other batches)."""
    largest, earlier = int(after.get("largest_batch", 0)), int(before.get("largest_batch", 0))
    if largest > earlier:
        return largest
    batches = int(after.get("batches", 0)) - int(before.get("batches", 0))
    requests = int(after.get("requests", 0)) - int(before.get("requests", 0))
    return max(0, min(largest, requests - batches + 1)) if batches > 0 else 0


def store_totals(before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """The pool actors' counters summed over every process (agents, or the controller alone) and pool, as
    differences ``after - before``; ``largest_batch`` is the phase's largest of any of them
    (``phase_largest_batch``)."""

    def total(snapshot: Sequence[Mapping[str, Any]]) -> Counter[str]:
        out: Counter[str] = Counter()
        for agent in snapshot:
            for stats in agent.get("pools", {}).values():
                for key in POOL_COUNTERS:
                    out[key] += int(stats.get(key, 0))
        return out

    diff = total(after) - total(before)
    largest = 0
    for n, agent in enumerate(after):
        earlier = before[n].get("pools", {}) if n < len(before) else {}
        for name, stats in agent.get("pools", {}).items():
            largest = max(largest, phase_largest_batch(earlier.get(name, {}), stats))
    return {k: diff.get(k, 0) for k in POOL_COUNTERS} | {"largest_batch": largest}


FORWARD_COUNTERS = ("requests", "looks", "calls", "fallback")


def forwarded_totals(before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]]) -> dict[str, int] | None:
    """The agents' forwarding counters (requests sent to the pool host, last looks it answered, calls made,
    requests that fell back to the agent's own pool actor) summed, ``after - before``; ``None`` when no agent
    reports them."""
    if not any(isinstance(agent.get("forwarded"), Mapping) for agent in after):
        return None

    def total(snapshot: Sequence[Mapping[str, Any]]) -> Counter[str]:
        out: Counter[str] = Counter()
        for agent in snapshot:
            forwarded = agent.get("forwarded")
            if isinstance(forwarded, Mapping):
                for key in FORWARD_COUNTERS:
                    out[key] += int(forwarded.get(key, 0))
        return out

    diff = total(after)
    diff.subtract(total(before))
    return {key: diff.get(key, 0) for key in FORWARD_COUNTERS}


def owner() -> str:
    """This process, as the pools it makes name it: ``host:pid``."""
    return f"{os.uname().nodename}:{os.getpid()}"


def pool_object(name: str, plan: AddressPlan) -> dict[str, Any]:
    """The SpiderIPPool our agents allocate from, labelled as a load test's and annotated with its maker."""
    return {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": POOL,
        "metadata": {"name": name, "labels": {LABEL: "true"}, "annotations": {OWNER: owner()}},
        "spec": {
            "subnet": str(plan.subnet),
            "gateway": str(plan.gateway),
            "ips": [f"{plan.pool.first}-{plan.pool.last}" if plan.pool.size > 1 else str(plan.pool.first)],
        },
    }


@contextmanager
def work_dir(keep: bool) -> Iterator[Path]:
    """A scratch directory with a short path (unix socket paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="spider-lt-", dir="/tmp"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


@asynccontextmanager
async def opened_store(settings: StoreSettings) -> AsyncIterator[Store]:
    """The run's store, validating as the CLI's does, closed even when the run is cancelled."""
    store = ValidatingStore(await open_store(settings))
    try:
        yield store
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()


def _alive(maker: str) -> bool:
    """Whether the ``host:pid`` that made a pool is a process running on this host (another host's: assumed)."""
    host, _, pid = maker.rpartition(":")
    if host != os.uname().nodename:
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (ValueError, PermissionError):
        return True
    return True


def is_leftover(obj: Mapping[str, Any]) -> bool:
    """Whether a pool is an earlier load test's: labelled and named as ours, and being deleted or made by a
    process of this host that is gone (a live run's pool, here or elsewhere, is left alone)."""
    meta = obj.get("metadata") or {}
    if (meta.get("labels") or {}).get(LABEL) != "true" or not str(meta.get("name", "")).startswith(POOL_PREFIX):
        return False
    maker = (meta.get("annotations") or {}).get(OWNER)
    return terminating(obj) or (isinstance(maker, str) and not _alive(maker))


async def drop_endpoint(store: Store, obj: Mapping[str, Any]) -> bool:
    """Delete a SpiderEndpoint, our finalizer first; ``False`` when it was gone already."""
    meta = obj["metadata"]
    name, namespace = meta["name"], meta.get("namespace", "")
    for _ in range(5):
        try:
            if FINALIZER in (meta.get("finalizers") or []):
                fresh = {**obj, "metadata": {**meta, "finalizers": [f for f in meta["finalizers"] if f != FINALIZER]}}
                await store.update(fresh)
            await store.delete(ENDPOINT, name, namespace)
            return True
        except NotFound:
            return False
        except Conflict:
            obj = await store.get(ENDPOINT, name, namespace)
            meta = obj["metadata"]
    return False


async def drop_finalizer(store: Store, pool: str) -> str:
    """Our finalizer off a terminating pool that holds no address, as the controller would; what was done."""
    for _ in range(5):
        try:
            obj = await store.get(POOL, pool)
        except NotFound:
            return "gone"
        finalizers = list(obj["metadata"].get("finalizers") or [])
        if not terminating(obj):
            return "not being deleted"
        if holds_addresses(obj):
            return "holds addresses: finalizer kept"
        if FINALIZER not in finalizers:
            return "waits for other finalizers"
        try:
            await store.update(
                {**obj, "metadata": {**obj["metadata"], "finalizers": [f for f in finalizers if f != FINALIZER]}}
            )
            return "finalizer removed"
        except NotFound:
            return "gone"
        except Conflict:
            continue
    return "finalizer kept: it kept changing"


async def wait_gone(store: Store, pool: str, patience: float) -> bool:
    """Whether the pool is gone within ``patience`` seconds (the controller removes our finalizer)."""
    with trio.move_on_after(patience):
        while True:
            try:
                await store.get(POOL, pool)
            except NotFound:
                return True
            await trio.sleep(0.1)
    return False


async def remove_pool(store: Store, pool: str, *, endpoints_of: str = "", controller: bool = False) -> str:
    """Remove a load test's pool from a Kubernetes store (an embedded one is thrown away whole) and the
    endpoints of run ``endpoints_of`` (left behind only when a run failed): delete it, give a running
    ``controller`` a moment to remove our finalizer, else remove it here once the pool is seen empty.
    Returns what happened, for the report."""
    dropped = 0
    if endpoints_of:
        for obj in (await store.list(ENDPOINT, namespace=NAMESPACE)).items:
            if Endpoint.from_object(obj).uid.startswith(f"{endpoints_of}-") and await drop_endpoint(store, obj):
                dropped += 1
    note = f"{dropped} endpoints deleted, " if dropped else ""
    try:
        await store.delete(POOL, pool)
    except NotFound:
        return f"pool {pool}: {note}gone already"
    if controller and await wait_gone(store, pool, 10.0):
        return f"pool {pool}: {note}deleted (the controller removed its finalizer)"
    outcome = await drop_finalizer(store, pool)
    return f"pool {pool}: {note}deleted, {outcome}"


async def remove_leftovers(store: Store) -> list[str]:
    """An earlier, crashed run's pools (``is_leftover``) and their endpoints removed where they hold no
    address; what was removed or left, for the report."""
    notes: list[str] = []
    pools = [obj for obj in (await store.list(POOL, label_selector=f"{LABEL}=true")).items if is_leftover(obj)]
    if not pools:
        return notes
    names = {obj["metadata"]["name"] for obj in pools}
    for obj in (await store.list(ENDPOINT, namespace=NAMESPACE)).items:
        used = {pool for nic in Endpoint.from_object(obj).nics for _, pool, _ in nic.pools()}
        if used and used <= names and not any(holds_addresses(p) for p in pools if p["metadata"]["name"] in used):
            await drop_endpoint(store, obj)
    for obj in pools:
        name = obj["metadata"]["name"]
        if holds_addresses(obj):
            notes.append(f"leftover pool {name}: holds addresses, kept (free them with `spider check --reclaim`)")
            continue
        with suppress(NotFound):
            await store.delete(POOL, name)
        outcome = await drop_finalizer(store, name)
        notes.append(f"leftover pool {name}: {'removed' if outcome in ('gone', 'finalizer removed') else outcome}")
    return notes


async def others_running(store: Store, pool: str) -> bool:
    """Whether another load test than the one of ``pool`` may be running on this server: a load test pool of
    a live process (``is_leftover``: another host's counts as live)."""
    pools = (await store.list(POOL, label_selector=f"{LABEL}=true")).items
    return any(obj["metadata"]["name"] != pool and not is_leftover(obj) for obj in pools)


async def remove_controller_objects(store: Store, controller: ControllerProcess, pool: str = "") -> list[str]:
    """The run's Lease (released by the stopped controller) and the agents' ServiceAccount: when the run made
    it, or when no other load test may be using it (one that a crashed run made is the harness's too: its name
    is ours alone); what was done.  The controller's CA Secret and ConfigMap stay: the next run's controller
    uses the same CA."""
    notes = []
    if controller.process is not None:
        try:
            await store.delete("Lease", controller.lease_name, controller.namespace)
            notes.append(f"lease {controller.namespace}/{controller.lease_name}: deleted")
        except NotFound:
            pass
        except (SpiderError, OSError) as exc:
            notes.append(f"lease {controller.namespace}/{controller.lease_name}: not deleted: {exc}")
    token = controller.token
    account = f"{controller.namespace}/{token.account if token else AGENT_ACCOUNT}"
    made = token is not None and token.created_account
    try:
        if made or (pool and not await others_running(store, pool)):
            await delete_account(store, controller.namespace, token.account if token else AGENT_ACCOUNT)
            notes.append(f"serviceaccount {account}: deleted")
    except (SpiderError, OSError) as exc:
        if made:  # NB: else only a try (a server that keeps no ServiceAccounts answers 404: nothing to say)
            notes.append(f"serviceaccount {account}: not deleted: {exc}")
    return notes
