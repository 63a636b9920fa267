"""The admission webhook's TLS: a mounted certificate, or a self-made CA kept in a Secret and put in caBundle.

Owns where the webhook's serving certificate comes from, how the API server learns to trust it
(Spiderpool's ``tls.method``, reference §12.8), and keeping the certificate being served current:

- **mounted** (``certmanager`` or ``provided``): ``tls.crt`` and ``tls.key`` in the certificate directory
  (a Secret volume, as cert-manager writes it).  The caBundle is someone else's (cert-manager's CA injector,
  or the manifests), so the webhook configurations are left alone.  The files are read again every
  ``reload_interval`` seconds and a changed pair is served from the next TLS handshake on, so a certificate
  cert-manager renews (and the kubelet swaps into the volume) is picked up without a restart.  A pair that
  does not load (half written, key and certificate from different renewals) is ignored until it does.  A pair
  not there yet at start (an optional volume not filled yet, a wrong path) is waited for, the webhook not
  serving meanwhile: never a self-made CA instead, whose caBundle would fight cert-manager's CA injector.
- **auto** (nothing mounted): the first controller replica to start makes a CA and a serving certificate
  for the Service's DNS names with ``cryptography`` (ECDSA P-256) and stores them in a Secret
  (``kubernetes.io/tls`` with ``ca.crt``, and ``ca.key`` to sign renewals); later replicas and restarts load
  that Secret, so every replica behind the Service presents a certificate from the same CA.  The CA is
  then added to the ``clientConfig.caBundle`` of every webhook of our Mutating- and
  ValidatingWebhookConfiguration, only when it is missing there and guarded by resourceVersion.  CAs are only
  ever added to a bundle (``ca_union``) and leave it once expired: a replica whose copy of the Secret is a
  rotation behind cannot take the new CA out again.

Rotation (auto).  The CA is valid for ``CA_VALIDITY`` (one year), the serving certificate for
``CERT_VALIDITY`` (90 days).  Every replica re-reads the Secret every ``refresh_interval`` seconds and serves
whatever certificate it holds; whichever replica first finds it due renews it in the Secret (the write is
guarded by resourceVersion, so of two replicas only one renewal is stored and the other adopts it):

- the serving certificate ``CERT_RENEW_BEFORE`` (30 days) before it expires, or when it misses a wanted name,
  signed by the same CA, so the caBundle does not change;
- the CA ``CA_RENEW_BEFORE`` (90 days) before it expires (or when the Secret has no CA key): a new CA signs
  a new serving certificate, and ``ca.crt`` (and so the caBundle) lists the new CA followed by the old ones
  that are still valid.  The caBundle is written before the new certificate is served, and replicas still
  serving a certificate of the old CA stay trusted until they pick up the new one.

The pool host (``actors.servers.pool_host``) serves a certificate for the controller Pod's IP signed by the same
self-made CA (``pool_host_certificate``), and the CA's public part is published in a ConfigMap
(``publish_ca``, ``spiderpool-ca``, again only added to) for the agents, who cannot read the Secret.  With a
mounted webhook certificate its Secret is the user's (Spiderpool's chart names cert-manager's Secret as ours),
so the pool host keeps a CA of its own in ``<secret>-pool-host`` instead (``pool_host_secret``).

Whatever the Secret holds that does not load (an encrypted key among them) or is not valid yet (made by a
replica whose clock is ahead by more than ``CLOCK_SKEW``) is replaced as if it were missing.

Reading the mounted files and making keys run in worker threads.  Loading a certificate into the live
context stays on the event loop (two small files in a private temporary directory), because the handshakes
that read the context run there too.
"""

from __future__ import annotations

import base64
import datetime
import functools
import ipaddress
import logging
import os
import ssl
import tempfile
from pathlib import Path

import attrs
import trio
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from actors.stores.port import AlreadyExists, Conflict, NotFound, Obj, Store
from spider.errors import ConfigError, SpiderError

log = logging.getLogger(__name__)

