"""The BuildKit stand-in: buildkitd's flags, mutual TLS against the project CA, clean stops."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from depot_api.domain.pki import KeyPair, issue_client_cert, issue_server_cert, new_project_ca

STANDIN = Path(__file__).with_name("standin_buildkitd.py")
SERVER = "bk-1.machines.test"
DAY = timedelta(days=1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def write_private(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "w", encoding="ascii") as file:
        file.write(text)
    return path


@dataclass
class PKI:
    """One project's CA, its machine's server certificate, and a directory to write PEMs to."""

    tmp: Path
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        self.ca = new_project_ca("proj000001", now=self.now)
        self.server = issue_server_cert(self.ca, SERVER, now=self.now, not_after=self.now + DAY)

    def write(self, name: str, pair: KeyPair) -> tuple[Path, Path]:
        return (
            write_private(self.tmp / f"{name}.crt", pair.cert_pem),
            write_private(self.tmp / f"{name}.key", pair.key_pem),
        )

    def client_context(
        self, build_id: str | None, *, ca: KeyPair | None = None, alpn: list[str] | None = None
    ) -> ssl.SSLContext:
        """A client trusting this project's CA, presenting a certificate signed by ca."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cadata=self.ca.cert_pem)
        if build_id is not None:
            pair = issue_client_cert(
                ca or self.ca, build_id, now=self.now, not_after=self.now + DAY
            )
            context.load_cert_chain(*self.write(f"client-{build_id}-{os.urandom(3).hex()}", pair))
        if alpn is not None:
            context.set_alpn_protocols(alpn)
        return context


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    port: int
    root: Path
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def started(self) -> dict[str, object]:
        record: dict[str, object] = json.loads((self.root / "standin-started").read_text())
        return record

    def events(self) -> list[str]:
        return (self.root / "standin-events").read_text().splitlines()

    def greet(self, context: ssl.SSLContext) -> tuple[bytes, str | None]:
        """Connect, handshake, read until the daemon closes; the bytes and the ALPN choice."""
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=SERVER) as tls,
        ):
            received = b""
            while chunk := tls.recv(1024):
                received += chunk
            return received, tls.selected_alpn_protocol()

    def wait_for_stderr(self, text: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stderr():
            assert self.process.poll() is None, f"exited {self.process.returncode}: {self.stderr()}"
            assert time.monotonic() < deadline, f"no {text!r} in: {self.stderr()}"
            time.sleep(0.02)


class Launcher:
    def __init__(self, tmp: Path, pki: PKI) -> None:
        self.tmp = tmp
        self.pki = pki
        self.running: list[subprocess.Popen[bytes]] = []

    def flags(self, port: int, root: Path, *extra: str) -> list[str]:
        cert, key = self.pki.write(f"server-{port}", self.pki.server)
        ca = write_private(self.tmp / f"ca-{port}.crt", self.pki.ca.cert_pem)
        return [
            "--addr",
            f"tcp://127.0.0.1:{port}",
            "--tlscert",
            str(cert),
            "--tlskey",
            str(key),
            "--tlscacert",
            str(ca),
            "--root",
            str(root),
            *extra,
        ]

    def start(self, command: list[str], port: int, root: Path) -> Daemon:
        stderr_path = self.tmp / f"stderr-{port}.log"
        with open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=stderr)
        self.running.append(process)
        daemon = Daemon(process, port, root, stderr_path)
        daemon.wait_for_stderr(f"standin-buildkitd listening on 127.0.0.1:{port}\n")
        return daemon

    def launch(self, *extra: str, root: Path | None = None) -> Daemon:
        port = free_port()
        root = root or self.tmp / f"root-{port}"
        return self.start(
            [sys.executable, str(STANDIN), *self.flags(port, root, *extra)], port, root
        )

    def stop_all(self) -> None:
        for process in self.running:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    os.kill(process.pid, signal.SIGKILL)
            process.wait(10)


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return PKI(tmp_path)


@pytest.fixture
def launcher(tmp_path: Path, pki: PKI) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path, pki)
    try:
        yield launcher
    finally:
        launcher.stop_all()


