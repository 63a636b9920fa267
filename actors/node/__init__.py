"""The node's network: the NodeActor and everything that changes links, routes, rules and neighbours.

- ``actor``: NodeActor, the one task that changes the node's network state, a transaction per message;
- ``netlink``: the only module that imports pyroute2 (one dedicated thread);
- ``probing``: ARP/NDP conflict and gateway detection and the announcements after an address is assigned;
- ``coordinating``: the ``coordinator`` and ``ifacer`` verbs and ``GET /v1/coordinator/config``;
- ``rdma``: the node's RDMA devices (sysfs, ``rdma``, ``ethtool``) as metric samples (reads, changes nothing).
May import ``actors.ipam`` (the coordinator reads the pod's addresses), ``actors.stores``, ``actors.runtime``.
"""
