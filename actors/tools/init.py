"""``spider init``: the install defaults, Spiderpool's ``spiderpool-init`` (reference §7.5).

Owns the settings (``InitSettings.from_env``: Spiderpool's environment names and the Helm chart's defaults) and
the run: wait (bounded) until a controller leads, then create the default SpiderCoordinator, the default
IPv4/IPv6 SpiderSubnets and the default IPv4/IPv6 SpiderIPPools (``default: true``), each only when its name is
set, and the default SpiderMultusConfig when enabled; each only if it does not exist yet: an object that exists
is left exactly as it is (someone may have changed it since), so a second run changes nothing.

The default SpiderMultusConfig (``SPIDERPOOL_INIT_ENABLE_MULTUS_CONFIG``) describes the cluster's default CNI
so that Multus can name it: ``SPIDERPOOL_INIT_DEFAULT_CNI_NAME`` if set (type ``custom``), else the first CNI
configuration (``.conf``, ``.conflist``, by path) in ``SPIDERPOOL_INIT_DEFAULT_CNI_DIR`` that is not Multus's own
(``00-multus``): its name, and its (first plugin's) type when Spiderpool knows it, else ``custom``; no
configuration at all gives ``default``.  Calico's legacy name ``k8s-pod-network`` becomes ``calico`` with the
``multus.spidernet.io/cr-name`` annotation keeping the NetworkAttachmentDefinition's name.  It lives in
``SPIDERPOOL_INIT_DEFAULT_CNI_NAMESPACE``, with ``enableCoordinator: false``.  With
``SPIDERPOOL_INIT_INSTALL_MULTUS`` the Multus ConfigMap (``SPIDERPOOL_INIT_MULTUS_CONFIGMAP``, key
``cni-conf.json``) gets that name as its ``clusterNetwork`` unless it has it already; its other settings are
kept as they are (Spiderpool re-encodes the ones it knows and drops the rest).

Environment (as Spiderpool's): ``SPIDERPOOL_INIT_DEFAULT_COORDINATOR_{NAME, MODE, POD_CIDR_TYPE,
TUNE_POD_ROUTES, HIJACK_CIDR, POLICY_ROUTES, VETH_LINK_ADDRESS, VETH_MTU, DETECT_GATEWAY, DETECT_IP_CONFLICT}``;
``SPIDERPOOL_INIT_DEFAULT_IPV{4,6}_{SUBNET_NAME, IPPOOL_NAME, IPPOOL_SUBNET, IPPOOL_IPRANGES, IPPOOL_GATEWAY}``.
Lists (hijack CIDRs, IP ranges) are written as Spiderpool's chart writes them, ``["a","b"]`` or ``a,b``;
policy routes as JSON (``[{"dst": ..., "gw": ...}]``).  A value that does not parse stops the run before
anything is written, naming the variable; so does a subnet, gateway or range the store would refuse for a new
pool (host bits set, outside the subnet), which the store would only find once the coordinator is made.

Departures: Spiderpool waits for the controller Service's endpoints (its webhook); ours waits for the
controller's Lease to have a holder (the webhook is optional here, and the store checks the same rules
without it).  After changing the Multus ConfigMap, Spiderpool deletes the spiderpool-agent Pods and waits for
their successors; ours does not (our agent reads nothing of Multus's configuration; Multus itself reads its
ConfigMap when its own Pods start).  Spiderpool retries a failed create every 2 s; ours fails the run, and the
Job's ``backoffLimit`` runs it again.  The SpiderMultusConfig comes last, as Spiderpool's: a default CNI
configuration that cannot be read (``deploy/init.yaml`` runs as a non-root user) or parsed fails the run after
the coordinator, subnets and pools are made.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import trio

from actors.stores.port import AlreadyExists, NotFound, Obj, Store
from spider.addr import IPSet, ip_to_int, parse_network
from spider.errors import InvalidInput, SpiderError
from spider.kinds import SPIDER_API_VERSION
from spider.multus import ANNO_CR_NAME

log = logging.getLogger(__name__)

PREFIX = "SPIDERPOOL_INIT_"
DEFAULT_WAIT = 300.0
"""Seconds to wait for a leading controller (Spiderpool's init gives up after 300 s)."""
DEFAULT_LEASE = "spiderpool-controller-leases"


def _clean(raw: str) -> str:
    return raw.replace('"', "").strip()


def _list(raw: str) -> list[str]:
    """A list as Spiderpool's chart writes it in an environment variable: ``["a","b"]``, ``a,b`` or ``a b``."""
    for char in '"\\[]':
        raw = raw.replace(char, "")
    return raw.replace(",", " ").split()


def _bool(name: str, raw: str, default: bool) -> bool:
    text = _clean(raw).lower()
    if not text:
        return default
    if text in ("1", "t", "true"):
        return True
    if text in ("0", "f", "false"):
        return False
    raise InvalidInput(reason=f"${name} must be true or false, not {raw!r}")


def _network(name: str, text: str) -> str:
    try:
        net = ipaddress.ip_network(text, strict=False) if "/" in text else ipaddress.ip_network(text)
    except ValueError:
        raise InvalidInput(reason=f"${name}: {text!r} is not a CIDR") from None
    return str(net)


@attrs.frozen(kw_only=True)
class CoordinatorDefaults:
    """The default SpiderCoordinator (Helm ``coordinator.*``)."""

    name: str
    mode: str = "auto"
    pod_cidr_type: str = "auto"
    tune_pod_routes: bool = True
    hijack_cidr: tuple[str, ...] = ("169.254.0.0/16",)
    policy_routes: tuple[Mapping[str, str], ...] = ()
    veth_link_address: str = ""
    veth_mtu: int = 1500
    detect_gateway: bool = False
    detect_ip_conflict: bool = False

    def to_object(self) -> Obj:
        """The SpiderCoordinator to create."""
        spec: dict[str, Any] = {
            "mode": self.mode,
            "podCIDRType": self.pod_cidr_type,
            "tunePodRoutes": self.tune_pod_routes,
            "hijackCIDR": list(self.hijack_cidr),
            "detectGateway": self.detect_gateway,
            "detectIPConflict": self.detect_ip_conflict,
            "vethMTU": self.veth_mtu,
        }
        if self.policy_routes:
            spec["policyRoutes"] = [dict(r) for r in self.policy_routes]
        if self.veth_link_address:
            spec["vethLinkAddress"] = self.veth_link_address
        return {"apiVersion": SPIDER_API_VERSION, "kind": "SpiderCoordinator", "metadata": {"name": self.name},
                "spec": spec}  # fmt: skip


@attrs.frozen(kw_only=True)
class FamilyDefaults:
    """The default subnet and pool of one IP family (Helm ``clusterDefaultPool.*``)."""

    version: int
    subnet_name: str = ""
    pool_name: str = ""
    cidr: str = ""
    ip_ranges: tuple[str, ...] = ()
    gateway: str = ""

    def _spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"ipVersion": self.version, "subnet": self.cidr, "ips": list(self.ip_ranges)}
        if self.gateway:
            spec["gateway"] = self.gateway
        return spec

    def objects(self) -> list[Obj]:
        """The SpiderSubnet, then the SpiderIPPool (``default: true``), whichever is named."""
        out: list[Obj] = []
        if self.subnet_name:
            out.append({"apiVersion": SPIDER_API_VERSION, "kind": "SpiderSubnet",
                        "metadata": {"name": self.subnet_name}, "spec": self._spec()})  # fmt: skip
        if self.pool_name:
            out.append({"apiVersion": SPIDER_API_VERSION, "kind": "SpiderIPPool",
                        "metadata": {"name": self.pool_name}, "spec": {**self._spec(), "default": True}})  # fmt: skip
        return out