def test_admits_a_client_of_the_project_ca(launcher: Launcher, pki: PKI) -> None:
    daemon = launcher.launch()
    received, alpn = daemon.greet(pki.client_context("b1c2d3e4f5"))
    assert received == b"standin-buildkitd ok build b1c2d3e4f5\n"
    assert alpn is None  # the client offered none


def test_http1_alpn_gets_the_greeting(launcher: Launcher, pki: PKI) -> None:
    daemon = launcher.launch()
    received, alpn = daemon.greet(pki.client_context("b", alpn=["http/1.1"]))
    assert received == b"standin-buildkitd ok build b\n"
    assert alpn == "http/1.1"


def test_grpc_clients_get_buildkits_readiness_probe_and_nothing_else(
    launcher: Launcher, pki: PKI
) -> None:
    """A real gRPC client (grpcio, ALPN h2) with a client certificate of the project's CA:
    ListWorkers answers one worker; any other BuildKit method is unimplemented."""
    daemon = launcher.launch()
    client = issue_client_cert(pki.ca, "grpcbuild", now=pki.now, not_after=pki.now + DAY)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert_pem.encode(),
        private_key=client.key_pem.encode(),
        certificate_chain=client.cert_pem.encode(),
    )
    with grpc.secure_channel(
        f"127.0.0.1:{daemon.port}", credentials, options=[("grpc.ssl_target_name_override", SERVER)]
    ) as channel:
        list_workers = channel.unary_unary("/moby.buildkit.v1.Control/ListWorkers")
        answer = list_workers(b"", timeout=10)
        solve = channel.unary_unary("/moby.buildkit.v1.Control/Solve")
        with pytest.raises(grpc.RpcError) as raised:
            solve(b"", timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "standin-buildkitd cannot build" in (raised.value.details() or "")
    # ListWorkersResponse{record: [{ID: "standin-buildkitd", platforms: [{amd64|arm64, linux}]}]}
    [(record_field, record)] = _fields(answer)
    assert record_field == 1
    [(id_field, worker_id), (platforms_field, platform)] = _fields(record)
    assert (id_field, worker_id, platforms_field) == (1, b"standin-buildkitd", 3)
    assert _fields(platform) in ([(1, b"amd64"), (2, b"linux")], [(1, b"arm64"), (2, b"linux")])
    assert daemon.events()[-2:] == [
        "grpc /moby.buildkit.v1.Control/ListWorkers build grpcbuild",
        "grpc /moby.buildkit.v1.Control/Solve build grpcbuild",
    ]


def _fields(message: bytes) -> list[tuple[int, bytes]]:
    """A message of length-delimited fields only, each shorter than 128 bytes, as (number,
    payload) pairs: enough to read the stand-in's hand-made answer independently of it."""
    fields = []
    while message:
        tag, length = message[0], message[1]
        assert tag & 7 == 2 and length < 128, message
        fields.append((tag >> 3, message[2 : 2 + length]))
        message = message[2 + length :]
    return fields


def test_refuses_another_projects_client_and_keeps_serving(launcher: Launcher, pki: PKI) -> None:
    daemon = launcher.launch()
    other_ca = new_project_ca("proj000002", now=pki.now)
    with pytest.raises(ssl.SSLError, match=r"UNKNOWN_CA|unknown ca"):
        # TLS 1.3: the refusal arrives as an alert after the client's side of the handshake.
        daemon.greet(pki.client_context("intruder", ca=other_ca))
    daemon.wait_for_stderr("certificate verify failed")
    assert "ok build intruder" not in daemon.stderr()

    received, _ = daemon.greet(pki.client_context("next"))
    assert received == b"standin-buildkitd ok build next\n"
    assert daemon.process.poll() is None


def test_refuses_a_client_without_a_certificate(launcher: Launcher, pki: PKI) -> None:
    daemon = launcher.launch()
    with pytest.raises(ssl.SSLError, match=r"CERTIFICATE_REQUIRED|certificate required"):
        daemon.greet(pki.client_context(None))
    daemon.wait_for_stderr("peer did not return a certificate")
    received, _ = daemon.greet(pki.client_context("after"))
    assert received == b"standin-buildkitd ok build after\n"


def test_a_stalled_connection_does_not_block_others(launcher: Launcher, pki: PKI) -> None:
    daemon = launcher.launch()
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10):
        # Connected, never handshakes: the next client is still served at once.
        received, _ = daemon.greet(pki.client_context("b"))
        assert received == b"standin-buildkitd ok build b\n"


