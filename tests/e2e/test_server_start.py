"""Starting `depot-api serve`: one server per port, and a start that fails says why in one line
(exit status 1), whatever holds the port."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import BIN, running_server, stop_process

from .test_server_process import curl

pytestmark = pytest.mark.e2e


def test_a_second_server_on_the_port_of_a_running_one_is_refused(tmp_path: Path) -> None:
    # As `make run` twice does: both on one given port.
    with running_server(tmp_path / "first", "--workers", "2", "--port", str(free_port())) as first:
        line = refused_start(tmp_path / "second", "--port", str(first.port))
        assert f"port {first.port} " in line and "already in use" in line, line
        assert "depot-api server" in line, line
        assert not (tmp_path / "second").exists()  # refused before it touched anything
        # The first keeps serving, every call from its own database (two servers on one port
        # split the calls between their databases: `unknown token` on about half of them).
        for _ in range(20):
            status, text = curl(
                first, "/depot.core.v1.OrganizationService/ListOrganizations", "{}", first.org_token
            )
            assert status == 200, text


def test_a_port_another_program_listens_on_is_refused(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        line = refused_start(tmp_path / "data", "--port", str(port))
    assert f"port {port} on 127.0.0.1 is already in use" in line, line


def test_of_two_servers_started_at_once_on_one_port_one_serves(tmp_path: Path) -> None:
    port = free_port()
    starts = [serve(tmp_path / f"data-{i}", "--port", str(port)) for i in range(2)]
    try:
        deadline = time.monotonic() + 60
        while all(p.poll() is None for p in starts) and time.monotonic() < deadline:
            time.sleep(0.1)
        [refused] = [p for p in starts if p.poll() is not None]
        [serving] = [p for p in starts if p is not refused]
        _, err = refused.communicate(timeout=10)
        assert refused.returncode == 1, err
        assert f"port {port} " in err and "already in use" in err, err
        assert serving.stdout is not None
        while (line := serving.stdout.readline()) and "listening" not in line:
            pass
        assert f"listening on http://127.0.0.1:{port} " in line
    finally:
        for process in starts:
            stop_process(process)
            process.communicate()


def test_a_server_starts_on_the_port_of_one_that_just_stopped(tmp_path: Path) -> None:
    """The port check must not mistake the old server's closed connections (TIME_WAIT) for a
    server still listening."""
    with running_server(tmp_path / "data") as first:
        port = first.port
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        for client in clients:  # kept alive: the server closes them when it stops
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.recv(4096).startswith(b"HTTP/1.1 200")
        stop_process(first.process)
        for client in clients:
            while client.recv(4096):
                pass
            client.close()
    assert any(
        c.status == psutil.CONN_TIME_WAIT and c.laddr and c.laddr.port == port
        for c in psutil.net_connections("tcp4")
    ), "the test needs connections in TIME_WAIT on the server's side"
    with running_server(tmp_path / "data", "--port", str(port)) as second:
        assert second.port == port
        status, text = curl(
            second, "/depot.core.v1.OrganizationService/ListOrganizations", "{}", second.org_token
        )
        assert status == 200, text


def test_a_worker_that_fails_to_start_is_one_line_saying_why(tmp_path: Path) -> None:
    # An address of no interface here (TEST-NET-1), on any port: nothing checks it before
    # Envoy binds it, so the worker fails, and the line says what Envoy said.
    line = refused_start(tmp_path / "data", "--host", "192.0.2.1", "--port", "0")
    assert line == (
        "depot-api: a worker failed to start: cannot bind '192.0.2.1:0': "
        "Cannot assign requested address"
    )


def serve(data_dir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "depot-api"), "serve", "--data-dir", str(data_dir), "--workers", "1", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def refused_start(data_dir: Path, *args: str) -> str:
    """Start a server that must refuse to start: its one line of standard error."""
    process = serve(data_dir, *args)
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        stop_process(process)
        out, err = process.communicate()
        pytest.fail(f"the server started instead of refusing:\n{out}{err}")
    assert process.returncode == 1, out + err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
