"""The callers: what drives load into a target, and how each answer is classified.

Owns the targets (``PluginTarget`` execs a CNI IPAM plugin per call as a container runtime does;
``ApiTarget`` calls the agent API straight), the netconfs they are given (ours, host-local's per-node slices,
a user's template), classifying answers (an address, or a failure reason with the per-pod numbers taken out so
equal failures group together), the ``Recorder`` that times every call, and the two phases: ADD with churn
(P callers take pods from one queue; a churned pod is deleted and re-created as a new pod while the others are
still being added) and DEL.
"""

from __future__ import annotations

import collections
import json
import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import h11
import trio

from actors.tools.loadtest.fleet import AgentClient, ConnectionLost
from actors.tools.loadtest.scenario import NAMESPACE, NETWORK, AddressPlan, Op, OpKind, PodRef, Scenario
from spider.errors import SpiderError


@attrs.frozen
class Answer:
    """What a target said to one call."""

    ok: bool
    address: str = ""
    reason: str = ""


def _normalize(message: str) -> str:
    """A failure message without the numbers that differ per pod, so equal failures group together."""
    return re.sub(r"\d+", "N", message.strip())[:160]


def cni_answer(exit_code: int, stdout: bytes, stderr: bytes = b"") -> Answer:
    """Classify what a CNI plugin printed: the first address on success, ``CNI <code>: <msg>`` on failure."""
    try:
        doc = json.loads(stdout) if stdout.strip() else None
    except ValueError:
        doc = None
    if exit_code == 0:
        ips = doc.get("ips") if isinstance(doc, dict) else None
        if isinstance(ips, list) and ips and isinstance(ips[0], dict):
            return Answer(True, str(ips[0].get("address", "")).partition("/")[0])
        return Answer(True)
    if isinstance(doc, dict) and "code" in doc:
        return Answer(False, reason=f"CNI {doc.get('code')}: {_normalize(str(doc.get('msg', '')))}")
    detail = (stderr or stdout).decode("utf-8", "replace").strip().splitlines()
    return Answer(False, reason=f"exit {exit_code}: {_normalize(detail[-1] if detail else 'no output')}")


class Target(Protocol):
    """Something that gives simulated pods addresses: our agents, or another IPAM plugin."""

    name: str

    async def add(self, pod: PodRef, node: int) -> Answer: ...

    async def delete(self, pod: PodRef, node: int) -> Answer: ...


def pod_cni_args(pod: PodRef) -> str:
    """``CNI_ARGS`` as a kubelet passes them."""
    return (
        f"IgnoreUnknown=1;K8S_POD_NAMESPACE={NAMESPACE};K8S_POD_NAME={pod.name};"
        f"K8S_POD_INFRA_CONTAINER_ID={pod.container_id};K8S_POD_UID={pod.uid}"
    )


