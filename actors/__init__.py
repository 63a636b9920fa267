"""The imperative shell around the pure domain (``spider``): trio tasks, stores, servers and tools.

Each room is a package that says in its ``__init__`` what it owns and what it may import; the rooms stack up,
and ``.importlinter`` (contract "rooms") keeps them so, from the top:

- ``tools``: the tools for people: the ``spider`` command line, the demo, the load test, the CNI installer;
- ``agent`` (the per-node daemon) and ``controller`` (the cluster's leader and its parts): the two processes;
- ``servers``: the HTTP edge: the HTTP/1.1 server, the agent's unix-socket API, the webhook, TLS;
- ``node``: the NodeActor and all that changes the node's network: netlink, ARP/NDP probing, coordinator verbs;
- ``ipam``: the PoolActor, the IPAM service (gather, decide, act), the ``spiderpool`` plugin's verbs, the
  consistency check;
- ``stores``: the Store port and its backends (embedded SQLite, Kubernetes), admission, backend selection;
- ``runtime``: mailboxes, replies and the supervisor: actor machinery that knows no domain.

Everything may import ``spider``; nothing here is imported by ``spider`` or ``cni``.
"""
