"""The official Depot Node SDK (@depot/sdk-node 1.4.0, installed by `make install`) against the
real server: every RPC the server implements, called the way Depot's own clients call them.

tests/e2e/node/sdk_e2e.mjs makes the calls and prints what it saw as one JSON document; the tests
here assert on that document. A second run goes through a recording TCP relay, to check on the
wire that the SDK spoke HTTP/2 with binary protobuf bodies.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from depot_api.gen.depot.core.v1 import project_pb
from tests.helpers import ServerProcess

from .conftest import Org
from .node_scripts import SDK_VERSION, run_node_script

KEEP_BYTES = 53687091200  # 50 GiB, sent by the script as a bigint
HARDWARE_4X4 = 2
HARDWARE_8X16 = 4

# depot.core.v1.Build.Status
RUNNING, FAILED, SUCCESS = 1, 2, 3
# Connect / gRPC codes
INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED = 3, 5, 6, 7
FAILED_PRECONDITION, UNAUTHENTICATED = 9, 16


def run_sdk_script(url: str, token: str) -> dict[str, Any]:
    """Run the SDK script against url with token; fail (never skip) when Node or the SDK is
    not installed."""
    observed: dict[str, Any] = run_node_script(
        "sdk_e2e.mjs", url, token, {}, sdk_version=SDK_VERSION
    )
    return observed


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def within(text: str | None, start: datetime, end: datetime) -> bool:
    """Whether an ISO time from the server falls in [start, end] (millisecond slack)."""
    assert text is not None
    slack = timedelta(milliseconds=1)
    return start - slack <= instant(text) <= end + slack


def connect_error(code: int) -> dict[str, Any]:
    return {"code": code, "name": "ConnectError"}


def error_of(observed: dict[str, Any]) -> dict[str, Any]:
    return {"code": observed["code"], "name": observed["name"]}


def test_sdk_drives_every_rpc(
    server: ServerProcess, org: Org, request: pytest.FixtureRequest
) -> None:
    start = datetime.now(UTC)
    seen = run_sdk_script(server.url, org.token)
    end = datetime.now(UTC)

    # OrganizationService.ListOrganizations: the org token sees exactly its organization.
    [organization] = seen["organizations"]
    assert organization["orgId"] == org.id
    assert organization["name"] == request.node.name
    assert instant(organization["createdAt"]) <= end

    # ProjectService.CreateProject, GetProject, ListProjects.
    assert seen["projectsBefore"] == []
    a, b, c = seen["createdA"], seen["createdB"], seen["createdC"]
    assert len({a["projectId"], b["projectId"], c["projectId"]}) == 3
    for project in (a, b, c):
        assert project["organizationId"] == org.id
        assert within(project["createdAt"], start, end)
    # keep_bytes alone: keep_gb is derived as ceil(53687091200 / 2^30) = 50, and the int64
    # comes back to the SDK as a bigint with its exact value.
    assert (a["name"], a["regionId"], a["hardware"]) == ("sdk-e2e-a", "us-east-1", 0)
    assert a["cachePolicy"] == {
        "keepBytes": str(KEEP_BYTES),
        "keepBytesType": "bigint",
        "keepDays": 7,
        "keepGb": 50,
    }
    # keep_gb and hardware given: both echoed; keep_bytes was not given, so it stays unset.
    assert (b["name"], b["regionId"], b["hardware"]) == ("sdk-e2e-b", "eu-central-1", HARDWARE_8X16)
    assert b["cachePolicy"] == {
        "keepBytes": None,
        "keepBytesType": "undefined",
        "keepDays": 3,
        "keepGb": 20,
    }
    # No cache policy: the defaults, 50 GB for 14 days.
    assert (c["name"], c["regionId"], c["hardware"]) == ("sdk-e2e-c", "us-east-1", 0)
    assert c["cachePolicy"] == {
        "keepBytes": None,
        "keepBytesType": "undefined",
        "keepDays": 14,
        "keepGb": 50,
    }
    assert seen["getA"] == a
    assert seen["listAfterCreate"] == [a, b, c]  # oldest first

    # ProjectService.UpdateProject changes every field given, keeps ID, org and creation time.
    expected_update = {
        **a,
        "name": "sdk-e2e-a-renamed",
        "regionId": "eu-central-1",
        "cachePolicy": {
            "keepBytes": None,
            "keepBytesType": "undefined",
            "keepDays": 30,
            "keepGb": 100,
        },
        "hardware": HARDWARE_4X4,
    }
    assert seen["updatedA"] == expected_update
    assert seen["getAAfterUpdate"] == expected_update

    # ProjectService.ResetProject answers an empty message.
    assert seen["resetA"] == []

    # ProjectService.ListTokens, CreateToken, UpdateToken, DeleteToken.
    tokens = seen["tokens"]
    token_id = tokens["created"]["tokenId"]
    assert tokens["listBefore"] == []
    assert tokens["created"]["secretPrefix"] == "dpp_"
    assert tokens["listAfterCreate"] == [{"tokenId": token_id, "description": "sdk ci"}]
    assert tokens["updateResponse"] == []
    assert tokens["listAfterUpdate"] == [{"tokenId": token_id, "description": "sdk ci (renamed)"}]
    assert tokens["deleteResponse"] == []
    assert tokens["listAfterDelete"] == []
    # While it lived, the project token built in its own project, and nowhere else.
    project_token_build = tokens["projectTokenBuild"]["buildId"]
    assert tokens["projectTokenBuild"]["buildTokenPrefix"] == "dpb_"
    assert tokens["projectTokenGetBuild"]["buildId"] == project_token_build
    assert tokens["projectTokenGetBuild"]["status"] == SUCCESS
    assert error_of(tokens["projectTokenOtherProject"]) == connect_error(PERMISSION_DENIED)
    assert error_of(tokens["projectTokenListProjects"]) == connect_error(PERMISSION_DENIED)
    assert error_of(tokens["deletedTokenUse"]) == connect_error(UNAUTHENTICATED)

    # build.v1 CreateBuild and FinishBuild; core.v1 GetBuild.
    ok, failed = seen["builds"]["ok"], seen["builds"]["failed"]
    assert ok["buildTokenPrefix"] == "dpb_"
    assert ok["running"]["buildId"] == ok["buildId"]
    assert ok["running"]["status"] == RUNNING
    assert ok["running"]["finishedAt"] is None
    assert ok["running"]["buildDurationSeconds"] is None
    assert within(ok["running"]["createdAt"], start, end)
    # Finished by its own build token, with the success variant.
    assert ok["finishResponse"] == []
    assert ok["after"]["status"] == SUCCESS
    assert ok["after"]["createdAt"] == ok["running"]["createdAt"]
    assert within(ok["after"]["finishedAt"], instant(ok["after"]["createdAt"]), end)
    # No machine was acquired: the duration runs from creation to the end, in whole seconds.
    finished_after = instant(ok["after"]["finishedAt"]) - instant(ok["after"]["createdAt"])
    assert ok["after"]["startedAt"] is None
    assert abs(ok["after"]["buildDurationSeconds"] - finished_after.total_seconds()) <= 1
    # The build token may read its own build.
    assert ok["seenByBuildToken"] == ok["after"]
    # Finished by the org token, with the error variant.
    assert failed["after"]["buildId"] == failed["buildId"]
    assert failed["after"]["status"] == FAILED
    assert within(failed["after"]["finishedAt"], start, end)

    # core.v1 ListBuilds without paging: project A's three builds, newest first.
    assert [(x["buildId"], x["status"]) for x in seen["builds"]["listA"]] == [
        (failed["buildId"], FAILED),
        (ok["buildId"], SUCCESS),
        (project_token_build, SUCCESS),
    ]
    assert seen["builds"]["listA"][:2] == [failed["after"], ok["after"]]

    # core.v1 ListBuilds paging: 7 builds in pages of 3, newest first, each exactly once.
    paging = seen["paging"]
    created = paging["createdIds"]
    assert len(set(created)) == 7
    pages = paging["pages"]
    assert [len(p["buildIds"]) for p in pages] == [3, 3, 1]
    assert [bool(p["nextPageToken"]) for p in pages] == [True, True, False]
    assert pages[-1]["nextPageToken"] == ""
    assert [i for p in pages for i in p["buildIds"]] == created[::-1]
    assert [s for p in pages for s in p["statuses"]] == [RUNNING] * 7
    assert paging["unpaged"] == {"buildIds": created[::-1], "nextPageToken": ""}

    # Errors, as ConnectError with the right code.
    errors = seen["errors"]
    assert error_of(errors["wrongToken"]) == connect_error(UNAUTHENTICATED)
    assert error_of(errors["noToken"]) == connect_error(UNAUTHENTICATED)
    assert error_of(errors["missingProject"]) == connect_error(NOT_FOUND)
    assert "zzzzzzzzzz" in errors["missingProject"]["message"]
    assert error_of(errors["missingProjectBuild"]) == connect_error(NOT_FOUND)
    assert error_of(errors["refinishDifferently"]) == connect_error(FAILED_PRECONDITION)
    assert error_of(errors["buildTokenOtherBuild"]) == connect_error(PERMISSION_DENIED)
    assert error_of(errors["invalidRegion"]) == connect_error(INVALID_ARGUMENT)
    assert "mars-north-1" in errors["invalidRegion"]["message"]
    assert error_of(errors["duplicateName"]) == connect_error(ALREADY_EXISTS)

    # ProjectService.DeleteProject: gone from the list, and neither it nor its builds readable.
    assert seen["deleteA"] == []
    assert seen["afterDelete"]["projectIds"] == [b["projectId"], c["projectId"]]
    assert error_of(seen["afterDelete"]["getProject"]) == connect_error(NOT_FOUND)
    assert error_of(seen["afterDelete"]["getBuild"]) == connect_error(NOT_FOUND)
    assert error_of(seen["afterDelete"]["listBuilds"]) == connect_error(NOT_FOUND)


# --- The wire, seen through a recording relay --------------------------------------------------

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_DATA, FRAME_HEADERS, FRAME_SETTINGS = 0x0, 0x1, 0x4
FLAG_PADDED = 0x8
GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class Connection:
    """The bytes that crossed one relayed TCP connection, in each direction."""

    from_client: bytearray = field(default_factory=bytearray)
    from_server: bytearray = field(default_factory=bytearray)


class RecordingRelay:
    """Forwards TCP connections from 127.0.0.1:<port> to the server, keeping every byte."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self.connections: list[Connection] = []
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> RecordingRelay:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._acceptor.join(timeout=10)
        # The client has exited, so each pump sees end-of-stream soon.
        for thread in self._threads:
            thread.join(timeout=10)
        for sock in [*self._sockets, self._listener]:
            sock.close()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue  # poll the stop flag
            client.settimeout(None)
            upstream = socket.create_connection(self._upstream, timeout=10)
            upstream.settimeout(None)
            connection = Connection()
            self.connections.append(connection)
            self._sockets += [client, upstream]
            for src, dst, record in (
                (client, upstream, connection.from_client),
                (upstream, client, connection.from_server),
            ):
                pump = threading.Thread(target=_pump, args=(src, dst, record), daemon=True)
                self._threads.append(pump)
                pump.start()


