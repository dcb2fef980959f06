"""Protocol fuzzing: malformed requests over every protocol get well-formed, non-internal errors.

Hypothesis builds requests byte by byte (framing, headers, payloads) and sends them to the
ASGI app in process (tests/api/wire.py). Every answer must parse as an answer of the request's
protocol, carry a code other than internal/unknown (or succeed, when the fuzzer happens upon a
valid request), come within a bound, and never let an exception escape the app.

The transport properties run on SQLite only: everything under test here happens before the
first query that differs between backends (framing, decoding, the token lookup every test
suite exercises on both). The one property about stored state runs on both backends.

Examples: a small derandomized run in the normal suite; HYPOTHESIS_PROFILE=campaign (make
fuzz-protocol) runs many more, randomly.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import string
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from connectrpc.code import Code
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from protobuf import Message
from pyqwest import Client
from pyqwest.testing import ASGITransport

from depot_api.app import create_app
from depot_api.config import Settings
from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depot.buildkit.v1 import buildkit_pb
from depot_api.gen.depot.cli.v1 import build_pb as cli_build_pb
from depot_api.gen.depot.cli.v1beta1 import login_pb
from depot_api.gen.depot.core.v1 import project_pb
from depot_api.startup import prepare

from ..conftest import InProcessAPI, bearer, raw_post
from .wire import (
    END_STREAM,
    WEB_TRAILERS,
    Answer,
    Outcome,
    Request,
    call,
    envelope,
    grpc_web_text,
    read_answer,
)

# Shared apps across examples are deliberate: the properties hold in any state the fuzzer can
# leave behind, and building an app per example would cost a migration each.
settings.register_profile(
    "protocol-fuzz",
    max_examples=100,
    derandomize=True,
    database=None,
    deadline=None,  # the bound is call()'s hang detector, not Hypothesis' timing
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "protocol-fuzz-campaign",
    parent=settings.get_profile("protocol-fuzz"),
    max_examples=3000,
    derandomize=False,
    print_blob=True,  # a failure found at random comes with the @reproduce_failure to replay it
)
FUZZ = settings.get_profile(
    "protocol-fuzz-campaign"
    if os.environ.get("HYPOTHESIS_PROFILE") == "campaign"
    else "protocol-fuzz"
)

# The fuzzed apps' message limit: small, so that "near and over the limit" is cheap to build.
FUZZ_LIMIT = 64 * 1024

B = "/depot.build.v1.BuildService/"
GET_ENDPOINT = "/depot.buildkit.v1.BuildKitService/GetEndpoint"
REPORT_STATUS_STREAM = "/depot.cli.v1.BuildService/ReportStatusStream"


@dataclass(frozen=True)
class Target:
    path: str
    kind: str  # "unary", "server-stream", "client-stream", "bidi-stream" or "unknown"
    message: type[Message] | None
    fields: tuple[str, ...]  # JSON names worth filling in
    guarded: bool = True  # behind the token check


TARGETS = (
    Target(B + "CreateBuild", "unary", build_pb.CreateBuildRequest, ("projectId",)),
    Target(B + "GetBuild", "unary", build_pb.GetBuildRequest, ("buildId",)),
    Target(
        B + "ListBuilds",
        "unary",
        build_pb.ListBuildsRequest,
        ("projectId", "pageSize", "pageToken"),
    ),
    Target(
        B + "FinishBuild",
        "unary",
        build_pb.FinishBuildRequest,
        ("buildId", "success", "error", "result"),
    ),
    Target(
        "/depot.core.v1.ProjectService/CreateProject",
        "unary",
        project_pb.CreateProjectRequest,
        ("name", "regionId", "organizationId", "cachePolicy", "hardware"),
    ),
    Target(GET_ENDPOINT, "server-stream", buildkit_pb.GetEndpointRequest, ("buildId", "platform")),
    Target(
        REPORT_STATUS_STREAM,
        "client-stream",
        cli_build_pb.ReportStatusStreamRequest,
        ("buildId", "statuses", "stableDigests"),
    ),
    # Called without a token: their errors never pass the guard.
    Target(
        "/depot.cli.v1beta1.LoginService/FinishLogin",
        "server-stream",
        login_pb.FinishLoginRequest,
        ("id",),
        guarded=False,
    ),
    Target(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "bidi-stream",
        None,
        (),
        guarded=False,
    ),
    Target(B + "NoSuchMethod", "unknown", None, ()),
    Target("/depot.nosuch.v1.NoService/Call", "unknown", None, ()),
    Target("/", "unknown", None, ()),
)

# The methods behind the token check.
GUARDED_TARGETS = tuple(t for t in TARGETS if t.kind != "unknown" and t.guarded)

# A content type per protocol, as its clients send it.
PROTOCOLS = {
    "connect-json": "application/json",
    "connect-proto": "application/proto",
    "connect-stream-json": "application/connect+json",
    "connect-stream-proto": "application/connect+proto",
    "grpc": "application/grpc",
    "grpc-proto": "application/grpc+proto",
    "grpc-json": "application/grpc+json",
    "grpc-web": "application/grpc-web+proto",
    "grpc-web-text": "application/grpc-web-text",
}
ENVELOPED = {name for name in PROTOCOLS if not name.startswith("connect-") or "stream" in name}

# Codes a malformed request may get. Not internal, unknown or data_loss (a bug), nor
# unavailable (the database is up) or canceled (the client never leaves).
# deadline_exceeded only when the request set a timeout.
ALLOWED = {
    Code.INVALID_ARGUMENT,
    Code.NOT_FOUND,
    Code.ALREADY_EXISTS,
    Code.PERMISSION_DENIED,
    Code.RESOURCE_EXHAUSTED,
    Code.FAILED_PRECONDITION,
    Code.OUT_OF_RANGE,
    Code.UNIMPLEMENTED,  # unknown compression; zero or two messages for a unary method
    Code.UNAUTHENTICATED,
}


def family(content_type: bytes | None) -> str:
    """The protocol connectrpc serves for a content type (its own rule, on the raw value)."""
    value = (content_type or b"").decode("utf-8", "replace")
    if value == "application/grpc" or value.startswith("application/grpc+"):
        return "grpc"
    if value == "application/grpc-web" or value.startswith("application/grpc-web+"):
        return "grpc-web"
    return "connect"


# ------------------------------------------------------------------------------ strategies

ids = st.one_of(
    st.text(string.ascii_lowercase + string.digits, min_size=10, max_size=10),
    st.sampled_from(["", "ABCDEFGHIJ", "../../etc", "0" * 11, "\x00" * 10, "é" * 10]),
    st.text(max_size=20),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and infinities are not JSON: json.dumps writes them anyway
    st.text(max_size=20),
    st.sampled_from(
        [
            "99999999999999999999",
            "-9223372036854775809",
            "9223372036854775808",
            "1e3",
            "0x10",
            "PLATFORM_NOPE",
            "HARDWARE_8x8",
            "STATUS_RUNNING",
        ]
    ),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "id": ids,
    "buildId": ids,
    "projectId": ids,
    "organizationId": ids,
    "pageSize": st.one_of(st.integers(), st.sampled_from(["99999999999999999999", "5", -1])),
    "pageToken": st.text(max_size=40),
    "name": st.one_of(st.text(max_size=200), st.integers(), st.builds(lambda: ["x"])),
    "regionId": st.sampled_from(["us-east-1", "eu-central-1", "mars-1", "", 5]),
    "hardware": st.sampled_from(["HARDWARE_8X8", "HARDWARE_8x8", "HARDWARE_NOPE", 99, -1, 3]),
    "platform": st.sampled_from(["PLATFORM_ARM64", "PLATFORM_NOPE", 99, -1, "", None, 1.5]),
    "cachePolicy": st.fixed_dictionaries(
        {},
        optional={
            "keepBytes": st.sampled_from(
                ["99999999999999999999", "-1", "1", 5, "x", "9223372036854775807", 1e30]
            ),
            "keepGb": st.integers(min_value=-(2**40), max_value=2**40),
            "keepDays": st.one_of(st.integers(), st.floats()),
        },
    ),
    "success": st.sampled_from([{}, 5, "yes", [], None, {"x": 1}]),
    "error": st.sampled_from([{"error": 5}, "boom", {}, [], {"error": "boom", "x": {}}]),
    "result": st.sampled_from([{"success": 5}, {"error": "x"}, [], "success", {"canceled": 1}]),
    "statuses": st.lists(
        st.one_of(json_values, st.just({"vertexes": [{"digest": 5, "started": "yesterday"}]})),
        max_size=3,
    ),
    "stableDigests": st.one_of(
        st.dictionaries(st.text(max_size=8), st.text(max_size=8)), json_values
    ),
}


def documents(target: Target) -> st.SearchStrategy[Any]:
    """JSON documents shaped like the target's message, with wrong values and extra keys."""
    known = {name: FIELD_VALUES[name] for name in target.fields}
    shaped = st.fixed_dictionaries({}, optional=known)
    return st.one_of(
        shaped,
        st.tuples(shaped, st.dictionaries(st.text(max_size=8), json_values, max_size=2)).map(
            lambda pair: {**pair[1], **pair[0]}
        ),
        json_values,
    )


