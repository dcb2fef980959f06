"""Build insights at the front door, in process: a grpcio client (real HTTP/2 with HPACK's
dynamic table, from gRPC's C core) through the door to the stand-in daemon (h2, answering
Status as a build would), and the door's reader, side listener and status queue on what
crosses. Hand-built frames show that a reader that loses track stops reading and that the
forwarded bytes are the same, byte for byte, either way."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import grpc.aio
import hpack
import pytest

from depot_api.agent.build_status import Batch, Insights, StatusQueue
from depot_api.agent.front_door import ConnectionLog, Door, FrontDoor
from depot_api.agent.http2_reader import MAX_MESSAGE, SOLVE, STATUS, ConnectionReader
from depot_api.agent.splice import splice
from depot_api.domain.pki import KeyPair, issue_client_cert, new_project_ca
from tests.e2e.machines import free_port
from tests.standin_buildkitd import status_responses
from tests.test_front_door import (
    NOW,
    PREFACE,
    SERVER_NAME,
    Gatekeeper,
    server_tls,
    standin_daemon,
)

LIST_WORKERS = "/moby.buildkit.v1.Control/ListWorkers"


@dataclass
class Site:
    door: FrontDoor
    port: int
    gate: Gatekeeper
    queue: StatusQueue
    insights: Insights
    ca_pem: str
    root: Path
    ca: KeyPair

    def channel(self, build_id: str) -> grpc.aio.Channel:
        pair = issue_client_cert(self.ca, build_id, now=NOW, not_after=NOW + timedelta(hours=1))
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem.encode(),
            private_key=pair.key_pem.encode(),
            certificate_chain=pair.cert_pem.encode(),
        )
        return grpc.aio.secure_channel(
            f"127.0.0.1:{self.port}",
            credentials,
            # A channel of its own: closing it closes its connection (as a CLI exiting does).
            options=[
                ("grpc.ssl_target_name_override", SERVER_NAME),
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )

    def events(self) -> list[str]:
        return (self.root / "standin-events").read_text().splitlines()

    async def taken(self, build_id: str, count: int, within: float = 10) -> list[Batch]:
        """The queue's batches of a build once they hold `count` messages (marked sent)."""
        batches: list[Batch] = []
        for _ in range(int(within / 0.02)):
            for batch in self.queue.take():
                self.queue.sent(batch)
                if batch.build_id == build_id:
                    batches.append(batch)
            if sum(len(b.messages) for b in batches) >= count:
                return batches
            await asyncio.sleep(0.02)
        raise AssertionError(f"build {build_id}: {batches} after {within} s, not {count} messages")


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    ca = new_project_ca("proj-a", now=NOW)
    tls = server_tls(tmp_path, ca)
    root = tmp_path / "root"
    daemon = await standin_daemon(tmp_path, {"STANDIN_BUILDKITD_STATUS": "1"})
    queue = StatusQueue()
    insights = Insights(queue, grace=0.5, linger=1.0)
    gate = Gatekeeper()
    port = free_port()
    door = FrontDoor(f"127.0.0.1:{port}", gate, ConnectionLog(), insights=insights)
    await door.open()
    door.use(Door("b1nd1ng", tls, daemon))
    try:
        yield Site(door, port, gate, queue, insights, ca.cert_pem, root, ca)
    finally:
        await door.close()
        await daemon.stop()


@pytest.fixture(autouse=True)
def _short_unix_paths(tmp_path: Path) -> None:
    assert len(str(tmp_path / "bk.sock")) < 100, tmp_path


def ref_request(ref: str) -> bytes:
    """StatusRequest / SolveRequest with only Ref (field 1) set."""
    return b"\x0a" + bytes([len(ref)]) + ref.encode()


async def status_call(channel: grpc.aio.Channel, ref: str) -> list[bytes]:
    call = channel.unary_stream(STATUS, request_serializer=bytes, response_deserializer=bytes)
    return [message async for message in call(ref_request(ref), timeout=10)]


async def solve_call(channel: grpc.aio.Channel, ref: str) -> grpc.StatusCode:
    call = channel.unary_unary(SOLVE, request_serializer=bytes, response_deserializer=bytes)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(ref_request(ref) + b"\x12\x03abc", timeout=10)  # and a Definition
    return raised.value.code()


