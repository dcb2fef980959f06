"""The BuildKit stand-in: buildkitd's flags, plain gRPC on the unix socket it is given (as
buildkitd serves behind the agent's front door), what it records, clean stops."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.grpc_probe import grpc_unary_over

STANDIN = Path(__file__).with_name("standin_buildkitd.py")


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    socket: Path
    root: Path
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def started(self) -> dict[str, object]:
        record: dict[str, object] = json.loads((self.root / "standin-started").read_text())
        return record

    def events(self) -> list[str]:
        return (self.root / "standin-events").read_text().splitlines()

    def call(self, path: str) -> bytes:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(10)
            conn.connect(str(self.socket))
            return grpc_unary_over(conn, "localhost", path)

    def wait_for_stderr(self, text: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stderr():
            assert self.process.poll() is None, f"exited {self.process.returncode}: {self.stderr()}"
            assert time.monotonic() < deadline, f"no {text!r} in: {self.stderr()}"
            time.sleep(0.02)


class Launcher:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.running: list[subprocess.Popen[bytes]] = []
        self.count = 0

    def start(
        self, command: list[str], sock: Path, root: Path, env: dict[str, str] | None = None
    ) -> Daemon:
        self.count += 1
        stderr_path = self.tmp / f"stderr-{self.count}.log"
        # Run by path, it takes the first python3 on PATH: the project's, which has h2.
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            **(env or {}),
        }
        with open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=stderr, env=env)
        self.running.append(process)
        daemon = Daemon(process, sock, root, stderr_path)
        daemon.wait_for_stderr(f"standin-buildkitd listening on unix://{sock}\n")
        return daemon

    def launch(
        self, *extra: str, root: Path | None = None, env: dict[str, str] | None = None
    ) -> Daemon:
        sock = self.tmp / f"bk-{self.count}.sock"
        root = root or self.tmp / f"root-{self.count}"
        command = [sys.executable, str(STANDIN), "--addr", f"unix://{sock}", "--root", str(root)]
        return self.start([*command, *extra], sock, root, env)

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
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.stop_all()


def test_grpc_clients_get_buildkits_probes_and_nothing_else(launcher: Launcher) -> None:
    """A real gRPC client (grpcio over the unix socket): ListWorkers answers one worker,
    DiskUsage one record; any other BuildKit method is unimplemented."""
    daemon = launcher.launch()
    with grpc.insecure_channel(f"unix:{daemon.socket}") as channel:
        answer = channel.unary_unary("/moby.buildkit.v1.Control/ListWorkers")(b"", timeout=10)
        usage = channel.unary_unary("/moby.buildkit.v1.Control/DiskUsage")(b"", timeout=10)
        with pytest.raises(grpc.RpcError) as raised:
            channel.unary_unary("/moby.buildkit.v1.Control/Solve")(b"", timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "standin-buildkitd cannot build" in (raised.value.details() or "")
    # ListWorkersResponse{record: [{ID: "standin-buildkitd", platforms: [{amd64|arm64, linux}]}]}
    [(record_field, record)] = _fields(answer)
    assert record_field == 1
    [(id_field, worker_id), (platforms_field, platform)] = _fields(record)
    assert (id_field, worker_id, platforms_field) == (1, b"standin-buildkitd", 3)
    assert _fields(platform) in ([(1, b"amd64"), (2, b"linux")], [(1, b"arm64"), (2, b"linux")])
    # DiskUsageResponse{record: [{ID: "standin-cache", Size: 1 MiB}]}
    assert usage == b"\x0a\x13\x0a\x0dstandin-cache\x20\x80\x80\x40"
    assert daemon.events()[-3:] == [
        "grpc /moby.buildkit.v1.Control/ListWorkers",
        "grpc /moby.buildkit.v1.Control/DiskUsage",
        "grpc /moby.buildkit.v1.Control/Solve",
    ]


def test_in_hang_mode_builds_are_left_unanswered(launcher: Launcher) -> None:
    """STANDIN_BUILDKITD_HANG: the probes are answered, a build's calls hang (as on a daemon
    busy building), and the hanging call does not hold up the others."""
    daemon = launcher.launch(env={"STANDIN_BUILDKITD_HANG": "1"})
    with grpc.insecure_channel(f"unix:{daemon.socket}") as channel:
        with pytest.raises(grpc.RpcError) as raised:
            channel.unary_unary("/moby.buildkit.v1.Control/Solve")(b"", timeout=1)
        answer = channel.unary_unary("/moby.buildkit.v1.Control/ListWorkers")(b"", timeout=10)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert b"standin-buildkitd" in answer
    assert daemon.events()[-2:] == [
        "grpc /moby.buildkit.v1.Control/Solve",
        "grpc /moby.buildkit.v1.Control/ListWorkers",
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


def test_a_stalled_connection_does_not_block_others(launcher: Launcher) -> None:
    daemon = launcher.launch()
    with socket.socket(socket.AF_UNIX) as stalled:
        stalled.connect(str(daemon.socket))  # connected, never speaks
        assert daemon.call("/moby.buildkit.v1.Control/ListWorkers")


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
    assert argv[:2] == ["--addr", f"unix://{daemon.socket}"]
    assert argv[-len(extra) :] == extra
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert daemon.events() == ["started"]


def test_config_is_null_without_config_flag(launcher: Launcher) -> None:
    daemon = launcher.launch()
    assert daemon.started()["config"] is None


def test_serves_the_first_unix_address(launcher: Launcher, tmp_path: Path) -> None:
    sock, ignored, root = tmp_path / "first.sock", tmp_path / "second.sock", tmp_path / "root"
    command = [sys.executable, str(STANDIN), "--addr", "tcp://127.0.0.1:1234"]
    command += ["--addr", f"unix://{sock}", "--addr", f"unix://{ignored}", "--root", str(root)]
    daemon = launcher.start(command, sock, root)
    assert daemon.call("/moby.buildkit.v1.Control/ListWorkers")
    assert not ignored.exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stops_cleanly_on_signal(launcher: Launcher, signum: signal.Signals) -> None:
    daemon = launcher.launch()
    with socket.socket(socket.AF_UNIX) as open_connection:
        open_connection.connect(str(daemon.socket))
        # Even with a connection open the daemon stops at once.
        os.kill(daemon.process.pid, signum)
        assert daemon.process.wait(timeout=1) == 0
    assert daemon.events() == ["started", "stopped"]
    assert (daemon.root / "standin-started").exists()  # kept for the test to inspect
    assert not daemon.socket.exists()


def test_restart_appends_events(launcher: Launcher, tmp_path: Path) -> None:
    root = tmp_path / "root"
    for _ in range(2):
        daemon = launcher.launch(root=root)
        os.kill(daemon.process.pid, signal.SIGTERM)
        assert daemon.process.wait(timeout=1) == 0
    assert daemon.events() == ["started", "stopped", "started", "stopped"]


def test_runs_directly_by_path(launcher: Launcher, tmp_path: Path) -> None:
    assert os.access(STANDIN, os.X_OK)
    assert STANDIN.read_text().startswith("#!/usr/bin/env python3\n")
    sock, root = tmp_path / "direct.sock", tmp_path / "root"
    daemon = launcher.start(
        [str(STANDIN), "--addr", f"unix://{sock}", "--root", str(root)], sock, root
    )
    assert daemon.call("/moby.buildkit.v1.Control/ListWorkers")
    os.kill(daemon.process.pid, signal.SIGTERM)
    assert daemon.process.wait(timeout=5) == 0
    assert daemon.events() == ["started", "grpc /moby.buildkit.v1.Control/ListWorkers", "stopped"]


def test_refuses_to_start_without_a_unix_address(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(STANDIN),
            "--addr",
            "tcp://127.0.0.1:1",
            "--root",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "no --addr unix://PATH given" in result.stderr
    assert not (tmp_path / "r").exists()