@st.composite
def nested(draw: st.DrawFn) -> bytes:
    """Deep nesting: Python's parser gives up with RecursionError, not ValueError."""
    depth = draw(st.sampled_from([100, 1_000, 5_000, 100_000]))
    opener = draw(st.sampled_from([b"[", b'{"buildId":', b'{"statuses":[', b'{"a":']))
    closed = draw(st.booleans())
    closer = {b"[": b"]", b'{"buildId":': b"}", b'{"statuses":[': b"]}", b'{"a":': b"}"}[opener]
    return opener * depth + (b"1" + closer * depth if closed else b"")


@st.composite
def wire_fields(draw: st.DrawFn) -> bytes:
    """Protobuf wire bytes that are plausible up to a point: any tag, any wire type
    (including the invalid ones), lengths past the end, overlong varints."""
    out = b""
    for _ in range(draw(st.integers(0, 4))):
        number = draw(st.one_of(st.integers(1, 5), st.integers(1, 2**29 - 1)))
        wire_type = draw(st.integers(0, 7))
        out += _varint(number << 3 | wire_type)
        if wire_type == 0:
            out += draw(
                st.one_of(st.builds(_varint, st.integers(0, 2**64 - 1)), st.just(b"\xff" * 11))
            )
        elif wire_type == 2:
            payload = draw(st.one_of(st.binary(max_size=16), wire_fields()))
            out += _varint(len(payload) + draw(st.sampled_from([0, 0, 1, 2**31]))) + payload
        elif wire_type in (1, 5):
            out += draw(st.binary(min_size=0, max_size=8))
    return out


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _dump(document: Any) -> bytes:
    return json.dumps(document).encode()