async def test_the_clients_status_is_kept_as_forwarded(site: Site) -> None:
    site.gate.live.add("build-1")
    async with site.channel("build-1") as channel:
        probe = channel.unary_unary(LIST_WORKERS, request_serializer=bytes)
        await probe(b"", timeout=10)
        # As the depot CLI does: Status and Solve of one ref, together; then another solve.
        received, code = await asyncio.gather(
            status_call(channel, "ref-a"), solve_call(channel, "ref-a")
        )
        second = await status_call(channel, "ref-b")
    assert code == grpc.StatusCode.UNIMPLEMENTED  # the stand-in cannot build
    assert received == status_responses("ref-a") and second == status_responses("ref-b")
    batches = await site.taken("build-1", 8)
    kept = [m for b in batches for m in b.messages]
    assert kept == status_responses("ref-a") + status_responses("ref-b")
    assert all(b.dropped == 0 and not b.side_listener for b in batches)
    # No side listener was opened: the only Status calls the daemon saw were the client's.
    assert site.events().count(f"grpc {STATUS}") == 2


async def test_a_solve_without_status_gets_a_side_listener(site: Site) -> None:
    site.gate.live.add("quiet")
    async with site.channel("quiet") as channel:
        assert await solve_call(channel, "ref-q") == grpc.StatusCode.UNIMPLEMENTED
        batches = await site.taken("quiet", 4)
    assert [m for b in batches for m in b.messages] == status_responses("ref-q")
    assert all(b.side_listener for b in batches)
    assert site.events().count(f"grpc {STATUS}") == 1  # the agent's own


async def test_side_listeners_are_capped(site: Site) -> None:
    site.insights._max_sides = 2
    site.insights._grace = 3.0  # all three solves come within it, whatever the machine's speed
    site.gate.live.add("many")
    async with site.channel("many") as channel:
        for ref in ("m1", "m2", "m3"):
            await solve_call(channel, ref)
        batches = await site.taken("many", 8)
    kept = [m for b in batches for m in b.messages]
    assert sorted(kept) == sorted(status_responses("m1") + status_responses("m2"))
    assert batches[-1].dropped == 1  # the third ref's status: not read, and counted
    assert site.events().count(f"grpc {STATUS}") == 2


async def test_a_status_soon_after_the_solve_cancels_the_side_listener(site: Site) -> None:
    site.gate.live.add("late")
    async with site.channel("late") as channel:
        await solve_call(channel, "ref-l")
        assert await status_call(channel, "ref-l") == status_responses("ref-l")
        await asyncio.sleep(1.0)  # past the grace
    batches = await site.taken("late", 4)
    assert [m for b in batches for m in b.messages] == status_responses("ref-l")
    assert not any(b.side_listener for b in batches)
    await asyncio.sleep(0.3)
    assert site.queue.take() == []  # nothing more: the side listener's copy was dropped


async def test_insights_off_reads_nothing(tmp_path: Path, site: Site) -> None:
    door = FrontDoor(f"127.0.0.1:{(port := free_port())}", site.gate, ConnectionLog())
    await door.open()
    door.use(site.door._door)
    site.gate.live.add("off")
    try:
        site.port = port
        async with site.channel("off") as channel:
            assert await status_call(channel, "ref-o") == status_responses("ref-o")
            await solve_call(channel, "ref-o")
        await asyncio.sleep(0.7)
        assert site.queue.take() == []
    finally:
        await door.close()


# The reader on recorded and hand-built bytes.


@dataclass
class Seen:
    refs: list[tuple[str, str]]
    status: list[tuple[str, bytes]]

    def reader(self) -> ConnectionReader:
        return ConnectionReader(
            lambda ref, path: self.refs.append((ref, path)),
            lambda ref, message: self.status.append((ref, message)),
        )


def seen() -> Seen:
    return Seen([], [])


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
    )


def grpc_message(body: bytes, flag: int = 0) -> bytes:
    return bytes([flag]) + len(body).to_bytes(4, "big") + body


REQUEST_HEADERS = [
    (":method", "POST"),
    (":scheme", "https"),
    (":authority", SERVER_NAME),
    ("content-type", "application/grpc"),
]


def request(encoder: hpack.Encoder, stream: int, path: str, body: bytes) -> bytes:
    headers = encoder.encode([*REQUEST_HEADERS, (":path", path)])
    return frame(1, 0x4, stream, headers) + frame(0, 0x1, stream, grpc_message(body))


def response(encoder: hpack.Encoder, stream: int, messages: list[bytes], padded: bool) -> bytes:
    out = frame(1, 0x4, stream, encoder.encode([(":status", "200")]))
    for message in messages:
        data = grpc_message(message)
        if padded:
            out += frame(0, 0x8, stream, bytes([3]) + data + b"\0\0\0")
        else:
            out += frame(0, 0, stream, data)
    return out + frame(1, 0x5, stream, encoder.encode([("grpc-status", "0")]))


