"""The object kinds the stores know, with their Kubernetes API coordinates and scope.

Owns the table of kinds (group, version, plural, namespaced, status subresource, short names) that both store
backends, the CLI and the CRDs agree on.  Spiderpool's own kinds are in group ``spiderpool.spidernet.io``,
version ``v2beta1``; the core and apps kinds are read so annotations, labels and owners work.
"""

from __future__ import annotations

import attrs

from spider.errors import InvalidInput

SPIDER_GROUP = "spiderpool.spidernet.io"
SPIDER_VERSION = "v2beta1"
SPIDER_API_VERSION = f"{SPIDER_GROUP}/{SPIDER_VERSION}"
FINALIZER = "spiderpool.spidernet.io"


@attrs.frozen
class Kind:
    """One kind of object: where it lives in the API and how it is scoped."""

    kind: str
    group: str
    version: str
    plural: str
    namespaced: bool
    status_subresource: bool
    short_names: tuple[str, ...] = ()
    """The API's short names (the CRD's ``names.shortNames``), exactly as Spiderpool registers them."""
    aliases: tuple[str, ...] = ()
    """More names only our CLI accepts; never in a CRD, where ``ippool`` would clash with Calico's IPPool."""

    @property
    def api_version(self) -> str:
        """``group/version``, or just ``version`` for the core group."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def names(self) -> tuple[str, ...]:
        """Every name the CLI accepts for this kind (kind, plural, singular, short names), lower case."""
        singular = self.kind.lower()
        return (singular, self.plural, *self.short_names, *self.aliases)


KINDS: tuple[Kind, ...] = (
    Kind(
        "SpiderIPPool",
        SPIDER_GROUP,
        SPIDER_VERSION,
        "spiderippools",
        False,
        True,
        ("sp",),
        ("ippool", "ippools"),
    ),
    Kind(
        "SpiderSubnet",
        SPIDER_GROUP,
        SPIDER_VERSION,
        "spidersubnets",
        False,
        True,
        ("ss",),
        ("subnet", "subnets"),
    ),
    Kind("SpiderReservedIP", SPIDER_GROUP, SPIDER_VERSION, "spiderreservedips", False, False, ("sr",)),
    Kind("SpiderEndpoint", SPIDER_GROUP, SPIDER_VERSION, "spiderendpoints", True, False, ("se",)),
    Kind("SpiderMultusConfig", SPIDER_GROUP, SPIDER_VERSION, "spidermultusconfigs", True, False, ("smc",)),
    Kind("SpiderCoordinator", SPIDER_GROUP, SPIDER_VERSION, "spidercoordinators", False, True, ("scc",)),
    Kind("Pod", "", "v1", "pods", True, True, ("po",)),
    Kind("Namespace", "", "v1", "namespaces", False, True, ("ns",)),
    Kind("Node", "", "v1", "nodes", False, True, ("no",)),
    Kind("ReplicaSet", "apps", "v1", "replicasets", True, True, ("rs",)),
    Kind("Deployment", "apps", "v1", "deployments", True, True, ("deploy",)),
    Kind("StatefulSet", "apps", "v1", "statefulsets", True, True, ("sts",)),
    Kind("DaemonSet", "apps", "v1", "daemonsets", True, True, ("ds",)),
    Kind("Job", "batch", "v1", "jobs", True, True, ()),
    Kind("CronJob", "batch", "v1", "cronjobs", True, True, ("cj",)),
    # KubeVirt: a VM pod's fixed addresses follow its VirtualMachineInstance / VirtualMachine (reference §2.11).
    Kind("VirtualMachineInstance", "kubevirt.io", "v1", "virtualmachineinstances", True, True, ("vmi",)),
    Kind("VirtualMachine", "kubevirt.io", "v1", "virtualmachines", True, True, ("vm",)),
    # Multus's NetworkAttachmentDefinition, which the controller generates from each SpiderMultusConfig.
    Kind(
        "NetworkAttachmentDefinition",
        "k8s.cni.cncf.io",
        "v1",
        "network-attachment-definitions",
        True,
        False,
        ("net-attach-def",),
    ),
    # Where a cluster says its pod CIDRs (SpiderCoordinator's podCIDRType calico): Calico's own IPPool.  Its
    # CLI names never win over SpiderIPPool's aliases (``kind_info`` prefers the earlier kind).
    Kind("IPPool", "crd.projectcalico.org", "v1", "ippools", False, False),
    # ... Cilium's pools of its multi-pool IPAM (podCIDRType cilium), and the cluster's service CIDRs.
    Kind("CiliumPodIPPool", "cilium.io", "v2alpha1", "ciliumpodippools", False, False),
    Kind("ServiceCIDR", "networking.k8s.io", "v1", "servicecidrs", False, True),
    # The controller's own objects: its leader-election Lease, the Secret holding the webhook's self-made CA
    # and serving certificate, and the webhook configurations whose caBundle it fills in.
    Kind("Lease", "coordination.k8s.io", "v1", "leases", True, False, ()),
    Kind("Secret", "", "v1", "secrets", True, False, ()),
    # The CA the pool host's certificate is from, published for the agents (public part only).
    Kind("ConfigMap", "", "v1", "configmaps", True, False, ("cm",)),
    Kind(
        "MutatingWebhookConfiguration",
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        False,
        False,
    ),
    Kind(
        "ValidatingWebhookConfiguration",
        "admissionregistration.k8s.io",
        "v1",
        "validatingwebhookconfigurations",
        False,
        False,
    ),
    # So ``spider apply -f deploy/crds/ --kubeconfig ...`` installs our CRDs, and tests can install them.
    Kind(
        "CustomResourceDefinition",
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        False,
        True,
        ("crd", "crds"),
    ),
)

_BY_KIND = {k.kind: k for k in KINDS}
_BY_NAME = {name: k for k in reversed(KINDS) for name in k.names}  # NB: reversed, so earlier kinds win


def kind_info(kind: str) -> Kind:
    """The ``Kind`` for a kind name (``SpiderIPPool``) or any CLI alias (``sp``, ``spiderippools``)."""
    found = _BY_KIND.get(kind) or _BY_NAME.get(kind.lower())
    if found is None:
        known = ", ".join(sorted(_BY_KIND))
        raise InvalidInput(reason=f"unknown kind {kind!r} (known: {known})")
    return found