LEGACY_CALICO = "k8s-pod-network"
"""Calico's old network name, which Spiderpool's SpiderMultusConfig calls ``calico`` (projectcalico #7837)."""
KNOWN_CNI_TYPES = ("macvlan", "ipvlan", "sriov", "ib-sriov", "ipoib")
"""The types a detected default CNI keeps in its SpiderMultusConfig; any other is ``custom``."""
MULTUS_CONF_KEY = "cni-conf.json"


@attrs.frozen(kw_only=True)
class MultusDefaults:
    """The default SpiderMultusConfig for the cluster's default CNI (Helm ``multus.*``)."""

    namespace: str
    cni_name: str = ""
    """Given: used as is, of type ``custom``; else found in ``cni_dir``."""
    cni_dir: str = ""
    install_multus: bool = False
    """Also make the default CNI Multus's ``clusterNetwork`` in the ConfigMap ``multus_configmap``."""
    multus_configmap: str = ""

    def default_cni(self) -> tuple[str, str]:
        """The default CNI's name and SpiderMultusConfig type; ``InvalidInput`` for a configuration that does
        not parse."""
        if self.cni_name:
            return self.cni_name, "custom"
        path = first_cni_config(self.cni_dir)
        if path is None:
            return "default", "custom"
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise InvalidInput(
                reason=f"cannot read the default CNI's configuration {path} ({exc.strerror}); "
                f"${PREFIX}DEFAULT_CNI_NAME can name the network instead"
            ) from None
        try:
            conf = json.loads(text)
            if path.suffix == ".conflist":
                name, kind = conf["name"], conf["plugins"][0]["type"]
            else:
                name, kind = conf["name"], conf["type"]
            if not isinstance(name, str) or not name or not isinstance(kind, str):
                raise TypeError("no name or type")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise InvalidInput(reason=f"the default CNI's configuration {path} does not parse: {exc}") from None
        return name, kind if kind in KNOWN_CNI_TYPES else "custom"

    def to_object(self, name: str, kind: str) -> Obj:
        """The SpiderMultusConfig to create for the default CNI ``name`` of type ``kind``."""
        annotations = {}
        if name == LEGACY_CALICO:
            name, annotations = "calico", {ANNO_CR_NAME: LEGACY_CALICO}
        return {"apiVersion": SPIDER_API_VERSION, "kind": "SpiderMultusConfig",
                "metadata": {"name": name, "namespace": self.namespace, "annotations": annotations},
                "spec": {"cniType": kind, "enableCoordinator": False}}  # fmt: skip