def conversation() -> tuple[bytes, bytes]:
    """A client's and a daemon's bytes: SETTINGS, a session stream with bulk DATA, Status and
    Solve of one ref, the Status answered in padded and plain frames."""
    client, daemon = hpack.Encoder(), hpack.Encoder()
    up = frame(4, 0, 0, (1).to_bytes(2, "big") + (8192).to_bytes(4, "big"))
    up += request(client, 1, "/moby.buildkit.v1.Control/Session", b"s" * 70_000)
    up += request(client, 3, STATUS, ref_request("r1"))
    up += request(client, 5, SOLVE, ref_request("r1") + b"\x12\x05defin")
    down = frame(4, 0, 0, b"") + frame(4, 1, 0, b"")
    down += response(daemon, 1, [b"session"], padded=False)
    down += response(daemon, 3, status_responses("r1")[:2], padded=True)
    down += frame(8, 0, 3, (1000).to_bytes(4, "big"))  # a WINDOW_UPDATE between
    down += response(daemon, 5, [], padded=False)
    return up, down


def feed(reader: ConnectionReader, up: bytes, down: bytes, sizes: Iterator[int]) -> None:
    """Interleaved, in chunks of the given sizes: the client's bytes of each stream before the
    daemon's, as they cross."""
    at_up = at_down = 0
    while at_up < len(up) or at_down < len(down):
        if at_up < len(up):
            n = next(sizes)
            reader.from_client(up[at_up : at_up + n])
            at_up += n
        else:
            n = next(sizes)
            reader.from_daemon(down[at_down : at_down + n])
            at_down += n


@pytest.mark.parametrize("chunking", ["whole", "bytes", "random"])
def test_the_reader_does_not_care_how_bytes_are_cut(chunking: str) -> None:
    up, down = conversation()
    got = seen()
    reader = got.reader()
    rng = random.Random(14)
    sizes = {
        "whole": iter(lambda: 1 << 30, None),
        "bytes": iter(lambda: 1, None),
        "random": iter(lambda: rng.randint(1, 20_000), None),
    }[chunking]
    feed(reader, up, down, sizes)
    assert reader.lost == ""
    assert got.refs == [("r1", STATUS), ("r1", SOLVE)]
    assert got.status == [("r1", m) for m in status_responses("r1")[:2]]


