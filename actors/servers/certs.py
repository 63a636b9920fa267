"""The admission webhook's TLS: a mounted certificate, or a self-made CA kept in a Secret and put in caBundle.

Owns where the webhook's serving certificate comes from and how the API server learns to trust it
(Spiderpool's ``tls.method``, reference §12.8):

- **mounted** (``certmanager`` or ``provided``): ``tls.crt`` and ``tls.key`` in the certificate directory
  (a Secret volume, as cert-manager writes it).  The caBundle is someone else's (cert-manager's CA injector,
  or the manifests), so the webhook configurations are left alone.
- **auto** (nothing mounted): the first controller replica to start makes a CA and a serving certificate
  for the Service's DNS names with ``cryptography`` (ECDSA P-256, ten years) and stores them in a Secret
  (``kubernetes.io/tls`` with ``ca.crt``); later replicas and restarts load that Secret, so every replica
  behind the Service presents a certificate from the same CA.  The CA is then written into the
  ``clientConfig.caBundle`` of every webhook of our Mutating- and ValidatingWebhookConfiguration, only when
  it differs and guarded by resourceVersion.  A stored certificate that misses a wanted name or expires
  within 30 days is replaced.

File reads and key generation run in worker threads; nothing here holds a lock or blocks the event loop.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import logging
import os
import ssl
import tempfile
from pathlib import Path

import attrs
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from actors.stores.port import AlreadyExists, Conflict, NotFound, Obj, Store
from spider.errors import ConfigError

log = logging.getLogger(__name__)

VALIDITY = datetime.timedelta(days=3650)
RENEW_BEFORE = datetime.timedelta(days=30)
CONFIG_KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")


@attrs.define(auto_exc=True, kw_only=True)
class CertificateError(ConfigError):
    """The mounted or stored certificate cannot be used."""

    reason: str

    def __str__(self) -> str:
        return f"webhook certificate: {self.reason}"


@attrs.frozen
class CertBundle:
    """A serving certificate (PEM), its key (PEM) and the CA that signed it (PEM; empty if unknown)."""

    cert: bytes
    key: bytes
    ca: bytes = b""

    def ssl_context(self) -> ssl.SSLContext:
        """A TLS 1.2+ server context presenting this certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # NB: the ssl module loads a chain only from files; a private directory that lives for one call.
        with tempfile.TemporaryDirectory(prefix="spider-tls-") as d:
            cert, key = Path(d) / "tls.crt", Path(d) / "tls.key"
            cert.write_bytes(self.cert)
            key.touch(mode=0o600)
            key.write_bytes(self.key)
            try:
                context.load_cert_chain(cert, key)
            except ssl.SSLError as exc:
                raise CertificateError(reason=f"certificate and key do not load: {exc}") from None
        return context


@attrs.frozen
class CertSettings:
    """Where the webhook's certificate comes from and which names it must cover."""

    namespace: str
    service: str = "spiderpool-controller"
    """The Service in front of the webhook; the certificate covers its DNS names."""
    secret: str = "spiderpool-controller-server-certs"
    """The Secret (in ``namespace``) that holds the self-made CA and certificate."""
    configuration: str = "spiderpool-controller"
    """Name of both webhook configurations whose caBundle we fill in."""
    cert_dir: Path | None = None
    """A mounted ``tls.crt``/``tls.key`` (and optional ``ca.crt``) pair; when present nothing is generated."""
    extra_hosts: tuple[str, ...] = ()
    """More names or IP addresses for the self-made certificate (out-of-cluster runs, tests)."""

    @property
    def hosts(self) -> tuple[str, ...]:
        """Every name the self-made certificate covers."""
        svc, ns = self.service, self.namespace
        return (svc, f"{svc}.{ns}", f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.cluster.local", *self.extra_hosts)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _san(hosts: tuple[str, ...]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def generate(hosts: tuple[str, ...], *, common_name: str = "spiderpool-controller") -> CertBundle:
    """A fresh CA and a serving certificate for ``hosts``, signed by it (CPU only; run it in a thread)."""
    now = _now()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name}-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else common_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_san(hosts), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return CertBundle(
        cert=cert.public_bytes(serialization.Encoding.PEM),
        key=_pem_key(key),
        ca=ca.public_bytes(serialization.Encoding.PEM),
    )


