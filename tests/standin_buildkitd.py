#!/usr/bin/env python3
"""A stand-in for BuildKit's daemon, for end-to-end tests that cannot run the real one.

It takes buildkitd's command line, so the code under test can launch it exactly as it would
launch `buildkitd`, and it does the part of buildkitd's job those tests care about: it serves
gRPC (HTTP/2 without TLS, as buildkitd does on a unix socket) on the `--addr unix://PATH` it is
given. BuildKit's readiness probe, moby.buildkit.v1.Control/ListWorkers, is answered with one
worker of this host's platform, DiskUsage with one record of 1 MiB; every other method is
answered `unimplemented` (it cannot build). With the environment variable
STANDIN_BUILDKITD_HANG set (to anything but ""), every other method is left unanswered instead,
its stream open, as a daemon busy building would: a client's build then hangs in Solve until
the stand-in dies. With STANDIN_BUILDKITD_STATUS set, `Control/Status` is answered as a build's
would be: the StatusResponse messages of `status_responses(ref)` (vertexes and logs made from
the request's ref, one of them spread over several DATA frames), then
grpc-status 0.

What it was given and when it ran are left in its --root directory for tests to inspect:

    standin-started   one JSON line: {"pid", "config" (text of --config, or null), "argv"}
                      written once the listener is up, so its presence means "ready"
    standin-events    "started" and "stopped", one line each, appended; and for each gRPC
                      call, "grpc <method path>"

It runs on whatever `python3` is first on PATH, because it may be launched directly by path
(`--buildkitd tests/standin_buildkitd.py`). Its greeting uses only the standard library; its
gRPC view needs the `h2` package (a test dependency), so tests that use it put the project's
environment first on PATH.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import selectors
import signal
import socket
import sys
import threading
from typing import Any

PROGRAM = "standin-buildkitd"


def main(argv: list[str]) -> int:
    options = parse(argv)
    try:
        return run(options, argv)
    except OSError as exc:
        log(f"cannot start: {exc}")
        return 1


def run(options: argparse.Namespace, argv: list[str]) -> int:
    root = options.root
    if not os.path.isdir(root):
        os.makedirs(root, mode=0o700, exist_ok=True)
        os.chmod(root, 0o700)
    config = None
    if options.config is not None:
        with open(options.config, encoding="utf-8") as file:
            config = file.read()

    with contextlib.suppress(FileNotFoundError):
        os.unlink(options.unix)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(options.unix)
    listener.listen(64)

    # Signals only set a flag and wake the selector through the wakeup fd, so the accept loop
    # never sees an exception in the middle of its work.
    stopping = threading.Event()
    wake_reader, wake_writer = socket.socketpair()
    wake_reader.setblocking(False)
    wake_writer.setblocking(False)
    signal.set_wakeup_fd(wake_writer.fileno())
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())

    record_start(root, config, argv)
    log(f"listening on unix://{options.unix}")

    with selectors.DefaultSelector() as selector:
        selector.register(listener, selectors.EVENT_READ)
        selector.register(wake_reader, selectors.EVENT_READ)
        while not stopping.is_set():
            for key, _ in selector.select():
                if key.fileobj is wake_reader:
                    drain(wake_reader)
                elif not stopping.is_set():
                    accept(listener, root, options.debug)
    listener.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(options.unix)
    append_event(root, "stopped")
    log("stopped")
    signal.set_wakeup_fd(-1)
    wake_reader.close()
    wake_writer.close()
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROGRAM, allow_abbrev=False)
    parser.add_argument("--addr", action="append", default=[], help="unix://PATH")
    parser.add_argument("--root", required=True)
    parser.add_argument("--config")
    parser.add_argument("--debug", action="store_true")
    options, ignored = parser.parse_known_args(argv)
    if ignored and options.debug:
        log(f"ignoring {ignored}")
    unix = [address for address in options.addr if address.startswith("unix://")]
    if not unix:
        parser.error("no --addr unix://PATH given")
    options.unix = unix[0].removeprefix("unix://")
    return options


def accept(listener: socket.socket, root: str, debug: bool) -> None:
    try:
        conn, _ = listener.accept()
    except OSError as exc:
        log(f"accept failed: {exc}")
        return
    if debug:
        log("connection")
    threading.Thread(target=serve_grpc, args=(conn, root), daemon=True).start()


HANG = "STANDIN_BUILDKITD_HANG"
STATUS_ENV = "STANDIN_BUILDKITD_STATUS"
STATUS = "/moby.buildkit.v1.Control/Status"
LIST_WORKERS = "/moby.buildkit.v1.Control/ListWorkers"
DISK_USAGE = "/moby.buildkit.v1.Control/DiskUsage"
CACHE_BYTES = 1 << 20
_events_lock = threading.Lock()


def serve_grpc(conn: socket.socket, root: str) -> None:
    """Answer gRPC calls on one HTTP/2 connection until the client closes it."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions

    connection = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
    )
    connection.initiate_connection()
    hang = bool(os.environ.get(HANG))
    status = bool(os.environ.get(STATUS_ENV))
    requests: dict[int, bytes] = {}  # Status streams' request bytes, until the request ends
    try:
        conn.sendall(connection.data_to_send())
        while data := conn.recv(65536):
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    path = dict(event.headers).get(":path", "")
                    append_event(root, f"grpc {path}")
                    if status and path == STATUS:
                        requests[event.stream_id] = b""
                    elif not hang or path in (LIST_WORKERS, DISK_USAGE):
                        answer_grpc(connection, event.stream_id, path)
                elif isinstance(event, h2.events.DataReceived):
                    if event.stream_id in requests:
                        requests[event.stream_id] += event.data
                    # The client may still send on a stream this side has answered.
                    with contextlib.suppress(h2.exceptions.StreamClosedError):
                        connection.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id in requests:
                    request = requests.pop(event.stream_id)
                    answer_status(connection, event.stream_id, _first_string(request[5:]))
                elif isinstance(event, h2.events.ConnectionTerminated):
                    return
            conn.sendall(connection.data_to_send())
    except (ConnectionResetError, BrokenPipeError):
        pass  # the client hung up: gRPC clients close channels so
    except (OSError, h2.exceptions.ProtocolError) as exc:
        log(f"gRPC connection ended: {exc!r}")
    finally:
        conn.close()