def first_cni_config(directory: str) -> Path | None:
    """The first CNI configuration in ``directory`` by path, Multus's own left out (libcni's ``ConfFiles``: files
    ending in ``.conf`` or ``.conflist``); ``None`` when there is none, or no such directory."""
    if not directory:
        return None
    try:
        files = [p for p in Path(directory).iterdir() if p.suffix in (".conf", ".conflist") and p.is_file()]
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidInput(reason=f"cannot read the CNI configurations in {directory}: {exc}") from None
    found = sorted(str(p) for p in files if "00-multus" not in str(p))
    return Path(found[0]) if found else None


@attrs.frozen(kw_only=True)
class InitSettings:
    """What ``spider init`` creates, and how long it waits for a controller."""

    namespace: str = "kube-system"
    """The controller's namespace (its Lease's)."""
    lease: str = DEFAULT_LEASE
    wait: float = DEFAULT_WAIT
    """Seconds to wait for a leading controller before giving up; 0: do not wait."""
    coordinator: CoordinatorDefaults | None = None
    families: tuple[FamilyDefaults, ...] = ()
    multus: MultusDefaults | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> InitSettings:
        """The settings Spiderpool's environment names give; ``InvalidInput`` names a variable that is wrong."""
        env = os.environ if environ is None else environ

        def get(suffix: str) -> str:
            return _clean(env.get(PREFIX + suffix, ""))

        coordinator = None
        if name := get("DEFAULT_COORDINATOR_NAME"):
            coordinator = _coordinator(name, env)
        families = []
        for version in (4, 6):
            subnet, pool = get(f"DEFAULT_IPV{version}_SUBNET_NAME"), get(f"DEFAULT_IPV{version}_IPPOOL_NAME")
            if not (subnet or pool):
                continue
            families.append(_family(version, subnet, pool, env))
        if len(families) == 2:
            for what, first, second in (("Subnet", *[f.subnet_name for f in families]),
                                        ("IPPool", *[f.pool_name for f in families])):  # fmt: skip
                if first and first == second:
                    raise InvalidInput(reason=f"the default IPv4 and IPv6 {what} cannot both be named {first!r}")
        namespace = _clean(env.get("SPIDERPOOL_NAMESPACE", "")) or "kube-system"
        multus = None
        if _bool(PREFIX + "ENABLE_MULTUS_CONFIG", env.get(PREFIX + "ENABLE_MULTUS_CONFIG", ""), False):
            multus = MultusDefaults(
                namespace=get("DEFAULT_CNI_NAMESPACE") or namespace,
                cni_name=get("DEFAULT_CNI_NAME"),
                cni_dir=get("DEFAULT_CNI_DIR"),
                install_multus=_bool(PREFIX + "INSTALL_MULTUS", env.get(PREFIX + "INSTALL_MULTUS", ""), False),
                multus_configmap=get("MULTUS_CONFIGMAP"),
            )
            if multus.install_multus and not multus.multus_configmap:
                raise InvalidInput(reason=f"${PREFIX}INSTALL_MULTUS needs ${PREFIX}MULTUS_CONFIGMAP: the one to change")
        return cls(namespace=namespace, coordinator=coordinator, families=tuple(families),
                   multus=multus).evolve(**overrides)  # fmt: skip

    def evolve(self, **changes: Any) -> InitSettings:
        """These settings with some fields changed."""
        return attrs.evolve(self, **changes)

    def objects(self) -> list[Obj]:
        """Everything to create, in order: the coordinator, the subnets, then the pools."""
        out: list[Obj] = [self.coordinator.to_object()] if self.coordinator else []
        made = [f.objects() for f in self.families]
        out += [o for objs in made for o in objs if o["kind"] == "SpiderSubnet"]
        out += [o for objs in made for o in objs if o["kind"] == "SpiderIPPool"]
        return out


