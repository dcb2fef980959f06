"""open_buildkit(): the upgrade to BuildKit on a Docker Engine's API socket, against the real
private dockerd for the way in, and against small unix-socket servers for each way it is
refused."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest

from depot_api.agent.docker_engine import EngineAbsent, EngineRefused, open_buildkit
from depot_api.gen.moby.buildkit.v1.daemon_pb import ListWorkersRequest, ListWorkersResponse
from tests.docker_engine import DockerEngine

LIST_WORKERS = "/moby.buildkit.v1.Control/ListWorkers"
REFUSAL_HINT = "is this Docker Engine 20.10 or newer with BuildKit?"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose socket paths fit in a unix socket address (tmp_path's may not)."""
    with tempfile.TemporaryDirectory(prefix="depot-ob-") as directory:
        yield Path(directory)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def unix_server(path: Path, handler: Handler) -> AsyncIterator[None]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_unix_server(serve, path=str(path))
    async with server:
        yield
        server.close()


def answering(answer: bytes) -> Handler:
    """A server that reads a request head and writes answer."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()

    return handler


async def grpc_unary(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, message: bytes
) -> tuple[bytes, dict[bytes, bytes]]:
    """One gRPC call over an HTTP/2 connection the client opens: its reply message, and the
    headers and trailers of the answer."""
    connection = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    connection.initiate_connection()
    stream = connection.get_next_available_stream_id()
    connection.send_headers(
        stream,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "docker"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ],
    )
    connection.send_data(stream, b"\x00" + len(message).to_bytes(4, "big") + message)
    connection.end_stream(stream)
    writer.write(connection.data_to_send())
    await writer.drain()
    body = b""
    metadata: dict[bytes, bytes] = {}
    while True:
        data = await reader.read(65536)
        assert data, "the connection closed before the call ended"
        for event in connection.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                metadata.update(dict(event.headers))
            elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                body += event.data
                connection.acknowledge_received_data(event.flow_controlled_length, stream)
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                assert body[:1] == b"\x00", "a compressed or missing reply"
                length = int.from_bytes(body[1:5], "big")
                assert len(body) == 5 + length
                return body[5:], metadata
            elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                raise AssertionError(f"the call was cut off: {event}")
        writer.write(connection.data_to_send())
        await writer.drain()


@pytest.mark.buildkit
async def test_list_workers_through_the_upgrade(docker_engine: DockerEngine) -> None:
    reader, writer = await open_buildkit(str(docker_engine.socket), timeout=10)
    try:
        reply, metadata = await grpc_unary(
            reader, writer, LIST_WORKERS, ListWorkersRequest().to_binary()
        )
    finally:
        writer.close()
        await writer.wait_closed()
    assert metadata[b":status"] == b"200"
    assert metadata.get(b"grpc-status") == b"0", metadata
    workers = ListWorkersResponse.from_binary(reply).record
    assert workers
    assert all(worker.ID for worker in workers)


async def test_bytes_after_the_head_are_kept(short_dir: Path) -> None:
    """The Engine may send its first HTTP/2 frames with the 101: they stay in the reader."""
    path = short_dir / "engine.sock"
    answer = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    async with unix_server(path, answering(answer + b"first frames")):
        reader, writer = await open_buildkit(str(path), timeout=10)
        try:
            assert await reader.readexactly(len(b"first frames")) == b"first frames"
        finally:
            writer.close()
            await writer.wait_closed()


async def test_the_upgrade_request(short_dir: Path) -> None:
    path = short_dir / "engine.sock"
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        await writer.drain()

    async with unix_server(path, handler):
        _, writer = await open_buildkit(str(path), timeout=10)
        writer.close()
        await writer.wait_closed()
    assert seen == [
        b"POST /grpc HTTP/1.1\r\nHost: docker\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
    ]


async def test_not_docker_is_refused(short_dir: Path) -> None:
    path = short_dir / "engine.sock"
    answer = b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found"
    async with unix_server(path, answering(answer)):
        with pytest.raises(EngineRefused) as refused:
            await open_buildkit(str(path), timeout=10)
    assert str(refused.value) == (
        f"Docker Engine at {path} refused the BuildKit upgrade: HTTP/1.1 404 Not Found; "
        f"{REFUSAL_HINT}"
    )


async def test_an_unreadable_status_line_is_quoted_on_one_line(short_dir: Path) -> None:
    path = short_dir / "engine.sock"
    async with unix_server(path, answering(b"\x16\x03\x01garbage\x00\nmore\r\n\r\n")):
        with pytest.raises(EngineRefused) as refused:
            await open_buildkit(str(path), timeout=10)
    assert str(refused.value) == (
        f"Docker Engine at {path} refused the BuildKit upgrade: ???garbage??more; {REFUSAL_HINT}"
    )


async def test_a_closed_connection_is_refused(short_dir: Path) -> None:
    path = short_dir / "engine.sock"
    async with unix_server(path, answering(b"HTTP/1.1 101 Switch")):
        with pytest.raises(EngineRefused) as refused:
            await open_buildkit(str(path), timeout=10)
    assert str(refused.value) == (
        f"Docker Engine at {path} closed the connection before answering the BuildKit upgrade"
    )


async def test_silence_is_refused_in_time(short_dir: Path) -> None:
    path = short_dir / "engine.sock"
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()

    async with unix_server(path, silent):
        with pytest.raises(EngineRefused) as refused:
            await open_buildkit(str(path), timeout=0.2)
        release.set()
    assert str(refused.value) == (
        f"Docker Engine at {path} did not answer the BuildKit upgrade within 0.2 s"
    )


async def test_an_endless_head_is_refused(short_dir: Path) -> None:
    path = short_dir / "engine.sock"
    answer = b"HTTP/1.1 101 Switching Protocols\r\n" + b"X-Filler: " + b"x" * 70_000 + b"\r\n"
    async with unix_server(path, answering(answer)):
        with pytest.raises(EngineRefused) as refused:
            await open_buildkit(str(path), timeout=10)
    assert str(refused.value) == (
        f"Docker Engine at {path} answered the BuildKit upgrade with a head longer than 65536 bytes"
    )


async def test_a_missing_socket_is_absent(short_dir: Path) -> None:
    path = short_dir / "no-such.sock"
    with pytest.raises(EngineAbsent) as absent:
        await open_buildkit(str(path), timeout=10)
    assert str(absent.value) == (
        f"Docker Engine at {path} cannot be reached: No such file or directory; "
        "is dockerd running, and is this its API socket?"
    )


@pytest.mark.parametrize("what", ["a socket nobody listens on", "a plain file"])
async def test_nothing_listening_is_absent(short_dir: Path, what: str) -> None:
    path = short_dir / "engine.sock"
    if what == "a plain file":
        path.write_text("")
        await check_refused_connection(path)
    else:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:
            bound.bind(str(path))
            await check_refused_connection(path)


async def check_refused_connection(path: Path) -> None:
    with pytest.raises(EngineAbsent) as absent:
        await open_buildkit(str(path), timeout=10)
    assert str(absent.value) == (
        f"Docker Engine at {path} cannot be reached: Connection refused; "
        "is dockerd running, and is this its API socket?"
    )
