"""BuildKit's `--progress=rawjson` log (docker buildx build, buildctl): one JSON object per
line, each a client.SolveStatus as Go's encoding/json writes it, read into the status messages
BuildKit itself sends (moby.buildkit.v1.StatusResponse).

    {"vertexes":[{"digest":"sha256:…","inputs":["sha256:…"],"name":"[2/3] RUN make",
      "started":"2026-01-02T03:04:05.123456789Z","completed":"…","cached":false,"error":"…"}],
     "statuses":[…],"logs":[{"vertex":"sha256:…","stream":1,"data":"<base64>",
      "timestamp":"…"}],"warnings":[…]}

Keys are matched without regard to case, as Go's decoder does (older BuildKit writes the
struct's field names, "Vertexes", "Digest"; newer ones lower-case tags). Vertexes and logs are
kept; statuses (progress counters) and warnings are checked to be lists and otherwise not
read. A line that is not such an object is refused with its number and what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from calendar import timegm
from typing import Any

from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from depot_api.gen.moby.buildkit.v1 import control_pb

# RFC 3339 with up to nanoseconds, as Go's time.Time marshals: Z or a numeric offset.
_TIME = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?([Zz]|[+-]\d\d:\d\d)"
)


class RawJsonError(ValueError):
    """One line of the log that cannot be read: its number (from 1) and why."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.problem = problem


def parse_line(text: str | bytes, line: int) -> control_pb.StatusResponse:
    """The status message one line holds; RawJsonError naming the line otherwise."""
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RawJsonError(line, f"is not JSON ({e})") from None
    try:
        return _status(document)
    except _Bad as e:
        raise RawJsonError(line, str(e)) from None


class _Bad(ValueError):
    pass


def _fields(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(f"{where} is not a JSON object")
    return {key.lower(): item for key, item in value.items()}


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Bad(f"{where} is not a list")
    return value


def _text(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Bad(f"{where} is not a string")
    return value


def _status(document: Any) -> control_pb.StatusResponse:
    fields = _fields(document, "the line")
    known = {"vertexes", "statuses", "logs", "warnings"}
    if not known & fields.keys():
        raise _Bad("is not a BuildKit SolveStatus (no vertexes, statuses, logs or warnings)")
    _list(fields.get("statuses"), "statuses")
    _list(fields.get("warnings"), "warnings")
    return control_pb.StatusResponse(
        vertexes=[
            _vertex(v, f"vertexes[{n}]")
            for n, v in enumerate(_list(fields.get("vertexes"), "vertexes"))
        ],
        logs=[_log(v, f"logs[{n}]") for n, v in enumerate(_list(fields.get("logs"), "logs"))],
    )


def _vertex(value: Any, where: str) -> control_pb.Vertex:
    v = _fields(value, where)
    cached = v.get("cached", False)
    if not isinstance(cached, bool):
        raise _Bad(f"{where}.cached is not true or false")
    digest = _text(v.get("digest"), f"{where}.digest")
    if not digest:
        raise _Bad(f"{where}.digest is missing")
    return control_pb.Vertex(
        digest=digest,
        inputs=[
            _text(d, f"{where}.inputs[{n}]")
            for n, d in enumerate(_list(v.get("inputs"), f"{where}.inputs"))
        ],
        name=_text(v.get("name"), f"{where}.name"),
        cached=cached,
        started=_time(v.get("started"), f"{where}.started"),
        completed=_time(v.get("completed"), f"{where}.completed"),
        error=_text(v.get("error"), f"{where}.error"),
    )


def _log(value: Any, where: str) -> control_pb.VertexLog:
    v = _fields(value, where)
    stream = v.get("stream", 0)
    if not isinstance(stream, int) or isinstance(stream, bool) or not 0 <= stream < 2**31:
        raise _Bad(f"{where}.stream is not a stream number")
    digest = _text(v.get("vertex"), f"{where}.vertex")
    if not digest:
        raise _Bad(f"{where}.vertex is missing")
    try:
        data = base64.b64decode(_text(v.get("data"), f"{where}.data"), validate=True)
    except binascii.Error:
        raise _Bad(f"{where}.data is not base64") from None
    return control_pb.VertexLog(
        vertex=digest,
        stream=stream,
        msg=data,
        timestamp=_time(v.get("timestamp"), f"{where}.timestamp"),
    )


def _time(value: Any, where: str) -> Timestamp | None:
    if value is None:
        return None
    text = _text(value, where)
    match = _TIME.fullmatch(text)
    if match is None:
        raise _Bad(f"{where} is not an RFC 3339 time: {text[:40]!r}")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        seconds = timegm(
            (int(year), int(month), int(day), int(hour), int(minute), int(second), 0, 0, 0)
        )
    except (ValueError, OverflowError):
        raise _Bad(f"{where} is not a valid time: {text[:40]!r}") from None
    if not (1 <= int(month) <= 12 and 1 <= int(day) <= 31 and int(hour) < 24):
        raise _Bad(f"{where} is not a valid time: {text[:40]!r}")
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    nanos = int((fraction or "0").ljust(9, "0"))
    return Timestamp(seconds=seconds, nanos=nanos)