def _coordinator(name: str, env: Mapping[str, str]) -> CoordinatorDefaults:
    def var(suffix: str) -> tuple[str, str]:
        key = f"{PREFIX}DEFAULT_COORDINATOR_{suffix}"
        return key, env.get(key, "")

    hijack_key, hijack_raw = var("HIJACK_CIDR")
    hijack = tuple(_network(hijack_key, c) for c in _list(hijack_raw)) if hijack_key in env else ("169.254.0.0/16",)
    routes_key, routes_raw = var("POLICY_ROUTES")
    routes: tuple[Mapping[str, str], ...] = ()
    if routes_raw.strip():
        try:
            parsed = json.loads(routes_raw)
        except ValueError:
            raise InvalidInput(reason=f'${routes_key} must be JSON like [{{"dst": ..., "gw": ...}}]') from None
        if not isinstance(parsed, list) or not all(isinstance(r, dict) and {"dst", "gw"} <= set(r) for r in parsed):
            raise InvalidInput(reason=f'${routes_key} must be a list of {{"dst", "gw"}} objects')
        routes = tuple({"dst": str(r["dst"]), "gw": str(r["gw"])} for r in parsed)
    link_key, link = var("VETH_LINK_ADDRESS")
    if _clean(link):
        try:
            ipaddress.IPv4Address(_clean(link))
        except ValueError:
            raise InvalidInput(reason=f"${link_key}: {link!r} is not an IPv4 address") from None
    mtu_key, mtu_raw = var("VETH_MTU")
    try:
        mtu = int(_clean(mtu_raw) or 1500)
    except ValueError:
        raise InvalidInput(reason=f"${mtu_key} must be a number, not {mtu_raw!r}") from None
    if mtu <= 0:
        raise InvalidInput(reason=f"${mtu_key} must be positive, not {mtu}")
    pod_cidr_type = _clean(var("POD_CIDR_TYPE")[1]) or "auto"
    if pod_cidr_type not in ("auto", "cluster", "calico", "cilium", "none"):
        raise InvalidInput(reason=f"${var('POD_CIDR_TYPE')[0]} must be auto, cluster, calico, cilium or none")
    return CoordinatorDefaults(
        name=name,
        mode=_clean(var("MODE")[1]) or "auto",
        pod_cidr_type=pod_cidr_type,
        tune_pod_routes=_bool(*var("TUNE_POD_ROUTES"), True),
        hijack_cidr=hijack,
        policy_routes=routes,
        veth_link_address=_clean(link),
        veth_mtu=mtu,
        detect_gateway=_bool(*var("DETECT_GATEWAY"), False),
        detect_ip_conflict=_bool(*var("DETECT_IP_CONFLICT"), False),
    )


def _family(version: int, subnet: str, pool: str, env: Mapping[str, str]) -> FamilyDefaults:
    def var(suffix: str) -> tuple[str, str]:
        key = f"{PREFIX}DEFAULT_IPV{version}_IPPOOL_{suffix}"
        return key, _clean(env.get(key, ""))

    # NB: everything the store would refuse of the subnet and pool is checked here, naming the variable: the
    # store names only spec fields, and by then the coordinator (and the other family's objects) are written.
    cidr_key, cidr = var("SUBNET")
    if not cidr:
        raise InvalidInput(reason=f"${cidr_key} is required to create a default IPv{version} subnet or pool")
    try:
        network = IPSet.from_network(parse_network(cidr, version))  # strict: the store wants no host bits
    except ValueError as exc:
        raise InvalidInput(reason=f"${cidr_key}: {exc}") from None
    gateway_key, gateway = var("GATEWAY")
    if gateway:
        try:
            gateway_ip = ip_to_int(gateway, version)
        except ValueError as exc:
            raise InvalidInput(reason=f"${gateway_key}: {exc}") from None
        if gateway_ip not in network:
            raise InvalidInput(reason=f"${gateway_key}: {gateway!r} is not in ${cidr_key} {cidr}")
    ranges_key = f"{PREFIX}DEFAULT_IPV{version}_IPPOOL_IPRANGES"
    ranges = tuple(_list(env.get(ranges_key, "")))
    for text in ranges:  # Spiderpool's parseENVAsDefault: IsIPRange of the family, each entry
        try:
            parsed = IPSet.parse(version, [text])
        except ValueError as exc:
            raise InvalidInput(reason=f"${ranges_key}: {exc}") from None
        if not parsed.issubset(network):
            raise InvalidInput(reason=f"${ranges_key}: {text!r} is not in ${cidr_key} {cidr}")
    return FamilyDefaults(version=version, subnet_name=subnet, pool_name=pool, cidr=cidr, ip_ranges=ranges,
                          gateway=gateway)  # fmt: skip