MALFORMED = {
    "HPACK that does not decode": frame(1, 0x4, 7, b"\xff\xff\xff\xff\xff"),
    "CONTINUATION without HEADERS": frame(9, 0x4, 7, b"\x82"),
    "another frame inside a header block": frame(1, 0, 7, b"\x83") + frame(0, 0, 7, b"x"),
    "padding longer than its frame": frame(1, 0x8 | 0x4, 7, b"\x09\x83"),
    "HEADERS on stream 0": frame(1, 0x4, 0, b"\x83"),
    "SETTINGS of a wrong length": frame(4, 0, 0, b"\x00\x01\x00"),
    "a Solve request that is not protobuf": b"",  # made in the test: needs the encoder
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_a_reader_that_loses_track_stops_and_the_bytes_pass_unchanged(
    case: str, tmp_path: Path
) -> None:
    up, down = conversation()
    bad = MALFORMED[case]
    if not bad:
        encoder = hpack.Encoder()
        for block in (
            [*REQUEST_HEADERS, (":path", p)]
            for p in ("/moby.buildkit.v1.Control/Session", STATUS, SOLVE)
        ):
            encoder.encode(block)  # the same dynamic table as the conversation's client
        bad = request(encoder, 7, SOLVE, b"\x0a\x7fshort")
    after = frame(4, 0, 0, b"") + b"\x00" * 5000  # anything at all, once track is lost
    sent_up = up + bad + after
    got = seen()
    reader = got.reader()
    received = await through_splice(reader, PREFACE + sent_up, down, tmp_path)
    assert received == (PREFACE + sent_up, down)  # byte for byte, both ways
    assert reader.lost != ""
    # What came before the bad bytes was read (the daemon's side may have come after them).
    assert got.refs == [("r1", STATUS), ("r1", SOLVE)]


async def through_splice(
    reader: ConnectionReader, up: bytes, down: bytes, tmp_path: Path
) -> tuple[bytes, bytes]:
    """Send `up` from a client and `down` from a daemon through the front door's splice with
    the reader tapping it (after the 24-byte preface, as the door does); what each side got."""
    got_by_daemon = bytearray()
    daemon_done = asyncio.Event()

    async def daemon_side(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(down)
        await w.drain()
        while chunk := await r.read(65536):
            got_by_daemon.extend(chunk)
        w.close()
        daemon_done.set()

    async def door_side(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        daemon = await asyncio.open_unix_connection(str(tmp_path / "d.sock"))
        preface = await r.readexactly(len(PREFACE))
        daemon[1].write(preface)
        await splice((r, w), daemon, taps=(reader.from_client, reader.from_daemon))

    daemon_server = await asyncio.start_unix_server(daemon_side, str(tmp_path / "d.sock"))
    door_server = await asyncio.start_unix_server(door_side, str(tmp_path / "door.sock"))
    try:
        r, w = await asyncio.open_unix_connection(str(tmp_path / "door.sock"))
        w.write(up)
        await w.drain()
        w.write_eof()
        got_by_client = await asyncio.wait_for(r.read(), 10)
        while len(got_by_client) < len(down):
            more = await asyncio.wait_for(r.read(), 10)
            if not more:
                break
            got_by_client += more
        await asyncio.wait_for(daemon_done.wait(), 10)
        w.close()
    finally:
        door_server.close()
        daemon_server.close()
    return bytes(got_by_daemon), got_by_client


def test_a_compressed_or_huge_message_ends_the_reading_of_its_stream_only() -> None:
    client, daemon = hpack.Encoder(), hpack.Encoder()
    got = seen()
    reader = got.reader()
    reader.from_client(request(client, 1, STATUS, ref_request("c")))
    reader.from_client(request(client, 3, STATUS, ref_request("h")))
    reader.from_client(request(client, 5, STATUS, ref_request("ok")))
    reader.from_daemon(frame(1, 0x4, 1, daemon.encode([(":status", "200")])))
    reader.from_daemon(frame(0, 0, 1, grpc_message(b"zipped", flag=1)))
    reader.from_daemon(frame(0, 0, 1, grpc_message(b"plain")))  # not read: the stream is given up
    reader.from_daemon(frame(1, 0x4, 3, daemon.encode([(":status", "200")])))
    reader.from_daemon(frame(0, 0, 3, b"\x00" + (MAX_MESSAGE + 1).to_bytes(4, "big")))
    reader.from_daemon(response(daemon, 5, [b"fine"], padded=False))
    assert reader.lost == ""
    assert got.status == [("ok", b"fine")]


def test_an_rst_stream_forgets_the_stream() -> None:
    client, daemon = hpack.Encoder(), hpack.Encoder()
    got = seen()
    reader = got.reader()
    reader.from_client(request(client, 1, STATUS, ref_request("x")))
    reader.from_daemon(frame(1, 0x4, 1, daemon.encode([(":status", "200")])))
    reader.from_client(frame(3, 0, 1, (8).to_bytes(4, "big")))  # CANCEL
    reader.from_daemon(frame(0, 0, 1, grpc_message(b"after the reset")))
    reader.from_daemon(frame(7, 0, 0, (1).to_bytes(4, "big") + (0).to_bytes(4, "big")))  # GOAWAY
    assert reader.lost == "" and got.status == []


# The queue.


def test_the_queue_is_bounded_and_counts_what_it_drops() -> None:
    queue = StatusQueue(cap_bytes=10, batch_bytes=4)
    for n in range(6):
        queue.add("b", bytes([n]) * 3)  # 18 bytes offered, 10 held: the oldest go first
    assert queue.bytes == 9 and queue.dropped == 3
    first = queue.take()
    assert [(b.build_id, b.messages, b.dropped) for b in first] == [
        (
            "b",
            [b"\3" * 3],
            3,
        )
    ]
    # Taken but not yet sent still counts against the cap; a build in flight waits its turn.
    queue.add("b", b"\6" * 3)
    queue.add("c", b"\7" * 3)  # would pass the cap: dropped (b's oldest pending goes first)
    assert queue.bytes == 9 and queue.dropped == 5
    (c_batch,) = queue.take()
    assert (c_batch.build_id, c_batch.messages, c_batch.dropped) == ("c", [], 1)
    queue.retry(first[0])  # the server was away: back at the front, in order
    batch = queue.take()[0]
    assert batch.messages == [b"\3" * 3] and batch.dropped == 4
    queue.sent(batch)
    queue.sent(c_batch)
    rest = []
    while taken := queue.take():
        for b in taken:
            rest += b.messages
            queue.sent(b)
    assert rest == [b"\5" * 3, b"\6" * 3]  # \4 made room for \6
    assert queue.bytes == 0 and queue.take() == []  # the drop counts were reported: no news


def test_a_message_larger_than_the_cap_is_dropped_and_a_lost_connection_counts() -> None:
    queue = StatusQueue(cap_bytes=10)
    queue.add("b", b"x" * 11)
    queue.lost("b")
    (batch,) = queue.take()
    assert batch.messages == [] and batch.dropped == 2
    queue.sent(batch)
    assert queue.take() == []
    with pytest.raises(ValueError, match="positive"):
        StatusQueue(cap_bytes=0)


def test_a_side_listeners_batches_say_so() -> None:
    queue = StatusQueue()
    queue.add("b", b"one", side_listener=True)
    (batch,) = queue.take()
    assert batch.side_listener and batch.messages == [b"one"]
    queue.sent(batch)
    queue.add("b", b"two")
    (later,) = queue.take()
    assert later.side_listener  # a build once read from the side stays marked