def answer_grpc(connection: Any, stream_id: int, path: str) -> None:
    """ListWorkers gets one worker, DiskUsage one record; anything else `unimplemented` (a
    trailers-only answer)."""
    if path not in (LIST_WORKERS, DISK_USAGE):
        connection.send_headers(
            stream_id,
            [
                (":status", "200"),
                ("content-type", "application/grpc"),
                ("grpc-status", "12"),
                ("grpc-message", f"{PROGRAM} cannot build: {path} is not served"),
            ],
            end_stream=True,
        )
        return
    message = list_workers_response() if path == LIST_WORKERS else disk_usage_response()
    connection.send_headers(stream_id, [(":status", "200"), ("content-type", "application/grpc")])
    connection.send_data(stream_id, b"\x00" + len(message).to_bytes(4, "big") + message)
    connection.send_headers(stream_id, [("grpc-status", "0")], end_stream=True)


def answer_status(connection: Any, stream_id: int, ref: str) -> None:
    """The StatusResponse messages of `ref`, each in DATA frames of at most 8000 bytes, then
    trailers. (No padding: gRPC's C core refuses padded DATA frames.)"""
    connection.send_headers(stream_id, [(":status", "200"), ("content-type", "application/grpc")])
    for message in status_responses(ref):
        framed = b"\x00" + len(message).to_bytes(4, "big") + message
        step = 8000
        for at in range(0, len(framed), step):
            connection.send_data(stream_id, framed[at : at + step])
    connection.send_headers(stream_id, [("grpc-status", "0")], end_stream=True)


def status_responses(ref: str) -> list[bytes]:
    """moby.buildkit.v1.StatusResponse messages for a ref: for each of three steps a vertex
    (digest, name) and a log line (stream 1, its text), and one log of 40 000 bytes."""
    messages = []
    for n in range(1, 4):
        digest = f"sha256:{ref}-step-{n}".encode()
        vertex = _field(1, digest) + _field(3, f"[{n}/3] RUN echo {ref} {n}".encode())
        log_line = _field(1, digest) + _varint(3 << 3) + _varint(1) + _field(4, f"{n}\n".encode())
        messages.append(_field(1, vertex) + _field(3, log_line))
    big = _field(1, f"sha256:{ref}-step-3".encode()) + _field(4, b"x" * 40_000)
    messages.append(_field(3, big))
    return messages


def _first_string(message: bytes) -> str:
    """Field 1 of a request that holds nothing else (StatusRequest's Ref)."""
    if len(message) < 2 or message[0] != 0x0A:
        return ""
    length, at = 0, 1
    for shift in range(0, 35, 7):
        byte = message[at]
        at += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
    return message[at : at + length].decode()


def list_workers_response() -> bytes:
    """moby.buildkit.v1.ListWorkersResponse{record: [{ID, platforms: [{Architecture, OS}]}]},
    encoded by hand: two nested length-delimited fields need no protobuf runtime."""
    architecture = "arm64" if platform.machine() in ("aarch64", "arm64") else "amd64"
    platform_message = _field(1, architecture.encode()) + _field(2, b"linux")
    record = _field(1, PROGRAM.encode()) + _field(3, platform_message)
    return _field(1, record)


def disk_usage_response() -> bytes:
    """moby.buildkit.v1.DiskUsageResponse{record: [{ID, Size}]}."""
    record = _field(1, b"standin-cache") + _varint(4 << 3) + _varint(CACHE_BYTES)
    return _field(1, record)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def record_start(root: str, config: str | None, argv: list[str]) -> None:
    started = os.path.join(root, "standin-started")
    temporary = f"{started}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as file:
        file.write(json.dumps({"pid": os.getpid(), "config": config, "argv": argv}) + "\n")
    os.replace(temporary, started)
    append_event(root, "started")


def append_event(root: str, event: str) -> None:
    with _events_lock, open(os.path.join(root, "standin-events"), "a", encoding="utf-8") as file:
        file.write(event + "\n")


def drain(sock: socket.socket) -> None:
    try:
        while sock.recv(512):
            pass
    except BlockingIOError:
        pass


def log(message: str) -> None:
    print(f"{PROGRAM} {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
