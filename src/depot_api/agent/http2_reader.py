"""A passive reader of one forwarded HTTP/2 connection: it sees the bytes the front door has
already passed on, both ways, and picks out the gRPC messages of the BuildKit calls that say
what a build did, without ever changing, holding back or answering anything.

What it follows, and why no more:
- frames (the 9-byte header; DATA with its padding; HEADERS and CONTINUATION; RST_STREAM;
  SETTINGS for the HPACK table size; GOAWAY), skipping the payload of every DATA frame of a
  stream it does not follow without copying it: the build context crosses the door in the
  Session stream, and reading must cost little;
- HPACK, per direction, from the connection's first byte (the dynamic table depends on every
  header block before), to learn each stream's `:path`;
- gRPC's length-prefixed messages on the streams it follows: from the client, the first
  message of `Control/Solve` and `Control/Status` (which carry the build's ref); from the
  daemon, every message of a `Control/Status` stream (a StatusResponse, passed on as bytes).

Anything it cannot follow ends its reading of the connection (`lost` says why); a message it
cannot read (compressed, too large) ends its reading of that stream only. Either way the
forwarding goes on untouched: the reader is fed after the bytes were written, and never raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import hpack

log = logging.getLogger("depot_api.agent")

SOLVE = "/moby.buildkit.v1.Control/Solve"
STATUS = "/moby.buildkit.v1.Control/Status"

_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _GOAWAY, _CONTINUATION = 0x0, 0x1, 0x3, 0x4, 0x7, 0x9
_END_STREAM, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x4, 0x8, 0x20
_SETTINGS_HEADER_TABLE_SIZE = 0x1
# A StatusResponse carries a batch of vertexes and logs; BuildKit keeps them well under gRPC's
# usual 16 MiB. A bigger one is not buffered: that stream is no longer read.
MAX_MESSAGE = 16 << 20
# gRPC's headers are small; a bigger header list than this is not a BuildKit client's.
_MAX_HEADER_LIST = 1 << 20


class LostTrack(Exception):
    """The bytes are not HTTP/2 as this reader follows it; str() says where."""


# (ref, message): a Solve's or Status request's ref from the client.
RefSeen = Callable[[str, str], None]
# (ref, payload): one StatusResponse message, as the daemon sent it.
StatusSeen = Callable[[str, bytes], None]


@dataclass
class _Stream:
    path: str = ""
    ref: str = ""  # of a Status stream, from its request
    # gRPC bytes not yet cut into messages, per direction (client, daemon); None: not read.
    buffers: list[bytearray | None] = field(default_factory=lambda: [None, None])


class ConnectionReader:
    """Both directions of one connection. `from_client` and `from_daemon` take the bytes as
    forwarded (the client's after its 24-byte preface, which the front door checks itself)."""

    def __init__(self, on_ref: RefSeen, on_status: StatusSeen) -> None:
        self._on_ref = on_ref
        self._on_status = on_status
        self._streams: dict[int, _Stream] = {}
        self._client = _Direction(self, from_client=True)
        self._daemon = _Direction(self, from_client=False)
        self.lost = ""  # why reading stopped; "" while it goes on
        self.status_streams = 0  # Status streams seen, for what losing track costs

    def from_client(self, data: bytes) -> None:
        self._feed(self._client, data)

    def from_daemon(self, data: bytes) -> None:
        self._feed(self._daemon, data)

    def _feed(self, direction: _Direction, data: bytes) -> None:
        if self.lost:
            return
        try:
            direction.feed(data)
        except LostTrack as e:
            self._lose(f"{'client' if direction.from_client else 'daemon'}: {e}")
        except Exception as e:  # a reader's bug must never reach the forwarding
            self._lose(f"unexpected {e.__class__.__name__}: {e}")

    def _lose(self, why: str) -> None:
        self.lost = why
        self._streams.clear()
        self._client = self._daemon = _Direction(self, from_client=True)  # frees the buffers

    # Called by the directions.

    def follows(self, stream_id: int, from_client: bool) -> bool:
        stream = self._streams.get(stream_id)
        return stream is not None and stream.buffers[0 if from_client else 1] is not None

    def headers(
        self, stream_id: int, headers: list[tuple[bytes, bytes]], from_client: bool
    ) -> None:
        if not from_client:
            return  # the daemon's headers say nothing this reader needs (its HPACK is followed)
        if stream_id in self._streams:
            return  # trailers, or a second block
        path = next((v for k, v in headers if k == b":path"), b"").decode("latin-1")
        stream = _Stream(path)
        if path in (SOLVE, STATUS):
            stream.buffers[0] = bytearray()
            if path == STATUS:
                self.status_streams += 1
        self._streams[stream_id] = stream

    def data(self, stream_id: int, payload: memoryview, from_client: bool) -> None:
        stream = self._streams[stream_id]
        side = 0 if from_client else 1
        buffer = stream.buffers[side]
        assert buffer is not None
        buffer += payload
        while len(buffer) >= 5:
            flag = buffer[0]
            length = int.from_bytes(buffer[1:5], "big")
            if flag != 0 or length > MAX_MESSAGE:
                # Compressed (no BuildKit client was seen asking for that), or not gRPC's.
                log.debug(
                    "stream %d (%s): message flag %d, %d bytes: not read",
                    stream_id,
                    stream.path,
                    flag,
                    length,
                )
                stream.buffers[side] = None
                return
            if len(buffer) < 5 + length:
                return
            message = bytes(buffer[5 : 5 + length])
            del buffer[: 5 + length]
            if from_client:
                self._request(stream_id, stream, message)
                return
            self._on_status(stream.ref, message)

    def _request(self, stream_id: int, stream: _Stream, message: bytes) -> None:
        # One request message is all a Solve or Status stream has to say here.
        stream.buffers[0] = None
        ref = field_one_string(message)
        if not ref:
            return
        if stream.path == STATUS:
            stream.ref = ref
            stream.buffers[1] = bytearray()  # now the daemon's answers are worth reading
        self._on_ref(ref, stream.path)

    def ended(self, stream_id: int, from_client: bool) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.buffers[0 if from_client else 1] = None
        if not from_client:
            # The daemon's side ends a gRPC call; the client's is then of no interest either.
            del self._streams[stream_id]

    def reset(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)

    def table_size(self, size: int, from_client: bool) -> None:
        """A peer's SETTINGS_HEADER_TABLE_SIZE bounds the other side's encoder."""
        other = self._daemon if from_client else self._client
        other.decoder.max_allowed_table_size = max(other.decoder.max_allowed_table_size, size)


class _Direction:
    """The frames one side sends. Payloads of frames that matter are gathered whole (a frame
    is at most 16 MiB, and the ones gathered are headers, settings and followed DATA); the
    rest are counted off without a copy."""

    def __init__(self, connection: ConnectionReader, *, from_client: bool) -> None:
        self.connection = connection
        self.from_client = from_client
        self.decoder = hpack.Decoder(max_header_list_size=_MAX_HEADER_LIST)
        self._header = bytearray()
        self._skip = 0
        self._payload = bytearray()
        self._need = 0
        self._frame = (0, 0, 0)  # type, flags, stream of the frame being gathered
        self._block: bytearray | None = None  # a header block awaiting CONTINUATION
        self._block_stream = 0
        self._block_flags = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                taken = min(self._skip, end - pos)
                self._skip -= taken
                pos += taken
            elif self._need:
                taken = min(self._need, end - pos)
                self._payload += view[pos : pos + taken]
                self._need -= taken
                pos += taken
                if not self._need:
                    payload, self._payload = self._payload, bytearray()
                    self._frame_done(memoryview(payload))
            else:
                missing = 9 - len(self._header)
                self._header += view[pos : pos + missing]
                pos += min(missing, end - pos)
                if len(self._header) == 9:
                    header, self._header = bytes(self._header), bytearray()
                    self._frame_start(header)

    def _frame_start(self, header: bytes) -> None:
        length = int.from_bytes(header[0:3], "big")
        kind, flags = header[3], header[4]
        stream_id = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
        if self._block is not None and (kind != _CONTINUATION or stream_id != self._block_stream):
            raise LostTrack(f"frame type {kind} inside the header block of stream {stream_id}")
        gathered = kind in (_HEADERS, _CONTINUATION, _RST_STREAM, _SETTINGS, _GOAWAY) or (
            kind == _DATA and self.connection.follows(stream_id, self.from_client)
        )
        if kind == _DATA and not gathered and flags & _END_STREAM:
            self.connection.ended(stream_id, self.from_client)
        self._frame = (kind, flags, stream_id)
        if not gathered:
            self._skip = length
        elif length:
            self._need = length
        else:
            self._frame_done(memoryview(b""))

    def _frame_done(self, payload: memoryview) -> None:
        kind, flags, stream_id = self._frame
        if kind == _DATA:
            self.connection.data(stream_id, _unpadded(payload, flags), self.from_client)
            if flags & _END_STREAM:
                self.connection.ended(stream_id, self.from_client)
        elif kind == _HEADERS:
            if stream_id == 0:
                raise LostTrack("HEADERS on stream 0")
            block = _unpadded(payload, flags)
            if flags & _PRIORITY:
                if len(block) < 5:
                    raise LostTrack("HEADERS too short for its priority")
                block = block[5:]
            self._block, self._block_stream, self._block_flags = bytearray(block), stream_id, flags
            if flags & _END_HEADERS:
                self._headers_done()
        elif kind == _CONTINUATION:
            if self._block is None:
                raise LostTrack(f"CONTINUATION without HEADERS on stream {stream_id}")
            self._block += payload
            if flags & _END_HEADERS:
                self._headers_done()
        elif kind == _RST_STREAM:
            self.connection.reset(stream_id)
        elif kind == _SETTINGS:
            if stream_id != 0 or len(payload) % 6:
                raise LostTrack("a malformed SETTINGS frame")
            for at in range(0, len(payload), 6):
                if int.from_bytes(payload[at : at + 2], "big") == _SETTINGS_HEADER_TABLE_SIZE:
                    size = int.from_bytes(payload[at + 2 : at + 6], "big")
                    self.connection.table_size(size, self.from_client)
        elif kind == _GOAWAY:
            # No new streams; those under way go on and are still read.
            log.debug("GOAWAY from the %s", "client" if self.from_client else "daemon")

    def _headers_done(self) -> None:
        assert self._block is not None
        block, stream_id, flags = bytes(self._block), self._block_stream, self._block_flags
        self._block = None
        try:
            headers = self.decoder.decode(block, raw=True)
        except hpack.HPACKError as e:
            raise LostTrack(f"HPACK: {e.__class__.__name__}: {e}") from None
        self.connection.headers(stream_id, [(k, v) for k, v in headers], self.from_client)
        if flags & _END_STREAM:
            self.connection.ended(stream_id, self.from_client)


def _unpadded(payload: memoryview, flags: int) -> memoryview:
    if not flags & _PADDED:
        return payload
    if not payload:
        raise LostTrack("a padded frame without its pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise LostTrack("padding longer than its frame")
    return payload[1 : len(payload) - pad]


def field_one_string(message: bytes) -> str:
    """Field 1 of a protobuf message as a string ("" when absent or not a string): the `Ref`
    of BuildKit's SolveRequest and StatusRequest. Read by hand, skipping every other field
    unparsed, because a SolveRequest carries the whole build definition and only its ref is
    wanted here; raises LostTrack on bytes that are not protobuf."""
    pos, end = 0, len(message)
    while pos < end:
        key, pos = _varint(message, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(message, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(message, pos)
            if pos + length > end:
                raise LostTrack("a protobuf field past the end of its message")
            if number == 1:
                return message[pos : pos + length].decode("utf-8", errors="replace")
            pos += length
        else:
            raise LostTrack(f"protobuf wire type {wire}")
    return ""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise LostTrack("a truncated protobuf varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos
