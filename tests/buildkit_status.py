"""BuildKit's status messages recorded from real builds on the tests' Docker Engine, and
written as a `--progress=rawjson` log.

The Engine's build API (POST /build with version=2) runs the build on its embedded BuildKit and
streams, among its JSON lines, every moby.buildkit.v1.StatusResponse the solve produced, as
the base64 of its bytes (`{"id": "moby.buildkit.trace", "aux": "…"}`): the messages a client's
Status stream carries, byte for byte. `docker buildx build --progress=rawjson` writes the same
messages as Go's encoding/json gives a client.SolveStatus; no tool that writes it can be
installed here (see docs/decisions.md), so `rawjson_lines` writes that format from them.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import socket
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from depot_api.gen.moby.buildkit.v1 import control_pb

from .docker_engine import DockerEngine


@dataclass
class RecordedBuild:
    status_responses: list[bytes]
    # The Engine's last word: "" when the build succeeded, its error otherwise.
    error: str


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("docker", timeout=120)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(120)
        self.sock.connect(str(self._path))


def record_build(engine: DockerEngine, dockerfile: str) -> RecordedBuild:
    """Build the Dockerfile (no context but itself, no network) on the Engine's BuildKit and
    return the status messages it sent."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    connection = _UnixConnection(engine.socket)
    try:
        query = urlencode({"version": "2", "networkmode": "none", "rm": "1"})
        connection.request(
            "POST",
            f"/v1.41/build?{query}",
            body=archive.getvalue(),
            headers={"Content-Type": "application/x-tar"},
        )
        answer = connection.getresponse()
        body = answer.read().decode()
    finally:
        connection.close()
    assert answer.status == 200, f"the Engine refused the build ({answer.status}): {body[:500]}"
    messages: list[bytes] = []
    error = ""
    for line in body.splitlines():
        if not line.strip():
            continue
        document = json.loads(line)
        if document.get("id") == "moby.buildkit.trace":
            messages.append(base64.b64decode(document["aux"]))
        elif "error" in document:
            error = str(document["error"])
    return RecordedBuild(messages, error)


def _time(at: Timestamp | None) -> str | None:
    """A time as Go's time.Time marshals it (RFC 3339 with the nanoseconds, trailing zeros
    dropped)."""
    if at is None:
        return None
    from datetime import UTC, datetime

    whole = datetime.fromtimestamp(at.seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{at.nanos:09d}".rstrip("0")
    return f"{whole}{'.' + fraction if fraction else ''}Z"


def _omit_empty(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v not in (None, "", [], False, 0)}


def rawjson_lines(status_responses: list[bytes]) -> list[str]:
    """The messages as `--progress=rawjson` prints them: one client.SolveStatus per line."""
    lines = []
    for data in status_responses:
        m = control_pb.StatusResponse.from_binary(data)
        status = _omit_empty(
            {
                "vertexes": [
                    _omit_empty(
                        {
                            "digest": v.digest,
                            "inputs": list(v.inputs),
                            "name": v.name,
                            "started": _time(v.started),
                            "completed": _time(v.completed),
                            "cached": v.cached,
                            "error": v.error,
                        }
                    )
                    for v in m.vertexes
                ],
                "statuses": [
                    _omit_empty(
                        {
                            "id": s.ID,
                            "vertex": s.vertex,
                            "name": s.name,
                            "total": s.total,
                            "current": s.current,
                            "timestamp": _time(s.timestamp),
                            "started": _time(s.started),
                            "completed": _time(s.completed),
                        }
                    )
                    for s in m.statuses
                ],
                "logs": [
                    {
                        "vertex": log.vertex,
                        "stream": log.stream,
                        "data": base64.b64encode(bytes(log.msg)).decode(),
                        "timestamp": _time(log.timestamp),
                    }
                    for log in m.logs
                ],
            }
        )
        lines.append(json.dumps(status, separators=(",", ":")))
    return lines