def _as_proto(target: Target, document: Any) -> bytes | None:
    assert target.message is not None
    try:
        return target.message.from_json(json.dumps(document)).to_binary()
    except Exception:
        return None


@st.composite
def payloads(draw: st.DrawFn, target: Target, codec: str) -> bytes:
    """One message's bytes: JSON or protobuf shaped like the target's, or garbage."""
    kind = draw(
        st.sampled_from(
            ["random", "invalid-json", "nested", "utf-8", "document", "proto", "huge", "empty"]
        )
    )
    if kind == "random" or (target.message is None and kind in ("document", "proto")):
        return draw(st.binary(max_size=256))
    if kind == "invalid-json":
        broken = st.sampled_from(
            [b"{", b"}", b'{"buildId":}', b"nul", b"{'a':1}", b'{"a":1,}', b"\x00", b"NaN"]
        )
        return draw(st.one_of(broken, st.text(max_size=30).map(str.encode)))
    if kind == "nested":
        return draw(nested())
    if kind == "utf-8":
        inner = draw(st.binary(min_size=1, max_size=16)) + b"\xff\xc3"
        field = draw(st.sampled_from([b"buildId", b"name", b"projectId", b"\xff"]))
        return b'{"' + field + b'": "' + inner + b'"}'
    if kind == "huge":
        size = FUZZ_LIMIT + draw(st.sampled_from([-64, -12, -1, 0, 1, 2, 1024]))
        field = draw(st.sampled_from(target.fields or ("x",)))
        text = b'{"' + field.encode() + b'": "'
        return text + b"x" * max(0, size - len(text) - 2) + b'"}'
    if kind == "empty":
        return b""
    document = draw(documents(target))
    if kind == "proto" or codec == "proto":
        encoded = _as_proto(target, document)
        if encoded is not None and draw(st.booleans()):
            return encoded
        return draw(wire_fields())
    return _dump(document)


@st.composite
def enveloped(draw: st.DrawFn, payload: bytes, protocol: str) -> bytes:
    """The payload in 5-byte envelopes, framed well or broken in one of the ways a peer can
    (a compressed flag is sent with and without a negotiated compression: see cases())."""
    frame = draw(
        st.sampled_from(
            [
                "ok",
                "longer",
                "huge",
                "compressed",
                "flags",
                "header-only",
                "two",
                "junk",
                "end-flag",
                "empty",
            ]
        )
    )
    if frame == "ok":
        return envelope(payload)
    if frame == "longer":
        return envelope(payload, length=len(payload) + draw(st.integers(1, 1000)))
    if frame == "huge":
        length = draw(st.sampled_from([2**32 - 1, 2**31, FUZZ_LIMIT + 1, FUZZ_LIMIT]))
        return envelope(payload, length=length)
    if frame == "compressed":
        return envelope(payload, flags=1)
    if frame == "flags":
        flags = draw(st.integers(2, 255))
        return envelope(payload, flags=flags)
    if frame == "header-only":
        return envelope(payload)[: draw(st.integers(1, 4))]
    if frame == "two":
        return envelope(payload) + envelope(draw(st.binary(max_size=8)))
    if frame == "junk":
        return envelope(payload) + draw(st.binary(min_size=1, max_size=8))
    if frame == "end-flag":  # the response-only end markers, sent by a client
        marker = WEB_TRAILERS if protocol.startswith("grpc-web") else END_STREAM
        return envelope(payload) + envelope(b"{}", flags=marker)
    return b""


