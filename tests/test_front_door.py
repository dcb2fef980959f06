"""The agent's front door, in process: real TLS on a real port, the stand-in daemon on a real
unix socket behind it, and certificates from the project's own PKI. The server's admission
rules are tested with the server (tests/domain, tests/e2e); here the gatekeeper is a set of
live builds, and what is checked is the door: who gets past which gate, what is forwarded,
what is reported, and that the daemon never sees a refused connection."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from depot_api.agent.daemons import Buildkitd
from depot_api.agent.front_door import (
    AdmissionUnknown,
    ConnectionLog,
    Door,
    FrontDoor,
    tls_context,
)
from depot_api.domain.pki import (
    KeyPair,
    issue_client_cert,
    issue_server_cert,
    new_project_ca,
)
from depot_api.gen.moby.buildkit.v1 import daemon_pb
from tests.e2e.machines import STANDIN, STANDIN_WORKER, free_port
from tests.grpc_probe import grpc_unary_over

SERVER_NAME = "b1nd1ng.machines.depot-api.internal"
LIST_WORKERS = "/moby.buildkit.v1.Control/ListWorkers"
NOW = datetime.now(UTC)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass
class Gatekeeper:
    """Admits the builds in `live`; records who asked."""

    live: set[str] = field(default_factory=set)
    asked: list[tuple[str, str]] = field(default_factory=list)
    unreachable: bool = False  # as when the server cannot be asked

    async def __call__(self, binding_id: str, build_id: str) -> str:
        self.asked.append((binding_id, build_id))
        if self.unreachable:
            raise AdmissionUnknown("unavailable: connection refused")
        return "" if build_id in self.live else f"build {build_id} has ended (finished)"


@dataclass
class Machine:
    door: FrontDoor
    port: int
    gate: Gatekeeper
    log: ConnectionLog
    ca: KeyPair
    other_ca: KeyPair
    root: Path
    scratch: Path
    daemon: Buildkitd

    def daemon_events(self) -> list[str]:
        return (self.root / "standin-events").read_text().splitlines()

    def client(self, build_id: str | None, *, ca: KeyPair | None = None, expired: bool = False):
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=self.ca.cert_pem)
        context.set_alpn_protocols(["h2"])
        if build_id is not None:
            now = NOW - timedelta(days=2) if expired else NOW
            pair = issue_client_cert(
                ca or self.ca, build_id, now=now, not_after=now + timedelta(hours=1)
            )
            cert, key = self.scratch / f"{build_id}.pem", self.scratch / f"{build_id}-key.pem"
            cert.write_text(pair.cert_pem)
            key.write_text(pair.key_pem)
            os.chmod(key, 0o600)
            context.load_cert_chain(cert, key)
        return context

    def connect(self, context: ssl.SSLContext) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return context.wrap_socket(raw, server_hostname=SERVER_NAME)

    def list_workers(self, build_id: str, **kwargs: object) -> list[str]:
        with self.connect(self.client(build_id, **kwargs)) as tls:  # type: ignore[arg-type]
            body = grpc_unary_over(tls, SERVER_NAME, LIST_WORKERS)
        return [r.ID for r in daemon_pb.ListWorkersResponse.from_binary(body).record]

    async def reports(self, count: int) -> list:
        """The first `count` ended connections, once they have all ended."""
        for _ in range(200):
            due = self.log.due()
            self.log.retry(due)
            ended = [c for c in due if c.closed_at is not None]
            if len(ended) >= count:
                return ended
            await asyncio.sleep(0.02)
        raise AssertionError(f"expected {count} ended connections, have {len(ended)}")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


def server_tls(directory: Path, ca: KeyPair) -> ssl.SSLContext:
    """The front door's TLS for a binding of the project whose CA this is."""
    server = issue_server_cert(ca, SERVER_NAME, now=NOW, not_after=NOW + timedelta(days=1))
    return tls_context(
        write(directory / "server.pem", server.cert_pem),
        write(directory / "server-key.pem", server.key_pem),
        write(directory / "ca.pem", ca.cert_pem),
    )


async def standin_daemon(directory: Path, env: dict[str, str] | None = None) -> Buildkitd:
    """The stand-in daemon on <directory>/bk.sock, its record in <directory>/root, once up."""
    root = directory / "root"
    sock = directory / "bk.sock"
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(STANDIN), "--addr", f"unix://{sock}", "--root", str(root),
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    for _ in range(200):
        if (root / "standin-started").exists():
            break
        await asyncio.sleep(0.02)
    return Buildkitd("b1nd1ng", process, sock, 0.0)