@attrs.frozen
class Outcome:
    """What happened to one default object."""

    kind: str
    name: str
    created: bool
    """Made (or changed, for an object that is ``changed`` rather than created) by this run."""
    done: str = "created"

    def __str__(self) -> str:
        verb = self.done if self.created else "exists, left as it is"
        return f"{self.kind.lower()}/{self.name} {verb}"


async def wait_for_controller(store: Store, settings: InitSettings) -> str:
    """Wait until the controller's Lease has a holder; returns it.  ``InvalidInput`` after ``settings.wait``."""
    delay = 0.5
    last = "no Lease yet"
    with trio.move_on_after(settings.wait):
        while True:
            try:
                lease = await store.get("Lease", settings.lease, settings.namespace)
                holder = str((lease.get("spec") or {}).get("holderIdentity") or "")
                if holder:
                    return holder
                last = "the Lease has no holder"
            except NotFound:
                last = "no Lease yet"
            except SpiderError as exc:
                last = str(exc)
            log.info("waiting for a leading controller (%s)", last)
            await trio.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise InvalidInput(
        reason=f"no controller leads after {settings.wait:g}s (Lease {settings.namespace}/{settings.lease}: {last})"
    )


async def run_init(store: Store, settings: InitSettings) -> list[Outcome]:
    """Wait for a controller (unless ``settings.wait`` is 0), then create what does not exist yet."""
    if settings.wait > 0:
        holder = await wait_for_controller(store, settings)
        log.info("controller %s leads", holder)
    outcomes = [await _create(store, obj) for obj in settings.objects()]
    if settings.multus is not None:  # NB: last, as Spiderpool's: a node's CNI files cannot stop the rest
        name, kind = settings.multus.default_cni()
        outcomes.append(await _create(store, settings.multus.to_object(name, kind)))
        if settings.multus.install_multus:
            outcomes.append(await set_cluster_network(store, settings.multus, name))
    return outcomes


async def _create(store: Store, obj: Obj) -> Outcome:
    """Create ``obj`` unless an object of its name exists (which is left as it is)."""
    kind, name, namespace = obj["kind"], obj["metadata"]["name"], obj["metadata"].get("namespace", "")
    # NB: look first, as Spiderpool's init does.  A create alone is not enough: the store checks a new pool or
    # subnet against the others before it finds the name taken, so one an admin has since widened or shrunk
    # (its addresses now in another pool) would fail the run as Invalid instead of being left alone.
    # The outcome says "exists, left as it is" (``spider init`` prints each).
    try:
        await store.get_metadata(kind, name, namespace)
        return Outcome(kind, name, False)
    except NotFound:
        pass
    try:
        await store.create(obj)
        return Outcome(kind, name, True)
    except AlreadyExists:  # made by another run between the look and the create
        return Outcome(kind, name, False)


async def set_cluster_network(store: Store, multus: MultusDefaults, name: str) -> Outcome:
    """Make ``name`` the ``clusterNetwork`` of Multus's configuration in its ConfigMap (unless it is already)."""
    configmap = await store.get("ConfigMap", multus.multus_configmap, multus.namespace)
    data = configmap.get("data") or {}
    try:
        conf = json.loads(data.get(MULTUS_CONF_KEY) or "")
        if not isinstance(conf, dict):
            raise TypeError("not an object")
    except (ValueError, TypeError) as exc:
        where = f"{multus.namespace}/{multus.multus_configmap}"
        raise InvalidInput(reason=f"the Multus ConfigMap {where} has no JSON {MULTUS_CONF_KEY}: {exc}") from None
    what = f"{multus.multus_configmap} (clusterNetwork {name})"
    if conf.get("clusterNetwork") == name:
        return Outcome("ConfigMap", what, False)
    conf["clusterNetwork"] = name
    await store.update({**configmap, "data": {**data, MULTUS_CONF_KEY: json.dumps(conf)}})
    return Outcome("ConfigMap", what, True, done="changed")