@st.composite
def header_values(draw: st.DrawFn, good: list[bytes], garbage: list[bytes]) -> bytes | None:
    """None (absent), a value clients send, or garbage: anything but NUL, CR and LF, which no
    HTTP server passes on."""
    choice = draw(st.integers(0, 9))
    if choice < 5:
        return None
    if choice < 8:
        return draw(st.sampled_from(good))
    anything = st.binary(max_size=12).map(
        lambda b: b.replace(b"\0", b"").replace(b"\r", b"").replace(b"\n", b"")
    )
    return draw(st.one_of(st.sampled_from(garbage), anything))


TIMEOUTS = {
    "connect-timeout-ms": ([b"5000", b"10000"], [b"0", b"1", b"-1", b"99999999999", b"1e3", b" 5"]),
    "grpc-timeout": (
        [b"5S", b"10000m"],
        [b"0n", b"1n", b"99999999H", b"1", b"S", b"1x", b"123456789m"],
    ),
}


@dataclass(frozen=True)
class Case:
    target: Target
    protocol: str
    auth: str  # "valid", "none", or "garbage"
    request: Request
    odd_headers: bool  # protocol-version or timeout headers that are not what clients send
    timeout: bool  # a timeout header was sent


@st.composite
def cases(
    draw: st.DrawFn,
    targets: tuple[Target, ...] = TARGETS,
    auths: tuple[str, ...] = ("valid", "valid", "none", "garbage"),
) -> Case:
    target = draw(st.sampled_from(targets))
    protocol = draw(st.sampled_from(sorted(PROTOCOLS)))
    codec = "json" if "json" in protocol else "proto"
    payload = draw(payloads(target, codec))
    headers: list[tuple[bytes, bytes]] = []

    if protocol in ENVELOPED:
        body = draw(enveloped(payload, protocol))
        if protocol == "grpc-web-text" and draw(st.booleans()):
            body = grpc_web_text(body)
    else:
        body = payload
        if draw(st.integers(0, 5)) == 0:
            body = gzip.compress(body) if draw(st.booleans()) else body
            headers.append((b"content-encoding", b"gzip"))

    content_type: bytes | None = PROTOCOLS[protocol].encode()
    if draw(st.integers(0, 4)) == 0:
        content_type = draw(
            st.sampled_from(
                [
                    None,
                    b"",
                    b"text/plain",
                    b"application/json; charset=utf-8",
                    b"APPLICATION/JSON",
                    b"application/grpc+nope",
                    b"application/connect+",
                    b"application/x-www-form-urlencoded",
                    b"application/grpc-web-text+proto",
                    b"application/json\xff",
                ]
            )
        )
    if content_type is not None:
        headers.append((b"content-type", content_type))
    if protocol.startswith("grpc") and draw(st.integers(0, 5)) > 0:
        headers.append((b"te", b"trailers"))

    odd = False
    timeout = False
    version = draw(header_values([b"1"], [b"2", b"", b"1.0", b" 1"]))
    if version is not None:
        headers.append((b"connect-protocol-version", version))
        odd |= version != b"1"
    for name, (good, garbage) in TIMEOUTS.items():
        value = draw(header_values(good, garbage))
        if value is not None:
            headers.append((name.encode(), value))
            timeout = True
            odd |= value not in good
    encoding_header = {
        "connect-stream-json": b"connect-content-encoding",
        "connect-stream-proto": b"connect-content-encoding",
    }.get(protocol, b"grpc-encoding")
    encoding = draw(header_values([b"gzip", b"identity"], [b"br", b"zstd", b"gzip, br"]))
    if encoding is not None and protocol in ENVELOPED:
        headers.append((encoding_header, encoding))

    auth = draw(st.sampled_from(auths))
    if auth == "garbage":
        token = draw(
            st.one_of(
                st.sampled_from([b"Bearer", b"Bearer ", b"bearer dpo_", b"Basic eDp5", b"\xff"]),
                st.binary(max_size=50).map(lambda b: b"Bearer " + b.replace(b"\0", b"")),
            )
        )
        headers.append((b"authorization", token.replace(b"\r", b"").replace(b"\n", b"")))
    if draw(st.integers(0, 9)) == 0:  # a header of the fuzzer's own, perhaps not UTF-8
        headers.append((b"x-fuzz", draw(st.binary(max_size=8)).replace(b"\0", b"")))
    draw(st.randoms()).shuffle(headers)

    # Bodies arrive in pieces of any size: split it at a few points.
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    method = draw(st.sampled_from(["POST"] * 9 + ["GET"]))
    request = Request(target.path, headers, chunks, method=method)
    return Case(target, protocol, auth, request, odd, timeout)


# ------------------------------------------------------------------------------ fixtures


