"""The webhook's certificate over time: a mounted pair reloaded when its files change (and waited for, never
replaced, when it is not there yet), and the self-made CA's validity, renewal and rotation, adopted by every
replica that shares the Secret; what in the Secret cannot be used; CAs only ever added to a caBundle; the pool
host's CA, which never touches a mounted certificate's Secret."""

from __future__ import annotations

import base64
import datetime
import hashlib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from actors.servers.certs import (
    CA_VALIDITY,
    CERT_VALIDITY,
    CLOCK_SKEW,
    CONFIG_KINDS,
    CertBundle,
    CertificateError,
    CertSettings,
    ServedCertificate,
    ca_problem,
    generate,
    issue_for,
    patch_ca_bundle,
    pool_host_certificate,
    problem,
    publish_ca,
    renewal,
    stored_certificate,
    webhook_certificate,
    write_bundle,
)
from actors.servers.pool_host import keep_certificate
from actors.servers.webhook import AdmissionWebhook, WebhookSettings
from actors.stores.port import NotFound, Obj, Store
from actors.stores.sqlite import SqliteStore
from tests.controller.support import eventually
from tests.servers.test_webhook import NAMESPACE, SERVICE_DNS, VALIDATE, ca_bundle, configuration, mutated_pool, post
from tests.servers.test_webhook import review as admission_review

TIMEOUT = 20
HOSTS = (SERVICE_DNS, "127.0.0.1")
SECRET = "spiderpool-controller-server-certs"
NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
MINUTE = datetime.timedelta(minutes=1)
POOL_HOST_SECRET = f"{SECRET}-pool-host"
CA_CONFIGMAP = "spiderpool-ca"


def fingerprint(pem: bytes) -> str:
    """SHA-256 of a PEM certificate's DER, as ``served`` reports it."""
    return x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256()).hex()


