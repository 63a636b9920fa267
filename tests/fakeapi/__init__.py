"""A fake Kubernetes API server in trio and h11, faithful where the store contract looks.

``cluster`` holds the storage semantics (resourceVersion, conflicts, status subresource, finalizers, label
selectors, watch history and 410), ``server`` the HTTP side (paths as kubernetes-asyncio builds them, watch
streams, auth, TLS, faults, outages).  The behaviours it mirrors were read off kube-apiserver's generic
registry (``staging/src/k8s.io/apiserver/pkg/registry/generic/registry/store.go``), the custom resource
strategy (``apiextensions-apiserver/pkg/registry/customresource/strategy.go``: no unconditional updates,
status replaced through the subresource only) and the watch cache (``storage/cacher``: 410 ``Expired`` as
an ``ERROR`` event, synthetic ``ADDED`` events for ``resourceVersion`` unset or ``"0"``).
"""

from tests.fakeapi.cluster import ApiError, Cluster, Resource
from tests.fakeapi.server import FakeApiServer, Fault, ServedInThread, served_in_thread

__all__ = ["ApiError", "Cluster", "FakeApiServer", "Fault", "Resource", "ServedInThread", "served_in_thread"]
