"""``spider controller``: the cluster-wide controller and its parts.

- ``main``: settings and wiring (health and readiness, leader election, what runs while leading);
- ``leader``: leader election on a coordination.k8s.io Lease, with client-go's semantics;
- ``reconciler``: pool and subnet status counts and finalizers, kept by watches.
May import ``actors.servers`` and everything below it; never ``actors.agent`` or ``actors.tools``.
"""
