"""Addresses: the PoolActor, the IPAM service and the ``spiderpool`` plugin's verbs.

- ``pool``: PoolActor, one task per pool that folds every queued request into one status write;
- ``service``: the agent's IPAM service: gathers the facts of a request, asks ``spider.plan`` for one
  decision, and acts on it through the pool actors and the SpiderEndpoint;
- ``autopools``: the gather step of an ADD with SpiderSubnet annotations: the application's auto pool, found
  and waited for (or, for a third-party controller, made);
- ``plugin``: the CNI verbs (ADD, DEL, CHECK, GC, STATUS) the stdlib shim forwards;
- ``metering``: what the service measures of its requests (counts, failures, durations) for the metrics;
- ``check``: the consistency rules between pool records and SpiderEndpoints (``spider check``, reclaim).
May import ``actors.stores``, ``actors.runtime`` and ``spider``.
"""
