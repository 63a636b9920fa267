"""The Store port and its backends: Kubernetes-shaped objects with Kubernetes' concurrency semantics.

- ``port``: the interface every backend implements and the errors it raises;
- ``sqlite``: the embedded backend, one SQLite file shared by every process on the machine;
- ``kube``: the Kubernetes backend (the only module that imports kubernetes-asyncio);
- ``validating``: admission at the store layer, the same for every backend;
- ``retrying``: riding out short outages (an API server restart) within a budget;
- ``informer``: the list-then-watch loop that keeps a local view of one kind current;
- ``selection``: which backend a process opens (``--store`` / ``--kubeconfig`` / ``--in-cluster``).
May import ``actors.runtime`` and ``spider``; knows no actor, server or tool.
"""