@asynccontextmanager
async def in_process(data_dir: Path, **changes: Any) -> AsyncIterator[InProcessAPI]:
    """An app over its own database (SQLite in data_dir unless changes name one), started and
    stopped through its lifespan. The fuzzer calls far faster than a token may: the rate
    limit is off (tests/api/test_limits.py tests it)."""
    settings = Settings(data_dir=data_dir, rate_limit=0, **changes)
    org_token = await prepare(settings)
    assert org_token is not None
    app = create_app(settings)
    async with ASGITransport(app) as transport:
        yield InProcessAPI(app=app, settings=settings, org_token=org_token, http=Client(transport))


@pytest.fixture
async def fuzz_api(tmp_path: Path) -> AsyncIterator[InProcessAPI]:
    async with in_process(
        tmp_path / "data",
        max_message_bytes=FUZZ_LIMIT,
        acquire_timeout=timedelta(seconds=2),  # no builds here; a bound if one appears
    ) as api:
        yield api


def with_auth(case: Case, token: str) -> Request:
    if case.auth != "valid":
        return case.request
    return dataclasses.replace(
        case.request,
        headers=[(b"authorization", f"Bearer {token}".encode()), *case.request.headers],
    )


def check(case: Case, answer: Answer) -> Outcome:
    """The properties every answer has, whatever the request."""
    outcome = read_answer(family(case.request.header("content-type")), answer)
    if outcome.form == "http":
        _check_refusal(case, answer.status)
        return outcome
    if outcome.code is None:
        return outcome  # the fuzzer built a valid request; read_answer checked its form
    allowed = ALLOWED | ({Code.DEADLINE_EXCEEDED} if case.timeout else set())
    assert outcome.code in allowed, outcome
    if case.auth != "valid" and not case.odd_headers and case.target in GUARDED_TARGETS:
        # Authentication comes before the body is read or decoded, on every protocol.
        assert outcome.code in (Code.UNAUTHENTICATED, Code.UNIMPLEMENTED), outcome
    return outcome


# Content types every method of its kind serves (415 for these would be wrong).
SERVED = {
    "unary": {"application/json", "application/proto"},
    "server-stream": {"application/connect+json", "application/connect+proto"},
    "client-stream": {"application/connect+json", "application/connect+proto"},
    "bidi-stream": {"application/connect+json", "application/connect+proto"},
}
GRPC_SERVED = {
    "application/grpc",
    "application/grpc+proto",
    "application/grpc+json",
    "application/grpc-web",
    "application/grpc-web+proto",
    "application/grpc-web+json",
}


def _check_refusal(case: Case, status: int) -> None:
    """A plain HTTP refusal must have its reason in the request."""
    if status == 404:
        assert case.target.kind == "unknown", "404 for a served method"
    elif status == 405:
        assert case.request.method != "POST", "405 for a POST"
    elif status == 415:
        content_type = (case.request.header("content-type") or b"").decode("latin-1")
        served = SERVED.get(case.target.kind, set()) | GRPC_SERVED
        if case.target.path == GET_ENDPOINT:
            served |= {"application/json"}  # the seed's plain JSON view
        assert content_type not in served, f"415 for {content_type}"


# ------------------------------------------------------------------------------ properties


@FUZZ
@given(data=st.data())
async def test_malformed_requests_get_wellformed_errors(
    fuzz_api: InProcessAPI, data: st.DataObject
) -> None:
    """Any request, on any protocol, with or without a token: a well-formed answer in time."""
    case = data.draw(cases())
    answer = await call(fuzz_api.app, with_auth(case, fuzz_api.org_token))
    outcome = check(case, answer)
    # What the examples reached (--hypothesis-show-statistics): refusals of every kind.
    event(outcome.form, outcome.code.value if outcome.code else str(outcome.message or "ok"))


@FUZZ
@given(data=st.data())
async def test_no_token_is_unauthenticated_before_decoding(
    fuzz_api: InProcessAPI, data: st.DataObject
) -> None:
    """Whatever the body, a request without a token that speaks a protocol is refused as
    unauthenticated: the body is never decoded for an unknown caller."""
    case = data.draw(cases(GUARDED_TARGETS, auths=("none",)))
    answer = await call(fuzz_api.app, case.request)
    outcome = check(case, answer)
    if outcome.form != "http" and not case.odd_headers:
        assert outcome.code == Code.UNAUTHENTICATED or (
            outcome.code == Code.UNIMPLEMENTED and "compression" in outcome.message
        ), outcome


# ------------------------------------------------------------------------------ found


