"""Raw ASGI calls and strict readers of every protocol's answer, for the protocol fuzz tests.

The fuzz tests build request bytes themselves (framing included) and hand them to the app as
ASGI messages, so nothing between them and the app can repair or refuse a malformed request.
Each answer is then read the way a client of the request's protocol would read it, and
anything a client could not parse is an AssertionError.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from connectrpc.code import Code

from depot_api.api.asgi import ASGIApp, ASGIMessage

# The Connect protocol's HTTP status for each code (connectrpc.com/docs/protocol).
CONNECT_HTTP_STATUS = {
    Code.CANCELED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}
GRPC_STATUS = {code: number for number, code in enumerate(Code, start=1)}
GRPC_CODE = {number: code for code, number in GRPC_STATUS.items()}

END_STREAM = 0b10  # Connect: the end-of-stream message
WEB_TRAILERS = 0x80  # gRPC-Web: the trailers frame


def envelope(payload: bytes, flags: int = 0, length: int | None = None) -> bytes:
    """One 5-byte-prefixed message; length, when given, is declared instead of the real one."""
    return struct.pack(">BI", flags, len(payload) if length is None else length) + payload


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    trailers: dict[str, str] | None  # None: the response had no trailers message
    request_chunks_left: int  # request body messages the app never asked for


@dataclass
class Request:
    path: str
    headers: list[tuple[bytes, bytes]]
    chunks: Sequence[bytes] = (b"",)
    method: str = "POST"
    http_version: str = "2"

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key == name.encode():
                return value
        return None


# A hang detector, not a speed assertion: every call here answers in milliseconds.
HANG_SECONDS = 10.0


async def call(app: ASGIApp, request: Request) -> Answer:
    """Run one request through the app; the client stays connected until the app returns.

    A call that takes longer than HANG_SECONDS fails; exceptions escaping the app propagate
    to the caller.
    """
    pending: list[ASGIMessage] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(request.chunks) - 1}
        for i, chunk in enumerate(request.chunks or (b"",))
    ]
    sent: list[ASGIMessage] = []
    never = asyncio.Event()

    async def receive() -> ASGIMessage:
        if pending:
            return pending.pop(0)
        await never.wait()  # a client that waits for its answer; the app stops waiting
        raise AssertionError("unreachable")

    async def send(message: ASGIMessage) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.5"},
        "http_version": request.http_version,
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": request.path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test"), *request.headers],
        "client": ("127.0.0.1", 1111),
        "server": ("test", 80),
        "extensions": {"http.response.trailers": {}},
        "state": {},
    }
    await asyncio.wait_for(app(scope, receive, send), HANG_SECONDS)
    return _assemble(sent, len(pending))


def _assemble(sent: list[ASGIMessage], left: int) -> Answer:
    """The response from the ASGI messages, checking that they follow the ASGI spec."""
    assert sent, "the app answered nothing"
    start, *rest = sent
    assert start["type"] == "http.response.start", sent
    status = start["status"]
    assert isinstance(status, int) and 100 <= status <= 599, status
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start["headers"]}
    body = b""
    trailers: dict[str, str] | None = None
    body_done = False
    for message in rest:
        assert trailers is None, f"message after the trailers: {message}"
        if message["type"] == "http.response.body":
            assert not body_done, f"body after the end of the body: {message}"
            body += message.get("body", b"")
            body_done = not message.get("more_body", False)
        elif message["type"] == "http.response.trailers":
            assert start.get("trailers"), "trailers sent without announcing them"
            assert body_done, "trailers before the end of the body"
            assert not message.get("more_trailers", False)
            trailers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message["headers"]
            }
        else:
            raise AssertionError(f"unexpected ASGI message {message}")
    assert body_done, "the response body never ended"
    if start.get("trailers"):
        assert trailers is not None, "trailers announced but never sent"
    return Answer(status, headers, body, trailers, left)


@dataclass(frozen=True)
class Outcome:
    """What a client of the protocol would make of an answer: success, or an error code."""

    code: Code | None  # None: success
    message: str
    form: str  # "connect-unary", "connect-stream", "grpc", "grpc-web" or "http"


def read_answer(family: str, answer: Answer) -> Outcome:
    """Parse the answer as a client of the request's protocol family would.

    family is "grpc", "grpc-web" or "connect" (unary or streaming, told by the answer).
    A refusal before any protocol is spoken (HTTP 404, 405, 415) is form "http".
    """
    content_type = answer.headers.get("content-type", "")
    if answer.status in (404, 405, 415) and "grpc-status" not in answer.headers:
        refusal = _read_refusal(answer)
        if refusal is not None:
            return refusal
    if family in ("grpc", "grpc-web"):
        assert answer.status == 200, f"a gRPC answer with HTTP {answer.status}: {answer}"
        if family == "grpc":
            assert content_type.startswith("application/grpc"), answer
            assert not content_type.startswith("application/grpc-web"), answer
            return _read_grpc(answer)
        assert content_type.startswith("application/grpc-web"), answer
        return _read_grpc_web(answer)
    if content_type.startswith("application/connect+"):
        return _read_connect_stream(answer)
    return _read_connect_unary(answer)


def _read_refusal(answer: Answer) -> Outcome | None:
    """A refusal says why: a Connect error (`unimplemented`) in JSON on an RPC's path, a line
    of text elsewhere. None: the answer is a Connect error of the call (404 `not_found`).

    gRPC and gRPC-Web clients read such a refusal from its HTTP status, as their protocols
    specify; the body is for people (and Connect clients)."""
    content_type = answer.headers.get("content-type", "")
    if content_type.startswith("text/plain"):
        text = answer.body.decode()
        assert text.strip(), f"a refusal without a reason: {answer}"
        return Outcome(None, text, "http")
    assert content_type == "application/json", answer
    code, message = _connect_error(json.loads(answer.body))
    if answer.status == 404 and code is not Code.UNIMPLEMENTED:
        return None
    assert code is Code.UNIMPLEMENTED, answer
    assert message, f"a refusal without a reason: {answer}"
    return Outcome(code, message, "http")


def _read_connect_unary(answer: Answer) -> Outcome:
    content_type = answer.headers.get("content-type", "")
    if answer.status == 200:
        assert content_type in ("application/json", "application/proto"), answer
        if content_type == "application/json":
            json.loads(answer.body)
        return Outcome(None, "", "connect-unary")
    assert content_type == "application/json", answer
    error = json.loads(answer.body)
    code, message = _connect_error(error)
    assert answer.status == CONNECT_HTTP_STATUS[code], (answer.status, error)
    return Outcome(code, message, "connect-unary")


def _connect_error(error: Any) -> tuple[Code, str]:
    assert isinstance(error, dict), error
    code = Code(error["code"])  # ValueError for a code that is not one
    message = error.get("message", "")
    assert isinstance(message, str), error
    return code, message


def _frames(body: bytes, allowed_flags: set[int]) -> list[tuple[int, bytes]]:
    frames = []
    rest = body
    while rest:
        assert len(rest) >= 5, f"a truncated frame header: {body!r}"
        flags, length = struct.unpack(">BI", rest[:5])
        assert flags in allowed_flags, f"frame flags {flags:#x}"
        assert len(rest) >= 5 + length, f"a truncated frame: {body!r}"
        frames.append((flags, rest[5 : 5 + length]))
        rest = rest[5 + length :]
    return frames


def _read_connect_stream(answer: Answer) -> Outcome:
    assert answer.status == 200, answer
    frames = _frames(answer.body, {0, 1, END_STREAM, END_STREAM | 1})
    assert frames, "a Connect stream without its end message"
    *messages, (end_flags, end) = frames
    assert end_flags & END_STREAM, "the last frame is not the end of the stream"
    assert not any(flags & END_STREAM for flags, _ in messages), "two end-of-stream messages"
    assert not end_flags & 1, "compressed end message without compression"
    document = json.loads(end)
    assert isinstance(document, dict), document
    if "error" not in document:
        return Outcome(None, "", "connect-stream")
    code, message = _connect_error(document["error"])
    return Outcome(code, message, "connect-stream")


def _grpc_status(fields: dict[str, str], form: str) -> Outcome:
    status = int(fields["grpc-status"])  # KeyError, ValueError: not a gRPC status
    message = urllib.parse.unquote(fields.get("grpc-message", ""))
    if status == 0:
        return Outcome(None, message, form)
    assert status in GRPC_CODE, status
    return Outcome(GRPC_CODE[status], message, form)


def _read_grpc(answer: Answer) -> Outcome:
    if answer.trailers is None:  # trailers-only: the status is in the headers
        assert answer.body == b"", answer
        return _grpc_status(answer.headers, "grpc")
    _frames(answer.body, {0, 1})
    return _grpc_status(answer.trailers, "grpc")


def _read_grpc_web(answer: Answer) -> Outcome:
    assert answer.trailers is None, "gRPC-Web has no HTTP trailers"
    if "grpc-status" in answer.headers:  # trailers-only
        assert answer.body == b"", answer
        return _grpc_status(answer.headers, "grpc-web")
    frames = _frames(answer.body, {0, 1, WEB_TRAILERS})
    assert frames and frames[-1][0] == WEB_TRAILERS, "no trailers frame at the end"
    assert all(flags != WEB_TRAILERS for flags, _ in frames[:-1]), "two trailers frames"
    fields = {}
    for line in frames[-1][1].decode("ascii").split("\r\n"):
        if line:
            name, value = line.split(":", 1)
            fields[name.strip().lower()] = value.strip()
    return _grpc_status(fields, "grpc-web")


def grpc_web_text(body: bytes) -> bytes:
    return base64.b64encode(body)