@attrs.define
class PluginTarget:
    """Exec a CNI IPAM plugin per call, as a container runtime does; one netconf per node."""

    name: str
    plugin: Path
    netconfs: Sequence[bytes]
    timeout: float = 120.0

    async def _call(self, command: str, pod: PodRef, node: int) -> Answer:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": pod.container_id,
            "CNI_NETNS": f"/var/run/netns/{pod.container_id}",  # never entered: IPAM plugins only pass it on
            "CNI_IFNAME": "eth0",
            "CNI_ARGS": pod_cni_args(pod),
            "CNI_PATH": str(self.plugin.parent),
        }
        with trio.move_on_after(self.timeout) as scope:
            done = await trio.run_process(
                [str(self.plugin)],
                stdin=self.netconfs[node],
                env=env,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        if scope.cancelled_caught:
            return Answer(False, reason="timeout")
        return cni_answer(done.returncode, done.stdout, done.stderr)

    async def add(self, pod: PodRef, node: int) -> Answer:
        """CNI ADD."""
        return await self._call("ADD", pod, node)

    async def delete(self, pod: PodRef, node: int) -> Answer:
        """CNI DEL."""
        return await self._call("DEL", pod, node)


def api_answer(status: int, headers: Mapping[str, str], body: bytes) -> Answer:
    """Classify an agent API answer: ``IpamAddResponse`` on 200, else the JSON string and ``X-Cni-Code``."""
    if status == 200:
        doc = json.loads(body) if body else {}
        ips = doc.get("ips") if isinstance(doc, dict) else None
        return Answer(True, str(ips[0]["address"]).partition("/")[0] if ips else "")
    try:
        message = json.loads(body)
    except ValueError:
        message = body.decode("utf-8", "replace")
    code = headers.get("x-cni-code", "")
    return Answer(False, reason=f"{'CNI ' + code if code else f'HTTP {status}'}: {_normalize(str(message))}")


@attrs.define
class ApiTarget:
    """Spiderpool's agent API straight (``POST``/``DELETE /v1/ipam/ip``), a kept-alive connection per caller."""

    name: str
    sockets: Sequence[Path]
    pool: str
    timeout: float = 120.0
    _clients: dict[tuple[int, int], AgentClient] = attrs.field(factory=dict)

    def _client(self, node: int) -> AgentClient:
        key = (id(trio.lowlevel.current_task()), node)  # NB: one connection per caller task and node
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = AgentClient(self.sockets[node])
        return client

    async def _call(self, method: str, node: int, body: dict[str, Any]) -> Answer:
        client = self._client(node)
        try:
            with trio.move_on_after(self.timeout) as scope:
                status, headers, payload = await client.request(method, "/v1/ipam/ip", json.dumps(body).encode())
        except (OSError, trio.BrokenResourceError, h11.ProtocolError, ConnectionLost) as exc:
            await client.aclose()
            return Answer(False, reason=f"connection: {_normalize(str(exc) or type(exc).__name__)}")
        except BaseException:  # NB: cancelled mid-exchange: a later task (ids are reused) must not inherit it
            with trio.CancelScope(shield=True):
                await client.aclose()
            raise
        if scope.cancelled_caught:
            await client.aclose()  # NB: the answer may still come; it must not be read as the next one's
            return Answer(False, reason="timeout")
        return api_answer(status, headers, payload)

    def _ids(self, pod: PodRef) -> dict[str, Any]:
        return {
            "containerID": pod.container_id,
            "ifName": "eth0",
            "podNamespace": NAMESPACE,
            "podName": pod.name,
            "podUID": pod.uid,
        }

    async def add(self, pod: PodRef, node: int) -> Answer:
        """``POST /v1/ipam/ip``."""
        body = {**self._ids(pod), "netNamespace": f"/var/run/netns/{pod.container_id}"}
        if self.pool:  # NB: none (the SpiderSubnet scenario): the pod's annotations choose
            body["defaultIPv4IPPool"] = [self.pool]
        return await self._call("POST", node, body)

    async def delete(self, pod: PodRef, node: int) -> Answer:
        """``DELETE /v1/ipam/ip``."""
        return await self._call("DELETE", node, self._ids(pod))

    async def aclose(self) -> None:
        """Close every kept-alive connection."""
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


Progress = Callable[[str, int], None]
"""``progress(phase, completed_calls)``: told after every call (the live progress bar)."""


@attrs.define
class Recorder:
    """Collects the ops of one target's run and tells the progress bar."""

    clock: Callable[[], float]
    progress: Progress
    ops: list[Op] = attrs.field(factory=list)
    _maybe_holding: dict[PodRef, None] = attrs.field(factory=dict)
    """Pods whose ADD was sent and no DEL of which has succeeded since (insertion-ordered)."""

    async def call(
        self, kind: OpKind, phase: str, pod: PodRef, node: int, fn: Callable[[PodRef, int], Awaitable[Answer]]
    ) -> Op:
        """Time ``fn(pod, node)`` and record it."""
        start = self.clock()
        if kind in ("add", "churn-add"):
            # NB: from the moment it is sent: an ADD that failed, timed out or was cancelled on our side may
            # still be granted by the agent, which goes on with it
            self._maybe_holding[pod] = None
        try:
            answer = await fn(pod, node)
        except (OSError, SpiderError) as exc:  # e.g. the plugin cannot be exec'd: a failure, not a crash
            answer = Answer(False, reason=f"{type(exc).__name__}: {_normalize(str(exc))}")
        if kind in ("del", "churn-del") and answer.ok:
            self._maybe_holding.pop(pod, None)  # NB: the agent serializes a sandbox's calls: it came after the ADD
        op = Op(kind, pod, node, start, self.clock(), answer.ok, answer.address, answer.reason)
        self.ops.append(op)
        self.progress(phase, 1)
        return op

    def holding(self) -> list[PodRef]:
        """The pods that may hold an address now: every pod whose ADD was sent (whatever its answer, or none
        yet) and no DEL of which has succeeded since; what the DEL phase and a stopped run's cleanup DEL (a DEL
        of a pod that holds nothing frees nothing and succeeds)."""
        return list(self._maybe_holding)


async def add_phase(scenario: Scenario, target: Target, recorder: Recorder, run: str) -> dict[int, PodRef]:
    """ADD every pod with ``callers`` concurrent callers; a churned pod, once added, is deleted and re-created
    as a new pod by the next free caller, ahead of the ADDs still waiting, so churn runs while the others
    allocate.  Returns the live pods."""
    churned = scenario.churned
    adds = collections.deque(PodRef(i, 0, run) for i in range(scenario.pods))
    ready: collections.deque[PodRef] = collections.deque()  # added churned pods, waiting for their churn
    unsettled = len(churned)  # churned pods whose churn has not been queued (or given up) yet
    changed = trio.Event()
    live: dict[int, PodRef] = {}

    def settle(pod: PodRef | None = None) -> None:
        nonlocal unsettled, changed
        unsettled -= 1
        if pod is not None:
            ready.append(pod)
        changed.set()
        changed = trio.Event()

    async def churn(pod: PodRef) -> None:
        node = pod.node(scenario.nodes)
        gone = await recorder.call("churn-del", "add", pod, node, target.delete)
        if gone.ok:
            del live[pod.index]
            again = attrs.evolve(pod, incarnation=pod.incarnation + 1)
            if (await recorder.call("churn-add", "add", again, node, target.add)).ok:
                live[pod.index] = again

    async def caller() -> None:
        while True:
            if ready:
                await churn(ready.popleft())
            elif adds:
                pod = adds.popleft()
                op = await recorder.call("add", "add", pod, pod.node(scenario.nodes), target.add)
                if op.ok:
                    live[pod.index] = pod
                if pod.index in churned:
                    settle(pod if op.ok else None)  # NB: a failed ADD leaves nothing to churn
            elif unsettled:
                await changed.wait()  # another caller's churned pod may still need us
            else:
                return

    async with trio.open_nursery() as nursery:
        for _ in range(min(scenario.callers, scenario.pods)):
            nursery.start_soon(caller)
    return live


async def del_phase(scenario: Scenario, target: Target, recorder: Recorder, pods: Sequence[PodRef]) -> None:
    """DEL every pod in ``pods`` (``Recorder.holding``: the live ones and those whose ADD failed, which a
    runtime DELs too) with ``callers`` concurrent callers."""
    send, receive = trio.open_memory_channel[PodRef](len(pods))
    for pod in sorted(pods, key=lambda p: (p.index, p.incarnation)):
        send.send_nowait(pod)
    send.close()

    async def caller() -> None:
        async for pod in receive:
            node = pod.node(scenario.nodes)
            await recorder.call("del", "del", pod, node, target.delete)

    async with trio.open_nursery() as nursery:
        for _ in range(max(1, min(scenario.callers, len(pods)))):
            nursery.start_soon(caller)


def host_local_netconfs(plan: AddressPlan, data_dirs: Sequence[Path]) -> list[bytes]:
    """One netconf per node: host-local on that node's slice, with that node's data directory."""
    out = []
    for piece, data_dir in zip(plan.slices, data_dirs, strict=True):
        ipam = {
            "type": "host-local",
            "ranges": [
                [
                    {
                        "subnet": str(plan.subnet),
                        "rangeStart": str(piece.first),
                        "rangeEnd": str(piece.last),
                        "gateway": str(plan.gateway),
                    }
                ]
            ],
            "dataDir": str(data_dir),
        }
        conf = {"cniVersion": "1.0.0", "name": NETWORK, "type": "macvlan", "ipam": ipam}
        out.append(json.dumps(conf).encode())
    return out


def templated_netconfs(template: bytes, nodes: int, work: Path) -> list[bytes]:
    """A user's netconf per node, with ``${NODE}``, ``${NODE_INDEX}`` and ``${DIR}`` filled in."""
    out = []
    for node in range(nodes):
        text = template.decode()
        for key, value in (("${NODE_INDEX}", str(node)), ("${NODE}", f"node-{node}"), ("${DIR}", str(work))):
            text = text.replace(key, value)
        out.append(text.encode())
    return out


def spider_netconfs(sockets: Sequence[Path], pool: str) -> list[bytes]:
    """One netconf per node for our installed plugin (type ``spiderpool``): that node's agent socket, the pool
    (none when ``pool`` is empty: the pods' annotations choose)."""
    out = []
    for socket in sockets:
        ipam: dict[str, Any] = {"type": "spiderpool", "ipam_unix_socket_path": str(socket)}
        if pool:
            ipam["default_ipv4_ippool"] = [pool]
        out.append(json.dumps({"cniVersion": "1.0.0", "name": NETWORK, "type": "macvlan", "ipam": ipam}).encode())
    return out