CA_VALIDITY = datetime.timedelta(days=365)
"""How long a self-made CA is valid."""
CA_RENEW_BEFORE = datetime.timedelta(days=90)
"""A CA this close to expiry is replaced (it stays in the caBundle beside the new one until it expires)."""
CERT_VALIDITY = datetime.timedelta(days=90)
"""How long a self-made serving certificate is valid (never past its CA)."""
CERT_RENEW_BEFORE = datetime.timedelta(days=30)
"""A serving certificate this close to expiry is replaced, signed by the same CA."""
CLOCK_SKEW = datetime.timedelta(minutes=5)
"""Certificates are valid from this long before they are made, for API servers whose clock is behind; one whose
start is further than this ahead of our clock (made by a replica whose clock is ahead) is replaced."""
UNREADABLE = (ValueError, TypeError, UnsupportedAlgorithm)
"""What loading a PEM certificate or key raises when it cannot be used: bad data, an encrypted key (TypeError:
no password is given), an algorithm this ``cryptography`` does not support."""
CONFIG_KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")


@attrs.define(auto_exc=True, kw_only=True)
class CertificateError(ConfigError):
    """The mounted or stored certificate cannot be used."""

    reason: str

    def __str__(self) -> str:
        return f"webhook certificate: {self.reason}"


def _no_password() -> bytes:
    """An encrypted key fails to load (without it OpenSSL asks for a pass phrase on the terminal, or raises
    OSError when there is none)."""
    return b""


@attrs.frozen
class CertBundle:
    """A serving certificate (PEM), its key (PEM), the CAs to trust (PEM, the signing CA first; empty if
    unknown) and the signing CA's key (PEM; only for a self-made CA, which signs the renewals)."""

    cert: bytes
    key: bytes
    ca: bytes = b""
    ca_key: bytes = attrs.field(default=b"", repr=False)

    def ssl_context(self) -> ssl.SSLContext:
        """A TLS 1.2+ server context presenting this certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.load_into(context)
        return context

    def load_into(self, context: ssl.SSLContext) -> None:
        """Present this certificate from ``context``'s next handshake on (connections open keep theirs).

        Raises ``CertificateError`` when the pair does not load; ``context`` is then left as it was (the pair
        is tried on a scratch context first, as a failed load could leave a certificate without its key).
        """
        # NB: the ssl module loads a chain only from files; a private directory that lives for one call.
        with tempfile.TemporaryDirectory(prefix="spider-tls-") as d:
            cert, key = Path(d) / "tls.crt", Path(d) / "tls.key"
            cert.write_bytes(self.cert)
            key.touch(mode=0o600)
            key.write_bytes(self.key)
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=_no_password)
            except ssl.SSLError as exc:
                raise CertificateError(reason=f"certificate and key do not load: {exc}") from None
            context.load_cert_chain(cert, key, password=_no_password)

    @property
    def served(self) -> tuple[bytes, bytes]:
        """What the server presents: the certificate and its key (a change in ``ca`` alone changes nothing)."""
        return self.cert, self.key


@attrs.frozen
class CertSettings:
    """Where the webhook's certificate comes from, which names it must cover, and how often it is checked."""

    namespace: str
    service: str = "spiderpool-controller"
    """The Service in front of the webhook; the certificate covers its DNS names."""
    secret: str = "spiderpool-controller-server-certs"
    """The Secret (in ``namespace``) that holds the self-made CA and certificate; with ``cert_dir`` the mounted
    one's, never written (the pool host's CA is then in ``<secret>-pool-host``)."""
    configuration: str = "spiderpool-controller"
    """Name of both webhook configurations whose caBundle we fill in."""
    cert_dir: Path | None = None
    """A mounted ``tls.crt``/``tls.key`` (and optional ``ca.crt``) pair; when given nothing is generated for the
    webhook (it waits for the pair) and the caBundle is left alone."""
    extra_hosts: tuple[str, ...] = ()
    """More names or IP addresses for the self-made certificate (out-of-cluster runs, tests)."""
    reload_interval: float = 10.0
    """Seconds between reads of the mounted files (the kubelet updates a Secret volume within about a minute)."""
    refresh_interval: float = 600.0
    """Seconds between reads of the Secret (renewals are due weeks before expiry; this only bounds how late a
    replica adopts another replica's renewal, and how soon a wiped caBundle is written again)."""

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


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _make_ca(common_name: str, now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    # NB: the serial in the name tells two generations of the CA apart (a client picks the issuer by name)
    serial = x509.random_serial_number()
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name}-ca"),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, f"{serial:x}"),
        ]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(serial)
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return ca, ca_key


