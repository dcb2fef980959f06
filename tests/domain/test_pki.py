"""Project CAs: the certificates verify as a chain and carry mutual TLS through Python's ssl."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from depot_api.domain.pki import (
    KeyPair,
    issue_client_cert,
    issue_server_cert,
    new_project_ca,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
DAY = timedelta(days=1)
SERVER = "bk-abc123.machines.depot.internal"


def cert(pair: KeyPair) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pair.cert_pem.encode())


def certificate_expiry(cert_pem: str) -> datetime:
    return x509.load_pem_x509_certificate(cert_pem.encode()).not_valid_after_utc


T = TypeVar("T", bound=x509.ExtensionType)


def ext(c: x509.Certificate, kind: type[T]) -> x509.Extension[T]:
    return c.extensions.get_extension_for_class(kind)


def common_name(c: x509.Certificate) -> str:
    (attribute,) = c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attribute.value)


# --- the certificates themselves --------------------------------------------------------------


def test_project_ca_shape() -> None:
    ca = new_project_ca("abc123defg", now=NOW)
    c = cert(ca)
    assert common_name(c) == "depot-api project abc123defg CA"
    assert c.issuer == c.subject
    assert c.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert c.not_valid_after_utc == NOW + timedelta(days=3650)
    assert certificate_expiry(ca.cert_pem) == NOW + timedelta(days=3650)
    constraints = ext(c, x509.BasicConstraints)
    assert constraints.critical
    assert (constraints.value.ca, constraints.value.path_length) == (True, 0)
    usage = ext(c, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    ski = ext(c, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(c.public_key())
    public = c.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)
    assert isinstance(c.signature_hash_algorithm, hashes.SHA256)
    c.verify_directly_issued_by(c)  # self-signed

    assert ca.key_pem.startswith("-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, unencrypted
    key = serialization.load_pem_private_key(ca.key_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == public


def test_project_ca_lifetime() -> None:
    ca = new_project_ca("p", now=NOW, lifetime=timedelta(days=30))
    assert certificate_expiry(ca.cert_pem) == NOW + timedelta(days=30)
    with pytest.raises(ValueError, match="lifetime must be positive"):
        new_project_ca("p", now=NOW, lifetime=timedelta(0))


def test_server_cert_shape() -> None:
    ca = new_project_ca("p", now=NOW)
    server = issue_server_cert(ca, SERVER, now=NOW, not_after=NOW + 7 * DAY)
    c = cert(server)
    assert common_name(c) == SERVER
    assert c.issuer == cert(ca).subject
    san = ext(c, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [SERVER]
    assert list(ext(c, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    constraints = ext(c, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is False
    usage = ext(c, x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.key_cert_sign
    aki = ext(c, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(cert(ca), x509.SubjectKeyIdentifier).value.digest
    assert c.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert certificate_expiry(server.cert_pem) == NOW + 7 * DAY
    assert isinstance(c.signature_hash_algorithm, hashes.SHA256)
    c.verify_directly_issued_by(cert(ca))
    key = serialization.load_pem_private_key(server.key_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert key.public_key() == c.public_key()


def test_client_cert_shape() -> None:
    ca = new_project_ca("p", now=NOW)
    client = issue_client_cert(ca, "b1c2d3e4f5", now=NOW, not_after=NOW + DAY)
    c = cert(client)
    assert common_name(c) == "build b1c2d3e4f5"
    assert list(ext(c, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ext(c, x509.BasicConstraints).value.ca is False
    san = ext(c, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == []
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "urn:depot-api:build:b1c2d3e4f5"
    ]
    assert certificate_expiry(client.cert_pem) == NOW + DAY
    c.verify_directly_issued_by(cert(ca))


def test_serial_numbers_are_random_and_distinct() -> None:
    ca = new_project_ca("p", now=NOW)
    serials = {cert(ca).serial_number}
    for _ in range(5):
        serials.add(cert(issue_client_cert(ca, "b", now=NOW, not_after=NOW + DAY)).serial_number)
        serials.add(cert(issue_server_cert(ca, SERVER, now=NOW, not_after=NOW + DAY)).serial_number)
    assert len(serials) == 11
    assert all(0 < serial < 2**159 for serial in serials)
    assert max(serials) > 2**64  # not a counter


def test_expiry_is_aware_utc() -> None:
    ca = new_project_ca("p", now=datetime(2026, 1, 2, 12, tzinfo=timezone(timedelta(hours=2))))
    expiry = certificate_expiry(ca.cert_pem)
    assert expiry.tzinfo is UTC
    assert expiry == datetime(2026, 1, 2, 10, tzinfo=UTC) + timedelta(days=3650)


# --- input validation ---------------------------------------------------------------------------


@pytest.mark.parametrize("not_after", [NOW, NOW - timedelta(seconds=1)])
def test_not_after_must_follow_now(not_after: datetime) -> None:
    ca = new_project_ca("p", now=NOW)
    with pytest.raises(ValueError, match=r"not_after .* must be after now"):
        issue_server_cert(ca, SERVER, now=NOW, not_after=not_after)
    with pytest.raises(ValueError, match=r"not_after .* must be after now"):
        issue_client_cert(ca, "b", now=NOW, not_after=not_after)


def test_leaf_may_not_outlive_its_ca() -> None:
    ca = new_project_ca("p", now=NOW, lifetime=30 * DAY)
    issue_client_cert(ca, "b", now=NOW, not_after=NOW + 30 * DAY)
    with pytest.raises(ValueError, match="past the CA's expiry"):
        issue_client_cert(ca, "b", now=NOW, not_after=NOW + 31 * DAY)


def test_naive_datetimes_are_refused() -> None:
    naive = datetime(2026, 1, 2, 3, 4, 5)
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        new_project_ca("p", now=naive)
    ca = new_project_ca("p", now=NOW)
    with pytest.raises(ValueError, match="not_after must be timezone-aware"):
        issue_client_cert(ca, "b", now=NOW, not_after=naive + DAY)


def test_names_are_checked() -> None:
    ca = new_project_ca("p", now=NOW)
    with pytest.raises(ValueError, match="project_id must be non-empty"):
        new_project_ca("", now=NOW)
    with pytest.raises(ValueError, match="server_name must be non-empty"):
        issue_server_cert(ca, " host", now=NOW, not_after=NOW + DAY)
    with pytest.raises(ValueError, match="not an ASCII DNS name"):
        issue_server_cert(ca, "bücher.example", now=NOW, not_after=NOW + DAY)
    with pytest.raises(ValueError, match="longer than 64 characters"):
        issue_server_cert(ca, "a" * 65, now=NOW, not_after=NOW + DAY)
    with pytest.raises(ValueError, match="build_id must be non-empty"):
        issue_client_cert(ca, "", now=NOW, not_after=NOW + DAY)


def test_a_leaf_cannot_act_as_a_ca() -> None:
    ca = new_project_ca("p", now=NOW)
    leaf = issue_server_cert(ca, SERVER, now=NOW, not_after=NOW + DAY)
    with pytest.raises(ValueError, match="not a certificate authority"):
        issue_client_cert(leaf, "b", now=NOW, not_after=NOW + DAY)


def test_a_ca_with_someone_elses_key_is_refused() -> None:
    ours, theirs = new_project_ca("p", now=NOW), new_project_ca("q", now=NOW)
    mixed = KeyPair(cert_pem=ours.cert_pem, key_pem=theirs.key_pem)
    with pytest.raises(ValueError, match="does not belong to the CA certificate"):
        issue_client_cert(mixed, "b", now=NOW, not_after=NOW + DAY)


# --- path validation with cryptography's verifier ---------------------------------------------


def policy(ca: KeyPair, at: datetime = NOW + timedelta(hours=1)) -> PolicyBuilder:
    return PolicyBuilder().store(Store([cert(ca)])).time(at)


def test_server_chain_verifies() -> None:
    ca = new_project_ca("p", now=NOW)
    server = issue_server_cert(ca, SERVER, now=NOW, not_after=NOW + DAY)
    chain = policy(ca).build_server_verifier(x509.DNSName(SERVER)).verify(cert(server), [])
    assert chain == [cert(server), cert(ca)]


def test_client_chain_verifies() -> None:
    ca = new_project_ca("p", now=NOW)
    client = issue_client_cert(ca, "b1", now=NOW, not_after=NOW + DAY)
    verified = policy(ca).build_client_verifier().verify(cert(client), [])
    assert verified.chain == [cert(client), cert(ca)]
    assert verified.subjects == [x509.UniformResourceIdentifier("urn:depot-api:build:b1")]


def test_another_projects_ca_does_not_verify() -> None:
    ca, other = new_project_ca("p", now=NOW), new_project_ca("q", now=NOW)
    server = issue_server_cert(ca, SERVER, now=NOW, not_after=NOW + DAY)
    client = issue_client_cert(ca, "b", now=NOW, not_after=NOW + DAY)
    with pytest.raises(VerificationError):
        policy(other).build_server_verifier(x509.DNSName(SERVER)).verify(cert(server), [])
    with pytest.raises(VerificationError):
        policy(other).build_client_verifier().verify(cert(client), [])


def test_server_cert_names_only_its_machine() -> None:
    ca = new_project_ca("p", now=NOW)
    server = issue_server_cert(ca, SERVER, now=NOW, not_after=NOW + DAY)
    verifier = policy(ca).build_server_verifier(x509.DNSName("other." + SERVER))
    with pytest.raises(VerificationError):
        verifier.verify(cert(server), [])


def test_each_leaf_serves_only_its_purpose() -> None:
    ca = new_project_ca("p", now=NOW)
    server = issue_server_cert(ca, SERVER, now=NOW, not_after=NOW + DAY)
    client = issue_client_cert(ca, "b", now=NOW, not_after=NOW + DAY)
    with pytest.raises(VerificationError):
        policy(ca).build_client_verifier().verify(cert(server), [])
    with pytest.raises(VerificationError):
        policy(ca).build_server_verifier(x509.DNSName(SERVER)).verify(cert(client), [])


def test_validity_window() -> None:
    ca = new_project_ca("p", now=NOW)
    client = issue_client_cert(ca, "b", now=NOW, not_after=NOW + DAY)
    verify = policy(ca, at=NOW - timedelta(minutes=4)).build_client_verifier().verify
    verify(cert(client), [])  # a clock up to five minutes behind still accepts it
    for at in (NOW - timedelta(minutes=6), NOW + DAY + timedelta(seconds=1)):
        with pytest.raises(VerificationError):
            policy(ca, at=at).build_client_verifier().verify(cert(client), [])


# --- mutual TLS through Python's ssl module ----------------------------------------------------


def write_private(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "w", encoding="ascii") as file:
        file.write(text)
    return path


@dataclass
class Endpoint:
    tmp: Path

    def context(self, side: str, ca: KeyPair, identity: KeyPair) -> ssl.SSLContext:
        protocol = ssl.PROTOCOL_TLS_SERVER if side == "server" else ssl.PROTOCOL_TLS_CLIENT
        context = ssl.SSLContext(protocol)
        context.verify_mode = ssl.CERT_REQUIRED
        context.verify_flags |= ssl.VERIFY_X509_STRICT  # the default from Python 3.13 on
        context.load_verify_locations(cadata=ca.cert_pem)
        name = f"{side}-{os.urandom(4).hex()}"
        context.load_cert_chain(
            write_private(self.tmp / f"{name}.crt", identity.cert_pem),
            write_private(self.tmp / f"{name}.key", identity.key_pem),
        )
        return context


@dataclass
class Outcome:
    server_error: BaseException | None
    client_error: BaseException | None
    received: bytes
    server_saw: str | None  # the CN of the client certificate the server accepted

    @property
    def succeeded(self) -> bool:
        return self.server_error is None and self.client_error is None


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str) -> Outcome:
    """One TLS connection over a socket pair; the server greets whoever it accepted."""
    server_sock, client_sock = socket.socketpair()
    server_sock.settimeout(10)
    client_sock.settimeout(10)
    errors: dict[str, BaseException] = {}
    seen: list[str] = []

    def serve() -> None:
        try:
            with server.wrap_socket(server_sock, server_side=True) as tls:
                peer = tls.getpeercert()
                assert peer is not None
                seen.extend(
                    str(a[1]) for rdn in peer["subject"] for a in rdn if a[0] == "commonName"
                )
                tls.sendall(b"hello " + seen[0].encode())
        except (OSError, AssertionError) as exc:
            errors["server"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    received = b""
    try:
        with client.wrap_socket(client_sock, server_hostname=server_hostname) as tls:
            # Under TLS 1.3 the client finishes its handshake before the server has checked the
            # client certificate; a refusal shows up as an alert on the first read.
            while chunk := tls.recv(1024):
                received += chunk
    except OSError as exc:
        errors["client"] = exc
    finally:
        thread.join(10)
        server_sock.close()
        client_sock.close()
    assert not thread.is_alive()
    return Outcome(errors.get("server"), errors.get("client"), received, seen[0] if seen else None)


@pytest.fixture
def endpoint(tmp_path: Path) -> Endpoint:
    return Endpoint(tmp_path)


def real_now() -> datetime:
    return datetime.now(UTC)


def test_mutual_tls_handshake_succeeds(endpoint: Endpoint) -> None:
    now = real_now()
    ca = new_project_ca("p", now=now)
    server = issue_server_cert(ca, SERVER, now=now, not_after=now + DAY)
    client = issue_client_cert(ca, "b1c2d3e4f5", now=now, not_after=now + DAY)
    outcome = handshake(
        endpoint.context("server", ca, server), endpoint.context("client", ca, client), SERVER
    )
    assert outcome.succeeded, outcome
    assert outcome.server_saw == "build b1c2d3e4f5"
    assert outcome.received == b"hello build b1c2d3e4f5"


def test_client_cert_from_another_project_is_refused(endpoint: Endpoint) -> None:
    now = real_now()
    ca, other = new_project_ca("p", now=now), new_project_ca("q", now=now)
    server = issue_server_cert(ca, SERVER, now=now, not_after=now + DAY)
    stranger = issue_client_cert(other, "b", now=now, not_after=now + DAY)
    # The client trusts our server (it holds our CA) but presents the other project's cert.
    outcome = handshake(
        endpoint.context("server", ca, server), endpoint.context("client", ca, stranger), SERVER
    )
    assert isinstance(outcome.server_error, ssl.SSLError)
    assert "certificate verify failed" in str(outcome.server_error)
    assert isinstance(outcome.client_error, OSError)
    assert outcome.received == b""
    assert outcome.server_saw is None


def test_expired_client_cert_is_refused(endpoint: Endpoint) -> None:
    now = real_now()
    ca = new_project_ca("p", now=now - 30 * DAY)
    server = issue_server_cert(ca, SERVER, now=now, not_after=now + DAY)
    expired = issue_client_cert(ca, "b", now=now - 10 * DAY, not_after=now - DAY)
    outcome = handshake(
        endpoint.context("server", ca, server), endpoint.context("client", ca, expired), SERVER
    )
    assert isinstance(outcome.server_error, ssl.SSLError)
    assert "certificate has expired" in str(outcome.server_error)
    assert isinstance(outcome.client_error, OSError)
    assert outcome.received == b""


def test_wrong_server_hostname_is_refused(endpoint: Endpoint) -> None:
    now = real_now()
    ca = new_project_ca("p", now=now)
    server = issue_server_cert(ca, SERVER, now=now, not_after=now + DAY)
    client = issue_client_cert(ca, "b", now=now, not_after=now + DAY)
    outcome = handshake(
        endpoint.context("server", ca, server),
        endpoint.context("client", ca, client),
        "other.machines.depot.internal",
    )
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)
    assert "Hostname mismatch" in str(outcome.client_error)
    assert outcome.server_error is not None
    assert outcome.received == b""


def test_server_from_another_project_is_refused(endpoint: Endpoint) -> None:
    now = real_now()
    ca, other = new_project_ca("p", now=now), new_project_ca("q", now=now)
    impostor = issue_server_cert(other, SERVER, now=now, not_after=now + DAY)
    client = issue_client_cert(ca, "b", now=now, not_after=now + DAY)
    outcome = handshake(
        endpoint.context("server", other, impostor), endpoint.context("client", ca, client), SERVER
    )
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)
    assert outcome.server_saw is None
    assert outcome.received == b""


def test_server_cert_cannot_authenticate_a_client(endpoint: Endpoint) -> None:
    now = real_now()
    ca = new_project_ca("p", now=now)
    server = issue_server_cert(ca, SERVER, now=now, not_after=now + DAY)
    outcome = handshake(
        endpoint.context("server", ca, server), endpoint.context("client", ca, server), SERVER
    )
    assert isinstance(outcome.server_error, ssl.SSLError)
    assert "unsuitable certificate purpose" in str(outcome.server_error)
    assert outcome.received == b""