def test_records_its_flags_and_config(launcher: Launcher, tmp_path: Path) -> None:
    config = tmp_path / "buildkitd.toml"
    config.write_text('[worker.oci]\n  gc = true\n  gckeepstorage = "10GB"\n')
    root = tmp_path / "state" / "buildkit"
    extra = [
        "--config",
        str(config),
        "--debug",
        "--oci-worker-no-process-sandbox",  # buildkitd flags the stand-in does not know
        "--oci-worker-gc-keepstorage",
        "10000",
        "--group=1000",
    ]
    daemon = launcher.launch(*extra, root=root)
    record = daemon.started()
    assert record["pid"] == daemon.process.pid
    assert record["config"] == config.read_text()
    argv = record["argv"]
    assert isinstance(argv, list)
    assert argv[:2] == ["--addr", f"tcp://127.0.0.1:{daemon.port}"]
    assert argv[-len(extra) :] == extra
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert daemon.events() == ["started"]


def test_config_is_null_without_config_flag(launcher: Launcher) -> None:
    daemon = launcher.launch()
    assert daemon.started()["config"] is None


def test_serves_the_first_tcp_address(launcher: Launcher, pki: PKI, tmp_path: Path) -> None:
    port, ignored = free_port(), free_port()
    root = tmp_path / "root"
    flags = launcher.flags(port, root)
    command = [sys.executable, str(STANDIN), "--addr", "unix:///run/buildkit/buildkitd.sock"]
    command += [*flags, "--addr", f"tcp://127.0.0.1:{ignored}"]
    daemon = launcher.start(command, port, root)
    received, _ = daemon.greet(pki.client_context("b"))
    assert received == b"standin-buildkitd ok build b\n"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", ignored), timeout=10).close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stops_cleanly_on_signal(launcher: Launcher, pki: PKI, signum: signal.Signals) -> None:
    daemon = launcher.launch()
    daemon.greet(pki.client_context("b"))
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10):
        # Even with a connection mid-handshake the daemon stops at once.
        os.kill(daemon.process.pid, signum)
        assert daemon.process.wait(timeout=1) == 0
    assert daemon.events() == ["started", "stopped"]
    assert (daemon.root / "standin-started").exists()  # kept for the test to inspect
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", daemon.port), timeout=10).close()


def test_restart_appends_events(launcher: Launcher, tmp_path: Path) -> None:
    root = tmp_path / "root"
    for _ in range(2):
        daemon = launcher.launch(root=root)
        os.kill(daemon.process.pid, signal.SIGTERM)
        assert daemon.process.wait(timeout=1) == 0
    assert daemon.events() == ["started", "stopped", "started", "stopped"]


def test_runs_directly_by_path(launcher: Launcher, pki: PKI, tmp_path: Path) -> None:
    assert os.access(STANDIN, os.X_OK)
    assert STANDIN.read_text().startswith("#!/usr/bin/env python3\n")
    port = free_port()
    root = tmp_path / "root"
    daemon = launcher.start([str(STANDIN), *launcher.flags(port, root)], port, root)
    received, _ = daemon.greet(pki.client_context("b"))
    assert received == b"standin-buildkitd ok build b\n"
    os.kill(daemon.process.pid, signal.SIGTERM)
    assert daemon.process.wait(timeout=5) == 0
    assert daemon.events() == ["started", "stopped"]


def test_refuses_to_start_without_a_tcp_address(tmp_path: Path) -> None:
    flags = ["--tlscert", "c", "--tlskey", "k", "--tlscacert", "ca", "--root", str(tmp_path / "r")]
    result = subprocess.run(
        [sys.executable, str(STANDIN), "--addr", "unix:///tmp/x.sock", *flags],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "no --addr tcp://HOST:PORT given" in result.stderr
    assert not (tmp_path / "r").exists()
