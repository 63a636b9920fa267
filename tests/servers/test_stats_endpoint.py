"""``GET /v1/spider/stats``: the pool actors' counters, which ``spider loadtest`` and the benchmarks read
instead of guessing how many writes a burst cost."""

from __future__ import annotations

import trio

from tests.support import RunningAgent, cni_env, http_call, netconf, pod_args, pool_object, run_plugin, running_agent


async def test_stats_count_each_pools_requests_batches_and_writes() -> None:
    agent: RunningAgent
    async with running_agent(node="node-7") as agent:
        await agent.apply(pool_object("blue", "10.7.0.0/24", ["10.7.0.10-10.7.0.20"]))
        with trio.fail_after(60):
            status, body, _ = await http_call(agent.socket, "GET", "/v1/spider/stats")
            assert status == 200
            forwarded = dict.fromkeys(("requests", "looks", "calls", "fallback"), 0)  # NB: the embedded store: none
            assert body == {"node": "node-7", "requests": 1, "pools": {}, "forwarded": forwarded}
            for n in range(3):
                env = cni_env("ADD", f"c{n}", "eth0", pod_args(f"p{n}", f"u{n}"))
                code, _ = await run_plugin(agent.shim, env, netconf(agent.socket, default_ipv4_ippool=["blue"]))
                assert code == 0
            status, body, _ = await http_call(agent.socket, "GET", "/v1/spider/stats")
    assert status == 200
    blue = body["pools"]["blue"]
    assert blue["requests"] == 3
    assert blue["writes"] == 3  # sequential ADDs: one group commit each
    assert blue["batches"] == 3
    assert blue["conflicts"] == 0
    assert blue["largest_batch"] == 1
    assert body["requests"] == 5  # two stats calls and three CNI calls
