"""End-to-end support for BuildKit machines: a server with quick machine timings, agents that
run the stand-in BuildKit daemon, and a mutual-TLS probe with what GetEndpoint returned."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import BIN

STANDIN = Path(__file__).resolve().parent.parent / "standin_buildkitd.py"

# Quick timings so the tests see machines come and go in seconds.
QUICK = {
    "DEPOT_API_MACHINE_HEARTBEAT": "0.2",
    "DEPOT_API_PENDING_INTERVAL": "0.5",
    "DEPOT_API_ACQUIRE_TIMEOUT": "6",
    "DEPOT_API_MACHINE_LOST_AFTER": "2",
    "DEPOT_API_MACHINE_IDLE_RELEASE": "1",
    "DEPOT_API_LIVENESS_WINDOW": "5",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass
class AgentProcess:
    process: subprocess.Popen[bytes]
    port: int
    state_dir: Path

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def cache_dirs(self) -> list[Path]:
        cache = self.state_dir / "cache"
        return sorted(cache.iterdir()) if cache.exists() else []

    def events(self, project_id: str) -> list[str]:
        path = self.state_dir / "cache" / project_id / "standin-events"
        return path.read_text().split() if path.exists() else []


@contextmanager
def agent(
    server_url: str, token: str, state_dir: Path, platform: str = "amd64"
) -> Iterator[AgentProcess]:
    """A `depot-api agent` running the stand-in daemon; stopped (by its PID) at the end."""
    port = free_port()
    process = subprocess.Popen(
        [
            str(BIN / "depot-api"), "agent",
            "--server", server_url,
            "--platform", platform,
            "--advertise", f"127.0.0.1:{port}",
            "--listen", f"127.0.0.1:{port}",
            "--buildkitd", str(STANDIN),
            "--state-dir", str(state_dir),
        ],
        env={**os.environ, "DEPOT_API_AGENT_TOKEN": token},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield AgentProcess(process, port, state_dir)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_for(condition: object, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def mtls_greeting(
    endpoint: str, server_name: str, cert: str, key: str, ca: str, timeout: float = 5.0
) -> str:
    """Open mutual TLS to the endpoint with the given material; return the daemon's greeting.

    Raises ssl.SSLError (or OSError) when either side refuses the other.
    """
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca)
    with tempfile.TemporaryDirectory() as scratch:
        cert_file, key_file = Path(scratch) / "cert.pem", Path(scratch) / "key.pem"
        cert_file.write_text(cert)
        key_file.write_text(key)
        os.chmod(key_file, 0o600)
        context.load_cert_chain(cert_file, key_file)
    with (
        socket.create_connection((host, int(port)), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        data = b""
        while not data.endswith(b"\n"):
            chunk = tls.recv(1024)
            if not chunk:
                break
            data += chunk
        return data.decode()
