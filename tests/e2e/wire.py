"""Helpers for end-to-end tests that talk to the real server over the wire with real clients:
the `curl` and `buf` binaries, and grpcio. A missing binary fails the test; it never skips."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
import pytest
from protobuf import Message

from tests.helpers import BIN, REPO

PROTO_DIR = REPO / "proto"
ID = re.compile(r"[a-z0-9]{10}")
# Connect's JSON form of google.protobuf.Timestamp: RFC 3339 in UTC with a "Z".
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")

M = TypeVar("M", bound=Message)


def curl_binary() -> str:
    found = shutil.which("curl")
    if found is None:
        pytest.fail("the `curl` binary is required for these tests but is not on PATH")
    return found


def buf_binary() -> str:
    """`buf` from the buf-bin wheel, installed next to the interpreter running the tests."""
    path = BIN / "buf"
    if not path.is_file():
        pytest.fail(f"the `buf` binary is required (pip install buf-bin) but {path} is missing")
    return str(path)


@dataclass(frozen=True)
class CurlResult:
    status: int
    http_version: str
    content_type: str
    scheme: str
    text: str

    def json(self) -> Any:
        try:
            return json.loads(self.text)
        except json.JSONDecodeError as e:
            raise AssertionError(f"response is not JSON ({e}): {self.text!r}") from None


_WRITE_OUT = "\n%{http_code}\n%{http_version}\n%{content_type}\n%{scheme}"


def curl_post(
    url: str,
    body: str,
    *,
    token: str | None,
    flags: Sequence[str] = (),
    content_type: str = "application/json",
) -> CurlResult:
    """POST body with the real curl binary and return what came back (any HTTP status)."""
    args = [curl_binary(), "-sS", "-X", "POST", *flags, "-H", f"Content-Type: {content_type}"]
    if token is not None:
        args += ["-H", f"Authorization: Bearer {token}"]
    args += ["--data-binary", "@-", "-w", _WRITE_OUT, url]
    result = subprocess.run(args, input=body, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"curl exited with {result.returncode}: {result.stderr}"
    text, status, version, content_type_out, scheme = result.stdout.rsplit("\n", 4)
    assert "Traceback" not in text, text
    return CurlResult(int(status), version, content_type_out, scheme.lower(), text)


def curl(url: str, *args: str) -> CurlResult:
    """Run the real curl binary with exactly these arguments (no header added) and return
    what came back (any HTTP status)."""
    command = [curl_binary(), "-sS", *args, "-w", _WRITE_OUT, url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"curl exited with {result.returncode}: {result.stderr}"
    text, status, version, content_type, scheme = result.stdout.rsplit("\n", 4)
    assert "Traceback" not in text, text
    return CurlResult(int(status), version, content_type, scheme.lower(), text)


def curl_failure(url: str, *flags: str) -> subprocess.CompletedProcess[str]:
    """Run curl where it is expected to fail at the transport level; return the process."""
    return subprocess.run(
        [curl_binary(), "-sS", "-X", "POST", *flags, "-d", "{}", "-w", "%{http_code}", url],
        capture_output=True,
        text=True,
        timeout=30,
    )


def assert_timestamp(value: Any, *, near: datetime | None = None) -> datetime:
    """An RFC 3339 UTC timestamp, close to now (the server and the test share a clock)."""
    assert isinstance(value, str), value
    assert RFC3339_UTC.fullmatch(value), value
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None
    reference = near or datetime.now(UTC)
    assert abs(parsed - reference) < timedelta(minutes=5), (value, reference)
    return parsed


def unary(channel: grpc.Channel, method: str, response_class: type[M]) -> Callable[..., M]:
    """A grpcio unary-unary callable for a method path, with protobuf-py messages."""
    return channel.unary_unary(
        method,
        request_serializer=lambda message: message.to_binary(),
        response_deserializer=response_class.from_binary,
    )


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def rpc_error(call: Callable[..., Any], request: Message, **kwargs: Any) -> grpc.RpcError:
    """Make a grpcio call that must fail, and return its error."""
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=10, **kwargs)
    return raised.value