def _pump(src: socket.socket, dst: socket.socket, record: bytearray) -> None:
    try:
        while data := src.recv(65536):
            record += data
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        # A reset while a peer hangs up ends the relay of this direction, like a closed socket
        # would; what was recorded so far is still checked by the test.
        return


@dataclass
class Frame:
    type: int
    flags: int
    stream: int
    payload: bytes


def http2_frames(data: bytes) -> list[Frame]:
    frames: list[Frame] = []
    at = 0
    while at < len(data):
        assert len(data) - at >= 9, f"truncated HTTP/2 frame header at byte {at}"
        length = int.from_bytes(data[at : at + 3], "big")
        stream = int.from_bytes(data[at + 5 : at + 9], "big") & 0x7FFFFFFF
        payload = bytes(data[at + 9 : at + 9 + length])
        assert len(payload) == length, f"truncated HTTP/2 frame at byte {at}"
        frames.append(Frame(data[at + 3], data[at + 4], stream, payload))
        at += 9 + length
    return frames


def stream_bodies(frames: list[Frame]) -> dict[int, bytes]:
    """The concatenated DATA of each stream (padding removed)."""
    bodies: dict[int, bytes] = {}
    for frame in frames:
        if frame.type != FRAME_DATA:
            continue
        payload = frame.payload
        if frame.flags & FLAG_PADDED:
            pad = payload[0]
            payload = payload[1 : len(payload) - pad]
        bodies[frame.stream] = bodies.get(frame.stream, b"") + payload
    return bodies