def _issue(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, hosts: tuple[str, ...], common_name: str,
    now: datetime.datetime,
) -> tuple[bytes, bytes]:  # fmt: skip
    """A serving certificate for ``hosts`` signed by ``ca``, never valid past it; (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else common_name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + CERT_VALIDITY, ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _pem(cert), _pem_key(key)


def generate(
    hosts: tuple[str, ...], *, common_name: str = "spiderpool-controller", now: datetime.datetime | None = None
) -> CertBundle:
    """A fresh CA and a serving certificate for ``hosts``, signed by it (CPU only; run it in a thread)."""
    now = now or _now()
    ca, ca_key = _make_ca(common_name, now)
    cert, key = _issue(ca, ca_key, hosts, common_name, now)
    return CertBundle(cert=cert, key=key, ca=_pem(ca), ca_key=_pem_key(ca_key))


def _certificates(bundle_pem: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM bundle (unreadable input: none)."""
    try:
        return x509.load_pem_x509_certificates(bundle_pem) if bundle_pem.strip() else []
    except ValueError:
        return []


def _still_valid(bundle_pem: bytes, now: datetime.datetime) -> bytes:
    """The certificates of a PEM bundle that have not expired, as PEM (unreadable input: none)."""
    return b"".join(_pem(c) for c in _certificates(bundle_pem) if c.not_valid_after_utc > now)


def ca_union(ours: bytes, current: bytes, *, now: datetime.datetime | None = None) -> bytes | None:
    """The CA bundle to write over ``current`` (a caBundle, the published ``ca.crt``): our CAs (the signing one
    first), then those of ``current`` we do not hold, all but the expired ones; ``None`` when ``current`` holds
    just these already, in any order (so two replicas holding different generations never take turns writing).

    Only adding, never replacing: a replica whose copy of the Secret predates another replica's CA rotation
    then cannot take the new CA away again (the new certificate would be trusted by nothing until the next
    refresh).  A CA leaves the bundle once it has expired, when the bundle is next written.
    """
    now = now or _now()
    there = _certificates(current)
    union: dict[bytes, x509.Certificate] = {}
    for cert in _certificates(ours) + there:
        if cert.not_valid_after_utc > now:
            union.setdefault(cert.public_bytes(serialization.Encoding.DER), cert)
    if set(union) == {c.public_bytes(serialization.Encoding.DER) for c in there}:
        return None
    return b"".join(_pem(c) for c in union.values())


def problem(bundle: CertBundle, hosts: tuple[str, ...], *, now: datetime.datetime | None = None) -> str | None:
    """Why a bundle's serving certificate should be replaced (unreadable or its key encrypted, a name missing,
    expiring soon, not valid yet, not signed by the bundle's first CA), or ``None``."""
    now = now or _now()
    try:
        cert = x509.load_pem_x509_certificate(bundle.cert)
        key = serialization.load_pem_private_key(bundle.key, password=None)
        signer = x509.load_pem_x509_certificates(bundle.ca)[0] if bundle.ca.strip() else None
    except UNREADABLE as exc:
        return f"unreadable: {exc}"
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        return "the key does not belong to the certificate"
    if cert.not_valid_after_utc - CERT_RENEW_BEFORE < now:
        return f"expires {cert.not_valid_after_utc:%Y-%m-%d}"
    if cert.not_valid_before_utc > now + CLOCK_SKEW:  # NB: clients refuse it until then
        return f"not valid until {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
    if signer is not None:
        try:
            cert.verify_directly_issued_by(signer)
        except (ValueError, TypeError, InvalidSignature):
            return "not signed by the CA"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no subjectAltName"
    covered = {str(n) for n in san.get_values_for_type(x509.DNSName)}
    covered |= {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    missing = [h for h in hosts if h not in covered and str(_maybe_ip(h)) not in covered]
    return f"does not cover {', '.join(missing)}" if missing else None


def ca_problem(bundle: CertBundle, *, now: datetime.datetime | None = None) -> str | None:
    """Why a bundle's CA should be replaced (no key to sign with, unreadable or its key encrypted, the key not
    the CA's, expiring within ``CA_RENEW_BEFORE``, not valid yet), or ``None``."""
    now = now or _now()
    if not bundle.ca_key or not bundle.ca.strip():
        return "has no CA key"
    try:
        ca = x509.load_pem_x509_certificates(bundle.ca)[0]
        ca_key = serialization.load_pem_private_key(bundle.ca_key, password=None)
    except UNREADABLE as exc:
        return f"CA unreadable: {exc}"
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey) or ca_key.public_key() != ca.public_key():
        return "the CA key does not belong to the CA"
    if ca.not_valid_after_utc - CA_RENEW_BEFORE < now:
        return f"CA expires {ca.not_valid_after_utc:%Y-%m-%d}"
    if ca.not_valid_before_utc > now + CLOCK_SKEW:  # NB: nothing it signs is trusted until then
        return f"CA not valid until {ca.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
    return None


