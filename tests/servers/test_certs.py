"""The webhook's certificate over time: a mounted pair reloaded when its files change, and the self-made CA's
validity, renewal and rotation, adopted by every replica that shares the Secret."""

from __future__ import annotations

import base64
import datetime
import hashlib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from actors.servers.certs import (
    CA_VALIDITY,
    CERT_VALIDITY,
    CertBundle,
    CertSettings,
    generate,
    problem,
    renewal,
    write_bundle,
)
from actors.servers.webhook import AdmissionWebhook, WebhookSettings
from actors.stores.port import Store
from actors.stores.sqlite import SqliteStore
from tests.controller.support import eventually
from tests.servers.test_webhook import NAMESPACE, SERVICE_DNS, VALIDATE, ca_bundle, configuration, mutated_pool, post
from tests.servers.test_webhook import review as admission_review

TIMEOUT = 20
HOSTS = (SERVICE_DNS, "127.0.0.1")
SECRET = "spiderpool-controller-server-certs"
NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


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
            original = await stored_cert(store)
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
            assert ca == aged.ca  # NB: written before the renewed certificate was served
            for port in (first, second):
                status, _ = await post(port, VALIDATE, admission_review("CREATE", mutated_pool("p")), ca)
                assert status == 200