@pytest.fixture
async def machine(tmp_path: Path) -> AsyncIterator[Machine]:
    ca = new_project_ca("proj-a", now=NOW)
    other_ca = new_project_ca("proj-b", now=NOW)
    tls = server_tls(tmp_path, ca)
    root = tmp_path / "root"
    daemon = await standin_daemon(tmp_path)
    gate, log = Gatekeeper(), ConnectionLog()
    port = free_port()
    door = FrontDoor(f"127.0.0.1:{port}", gate, log, handshake_timeout=1.0)
    await door.open()
    door.use(Door("b1nd1ng", tls, daemon))
    scratch = tmp_path / "clients"
    scratch.mkdir()
    try:
        yield Machine(door, port, gate, log, ca, other_ca, root, scratch, daemon)
    finally:
        await door.close()
        await daemon.stop()


def grpc_calls(machine: Machine) -> list[str]:
    return [e for e in machine.daemon_events() if e.startswith("grpc ")]


async def test_a_live_build_reaches_the_daemon(machine: Machine) -> None:
    machine.gate.live.add("build-1")
    assert await asyncio.to_thread(machine.list_workers, "build-1") == [STANDIN_WORKER]
    (report,) = await machine.reports(1)
    assert report.admitted and report.refusal == ""
    assert report.build_id == "build-1" and report.binding_id == "b1nd1ng"
    assert report.peer.startswith("127.0.0.1:")
    assert report.counts.from_client > len(PREFACE) and report.counts.to_client > 0
    assert report.closed_at is not None and report.closed_at >= report.opened_at
    assert machine.gate.asked == [("b1nd1ng", "build-1")]
    assert grpc_calls(machine) == [f"grpc {LIST_WORKERS}"]


def refused_by_tls(machine: Machine, context: ssl.SSLContext) -> None:
    """The handshake, or the first read after it (TLS 1.3 checks the client last), fails."""

    def talk() -> None:
        with machine.connect(context) as tls:
            tls.sendall(PREFACE)
            if not tls.recv(1):
                raise ConnectionResetError("closed")

    with pytest.raises((ssl.SSLError, ConnectionError)):
        talk()