def renewal(
    current: CertBundle | None, hosts: tuple[str, ...], *, common_name: str = "spiderpool-controller",
    now: datetime.datetime | None = None,
) -> tuple[CertBundle, str] | None:  # fmt: skip
    """What should replace ``current`` and why, or ``None`` while it is fit (CPU only; run it in a thread).

    A CA that is missing, keyless or due makes a new CA (the old CAs still valid stay in ``ca`` after it);
    otherwise a serving certificate that is due is re-issued by the same CA.
    """
    now = now or _now()
    if current is None:
        return generate(hosts, common_name=common_name, now=now), "missing"
    why_ca = ca_problem(current, now=now)
    if why_ca is not None:
        fresh = generate(hosts, common_name=common_name, now=now)
        return attrs.evolve(fresh, ca=fresh.ca + _still_valid(current.ca, now)), why_ca
    why = problem(current, hosts, now=now)
    if why is None:
        return None
    ca = x509.load_pem_x509_certificates(current.ca)[0]
    ca_key = serialization.load_pem_private_key(current.ca_key, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)  # NB: ca_problem checked it
    cert, key = _issue(ca, ca_key, hosts, common_name, now)
    return attrs.evolve(current, cert=cert, key=key, ca=_still_valid(current.ca, now)), why


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
    try:
        return CertBundle(cert.read_bytes(), key.read_bytes(), ca.read_bytes() if ca.exists() else b"")
    except OSError as exc:  # NB: a file swapped out between exists() and the read
        raise CertificateError(reason=f"{cert_dir}: {exc}") from None


def _load_mounted(cert_dir: Path) -> CertBundle:
    """The mounted pair, once it is there and loads; ``CertificateError`` saying what is wrong until then."""
    mounted = _read_mounted(cert_dir)
    if mounted is None:
        raise CertificateError(reason=f"{cert_dir} holds no tls.crt and tls.key (yet)")
    mounted.ssl_context()  # NB: only to see that the pair loads
    return mounted


async def certificate_pending(settings: CertSettings) -> str | None:
    """What the webhook has to wait for before it can serve: the mounted certificate when ``cert_dir`` is given
    and it is not there (or does not load) yet; ``None`` when it can serve at once."""
    if settings.cert_dir is None:
        return None
    try:
        await trio.to_thread.run_sync(_load_mounted, settings.cert_dir)
    except CertificateError as exc:
        return str(exc)
    return None


async def mounted_certificate(settings: CertSettings) -> CertBundle:
    """The pair mounted in ``settings.cert_dir``, waited for while it is missing or does not load (read again
    every ``reload_interval`` seconds; what is wrong is logged once).  Never anything made here instead: a
    mounted certificate's issuer (cert-manager, the user) also owns the caBundle, which a self-made CA would
    fight over."""
    assert settings.cert_dir is not None
    told = ""
    while True:
        try:
            return await trio.to_thread.run_sync(_load_mounted, settings.cert_dir)
        except CertificateError as exc:
            if str(exc) != told:
                told = str(exc)
                log.warning("webhook waits for its mounted certificate (retrying every %gs): %s",
                            settings.reload_interval, told)  # fmt: skip
        await trio.sleep(settings.reload_interval)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _secret_bundle(obj: Obj) -> CertBundle | None:
    data = obj.get("data") or {}
    try:
        return CertBundle(
            base64.b64decode(data["tls.crt"]),
            base64.b64decode(data["tls.key"]),
            base64.b64decode(data["ca.crt"]),
            base64.b64decode(data.get("ca.key") or ""),
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
        "data": {
            "tls.crt": _b64(bundle.cert),
            "tls.key": _b64(bundle.key),
            "ca.crt": _b64(bundle.ca),
            "ca.key": _b64(bundle.ca_key),
        },
    }