@pytest.mark.parametrize("protocol", ["connect-json", "connect-proto", "grpc", "grpc-web"])
async def test_header_not_utf8(fuzz_api: InProcessAPI, protocol: str) -> None:
    """Found by fuzzing: a header value that is not UTF-8 (HTTP allows bytes from 0x80 up)
    made connectrpc raise: HTTP 500 `unknown`, and an exception out of the app."""
    target = TARGETS[1]
    for header in (b"x-anything", b"authorization"):
        value = b"Bearer \xff\xfe" if header == b"authorization" else b"\xe9t\xe9"
        headers = [
            (b"content-type", PROTOCOLS[protocol].encode()),
            (b"te", b"trailers"),
            (header, value),
        ]
        body = _dump({"buildId": "0123456789"})
        if "json" not in protocol:
            body = build_pb.GetBuildRequest(build_id="0123456789").to_binary()
        request = Request(target.path, headers, [envelope(body) if protocol in ENVELOPED else body])
        auth = "valid" if header != b"authorization" else "garbage"
        case = Case(target, protocol, auth, request, False, False)
        outcome = check(case, await call(fuzz_api.app, with_auth(case, fuzz_api.org_token)))
        expected = Code.NOT_FOUND if auth == "valid" else Code.UNAUTHENTICATED
        assert outcome.code == expected, outcome


@pytest.mark.parametrize(
    ("protocol", "target"),
    [
        ("connect-stream-proto", TARGETS[6]),  # ReportStatusStream
        ("grpc", TARGETS[1]),  # GetBuild
        ("grpc-web", TARGETS[5]),  # GetEndpoint
        ("connect-stream-json", TARGETS[7]),  # the login, which has no token check
    ],
    ids=lambda value: value if isinstance(value, str) else value.path.rsplit("/", 1)[1],
)
async def test_compressed_flag_without_compression(
    fuzz_api: InProcessAPI, protocol: str, target: Target
) -> None:
    """Found by fuzzing: a message flagged compressed without a negotiated compression was
    `internal` (connectrpc follows grpc-go there); it is the caller's malformed framing."""
    headers = [(b"content-type", PROTOCOLS[protocol].encode()), (b"te", b"trailers")]
    request = Request(target.path, headers, [envelope(b"{}", flags=1)])
    case = Case(target, protocol, "valid", request, False, False)
    outcome = check(case, await call(fuzz_api.app, with_auth(case, fuzz_api.org_token)))
    assert outcome.code == Code.INVALID_ARGUMENT, outcome
    assert "compressed" in outcome.message


@pytest.fixture
async def backend_api(tmp_path: Path, database_url: str) -> AsyncIterator[InProcessAPI]:
    """An app on each database backend (conftest's database_url), for what touches storage."""
    async with in_process(tmp_path / "data", database=database_url) as api:
        yield api


async def test_two_members_of_a_oneof(backend_api: InProcessAPI) -> None:
    """Found by fuzzing: `"success": {}` and `"error": {…}` together finished the build with
    whichever came last. ProtoJSON refuses two members of one oneof; so does the server."""
    h = {"content-type": "application/json", **bearer(backend_api.org_token)}
    _, _, content = await raw_post(
        backend_api,
        "/depot.core.v1.ProjectService/CreateProject",
        b'{"name": "a", "regionId": "us-east-1"}',
        h,
    )
    project_id = json.loads(content)["project"]["projectId"]
    _, _, content = await raw_post(
        backend_api, B + "CreateBuild", _dump({"projectId": project_id}), h
    )
    build_id = json.loads(content)["buildId"]
    for body in (
        {"buildId": build_id, "success": {}, "error": {"error": "boom"}},
        {"buildId": build_id, "result": {"error": {"error": "boom"}, "success": {}}},
    ):
        status, _, content = await raw_post(backend_api, B + "FinishBuild", _dump(body), h)
        assert status == 400, content
        assert "not success and error" in json.loads(content)["message"], content
    # A null member is absent, as ProtoJSON has it.
    body = {"buildId": build_id, "success": {}, "error": None}
    status, _, content = await raw_post(backend_api, B + "FinishBuild", _dump(body), h)
    assert status == 200, content
    _, _, content = await raw_post(backend_api, B + "GetBuild", _dump({"buildId": build_id}), h)
    assert json.loads(content)["status"] == "BUILD_STATUS_FINISHED"


