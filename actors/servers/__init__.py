"""The HTTP edge: one HTTP/1.1 server and what is served through it.

- ``httpserver``: the wire (h11 on trio): connections, bounds, timeouts, graceful drain;
- ``agent_api``: the agent's API on its unix socket (Spiderpool's paths plus the shims' endpoints);
- ``metrics``: ``GET /metrics`` of the agent and the controller (the only user of ``prometheus_client``);
- ``webhook``: the optional admission webhook over TLS; ``certs``: where its certificate comes from;
- ``pod_webhook``: the pod mutating webhook (RDMA/network resource injection), served by ``webhook``.
May import ``actors.node``, ``actors.ipam``, ``actors.stores``, ``actors.runtime``; never a process or a tool.
"""
