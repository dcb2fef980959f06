"""Per-project certificate authorities for the mutual TLS between builds and BuildKit machines.

    project CA (self-signed, path length 0)
    ├── server certificate   one per binding of a machine: CN and SAN dNSName = its server name
    └── client certificate   one per build: CN "build <build_id>",
                             SAN URI "urn:depot-api:build:<build_id>"

Each project gets its own CA so that a client certificate minted for one project's build is
refused by every other project's machines: a machine trusts only its project's CA, and no name
or field checks are needed on top. Keys are ECDSA P-256 and signatures SHA-256, which Go's TLS
(BuildKit and its clients) and OpenSSL both accept. Everything crosses this module's boundary
as PEM text; private keys leave it as unencrypted PKCS#8, for the caller to seal before storing.

Client certificates also carry a URI subject alternative name: path validators that follow
RFC 5280's profile strictly (`cryptography`'s among them) require a SAN in every end-entity
certificate. BuildKit itself reads neither the SAN nor the CN. Serial numbers are 159 random
bits. Every certificate starts five minutes before `now`, so a machine whose clock runs a little
behind still accepts a certificate issued a moment ago.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CLOCK_SKEW = timedelta(minutes=5)
_MAX_COMMON_NAME = 64  # ub-common-name in RFC 5280


@dataclass(frozen=True, slots=True)
class KeyPair:
    cert_pem: str
    key_pem: str  # PKCS#8 PEM, unencrypted (callers encrypt it before storing)


def new_project_ca(
    project_id: str, *, now: datetime, lifetime: timedelta = timedelta(days=3650)
) -> KeyPair:
    """A self-signed CA that signs only end-entity certificates for one project."""
    now = _require_aware(now, "now")
    if lifetime <= timedelta(0):
        raise ValueError(f"lifetime must be positive, got {lifetime}")
    name = _name(f"depot-api project {_require_text(project_id, 'project_id')} CA")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _key_pair(cert, key)


def issue_server_cert(
    ca: KeyPair, server_name: str, *, now: datetime, not_after: datetime
) -> KeyPair:
    """A certificate a BuildKit machine presents as the TLS server named server_name."""
    server_name = _require_text(server_name, "server_name")
    if not server_name.isascii() or any(c.isspace() for c in server_name):
        raise ValueError(f"server_name {server_name!r} is not an ASCII DNS name")
    return _issue(
        ca,
        _name(server_name),
        ExtendedKeyUsageOID.SERVER_AUTH,
        x509.SubjectAlternativeName([x509.DNSName(server_name)]),
        now=now,
        not_after=not_after,
    )


def issue_client_cert(ca: KeyPair, build_id: str, *, now: datetime, not_after: datetime) -> KeyPair:
    """A certificate one build's client presents to its project's BuildKit machines."""
    name = _name(f"build {_require_text(build_id, 'build_id')}")
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(build_uri(build_id))])
    return _issue(ca, name, ExtendedKeyUsageOID.CLIENT_AUTH, san, now=now, not_after=not_after)


def build_uri(build_id: str) -> str:
    """The URI SAN that names a build in its client certificate."""
    return f"urn:depot-api:build:{quote(build_id, safe='')}"


def _issue(
    ca: KeyPair,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    san: x509.SubjectAlternativeName,
    *,
    now: datetime,
    not_after: datetime,
) -> KeyPair:
    now = _require_aware(now, "now")
    not_after = _require_aware(not_after, "not_after")
    if not_after <= now:
        raise ValueError(
            f"not_after ({not_after.isoformat()}) must be after now ({now.isoformat()})"
        )
    ca_cert, ca_key = _load_ca(ca)
    if not_after > ca_cert.not_valid_after_utc:
        raise ValueError(
            f"not_after ({not_after.isoformat()}) is past the CA's expiry "
            f"({ca_cert.not_valid_after_utc.isoformat()})"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .add_extension(san, critical=False)
    )
    return _key_pair(builder.sign(ca_key, hashes.SHA256()), key)


def _load_ca(ca: KeyPair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA's certificate and key, after checking they are a CA and belong together."""
    cert = x509.load_pem_x509_certificate(ca.cert_pem.encode("ascii"))
    key = serialization.load_pem_private_key(ca.key_pem.encode("ascii"), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an ECDSA key")
    if key.public_key() != cert.public_key():
        raise ValueError("the CA key does not belong to the CA certificate")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise ValueError("the CA certificate is not a certificate authority")
    return cert, key


def _key_pair(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> KeyPair:
    return KeyPair(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii"),
    )


def _name(common_name: str) -> x509.Name:
    if len(common_name) > _MAX_COMMON_NAME:
        raise ValueError(
            f"common name {common_name!r} is longer than {_MAX_COMMON_NAME} characters"
        )
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _require_text(value: str, field: str) -> str:
    if not value or value != value.strip():
        raise ValueError(f"{field} must be non-empty without surrounding whitespace: {value!r}")
    return value


def _require_aware(moment: datetime, field: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{field} must be timezone-aware, got {moment.isoformat()}")
    return moment.astimezone(UTC)