@pytest.fixture(params=[1024, None], ids=["lowered", "default"])
async def limited_api(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[InProcessAPI]:
    limit = request.param or Settings().max_message_bytes
    async with in_process(tmp_path / "data", max_message_bytes=limit) as api:
        yield api


@pytest.fixture
async def default_api(tmp_path: Path) -> AsyncIterator[InProcessAPI]:
    async with in_process(tmp_path / "data") as api:
        yield api


def _padded_json(target: Target, size: int) -> bytes:
    """A JSON message of exactly size bytes (whitespace padding): valid, or nearly."""
    text = _dump({target.fields[0]: "0123456789"})
    return text[:-1] + b" " * (size - len(text)) + b"}"


def _padded_proto(size: int) -> bytes:
    """A message of exactly size bytes: field 1 (an ID, wrong but decodable) of a length that
    makes it so."""
    for header in range(2, 7):
        body = b"\x0a" + _varint(size - header) + b"x" * (size - header)
        if len(body) == size:
            return body
    raise AssertionError(size)


LIMIT_PROTOCOLS = [
    ("connect-json", B + "ListBuilds"),
    ("connect-proto", B + "ListBuilds"),
    ("connect-stream-json", GET_ENDPOINT),
    ("connect-stream-proto", REPORT_STATUS_STREAM),
    ("grpc", B + "ListBuilds"),
    ("grpc-json", GET_ENDPOINT),
    ("grpc-web", REPORT_STATUS_STREAM),
    ("seed-json", GET_ENDPOINT),
]


@pytest.mark.parametrize(("protocol", "path"), LIMIT_PROTOCOLS)
async def test_message_size_limit(limited_api: InProcessAPI, protocol: str, path: str) -> None:
    """A message of the limit is read; one byte more is resource_exhausted, on every protocol,
    whether it arrives as is or gzip-compressed."""
    limit = limited_api.settings.max_message_bytes
    target = next(t for t in TARGETS if t.path == path)
    content_type = "application/json" if protocol == "seed-json" else PROTOCOLS[protocol]
    codes = []
    for size in (limit, limit + 1):
        message = _padded_json(target, size) if "json" in protocol else _padded_proto(size)
        for compress in (False, True):
            body = gzip.compress(message) if compress else message
            headers = [(b"content-type", content_type.encode()), (b"te", b"trailers")]
            if protocol in ENVELOPED:
                body = envelope(body, flags=int(compress))
                if compress:
                    name = (
                        b"connect-content-encoding" if "connect" in protocol else b"grpc-encoding"
                    )
                    headers.append((name, b"gzip"))
            elif compress:
                if protocol == "seed-json":
                    continue  # the seed's view takes no compression
                headers.append((b"content-encoding", b"gzip"))
            case = Case(target, protocol, "valid", Request(path, headers, [body]), False, False)
            outcome = check(
                case, await call(limited_api.app, with_auth(case, limited_api.org_token))
            )
            codes.append((size - limit, compress, outcome.code))
    assert all((code == Code.RESOURCE_EXHAUSTED) == (over == 1) for over, _, code in codes), codes


def test_default_limit_is_sane() -> None:
    """Large enough for any real request (a CLI's status batch is a few KiB), small enough
    that a worker can hold many at once."""
    limit = Settings().max_message_bytes
    assert 1024 * 1024 <= limit <= 16 * 1024 * 1024
    assert Settings.from_env({}).max_message_bytes == limit


@pytest.mark.parametrize(
    ("protocol", "path"),
    [
        ("connect-stream-proto", GET_ENDPOINT),
        ("connect-stream-json", REPORT_STATUS_STREAM),
        ("grpc", B + "GetBuild"),
        ("grpc-web", REPORT_STATUS_STREAM),
    ],
)
@pytest.mark.parametrize("declared", [2**31, 2**32 - 1, "limit"])
async def test_declared_size_is_not_allocated(
    default_api: InProcessAPI, protocol: str, path: str, declared: int | str
) -> None:
    """An envelope declaring a huge message (or one of the limit, 4 MiB) with a tiny body
    costs nothing like its size: the reader waits for bytes instead of making room."""
    limited_api = default_api
    limit = limited_api.settings.max_message_bytes
    length = limit if declared == "limit" else int(declared)
    headers = [(b"content-type", PROTOCOLS[protocol].encode()), (b"te", b"trailers")]
    target = next(t for t in TARGETS if t.path == path)
    request = Request(path, headers, [envelope(b"\x0a\x02id", length=length)])
    case = Case(target, protocol, "valid", request, False, False)
    request = with_auth(case, limited_api.org_token)
    await call(limited_api.app, request)  # warm up: first-use caches are not the request's
    tracemalloc.start()
    try:
        outcome = check(case, await call(limited_api.app, request))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    expected = Code.INVALID_ARGUMENT if declared == "limit" else Code.RESOURCE_EXHAUSTED
    assert outcome.code == expected, outcome
    assert peak < 1024 * 1024, f"{peak} bytes at peak for a {length}-byte claim"


async def test_oversized_unary_body_is_not_read_whole(limited_api: InProcessAPI) -> None:
    """A unary body past the limit is refused without reading (or keeping) the rest."""
    limit = limited_api.settings.max_message_bytes
    chunk = b" " * (limit // 4 + 1)
    request = Request(
        B + "ListBuilds",
        [(b"content-type", b"application/json"), *bearer_header(limited_api.org_token)],
        [chunk] * 64,  # 16 times the limit
    )
    tracemalloc.start()
    try:
        answer = await call(limited_api.app, request)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    case = Case(TARGETS[2], "connect-json", "valid", request, False, False)
    assert check(case, answer).code == Code.RESOURCE_EXHAUSTED
    assert answer.request_chunks_left > 32, "the app read the body far past the limit"
    assert peak < 4 * limit + 1024 * 1024, peak


def bearer_header(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


# ------------------------------------------------------------------------------ stored state


@st.composite
def broken_finishes(draw: st.DrawFn, build_id: str) -> tuple[str, Request]:
    """A FinishBuild for a real, running build that must be refused: a valid message made
    invalid by its framing, or a message whose outcome is malformed."""
    # The protocols a unary method speaks (the others are refused before any decoding).
    unary = set(PROTOCOLS) - {"connect-stream-json", "connect-stream-proto", "grpc-web-text"}
    protocol = draw(st.sampled_from(sorted(unary)))
    outcome = draw(st.sampled_from([{"success": {}}, {"error": {"error": "boom"}}]))
    good = {"buildId": build_id, **outcome}
    codec = "json" if "json" in protocol else "proto"
    message = (
        _dump(good)
        if codec == "json"
        else build_pb.FinishBuildRequest.from_json(_dump(good)).to_binary()
    )
    how = draw(st.sampled_from(["truncated", "bad-outcome", "framing"]))
    if how == "truncated" or (how == "framing" and protocol not in ENVELOPED):
        message = message[: draw(st.integers(0, len(message) - 1))]
    elif how == "bad-outcome":
        bad = draw(
            st.sampled_from(
                [
                    {"success": 5},
                    {"error": "boom"},
                    {"error": {"error": 5}},
                    {"result": []},
                    {"success": {}, "result": {"error": {"error": "x"}}},
                    {"success": {}, "error": {"error": "x"}},
                    {"status": "BUILD_STATUS_FINISHED"},
                ]
            )
        )
        message = _dump({"buildId": build_id, **bad})
        if codec == "proto":
            message = draw(wire_fields()) if draw(st.booleans()) else message[:-1]
    body = message
    if protocol in ENVELOPED:
        if how == "framing":
            frame = draw(st.sampled_from(["longer", "compressed", "flags", "two", "junk"]))
            body = {
                "longer": envelope(message, length=len(message) + 1),
                "compressed": envelope(message, flags=1),
                "flags": envelope(message, flags=0x40),
                "two": envelope(message) + envelope(message),
                "junk": envelope(message) + b"\x00",
            }[frame]
        else:
            body = envelope(message)
    headers = [(b"content-type", PROTOCOLS[protocol].encode()), (b"te", b"trailers")]
    return protocol, Request(B + "FinishBuild", headers, [body])


@dataclass(frozen=True)
class Stored:
    project_id: str
    build_id: str
    listing: tuple[bytes, bytes]  # ListBuilds and ListProjects, as first read


async def _read_stored(api: InProcessAPI, project_id: str) -> tuple[bytes, bytes]:
    h = {"content-type": "application/json", **bearer(api.org_token)}
    _, _, builds = await raw_post(api, B + "ListBuilds", _dump({"projectId": project_id}), h)
    _, _, projects = await raw_post(api, "/depot.core.v1.ProjectService/ListProjects", b"{}", h)
    return builds, projects


@pytest.fixture
async def stored(backend_api: InProcessAPI) -> Stored:
    """A project with one running build, on each database backend."""
    h = {"content-type": "application/json", **bearer(backend_api.org_token)}
    body = b'{"name": "app", "regionId": "us-east-1"}'
    status, _, content = await raw_post(
        backend_api, "/depot.core.v1.ProjectService/CreateProject", body, h
    )
    assert status == 200, content
    project_id = json.loads(content)["project"]["projectId"]
    status, _, content = await raw_post(
        backend_api, B + "CreateBuild", _dump({"projectId": project_id}), h
    )
    assert status == 200, content
    listing = await _read_stored(backend_api, project_id)
    assert json.loads(listing[0])["builds"][0]["status"] == "BUILD_STATUS_RUNNING"
    return Stored(project_id, json.loads(content)["buildId"], listing)


@FUZZ
@given(data=st.data())
async def test_refused_finish_changes_nothing(
    backend_api: InProcessAPI, stored: Stored, data: st.DataObject
) -> None:
    """A FinishBuild for the running build, refused for its framing or its content, leaves
    the build running and everything else stored as it was."""
    protocol, request = data.draw(broken_finishes(stored.build_id))
    case = Case(TARGETS[3], protocol, "valid", request, False, False)
    outcome = check(case, await call(backend_api.app, with_auth(case, backend_api.org_token)))
    assert outcome.code is not None or outcome.form == "http", "a broken FinishBuild was accepted"
    assert await _read_stored(backend_api, stored.project_id) == stored.listing
