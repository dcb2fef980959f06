"""TLS: a second server process started with --tls-cert/--tls-key and a self-signed certificate
for 127.0.0.1 and localhost made here, called with curl (HTTP/1.1 and HTTP/2) and grpcio."""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from depot_api.gen.depot.core.v1 import org_pb, project_pb
from tests.helpers import ServerProcess, running_server

from .wire import ID, bearer, curl_failure, curl_post, rpc_error, unary

LIST_ORGS = "/depot.core.v1.OrganizationService/ListOrganizations"
CREATE_PROJECT = "/depot.core.v1.ProjectService/CreateProject"
LIST_PROJECTS = "/depot.core.v1.ProjectService/ListProjects"


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path
    der: bytes


def self_signed(directory: Path, common_name: str = "localhost") -> Certificate:
    """A self-signed certificate (its own CA) for localhost and 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return Certificate(cert_path, key_path, certificate.public_bytes(serialization.Encoding.DER))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return self_signed(tmp_path_factory.mktemp("tls") / "server")


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, certificate: Certificate
) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("tls-data") / "data"
    with running_server(
        data_dir, "--tls-cert", str(certificate.cert), "--tls-key", str(certificate.key)
    ) as process:
        yield process


def test_listens_on_https(tls_server: ServerProcess) -> None:
    assert tls_server.url == f"https://127.0.0.1:{tls_server.port}"
    assert tls_server.org_token


def test_handshake_presents_our_certificate(
    tls_server: ServerProcess, certificate: Certificate
) -> None:
    for protocols, expected in ((["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1")):
        context = ssl.create_default_context(cafile=str(certificate.cert))
        context.set_alpn_protocols(protocols)
        with (
            socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.getpeercert(binary_form=True) == certificate.der
            assert tls.selected_alpn_protocol() == expected
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


@pytest.mark.parametrize(("flag", "version"), [("--http1.1", "1.1"), ("--http2", "2")])
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_curl_over_tls(
    tls_server: ServerProcess, certificate: Certificate, flag: str, version: str, host: str
) -> None:
    base = f"https://{host}:{tls_server.port}"
    flags = [flag, "--cacert", str(certificate.cert)]

    orgs = curl_post(f"{base}{LIST_ORGS}", "{}", token=tls_server.org_token, flags=flags)
    assert (orgs.status, orgs.http_version, orgs.scheme) == (200, version, "https"), orgs
    assert [o["name"] for o in orgs.json()["organizations"]] == ["default"]

    name = f"tls-{host}-{version}"
    created = curl_post(
        f"{base}{CREATE_PROJECT}",
        json.dumps({"name": name, "regionId": "eu-central-1"}),
        token=tls_server.org_token,
        flags=flags,
    )
    assert (created.status, created.http_version, created.scheme) == (200, version, "https")
    project = created.json()["project"]
    assert ID.fullmatch(project["projectId"])
    assert (project["name"], project["regionId"]) == (name, "eu-central-1")

    listed = curl_post(f"{base}{LIST_PROJECTS}", "{}", token=tls_server.org_token, flags=flags)
    assert listed.status == 200, listed
    assert project in listed.json()["projects"]

    denied = curl_post(f"{base}{LIST_PROJECTS}", "{}", token=None, flags=flags)
    assert (denied.status, denied.json()["code"]) == (401, "unauthenticated"), denied

    # Refused over TLS too (test_server_process.py has the cleartext cases).
    not_utf8 = curl_post(f"{base}{LIST_PROJECTS}%FF", "{}", token=None, flags=flags)
    assert (not_utf8.status, not_utf8.http_version) == (400, version), not_utf8


def test_curl_rejects_an_untrusted_certificate(tls_server: ServerProcess, tmp_path: Path) -> None:
    url = f"https://127.0.0.1:{tls_server.port}{LIST_ORGS}"
    # Trusting another CA, or only the system's CAs, the server's certificate does not verify
    # (60 = CURLE_PEER_FAILED_VERIFICATION) and no request is sent.
    result = curl_failure(url, "--cacert", str(self_signed(tmp_path / "other").cert))
    assert (result.returncode, result.stdout) == (60, "000"), result
    result = curl_failure(url)
    assert (result.returncode, result.stdout) == (60, "000"), result


@pytest.mark.parametrize("flag", ["--http1.1", "--http2-prior-knowledge"])
def test_plain_http_is_refused(tls_server: ServerProcess, flag: str) -> None:
    """The port speaks only TLS: a cleartext request gets no HTTP response at all."""
    result = curl_failure(f"http://127.0.0.1:{tls_server.port}{LIST_ORGS}", flag)
    assert result.returncode != 0, result
    assert result.stdout == "000", result


def test_grpcio_over_tls(tls_server: ServerProcess, certificate: Certificate) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=certificate.cert.read_bytes())
    for target in (f"127.0.0.1:{tls_server.port}", f"localhost:{tls_server.port}"):
        with grpc.secure_channel(target, credentials) as channel:
            list_orgs = unary(channel, LIST_ORGS, org_pb.ListOrganizationsResponse)
            orgs = list_orgs(
                org_pb.ListOrganizationsRequest(), metadata=bearer(tls_server.org_token), timeout=10
            )
            assert [o.name for o in orgs.organizations] == ["default"]

            create = unary(channel, CREATE_PROJECT, project_pb.CreateProjectResponse)
            name = f"grpc-tls-{target.split(':')[0]}"
            created = create(
                project_pb.CreateProjectRequest(name=name, region_id="us-east-1"),
                metadata=bearer(tls_server.org_token),
                timeout=10,
            )
            assert created.project is not None
            assert created.project.name == name

            error = rpc_error(list_orgs, org_pb.ListOrganizationsRequest())
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_grpcio_refuses_untrusted_or_cleartext(tls_server: ServerProcess, tmp_path: Path) -> None:
    target = f"127.0.0.1:{tls_server.port}"
    other_ca = self_signed(tmp_path / "other").cert.read_bytes()
    with grpc.secure_channel(
        target, grpc.ssl_channel_credentials(root_certificates=other_ca)
    ) as channel:
        call = unary(channel, LIST_ORGS, org_pb.ListOrganizationsResponse)
        error = rpc_error(
            call, org_pb.ListOrganizationsRequest(), metadata=bearer(tls_server.org_token)
        )
        assert error.code() == grpc.StatusCode.UNAVAILABLE

    with grpc.insecure_channel(target) as channel:
        call = unary(channel, LIST_ORGS, org_pb.ListOrganizationsResponse)
        error = rpc_error(
            call, org_pb.ListOrganizationsRequest(), metadata=bearer(tls_server.org_token)
        )
        assert error.code() == grpc.StatusCode.UNAVAILABLE