async def stored_certificate(
    store: Store, settings: CertSettings, *, attempts: int = 5, now: datetime.datetime | None = None
) -> CertBundle:
    """The CA and certificate from the Secret, renewed there first (or made) when due."""
    for _ in range(attempts):
        try:
            current: Obj | None = await store.get("Secret", settings.secret, settings.namespace)
        except NotFound:
            current = None
        bundle = _secret_bundle(current) if current is not None else None
        due = await trio.to_thread.run_sync(functools.partial(renewal, bundle, settings.hosts, now=now))
        if due is None:
            assert bundle is not None
            return bundle
        fresh, why = due
        log.info("certificate in Secret %s/%s %s; renewing it", settings.namespace, settings.secret, why)
        try:
            if current is None:
                await store.create(_secret(settings, fresh))
            else:
                await store.update(_secret(settings, fresh, current))
        except (AlreadyExists, Conflict):
            continue  # another replica stored one first: use theirs
        return fresh
    raise CertificateError(reason=f"Secret {settings.namespace}/{settings.secret} kept changing; giving up")


def _b64decoded(data: object) -> bytes:
    try:
        return base64.b64decode(str(data or ""))
    except ValueError:  # NB: binascii.Error
        return b""


async def patch_ca_bundle(store: Store, settings: CertSettings, ca: bytes, *, attempts: int = 5) -> list[str]:
    """Add the CAs of ``ca`` to every webhook's ``clientConfig.caBundle`` of our configurations (``ca_union``:
    the CAs there stay until they expire); the kinds it changed."""
    changed = []
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
            stale = False
            for w in webhooks:
                config = w.get("clientConfig") or {}
                wanted = ca_union(ca, _b64decoded(config.get("caBundle")))
                if wanted is not None:
                    w["clientConfig"], stale = {**config, "caBundle": _b64(wanted)}, True
            if not stale:
                break
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
    """The certificate to serve, and whether it is self-made (then the caBundle has been written).  With
    ``cert_dir`` it is the mounted one, waited for until it is there (``mounted_certificate``)."""
    if settings.cert_dir is not None:
        mounted = await mounted_certificate(settings)
        log.info("webhook serves the certificate mounted in %s", settings.cert_dir)
        return mounted, False
    bundle = await stored_certificate(store, settings)
    changed = await patch_ca_bundle(store, settings, bundle.ca)
    if changed:
        log.info("webhook CA written into the caBundle of %s", ", ".join(changed))
    return bundle, True