def uncompressed(body: bytes) -> bytes:
    """A response body without its content encoding. The SDK accepts gzip and br; this server
    answers gzip (Content-Encoding is inside HPACK, so the gzip magic number tells)."""
    return gzip.decompress(body) if body.startswith(GZIP_MAGIC) else body


def test_sdk_speaks_http2_with_binary_protobuf(server: ServerProcess, org: Org) -> None:
    with RecordingRelay(server.port) as relay:
        seen = run_sdk_script(f"http://127.0.0.1:{relay.port}", org.token)

    assert relay.connections, "the SDK never connected"
    requests: dict[tuple[int, int], bytes] = {}
    responses: dict[tuple[int, int], bytes] = {}
    request_streams = 0
    for n, connection in enumerate(relay.connections):
        # HTTP/2 with prior knowledge (h2c): the client preface, then frames; no HTTP/1.1.
        client = bytes(connection.from_client)
        assert client.startswith(HTTP2_PREFACE), client[:64]
        client_frames = http2_frames(client[len(HTTP2_PREFACE) :])
        server_frames = http2_frames(bytes(connection.from_server))
        assert server_frames[0].type == FRAME_SETTINGS  # the server's connection preface
        request_streams += len({f.stream for f in client_frames if f.type == FRAME_HEADERS})
        requests |= {(n, s): body for s, body in stream_bodies(client_frames).items()}
        responses |= {
            (n, s): uncompressed(body) for s, body in stream_bodies(server_frames).items()
        }

    # Every RPC the script made through the SDK was one HTTP/2 stream.
    assert seen["rpcCount"] == 57
    assert request_streams == seen["rpcCount"]

    # Request bodies are binary protobuf: the first CreateProject, byte for byte, is the
    # canonical encoding (name=1, region_id=3, cache_policy=4{keep_bytes=1, keep_days=2}).
    expected = project_pb.CreateProjectRequest(
        name="sdk-e2e-a",
        region_id="us-east-1",
        cache_policy=project_pb.CachePolicy(keep_bytes=KEEP_BYTES, keep_days=7),
    ).to_binary()
    [create_a] = [key for key, body in requests.items() if body == expected]
    assert not [body for body in requests.values() if body.startswith(b"{")], "a JSON request"

    # Its answer on the same stream is a bare binary CreateProjectResponse (Connect unary: no
    # gRPC length prefix), carrying the project the SDK reported.
    response = project_pb.CreateProjectResponse.from_binary(responses[create_a])
    assert response.project is not None
    assert response.project.project_id == seen["createdA"]["projectId"]
    assert response.project.name == "sdk-e2e-a"
    assert response.project.cache_policy is not None
    assert response.project.cache_policy.keep_bytes == KEEP_BYTES
    assert response.project.cache_policy.keep_gb == 50

    # Errors travel as Connect unary error bodies (JSON), one per expected failure.
    error_codes = sorted(
        json.loads(body)["code"] for body in responses.values() if body.startswith(b"{")
    )
    assert error_codes == sorted(
        ["permission_denied"] * 3
        + ["unauthenticated"] * 3
        + ["not_found"] * 5
        + ["failed_precondition", "invalid_argument", "already_exists"]
    )