def problem(bundle: CertBundle, hosts: tuple[str, ...]) -> str | None:
    """Why a stored bundle should be replaced (unreadable, a name missing, expiring soon), or ``None``."""
    try:
        cert = x509.load_pem_x509_certificate(bundle.cert)
        key = serialization.load_pem_private_key(bundle.key, password=None)
        if bundle.ca:
            x509.load_pem_x509_certificate(bundle.ca)
    except ValueError as exc:
        return f"unreadable: {exc}"
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        return "the key does not belong to the certificate"
    if cert.not_valid_after_utc - RENEW_BEFORE < _now():
        return f"expires {cert.not_valid_after_utc:%Y-%m-%d}"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no subjectAltName"
    covered = {str(n) for n in san.get_values_for_type(x509.DNSName)}
    covered |= {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    missing = [h for h in hosts if h not in covered and str(_maybe_ip(h)) not in covered]
    return f"does not cover {', '.join(missing)}" if missing else None


def _maybe_ip(host: str) -> object:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return host


def _read_mounted(cert_dir: Path) -> CertBundle | None:
    cert, key, ca = cert_dir / "tls.crt", cert_dir / "tls.key", cert_dir / "ca.crt"
    if not cert.exists() and not key.exists():
        return None
    if not (cert.exists() and key.exists()):
        raise CertificateError(reason=f"{cert_dir} must hold both tls.crt and tls.key")
    return CertBundle(cert.read_bytes(), key.read_bytes(), ca.read_bytes() if ca.exists() else b"")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _secret_bundle(obj: Obj) -> CertBundle | None:
    data = obj.get("data") or {}
    try:
        return CertBundle(
            base64.b64decode(data["tls.crt"]), base64.b64decode(data["tls.key"]), base64.b64decode(data["ca.crt"])
        )
    except (KeyError, TypeError, ValueError):
        return None


def _secret(settings: CertSettings, bundle: CertBundle, current: Obj | None = None) -> Obj:
    meta = dict(current["metadata"]) if current else {"name": settings.secret, "namespace": settings.namespace}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": _b64(bundle.cert), "tls.key": _b64(bundle.key), "ca.crt": _b64(bundle.ca)},
    }


async def stored_certificate(store: Store, settings: CertSettings, *, attempts: int = 5) -> CertBundle:
    """The CA and certificate from the Secret, made and stored first if missing or no longer fit."""
    for _ in range(attempts):
        try:
            current: Obj | None = await store.get("Secret", settings.secret, settings.namespace)
        except NotFound:
            current = None
        bundle = _secret_bundle(current) if current is not None else None
        why = "missing" if bundle is None else problem(bundle, settings.hosts)
        if bundle is not None and why is None:
            return bundle
        log.info("webhook certificate in Secret %s/%s %s; making a new CA", settings.namespace, settings.secret, why)
        fresh = await trio.to_thread.run_sync(generate, settings.hosts)
        try:
            if current is None:
                await store.create(_secret(settings, fresh))
            else:
                await store.update(_secret(settings, fresh, current))
        except (AlreadyExists, Conflict):
            continue  # another replica stored one first: use theirs
        return fresh
    raise CertificateError(reason=f"Secret {settings.namespace}/{settings.secret} kept changing; giving up")


async def patch_ca_bundle(store: Store, settings: CertSettings, ca: bytes, *, attempts: int = 5) -> list[str]:
    """Put ``ca`` in every webhook's ``clientConfig.caBundle`` of our configurations; the kinds it changed."""
    wanted, changed = _b64(ca), []
    for kind in CONFIG_KINDS:
        for _ in range(attempts):
            try:
                current = await store.get(kind, settings.configuration)
            except NotFound:
                log.warning(
                    "%s %s is not installed; the API server will not call this webhook", kind, settings.configuration
                )
                break
            webhooks = [dict(w) for w in current.get("webhooks") or [] if isinstance(w, dict)]
            stale = [w for w in webhooks if (w.get("clientConfig") or {}).get("caBundle") != wanted]
            if not stale:
                break
            for w in stale:
                w["clientConfig"] = {**(w.get("clientConfig") or {}), "caBundle": wanted}
            try:
                await store.update({**current, "webhooks": webhooks})
            except Conflict:
                continue
            changed.append(kind)
            break
        else:
            raise CertificateError(reason=f"{kind} {settings.configuration} kept changing; caBundle not written")
    return changed


async def webhook_certificate(store: Store, settings: CertSettings) -> tuple[CertBundle, bool]:
    """The certificate to serve, and whether it is self-made (then the caBundle has been written)."""
    if settings.cert_dir is not None:
        mounted = await trio.to_thread.run_sync(_read_mounted, settings.cert_dir)
        if mounted is not None:
            log.info("webhook serves the certificate mounted in %s", settings.cert_dir)
            return mounted, False
    bundle = await stored_certificate(store, settings)
    changed = await patch_ca_bundle(store, settings, bundle.ca)
    if changed:
        log.info("webhook CA written into the caBundle of %s", ", ".join(changed))
    return bundle, True


def write_bundle(directory: Path, bundle: CertBundle) -> None:
    """Write ``tls.crt``, ``tls.key`` (mode 0600) and ``ca.crt`` into ``directory`` (tests, tooling)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.crt").write_bytes(bundle.cert)
    key = directory / "tls.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(bundle.key)
    if bundle.ca:
        (directory / "ca.crt").write_bytes(bundle.ca)
