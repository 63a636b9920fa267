"""A fake Kubernetes API server in trio and h11, faithful where the store contract looks.

``cluster`` holds the storage semantics (resourceVersion, conflicts, status subresource, finalizers, label
selectors, watch history and 410), ``server`` the HTTP side (paths as kubernetes-asyncio builds them, watch
streams, auth, TLS, faults, outages), ``latency`` how long a real API server takes per request (off unless
asked: the tests stay fast; ``python -m tests.fakeapi``, which the benchmarks start, turns it on).  The
behaviours it mirrors were read off kube-apiserver's generic registry
(``staging/src/k8s.io/apiserver/pkg/registry/generic/registry/store.go``), the custom resource strategy
(``apiextensions-apiserver/pkg/registry/customresource/strategy.go``: no unconditional updates, status
replaced through the subresource only), the watch cache (``storage/cacher``: 410 ``Expired`` as an ``ERROR`` event,
synthetic ``ADDED`` events for ``resourceVersion`` unset or ``"0"``, bookmarks every minute and before a watch's
timeout carrying its own resource's version, a cache that starts empty when the server restarts), a Pod's graceful
deletion (``pod`` strategy: one a node runs stays terminating for its grace period until deleted with grace 0) and
the defaulting of custom resources from their CRD schema's ``default:`` values
(``apiextensions-apiserver/pkg/apiserver/schema/defaulting``).

Not yet modelled (a review on 2026-12-07 listed them; none is on a path the agents or the controller take in
production): ``pods/status`` keeps the stored metadata, where the real one takes the
labels and annotations sent; the history of watch events is one window for all resources, where each of the
real watch caches keeps its own; a slow watcher is never cut off; a ``continue`` token is used once.
"""

from tests.fakeapi.cluster import ApiError, Cluster, Resource
from tests.fakeapi.latency import Cost, LatencyModel
from tests.fakeapi.server import FakeApiServer, Fault, ServedInThread, served_in_thread

__all__ = [
    "ApiError",
    "Cluster",
    "Cost",
    "FakeApiServer",
    "Fault",
    "LatencyModel",
    "Resource",
    "ServedInThread",
    "served_in_thread",
]
