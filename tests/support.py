"""Helpers shared by the agent, CNI and network-namespace tests: short socket paths, the installed shim,
agents in this process or as real processes, plain HTTP over a unix socket, and pool objects."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from actors.agent import AgentSettings, open_agent
from actors.servers.agent_api import AgentApi
from actors.stores.port import Store
from actors.stores.sqlite import SqliteStore
from actors.stores.validating import ValidatingStore
from actors.tools.launcher import install_cni
from actors.tools.manifests import apply

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_DIR = Path("/usr/lib/cni")
VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


@contextmanager
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path: unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="sp", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def installed_shim(bin_dir: Path) -> Path:
    """The ``spiderpool`` plugin installed exactly as ``spider install-cni`` installs it."""
    path = install_cni(bin_dir)[0]  # the coordinator and ifacer shims are installed beside it
    return path


def pod_spec(**more: Any) -> dict[str, Any]:
    """The least Pod spec kube-apiserver accepts (one named container with an image), plus ``more``."""
    return {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9"}], **more}


def pool_object(name: str, subnet: str, ips: list[str], **spec: Any) -> dict[str, Any]:
    """A SpiderIPPool manifest."""
    return {
        "apiVersion": "spiderpool.spidernet.io/v2beta1",
        "kind": "SpiderIPPool",
        "metadata": {"name": name},
        "spec": {"subnet": subnet, "ips": ips, **spec},
    }


def pod_args(name: str, uid: str, namespace: str = "default") -> str:
    """``CNI_ARGS`` as a kubelet passes them."""
    return (
        f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};"
        f"K8S_POD_INFRA_CONTAINER_ID=x;K8S_POD_UID={uid}"
    )


def netconf(socket_path: Path | str, version: str = "1.0.0", **ipam: Any) -> dict[str, Any]:
    """A network configuration whose IPAM is spiderpool."""
    return {
        "cniVersion": version,
        "name": "testnet",
        "type": "spiderpool",
        "ipam": {"type": "spiderpool", "ipam_unix_socket_path": str(socket_path), **ipam},
    }


def cni_env(
    command: str,
    container_id: str = "",
    ifname: str = "eth0",
    args: str = "",
    netns: str = "/var/run/netns/x",
) -> dict[str, str]:
    """The environment a runtime passes; empty values are left out."""
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_ARGS": args,
        "CNI_PATH": str(PLUGIN_DIR),
    }
    return {k: v for k, v in env.items() if v}


def run_plugin_sync(plugin: Path, env: Mapping[str, str], conf: Any, timeout: float = 60) -> tuple[int, Any]:
    """Exec a plugin; returns its exit code and its decoded stdout (``None`` when empty)."""
    stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    done = subprocess.run(
        [str(plugin)],
        input=stdin,
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        timeout=timeout,
    )
    out = done.stdout.strip()
    return done.returncode, (json.loads(out) if out else None)


async def run_plugin(plugin: Path, env: Mapping[str, str], conf: Any) -> tuple[int, Any]:
    """``run_plugin_sync`` for trio tests (bound it with the test's own ``fail_after``)."""
    return await trio.to_thread.run_sync(run_plugin_sync, plugin, env, conf)


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over a unix socket, as Spiderpool's own Go client talks to the agent."""

    def __init__(self, path: Path | str, timeout: float = 30) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def http_call_sync(path: Path | str, method: str, target: str, body: Any = None) -> tuple[int, Any, dict[str, str]]:
    """One request; returns status, decoded JSON body (or ``None``), headers."""
    conn = UnixHTTPConnection(path)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, target, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw else None), dict(resp.getheaders())
    finally:
        conn.close()


async def http_call(path: Path | str, method: str, target: str, body: Any = None) -> tuple[int, Any, dict[str, str]]:
    """``http_call_sync`` for trio tests."""
    return await trio.to_thread.run_sync(http_call_sync, path, method, target, body)


class AgentProcess:
    """``spider agent`` as a real process (one per simulated node), for crash and multi-agent tests."""

    def __init__(self, store: Path, socket_path: Path, node: str, log: Path, extra: Sequence[str] = ()) -> None:
        self.store, self.socket_path, self.node, self.log = store, socket_path, node, log
        self.extra = tuple(extra)  # more ``spider agent`` flags, e.g. ``--kubeconfig PATH``
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "actors",
                    "agent",
                    "--store",
                    str(self.store),
                    "--socket",
                    str(self.socket_path),
                    "--node",
                    self.node,
                    *self.extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent {self.node} exited: {self.log.read_text()[-2000:]}")
            try:
                if http_call_sync(self.socket_path, "GET", "/v1/ipam/healthy")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"agent {self.node} did not become healthy")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@attrs.frozen
class RunningAgent:
    """An agent served in the test's own trio run, its store, socket and installed shim."""

    api: AgentApi
    store: Store
    socket: Path
    shim: Path
    dir: Path

    async def apply(self, *objs: dict[str, Any]) -> None:
        for obj in objs:
            await apply(self.store, obj)

    async def pool_status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = (await self.store.get("SpiderIPPool", name)).get("status") or {}
        return status


@asynccontextmanager
async def running_agent(node: str = "node-1") -> AsyncIterator[RunningAgent]:
    """A fresh store, an agent on it, and the shim installed in a bin dir beside them."""
    with short_tmp() as d:
        store = ValidatingStore(await SqliteStore.open(d / "store.db"))
        settings = AgentSettings(store_path=d / "store.db", socket_path=d / "agent.sock", node=node, grace=5)
        try:
            async with open_agent(settings, store) as api:
                yield RunningAgent(api, store, settings.socket_path, installed_shim(d / "bin"), d)
        finally:
            await store.aclose()


async def exchange(host: str, port: int, data: bytes, *, tls: bool = True) -> tuple[bytes, bool]:
    """A hostile client: connect (with ``tls``, without checking the server's certificate, as an attacker
    would), send ``data`` and read until the server has answered in full or closed; the answer, and whether
    either happened within 10 s.  Nothing sent: idle, after the handshake if ``tls``."""
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    if tls:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        stream = trio.SSLStream(stream, context)
    out, closed = b"", False
    try:
        with trio.move_on_after(10):
            try:
                if data:
                    await stream.send_all(data)
                elif isinstance(stream, trio.SSLStream):
                    await stream.do_handshake()
                while not _complete(out) and (chunk := await stream.receive_some(65536)):
                    out += chunk
            except trio.BrokenResourceError:
                pass
            closed = True
    finally:
        await trio.aclose_forcefully(stream)
    return out, closed


def _complete(answer: bytes) -> bool:
    """An HTTP answer with its whole body (a server may linger before it closes after an error)."""
    head, found, body = answer.partition(b"\r\n\r\n")
    lengths = [line.split(b":")[1] for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
    return bool(found and lengths) and len(body) >= int(lengths[0])


def answer_status(answer: bytes) -> int:
    """The status code of a raw HTTP/1.1 answer."""
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]
    return int(answer[9:12])