def certificates(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


async def served(port: int) -> str:
    """The SHA-256 fingerprint of the certificate the server presents to a new connection."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # NB: we look, we do not trust
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, context, server_hostname=SERVICE_DNS)
    async with stream:
        await stream.do_handshake()
        der = stream.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


async def until_served(port: int, pem: bytes) -> None:
    """Wait until new connections are presented ``pem``."""

    async def presented() -> bool:
        return await served(port) == fingerprint(pem)

    await eventually(presented, within=TIMEOUT, what="the new certificate served")


async def stored_cert(store: Store) -> bytes:
    """The serving certificate in the Secret."""
    return base64.b64decode((await store.get("Secret", SECRET, NAMESPACE))["data"]["tls.crt"])


@asynccontextmanager
async def serving(store: Store, certs: CertSettings) -> AsyncIterator[int]:
    webhook = AdmissionWebhook(store)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(webhook.serve, WebhookSettings(certs, port=0, host="127.0.0.1"))
        yield port
        nursery.cancel_scope.cancel(reason="test over")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with await SqliteStore.open(tmp_path / "store.db") as s:
        for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            await s.create(configuration(kind))
        yield s


# --- mounted (cert-manager, provided) ------------------------------------------------------------------------


async def test_a_mounted_certificate_replaced_on_disk_is_served_without_a_restart(store: Store, tmp_path: Path) -> None:
    first, second = generate(HOSTS), generate(HOSTS)
    write_bundle(tmp_path / "tls", first)
    certs = CertSettings(namespace=NAMESPACE, cert_dir=tmp_path / "tls", reload_interval=0.02)
    with trio.fail_after(TIMEOUT):
        async with serving(store, certs) as port:
            assert await served(port) == fingerprint(first.cert)
            write_bundle(tmp_path / "tls", second)  # as the kubelet updates the Secret volume
            await until_served(port, second.cert)
            status, _ = await post(port, VALIDATE, admission_review("CREATE", mutated_pool("p")), second.ca)
            assert status == 200


async def test_a_half_written_pair_is_ignored_until_the_key_matches(store: Store, tmp_path: Path) -> None:
    first, second = generate(HOSTS), generate(HOSTS)
    write_bundle(tmp_path / "tls", first)
    certs = CertSettings(namespace=NAMESPACE, cert_dir=tmp_path / "tls", reload_interval=0.02)
    with trio.fail_after(TIMEOUT):
        async with serving(store, certs) as port:
            (tmp_path / "tls" / "tls.crt").write_bytes(second.cert)  # the new certificate, the old key
            await trio.sleep(0.2)  # ten reload rounds
            assert await served(port) == fingerprint(first.cert)
            (tmp_path / "tls" / "tls.key").write_bytes(second.key)
            await until_served(port, second.cert)


# --- self-made: validity, renewal, rotation --------------------------------------------------------------------


def validity(cert: x509.Certificate) -> datetime.timedelta:
    return cert.not_valid_after_utc - cert.not_valid_before_utc


def test_the_self_made_ca_lasts_a_year_and_its_serving_certificate_ninety_days() -> None:
    bundle = generate(HOSTS, now=NOW)
    [ca] = certificates(bundle.ca)
    cert = x509.load_pem_x509_certificate(bundle.cert)
    assert CA_VALIDITY == 365 * DAY
    assert CERT_VALIDITY == 90 * DAY
    assert 365 * DAY <= validity(ca) <= 366 * DAY
    assert 90 * DAY <= validity(cert) <= 91 * DAY
    cert.verify_directly_issued_by(ca)
    assert bundle.ca_key  # kept, to sign the renewals


def test_a_fit_bundle_is_kept_and_a_due_serving_certificate_is_reissued_by_the_same_ca() -> None:
    bundle = generate(HOSTS, now=NOW)
    assert renewal(bundle, HOSTS, now=NOW + 59 * DAY) is None
    due = renewal(bundle, HOSTS, now=NOW + 61 * DAY)  # within 30 days of the certificate's expiry
    assert due is not None
    fresh, why = due
    assert why.startswith("expires")
    assert (fresh.ca, fresh.ca_key) == (bundle.ca, bundle.ca_key)  # the caBundle need not change
    assert fresh.cert != bundle.cert
    x509.load_pem_x509_certificate(fresh.cert).verify_directly_issued_by(certificates(bundle.ca)[0])
    assert problem(fresh, HOSTS, now=NOW + 61 * DAY) is None
    moved = renewal(bundle, (*HOSTS, "spiderpool-controller.other.svc"), now=NOW)  # a name it must now cover
    assert moved is not None
    assert moved[0].ca == bundle.ca


def test_a_ca_near_its_end_is_replaced_and_the_old_ca_stays_trusted_until_it_expires() -> None:
    bundle = generate(HOSTS, now=NOW)
    [old_ca] = certificates(bundle.ca)
    due = renewal(bundle, HOSTS, now=NOW + 280 * DAY)  # within 90 days of the CA's expiry
    assert due is not None
    fresh, why = due
    assert why.startswith("CA expires")
    new_ca, kept = certificates(fresh.ca)  # the new CA signs; the old one is still trusted
    assert kept == old_ca
    assert new_ca != old_ca
    assert new_ca.subject != old_ca.subject  # a client picks the issuer by name
    x509.load_pem_x509_certificate(fresh.cert).verify_directly_issued_by(new_ca)
    later = renewal(fresh, HOSTS, now=NOW + 370 * DAY)  # the old CA has expired by the next renewal
    assert later is not None
    assert certificates(later[0].ca) == [new_ca]


def test_a_secret_of_the_old_format_without_a_ca_key_gets_a_new_ca() -> None:
    old = generate(HOSTS, now=NOW)
    due = renewal(CertBundle(old.cert, old.key, old.ca), HOSTS, now=NOW + DAY)
    assert due is not None
    fresh, why = due
    assert why == "has no CA key"
    assert len(certificates(fresh.ca)) == 2  # the old CA stays trusted while it is valid


async def test_every_replica_serves_the_certificate_one_of_them_renews_in_the_secret(
    store: Store, tmp_path: Path
) -> None:
    certs = CertSettings(namespace=NAMESPACE, extra_hosts=("127.0.0.1",), refresh_interval=0.05)
    with trio.fail_after(TIMEOUT):
        async with (
            await SqliteStore.open(tmp_path / "store.db") as other,
            serving(store, certs) as first,
            serving(other, certs) as second,
        ):
            original, original_ca = await stored_cert(store), await ca_bundle(store)
            assert await served(first) == await served(second) == fingerprint(original)
            # Another generation of the Secret, its serving certificate 80 days old: due for renewal.
            aged = generate(certs.hosts, now=datetime.datetime.now(datetime.UTC) - 80 * DAY)
            current = await store.get("Secret", SECRET, NAMESPACE)
            data = {k: base64.b64encode(v).decode() for k, v in zip(("tls.crt", "tls.key", "ca.crt", "ca.key"),
                    (aged.cert, aged.key, aged.ca, aged.ca_key), strict=True)}  # fmt: skip
            await store.update({**current, "data": data})

            # One replica renews it (signed by the same CA), both adopt the renewal, the caBundle trusts it.
            async def renewed_in_secret() -> bool:
                return await stored_cert(store) != aged.cert

            await eventually(renewed_in_secret, within=TIMEOUT, what="the Secret renewed")
            renewed = await stored_cert(store)
            x509.load_pem_x509_certificate(renewed).verify_directly_issued_by(certificates(aged.ca)[0])
            await until_served(first, renewed)
            await until_served(second, renewed)
            ca = await ca_bundle(store)
            # NB: added before the renewed certificate was served; the first Secret's CA stays until it expires
            assert certificates(ca) == [*certificates(aged.ca), *certificates(original_ca)]
            for port in (first, second):
                status, _ = await post(port, VALIDATE, admission_review("CREATE", mutated_pool("p")), ca)
                assert status == 200


# --- what the Secret holds that cannot be used ---------------------------------------------------------------


def encrypted(key_pem: bytes) -> bytes:
    """``key_pem`` encrypted with a pass phrase (which nothing here is given)."""
    key = serialization.load_pem_private_key(key_pem, None)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )


def tls_secret(bundle: CertBundle, name: str = SECRET) -> Obj:
    """A ``kubernetes.io/tls`` Secret holding ``bundle`` (``ca.key`` only when it has one, as cert-manager's)."""
    files = {"tls.crt": bundle.cert, "tls.key": bundle.key, "ca.crt": bundle.ca, "ca.key": bundle.ca_key}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "type": "kubernetes.io/tls",
        "data": {k: base64.b64encode(v).decode() for k, v in files.items() if v},
    }


def test_an_encrypted_key_is_unreadable_and_replaced_never_a_crash() -> None:
    bundle = generate(HOSTS, now=NOW)
    locked = attrs.evolve(bundle, key=encrypted(bundle.key))
    assert (problem(locked, HOSTS, now=NOW) or "").startswith("unreadable")
    due = renewal(locked, HOSTS, now=NOW)
    assert due is not None
    assert (due[0].ca, due[0].ca_key) == (bundle.ca, bundle.ca_key)  # re-issued by the same CA
    ca_locked = attrs.evolve(bundle, ca_key=encrypted(bundle.ca_key))
    assert (ca_problem(ca_locked, now=NOW) or "").startswith("CA unreadable")
    due = renewal(ca_locked, HOSTS, now=NOW)
    assert due is not None
    assert certificates(due[0].ca)[1:] == certificates(bundle.ca)  # a new CA; the old one still trusted
    with pytest.raises(CertificateError):
        issue_for(ca_locked, ("10.0.0.5",), now=NOW)
    with pytest.raises(CertificateError):  # NB: a mounted pair; OpenSSL would ask for a pass phrase
        locked.ssl_context()


async def test_a_secret_with_an_encrypted_key_is_renewed_and_a_running_webhook_adopts_it(store: Store) -> None:
    certs = CertSettings(namespace=NAMESPACE, extra_hosts=("127.0.0.1",))
    with trio.fail_after(TIMEOUT):
        served_now = await ServedCertificate.open(store, certs)
        bundle = generate(certs.hosts)
        current = await store.get("Secret", SECRET, NAMESPACE)
        await store.update({**current, "data": tls_secret(attrs.evolve(bundle, key=encrypted(bundle.key)))["data"]})
        assert await served_now.refresh()  # NB: the renewal of the Secret, not a TypeError
    renewed = await stored_certificate(store, certs)
    assert served_now.bundle.served == renewed.served
    assert renewed.ca == bundle.ca
    assert problem(renewed, certs.hosts) is None


def test_a_certificate_not_valid_yet_beyond_the_clock_skew_is_replaced() -> None:
    ahead = generate(HOSTS, now=NOW + 2 * CLOCK_SKEW + MINUTE)  # by a replica whose clock is 11 minutes ahead
    assert (ca_problem(ahead, now=NOW) or "").startswith("CA not valid until")
    due = renewal(ahead, HOSTS, now=NOW)
    assert due is not None
    fresh, _ = due
    assert certificates(fresh.ca)[0].not_valid_before_utc <= NOW
    assert problem(fresh, HOSTS, now=NOW) is None
    # The serving certificate alone ahead: re-issued by the same CA.
    fit = generate(HOSTS, now=NOW - DAY)
    later = issue_for(fit, HOSTS, now=NOW + 2 * CLOCK_SKEW + MINUTE)
    alone = attrs.evolve(fit, cert=later.cert, key=later.key)
    assert (problem(alone, HOSTS, now=NOW) or "").startswith("not valid until")
    due = renewal(alone, HOSTS, now=NOW)
    assert due is not None
    assert due[0].ca == fit.ca
    # Within the allowance (the backdating every certificate gets covers it): kept.
    assert renewal(generate(HOSTS, now=NOW + 2 * CLOCK_SKEW - MINUTE), HOSTS, now=NOW) is None


# --- a certificate to be mounted, not there yet ----------------------------------------------------------------


async def test_an_empty_cert_dir_is_waited_for_and_never_replaced_by_a_self_made_ca(
    store: Store, tmp_path: Path
) -> None:
    (tmp_path / "tls").mkdir()  # an optional Secret volume cert-manager has not filled yet
    certs = CertSettings(namespace=NAMESPACE, cert_dir=tmp_path / "tls", reload_interval=0.02)
    configurations = [await store.get(kind, certs.configuration) for kind in CONFIG_KINDS]
    mounted = generate(HOSTS)
    obtained: list[tuple[CertBundle, bool]] = []

    async def obtain() -> None:
        obtained.append(await webhook_certificate(store, certs))

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(obtain)
            await trio.sleep(0.3)  # fifteen reads of the empty directory
            assert obtained == []
            write_bundle(tmp_path / "tls", mounted)
    [(bundle, self_made)] = obtained
    assert (bundle.served, self_made) == (mounted.served, False)
    assert [await store.get(kind, certs.configuration) for kind in CONFIG_KINDS] == configurations  # cert-manager's
    with pytest.raises(NotFound):
        await store.get("Secret", SECRET, NAMESPACE)


async def test_a_controller_whose_certificate_is_not_mounted_yet_runs_not_ready_until_it_serves_it(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from actors.controller.main import ControllerSettings, open_controller

    (tmp_path / "tls").mkdir()
    settings = ControllerSettings(
        store_path=tmp_path / "unused.db", namespace=NAMESPACE, identity="c-0", health_host="127.0.0.1",
        health_port=0, webhook=True, webhook_host="127.0.0.1", webhook_port=0, webhook_cert_dir=tmp_path / "tls",
    )  # fmt: skip
    webhook_settings = ControllerSettings.webhook_settings  # NB: the files are read every 10 s otherwise

    def quick(self: ControllerSettings) -> WebhookSettings:
        given = webhook_settings(self)
        return attrs.evolve(given, certs=attrs.evolve(given.certs, reload_interval=0.02))

    monkeypatch.setattr(ControllerSettings, "webhook_settings", quick)
    mounted = generate(HOSTS)
    with trio.fail_after(TIMEOUT):
        async with open_controller(settings, store) as controller:
            assert controller.started  # NB: the rest of the controller runs meanwhile
            assert "the admission webhook is not serving yet" in controller.readiness_problems()
            write_bundle(tmp_path / "tls", mounted)

            async def serving_it() -> bool:
                return controller.webhook is not None and controller.webhook.port is not None

            await eventually(serving_it, within=TIMEOUT, what="the mounted certificate served")
            assert controller.webhook is not None
            assert controller.webhook.port is not None
            assert await served(controller.webhook.port) == fingerprint(mounted.cert)
            assert "the admission webhook is not serving yet" not in controller.readiness_problems()
    with pytest.raises(NotFound):
        await store.get("Secret", SECRET, NAMESPACE)


# --- the caBundle and the published CA: only ever added to -----------------------------------------------------


async def set_ca_bundle(store: Store, pem: bytes) -> None:
    """Every webhook's caBundle set to ``pem`` (as another writer left it)."""
    for kind in CONFIG_KINDS:
        current = await store.get(kind, "spiderpool-controller")
        webhooks = [{**w, "clientConfig": {**w["clientConfig"], "caBundle": base64.b64encode(pem).decode()}}
                    for w in current["webhooks"]]  # fmt: skip
        await store.update({**current, "webhooks": webhooks})


async def published(store: Store) -> bytes:
    return str((await store.get("ConfigMap", CA_CONFIGMAP, NAMESPACE))["data"]["ca.crt"]).encode()


async def test_a_replica_a_rotation_behind_never_takes_the_new_ca_out_of_the_cabundle(store: Store) -> None:
    now = datetime.datetime.now(datetime.UTC)
    old = generate(HOSTS, now=now - 300 * DAY)  # its CA is due: within 90 days of its expiry
    due = renewal(old, HOSTS, now=now)
    assert due is not None
    rotated, _ = due  # another replica's rotation: the new CA, then the old one
    certs = CertSettings(namespace=NAMESPACE)
    with trio.fail_after(TIMEOUT):
        assert await patch_ca_bundle(store, certs, rotated.ca) == list(CONFIG_KINDS)
        assert await publish_ca(store, NAMESPACE, CA_CONFIGMAP, rotated.ca)
        # A replica whose read of the Secret predates the rotation: nothing to add, nothing written.
        assert await patch_ca_bundle(store, certs, old.ca) == []
        assert not await publish_ca(store, NAMESPACE, CA_CONFIGMAP, old.ca)
    for kind in CONFIG_KINDS:
        assert certificates(await ca_bundle(store, kind)) == certificates(rotated.ca)
    assert certificates(await published(store)) == certificates(rotated.ca)


async def test_a_ca_leaves_the_cabundle_only_once_it_has_expired(store: Store) -> None:
    now = datetime.datetime.now(datetime.UTC)
    expired, other, ours = generate(HOSTS, now=now - CA_VALIDITY - DAY), generate(HOSTS), generate(HOSTS)
    certs = CertSettings(namespace=NAMESPACE)
    await set_ca_bundle(store, expired.ca + other.ca)
    with trio.fail_after(TIMEOUT):
        assert await patch_ca_bundle(store, certs, ours.ca) == list(CONFIG_KINDS)
        assert await patch_ca_bundle(store, certs, other.ca + ours.ca) == []  # the same CAs, another order
        await publish_ca(store, NAMESPACE, CA_CONFIGMAP, expired.ca + other.ca)
        assert await publish_ca(store, NAMESPACE, CA_CONFIGMAP, ours.ca)
    assert certificates(await ca_bundle(store)) == [*certificates(ours.ca), *certificates(other.ca)]
    assert certificates(await published(store)) == [*certificates(ours.ca), *certificates(other.ca)]


# --- the pool host's CA -----------------------------------------------------------------------------------------


async def test_with_a_mounted_certificate_the_pool_host_keeps_its_own_ca_and_never_writes_the_mounted_secret(
    store: Store, tmp_path: Path
) -> None:
    provided = attrs.evolve(generate(HOSTS), ca_key=b"")  # as cert-manager writes it: no ca.key
    await store.create(tls_secret(provided))  # the Secret Spiderpool's chart names cert-manager's Certificate's
    write_bundle(tmp_path / "tls", provided)  # ... and mounts
    before = await store.get("Secret", SECRET, NAMESPACE)
    certs = CertSettings(namespace=NAMESPACE, cert_dir=tmp_path / "tls")
    hosts = ("10.0.0.5",)
    with trio.fail_after(TIMEOUT):
        bundle = await pool_host_certificate(store, certs, hosts, CA_CONFIGMAP)
        async with trio.open_nursery() as nursery:  # and its renewal rounds
            nursery.start_soon(keep_certificate, store, certs, hosts, CA_CONFIGMAP, bundle, bundle.ssl_context(), 0.02)
            await trio.sleep(0.3)
            nursery.cancel_scope.cancel(reason="test over")
    assert await store.get("Secret", SECRET, NAMESPACE) == before
    own = await store.get("Secret", POOL_HOST_SECRET, NAMESPACE)
    [ca] = certificates(base64.b64decode(own["data"]["ca.crt"]))
    assert own["data"]["ca.key"]
    x509.load_pem_x509_certificate(bundle.cert).verify_directly_issued_by(ca)
    assert certificates(await published(store)) == [ca]


async def test_in_auto_mode_the_pool_host_signs_with_the_webhooks_ca(store: Store) -> None:
    certs = CertSettings(namespace=NAMESPACE, extra_hosts=("127.0.0.1",))
    with trio.fail_after(TIMEOUT):
        webhook, self_made = await webhook_certificate(store, certs)
        bundle = await pool_host_certificate(store, certs, ("10.0.0.5",), CA_CONFIGMAP)
    assert self_made
    x509.load_pem_x509_certificate(bundle.cert).verify_directly_issued_by(certificates(webhook.ca)[0])
    assert await published(store) == webhook.ca  # agents and the API server trust one CA
    with pytest.raises(NotFound):
        await store.get("Secret", POOL_HOST_SECRET, NAMESPACE)
