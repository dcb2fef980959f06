"""A gRPC call made by hand on an open connection (HTTP/2 with the h2 package), for tests that
must see the transport as a client does: which bytes cross, who closes, what TLS refuses."""

from __future__ import annotations

import socket
import ssl

import h2.config
import h2.connection
import h2.events


def grpc_unary_over(
    tls: ssl.SSLSocket | socket.socket, authority: str, path: str, message: bytes = b""
) -> bytes:
    """One gRPC unary call on an open connection; the answer's message (grpc-status 0 only)."""
    connection = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    connection.initiate_connection()
    stream = connection.get_next_available_stream_id()
    connection.send_headers(
        stream,
        [
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", authority),
            (":path", path),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ],
    )
    connection.send_data(
        stream, b"\x00" + len(message).to_bytes(4, "big") + message, end_stream=True
    )
    tls.sendall(connection.data_to_send())
    body, status = b"", None
    while True:
        data = tls.recv(65536)
        if not data:
            raise ConnectionError("the machine closed the connection without answering")
        for event in connection.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                body += event.data
                connection.acknowledge_received_data(event.flow_controlled_length, stream)
            elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                status = dict(event.headers).get("grpc-status", status)
            elif isinstance(event, h2.events.StreamEnded):
                assert status == "0", f"{path} answered grpc-status {status}"
                return body[5:]
        tls.sendall(connection.data_to_send())