@attrs.define(eq=False)
class ServedCertificate:
    """The certificate the webhook presents, kept current in one ``ssl.SSLContext`` the listener shares.

    ``open`` obtains it (``webhook_certificate``); ``keep_current`` then checks, every ``reload_interval``
    (mounted files) or ``refresh_interval`` (the Secret) seconds, whether it changed, and loads a changed one
    into the same context, so new handshakes present it and connections already open are not disturbed.
    """

    store: Store
    settings: CertSettings
    bundle: CertBundle
    self_made: bool
    context: ssl.SSLContext
    reloads: int = 0
    """How many times a changed certificate has been loaded."""

    @classmethod
    async def open(cls, store: Store, settings: CertSettings) -> ServedCertificate:
        """The current certificate, with a context presenting it; raises ``CertificateError``.  A certificate
        to be mounted is waited for (``mounted_certificate``): the webhook does not serve until it is there."""
        bundle, self_made = await webhook_certificate(store, settings)
        return cls(store, settings, bundle, self_made, bundle.ssl_context())

    async def keep_current(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Check for a changed certificate until cancelled; trouble is logged and the current one kept."""
        s = self.settings
        interval = s.refresh_interval if self.self_made else s.reload_interval
        task_status.started()
        while True:
            await trio.sleep(interval)
            try:
                await self.refresh()
            except SpiderError as exc:
                log.warning("webhook certificate not refreshed (serving the current one): %s", exc)

    async def refresh(self) -> bool:
        """Load the certificate again if it changed (renewing the Secret's when due); True when it did."""
        if self.self_made:
            bundle = await stored_certificate(self.store, self.settings)
            changed = await patch_ca_bundle(self.store, self.settings, bundle.ca)
            if changed:  # NB: before the new certificate is served, so the API server already trusts its CA
                log.info("webhook CA written into the caBundle of %s", ", ".join(changed))
        else:
            assert self.settings.cert_dir is not None
            mounted = await trio.to_thread.run_sync(_read_mounted, self.settings.cert_dir)
            if mounted is None:
                raise CertificateError(reason=f"{self.settings.cert_dir} no longer holds tls.crt and tls.key")
            bundle = mounted
        if bundle.served == self.bundle.served:
            return False
        bundle.load_into(self.context)
        self.bundle, self.reloads = bundle, self.reloads + 1
        log.info("webhook serves a new certificate (%s)", "from the Secret" if self.self_made else "mounted")
        return True


def issue_for(bundle: CertBundle, hosts: tuple[str, ...], *, now: datetime.datetime | None = None) -> CertBundle:
    """A serving certificate for ``hosts`` (names or IP addresses) signed by ``bundle``'s CA, which must be a
    self-made one with its key; ``ca`` is the bundle's, the key is not passed on (CPU only; run it in a thread)."""
    if not bundle.ca_key or not bundle.ca.strip():
        raise CertificateError(reason="no CA key to sign a certificate with")
    try:
        ca = x509.load_pem_x509_certificates(bundle.ca)[0]
        ca_key = serialization.load_pem_private_key(bundle.ca_key, password=None)
    except UNREADABLE as exc:
        raise CertificateError(reason=f"CA unreadable: {exc}") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CertificateError(reason="the CA key is not an EC key")
    cert, key = _issue(ca, ca_key, hosts, "spiderpool-controller", now or _now())
    return CertBundle(cert=cert, key=key, ca=bundle.ca)


async def publish_ca(store: Store, namespace: str, name: str, ca: bytes, *, attempts: int = 5) -> bool:
    """Keep the CAs of ``ca`` in ConfigMap ``namespace/name``'s ``ca.crt`` (public certificates only, never a
    key), for the agents to trust the pool host with; added to those there, which stay until they expire
    (``ca_union``), and written only when that changes it.  True when it was written."""
    for _ in range(attempts):
        try:
            current: Obj | None = await store.get("ConfigMap", name, namespace)
        except NotFound:
            current = None
        there = str((current.get("data") or {}).get("ca.crt") or "") if current is not None else ""
        union = ca_union(ca, there.encode())
        if union is None:
            return False
        wanted = union.decode()
        try:
            if current is None:
                await store.create(
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"name": name, "namespace": namespace},
                        "data": {"ca.crt": wanted},
                    }
                )
            else:
                await store.update({**current, "data": {**(current.get("data") or {}), "ca.crt": wanted}})
        except (AlreadyExists, Conflict):
            continue
        return True
    raise CertificateError(reason=f"ConfigMap {namespace}/{name} kept changing; CA not published")


POOL_HOST_SECRET_SUFFIX = "-pool-host"
"""With a mounted webhook certificate the pool host's CA is kept in the Secret ``<secret>-pool-host``."""


def pool_host_secret(settings: CertSettings) -> str:
    """The Secret holding the CA the pool host signs its certificate with: the webhook's own (auto: agents and
    the API server then trust one CA), or with a mounted certificate one of its own, ``<secret>-pool-host``:
    the mounted certificate's Secret (Spiderpool's chart names cert-manager's the same) is the user's, and
    never written here."""
    return settings.secret if settings.cert_dir is None else f"{settings.secret}{POOL_HOST_SECRET_SUFFIX}"


async def pool_host_ca(store: Store, settings: CertSettings) -> CertBundle:
    """The pool host's CA and its key, from ``pool_host_secret`` (made or renewed there first when due)."""
    own = attrs.evolve(settings, secret=pool_host_secret(settings), cert_dir=None)
    return await stored_certificate(store, own)


async def pool_host_certificate(
    store: Store, settings: CertSettings, hosts: tuple[str, ...], ca_configmap: str
) -> CertBundle:
    """The pool host's serving certificate: for ``hosts`` (the controller Pod's IP), signed by the CA kept in
    ``pool_host_secret`` (made there first when missing), whose public part is published in ConfigMap
    ``ca_configmap`` (``publish_ca``) before the certificate is served."""
    stored = await pool_host_ca(store, settings)
    if await publish_ca(store, settings.namespace, ca_configmap, stored.ca):
        log.info("pool host CA published in ConfigMap %s/%s", settings.namespace, ca_configmap)
    return await trio.to_thread.run_sync(functools.partial(issue_for, stored, hosts))


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
