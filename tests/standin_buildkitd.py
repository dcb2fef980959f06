#!/usr/bin/env python3
"""A stand-in for BuildKit's daemon, for end-to-end tests that cannot run the real one.

It takes buildkitd's command line, so the code under test can launch it exactly as it would
launch `buildkitd`, and it does the part of buildkitd's job those tests care about: it serves
mutual TLS on the TCP address it is given, with the server certificate it is given, and admits
only clients whose certificate the given CA signed. Then:

- a client that negotiates HTTP/2 (ALPN "h2", as every gRPC client does) gets gRPC: BuildKit's
  readiness probe, moby.buildkit.v1.Control/ListWorkers, is answered with one worker of this
  host's platform; every other method is answered `unimplemented` (it cannot build);
- any other client gets one line, `standin-buildkitd ok <client certificate CN>`, and the
  connection is closed.

What it was given and when it ran are left in its --root directory for tests to inspect:

    standin-started   one JSON line: {"pid", "config" (text of --config, or null), "argv"}
                      written once the listener is up, so its presence means "ready"
    standin-events    "started" and "stopped", one line each, appended; and for each gRPC
                      call, "grpc <method path> <client certificate CN>"

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
import ssl
import sys
import threading
from typing import Any
from urllib.parse import urlsplit

PROGRAM = "standin-buildkitd"
HANDSHAKE_TIMEOUT = 10.0
LINGER = 1.0  # how long to wait for the client to close after the greeting


def main(argv: list[str]) -> int:
    options = parse(argv)
    try:
        return run(options, argv)
    except (OSError, ssl.SSLError) as exc:
        log(f"cannot start: {exc}")
        return 1


def run(options: argparse.Namespace, argv: list[str]) -> int:
    host, port = options.tcp
    root = options.root
    if not os.path.isdir(root):
        os.makedirs(root, mode=0o700, exist_ok=True)
        os.chmod(root, 0o700)
    config = None
    if options.config is not None:
        with open(options.config, encoding="utf-8") as file:
            config = file.read()

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(options.tlscert, options.tlskey)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=options.tlscacert)
    context.set_alpn_protocols(["h2", "http/1.1"])

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host, port), family=family, backlog=64)

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
    bound_host, bound_port = listener.getsockname()[:2]
    log(f"listening on {bound_host}:{bound_port}")

    with selectors.DefaultSelector() as selector:
        selector.register(listener, selectors.EVENT_READ)
        selector.register(wake_reader, selectors.EVENT_READ)
        while not stopping.is_set():
            for key, _ in selector.select():
                if key.fileobj is wake_reader:
                    drain(wake_reader)
                elif not stopping.is_set():
                    accept(listener, context, root, options.debug)
    listener.close()
    append_event(root, "stopped")
    log("stopped")
    signal.set_wakeup_fd(-1)
    wake_reader.close()
    wake_writer.close()
    return 0


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROGRAM, allow_abbrev=False)
    parser.add_argument("--addr", action="append", default=[], help="tcp://HOST:PORT")
    parser.add_argument("--tlscert", required=True)
    parser.add_argument("--tlskey", required=True)
    parser.add_argument("--tlscacert", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--config")
    parser.add_argument("--debug", action="store_true")
    options, ignored = parser.parse_known_args(argv)
    if ignored and options.debug:
        log(f"ignoring {ignored}")
    tcp = [address for address in options.addr if address.startswith("tcp://")]
    if not tcp:
        parser.error("no --addr tcp://HOST:PORT given")
    parts = urlsplit(tcp[0])
    if parts.hostname is None or parts.port is None:
        parser.error(f"--addr {tcp[0]} has no host and port")
    options.tcp = (parts.hostname, parts.port)
    return options


def accept(listener: socket.socket, context: ssl.SSLContext, root: str, debug: bool) -> None:
    try:
        conn, peer = listener.accept()
    except OSError as exc:
        log(f"accept failed: {exc}")
        return
    if debug:
        log(f"connection from {peer[0]}:{peer[1]}")
    threading.Thread(target=serve, args=(conn, peer, context, root), daemon=True).start()


def serve(conn: socket.socket, peer: tuple[str, int], context: ssl.SSLContext, root: str) -> None:
    conn.settimeout(HANDSHAKE_TIMEOUT)
    try:
        tls = context.wrap_socket(conn, server_side=True)
    except (OSError, ValueError) as exc:
        log(f"handshake with {peer[0]}:{peer[1]} failed: {exc}")
        conn.close()
        return
    with tls:
        if tls.selected_alpn_protocol() == "h2":
            serve_grpc(tls, common_name(tls), root)
            return
        try:
            tls.sendall(f"{PROGRAM} ok {common_name(tls)}\n".encode())
            # Half-close and wait briefly for the client to close too: closing with its bytes
            # unread would reset the connection and could destroy the greeting in flight.
            # (socket.socket's own shutdown: SSLSocket.shutdown would also drop the TLS state.)
            tls.settimeout(LINGER)
            socket.socket.shutdown(tls, socket.SHUT_WR)
            while tls.recv(4096):
                pass
        except OSError:
            pass


LIST_WORKERS = "/moby.buildkit.v1.Control/ListWorkers"
_events_lock = threading.Lock()


def serve_grpc(tls: ssl.SSLSocket, client: str, root: str) -> None:
    """Answer gRPC calls on one HTTP/2 connection until the client closes it."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions

    connection = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
    )
    connection.initiate_connection()
    tls.settimeout(None)  # gRPC clients keep idle connections open
    try:
        tls.sendall(connection.data_to_send())
        while data := tls.recv(65536):
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    path = dict(event.headers).get(":path", "")
                    append_event(root, f"grpc {path} {client}")
                    answer_grpc(connection, event.stream_id, path)
                elif isinstance(event, h2.events.DataReceived):
                    # The client may still send on a stream this side has answered.
                    with contextlib.suppress(h2.exceptions.StreamClosedError):
                        connection.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                elif isinstance(event, h2.events.ConnectionTerminated):
                    return
            tls.sendall(connection.data_to_send())
    except (OSError, h2.exceptions.ProtocolError) as exc:
        log(f"gRPC connection from {client} ended: {exc!r}")


def answer_grpc(connection: Any, stream_id: int, path: str) -> None:
    """ListWorkers gets one worker; anything else `unimplemented` (a trailers-only answer)."""
    if path != LIST_WORKERS:
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
    message = list_workers_response()
    connection.send_headers(stream_id, [(":status", "200"), ("content-type", "application/grpc")])
    connection.send_data(stream_id, b"\x00" + len(message).to_bytes(4, "big") + message)
    connection.send_headers(stream_id, [("grpc-status", "0")], end_stream=True)


def list_workers_response() -> bytes:
    """moby.buildkit.v1.ListWorkersResponse{record: [{ID, platforms: [{Architecture, OS}]}]},
    encoded by hand: two nested length-delimited fields need no protobuf runtime."""
    architecture = "arm64" if platform.machine() in ("aarch64", "arm64") else "amd64"
    platform_message = _field(1, architecture.encode()) + _field(2, b"linux")
    record = _field(1, PROGRAM.encode()) + _field(3, platform_message)
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


def common_name(tls: ssl.SSLSocket) -> str:
    certificate = tls.getpeercert() or {}
    subject = certificate.get("subject", ())
    names = [pair[1] for rdn in subject for pair in rdn if pair[0] == "commonName"]
    return str(names[0]) if names else ""


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