CASES = {
    "ended build": ("build {build} has ended (finished)", "build-ended"),
    "another project's certificate": ("the client certificate is refused", "other"),
    "expired certificate": ("certificate has expired", "expired"),
    "no certificate": ("the client sent no certificate", None),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_refused_clients_never_reach_the_daemon(machine: Machine, case: str) -> None:
    refusal, build = CASES[case]
    context = machine.client(
        build,
        ca=machine.other_ca if case == "another project's certificate" else None,
        expired=case == "expired certificate",
    )
    if case == "ended build":
        # Past TLS: the door closes the connection without a byte from the daemon.
        def talk() -> bytes:
            with machine.connect(context) as tls:
                tls.sendall(PREFACE)
                return tls.recv(1)

        assert await asyncio.to_thread(talk) == b""
    else:
        await asyncio.to_thread(refused_by_tls, machine, context)
    (report,) = await machine.reports(1)
    assert not report.admitted
    assert refusal.format(build=build) in report.refusal
    assert report.counts.from_client == report.counts.to_client == 0
    assert grpc_calls(machine) == []
    # A live build still gets in afterwards.
    machine.gate.live.add("after")
    assert await asyncio.to_thread(machine.list_workers, "after") == [STANDIN_WORKER]


async def test_plain_tcp_is_refused(machine: Machine) -> None:
    def talk() -> bytes:
        with socket.create_connection(("127.0.0.1", machine.port), timeout=10) as raw:
            raw.sendall(PREFACE + b"\x00" * 64)
            return raw.recv(100)

    answer = await asyncio.to_thread(talk)
    assert PREFACE not in answer  # a TLS alert at most, never the daemon's HTTP/2
    (report,) = await machine.reports(1)
    assert report.refusal == "the client does not speak TLS"
    assert grpc_calls(machine) == []


async def test_tls_then_garbage_is_refused(machine: Machine) -> None:
    machine.gate.live.add("build-g")

    def talk() -> bytes:
        with machine.connect(machine.client("build-g")) as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            return tls.recv(100)

    assert await asyncio.to_thread(talk) == b""
    (report,) = await machine.reports(1)
    assert "does not speak HTTP/2" in report.refusal
    assert report.build_id == "build-g" and not report.admitted
    assert machine.gate.asked == []  # not even the server was bothered
    assert grpc_calls(machine) == []


@pytest.mark.parametrize("stage", ["before TLS", "after TLS"])
async def test_a_silent_client_is_dropped(machine: Machine, stage: str) -> None:
    machine.gate.live.add("quiet")

    def wait_silently() -> bytes:
        if stage == "before TLS":
            with socket.create_connection(("127.0.0.1", machine.port), timeout=10) as raw:
                return raw.recv(1)
        with machine.connect(machine.client("quiet")) as tls:
            return tls.recv(1)

    assert await asyncio.to_thread(wait_silently) == b""
    (report,) = await machine.reports(1)
    expected = "no TLS handshake within 1 s" if stage == "before TLS" else "sent nothing within 1 s"
    assert expected in report.refusal
    assert grpc_calls(machine) == []
    assert machine.door._forwarding == {}


async def test_recheck_cuts_a_build_that_ended(machine: Machine) -> None:
    machine.gate.live.add("long")
    ready, cut = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def hold_open() -> bytes:
        with machine.connect(machine.client("long")) as tls:
            grpc_unary_over(tls, SERVER_NAME, LIST_WORKERS)
            loop.call_soon_threadsafe(ready.set)
            tls.settimeout(10)
            rest = b""
            while chunk := tls.recv(4096):
                rest += chunk
            loop.call_soon_threadsafe(cut.set)
            return rest

    held = asyncio.create_task(asyncio.to_thread(hold_open))
    await asyncio.wait_for(ready.wait(), 10)
    await machine.door.recheck()  # still live: nothing happens
    machine.gate.unreachable = True
    await machine.door.recheck()  # the server cannot be asked: nothing is cut for that
    await asyncio.sleep(0.2)
    assert not cut.is_set()
    assert len(machine.door._forwarding) == 1
    # Meanwhile a new connection is refused: the door fails closed.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.to_thread(machine.list_workers, "long")
    machine.gate.unreachable = False
    machine.gate.live.clear()
    await machine.door.recheck()
    await asyncio.wait_for(held, 10)
    refused, cut_one = await machine.reports(2)
    assert refused.refusal == "the server could not be asked (unavailable: connection refused)"
    assert not refused.admitted
    assert cut_one.admitted
    assert cut_one.refusal == "cut: build long has ended (finished)"


async def test_another_binding_cuts_the_old_ones_and_no_binding_refuses(machine: Machine) -> None:
    machine.gate.live.add("b")
    assert await asyncio.to_thread(machine.list_workers, "b") == [STANDIN_WORKER]
    machine.door.use(None)

    def refused() -> bytes:
        with socket.create_connection(("127.0.0.1", machine.port), timeout=10) as raw:
            return raw.recv(1)

    assert await asyncio.to_thread(refused) == b""
    (admitted,) = [r for r in await machine.reports(2) if r.admitted]
    (refused,) = [r for r in await machine.reports(2) if not r.admitted]
    # The first connection may still be ending as the binding goes: then it is cut.
    assert admitted.refusal in ("", "cut: the machine serves another binding now")
    assert refused.refusal == "no project is bound to this machine"


def test_connection_log_is_bounded_and_keeps_what_was_not_taken() -> None:
    from depot_api.agent.front_door import Connection

    log = ConnectionLog(limit=3)
    for n in range(5):
        connection = Connection(id=str(n), peer="p", binding_id="", opened_at=0.0)
        log.opened(connection)
        log.closed(connection)
    taken = log.due()
    assert [c.id for c in taken] == ["2", "3", "4"]  # the oldest went first
    log.retry(taken)
    assert [c.id for c in log.due()] == ["2", "3", "4"]
    assert log.due() == []


@pytest.fixture(autouse=True)
def _short_unix_paths(tmp_path: Path) -> None:
    # A unix socket's path must fit in 108 bytes.
    assert len(str(tmp_path / "bk.sock")) < 100, tmp_path


async def test_a_flood_of_waiting_connections_is_refused_beyond_the_limit(
    machine: Machine,
) -> None:
    door = FrontDoor(f"127.0.0.1:{(port := free_port())}", machine.gate, machine.log, max_waiting=2)
    await door.open()
    door.use(Door("b1nd1ng", machine.door._door.tls, machine.daemon))  # type: ignore[union-attr]
    try:

        def flood() -> bytes:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10),
                socket.create_connection(("127.0.0.1", port), timeout=10),
            ):
                time.sleep(0.3)  # both are at the gates, silent
                with socket.create_connection(("127.0.0.1", port), timeout=10) as third:
                    return third.recv(1)

        assert await asyncio.to_thread(flood) == b""
        # The third ended first, refused on arrival; the two silent ones were not (they end
        # when the client closes them, or at their timeout).
        first, *rest = await machine.reports(3)
        assert first.refusal == "2 connections are already at the gates"
        assert all("already at the gates" not in r.refusal for r in rest)
    finally:
        await door.close()
