"""The `buf` binary (from the buf-bin wheel) against the real server process: `buf curl` with the
repository's protos over gRPC (h2c), gRPC-Web and Connect, and with server reflection."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest

from tests.helpers import ServerProcess

from .conftest import Org
from .wire import ID, PROTO_DIR, assert_timestamp, buf_binary

# Flags for `buf curl --protocol …`; the request and response Content-Types and the HTTP
# version that buf's verbose output must show.
PROTOCOLS = {
    "grpc": (
        ("--protocol", "grpc", "--http2-prior-knowledge"),
        "application/grpc",
        "application/grpc+proto",
        "2.0",
    ),
    "grpcweb": (
        ("--protocol", "grpcweb"),
        "application/grpc-web+proto",
        "application/grpc-web+proto",
        "1.1",
    ),
    "connect": (("--protocol", "connect"), "application/proto", "application/proto", "1.1"),
}
OUR_SERVICES = {
    "depot.core.v1.ProjectService",
    "depot.build.v1.BuildService",
    "depot.core.v1.BuildService",
    "depot.core.v1.OrganizationService",
    "depot.core.v1.UsageService",
    "depot.buildkit.v1.BuildKitService",
    "depotapi.machine.v1.MachineService",
    "depotapi.insights.v1.BuildInsightsService",
    "depot.cli.v1.BuildService",
    "depot.cli.v1.PushService",
    "depot.cli.v1beta1.ProjectsService",
    "depot.cli.v1beta1.LoginService",
}
REFLECTION_SERVICES = {
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}
# buf curl exits with 8 times the RPC's status code when the RPC fails.
EXIT = {
    "invalid_argument": 3 * 8,
    "not_found": 5 * 8,
    "permission_denied": 7 * 8,
    "failed_precondition": 9 * 8,
    "unauthenticated": 16 * 8,
}


@dataclass(frozen=True)
class BufResult:
    returncode: int
    stdout: str
    verbose: list[str]  # the "buf: " lines of -v
    other_stderr: str  # everything else on stderr: buf's error output

    def json(self) -> Any:
        assert self.returncode == 0, self
        return json.loads(self.stdout)

    def error(self) -> Any:
        assert self.returncode != 0, self
        assert self.stdout == "", self
        return json.loads(self.other_stderr)


def buf_curl(*args: str, token: str | None = None, data: Any = None) -> BufResult:
    command = [buf_binary(), "curl", "-v", *args]
    if token is not None:
        command += ["-H", f"Authorization: Bearer {token}"]
    if data is not None:
        command += ["-d", json.dumps(data)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    lines = result.stderr.splitlines()
    verbose = [line.removeprefix("buf: ") for line in lines if line.startswith("buf: ")]
    other = "\n".join(line for line in lines if not line.startswith("buf: "))
    assert "Traceback" not in result.stdout + result.stderr
    return BufResult(result.returncode, result.stdout, verbose, other)


class SchemaCaller:
    """Calls methods with `buf curl --schema <repo>/proto` over one protocol."""

    def __init__(self, server: ServerProcess, protocol: str, token: str | None) -> None:
        self.server = server
        self.protocol = protocol
        self.token = token
        self._flags, self._request_type, self._response_type, self._http = PROTOCOLS[protocol]

    def call(self, method: str, data: Any, *, token: str | bool | None = True) -> BufResult:
        as_token = self.token if token is True else (None if token is False else token)
        result = buf_curl(
            "--schema",
            str(PROTO_DIR),
            *self._flags,
            f"{self.server.url}/{method}",
            token=as_token,
            data=data,
        )
        # The wire really carried this protocol. (A Connect unary error is a JSON body.)
        response_type = self._response_type
        expected = [f"< (#1) Content-Type: {response_type}"]
        if result.returncode == 0:
            # A call refused before its body is read (a bad token) may be answered before buf
            # logs the request's headers; the response's headers tell the protocol anyway.
            expected.append(f"> (#1) Content-Type: {self._request_type}")
        elif self.protocol == "connect":
            expected = ["< (#1) Content-Type: application/json"]
        for line in expected:
            assert line in result.verbose, (line, result.verbose)
        assert any(line.startswith(f"< (#1) HTTP/{self._http} ") for line in result.verbose), (
            result.verbose
        )
        return result

    def ok(self, method: str, data: Any) -> Any:
        result = self.call(method, data)
        assert result.returncode == 0, result
        if self.protocol == "grpc":
            assert "< (#1) Grpc-Status: 0" in result.verbose, result
        return result.json()

    def error(self, method: str, data: Any, code: str, *, token: str | bool | None = True) -> str:
        result = self.call(method, data, token=token)
        assert result.returncode == EXIT[code], result
        if self.protocol == "grpc":
            # Trailers-only response: HTTP 200 with the status in grpc-status.
            assert "< (#1) HTTP/2.0 200 OK" in result.verbose, result
            assert f"< (#1) Grpc-Status: {EXIT[code] // 8}" in result.verbose, result
        error = result.error()
        assert error["code"] == code, error
        assert isinstance(error["message"], str), error
        assert error["message"], error
        return error["message"]


@pytest.fixture(params=sorted(PROTOCOLS))
def caller(request: pytest.FixtureRequest, server: ServerProcess, org: Org) -> SchemaCaller:
    return SchemaCaller(server, request.param, org.token)


def test_project_and_build_flow(caller: SchemaCaller, org: Org) -> None:
    created = caller.ok(
        "depot.core.v1.ProjectService/CreateProject",
        {"name": f"buf-{caller.protocol}", "regionId": "eu-central-1"},
    )
    project = created["project"]
    assert ID.fullmatch(project["projectId"]), project
    assert_timestamp(project["createdAt"])
    assert created == {
        "project": {
            "projectId": project["projectId"],
            "organizationId": org.id,
            "name": f"buf-{caller.protocol}",
            "regionId": "eu-central-1",
            "createdAt": project["createdAt"],
            "cachePolicy": {"keepDays": 14, "keepGb": 50},
        }
    }
    project_id = project["projectId"]

    build = caller.ok("depot.build.v1.BuildService/CreateBuild", {"projectId": project_id})
    assert set(build) == {"buildId", "buildToken"}, build
    build_id = build["buildId"]
    assert ID.fullmatch(build_id), build

    running = caller.ok("depot.core.v1.BuildService/GetBuild", {"buildId": build_id})
    assert running == {
        "build": {
            "buildId": build_id,
            "status": "STATUS_RUNNING",
            "createdAt": running["build"]["createdAt"],
        }
    }

    # FinishBuild as the real API shapes it, with the build's own token.
    finish = {"buildId": build_id, "success": {}}
    as_build = SchemaCaller(caller.server, caller.protocol, build["buildToken"])
    assert as_build.ok("depot.build.v1.BuildService/FinishBuild", finish) == {}

    finished = caller.ok("depot.core.v1.BuildService/GetBuild", {"buildId": build_id})["build"]
    assert finished["buildId"] == build_id
    assert finished["status"] == "STATUS_SUCCESS"
    assert finished["createdAt"] == running["build"]["createdAt"]
    created_at = assert_timestamp(finished["createdAt"])
    finished_at = assert_timestamp(finished["finishedAt"])
    assert created_at <= finished_at
    # The real field is an int32 of whole seconds, present (optional) once the build ended.
    assert finished["buildDurationSeconds"] == round((finished_at - created_at).total_seconds())
    assert set(finished) == {"buildId", "status", "createdAt", "finishedAt", "buildDurationSeconds"}

    # The seed's view of the same build, and the seed's error shape on a second build.
    seed_view = caller.ok("depot.build.v1.BuildService/GetBuild", {"buildId": build_id})
    assert seed_view["status"] == "BUILD_STATUS_FINISHED"
    assert seed_view["projectId"] == project_id
    failed_id = caller.ok("depot.build.v1.BuildService/CreateBuild", {"projectId": project_id})[
        "buildId"
    ]
    failure = {"buildId": failed_id, "result": {"error": {"error": "boom"}}}
    assert caller.ok("depot.build.v1.BuildService/FinishBuild", failure) == {}
    failed = caller.ok("depot.core.v1.BuildService/GetBuild", {"buildId": failed_id})["build"]
    assert failed["status"] == "STATUS_FAILED"

    listed = caller.ok("depot.core.v1.BuildService/ListBuilds", {"projectId": project_id})
    assert [b["buildId"] for b in listed["builds"]] == [failed_id, build_id]
    assert listed["builds"][1] == finished


def test_errors_carry_their_codes(caller: SchemaCaller) -> None:
    missing = "0000000000"
    message = caller.error(
        "depot.core.v1.ProjectService/GetProject", {"projectId": missing}, "not_found"
    )
    assert message == f"project {missing} not found"
    caller.error("depot.core.v1.BuildService/GetBuild", {"buildId": missing}, "not_found")
    message = caller.error(
        "depot.core.v1.ProjectService/GetProject", {"projectId": "NOT-AN-ID"}, "invalid_argument"
    )
    assert "project_id" in message
    message = caller.error(
        "depot.core.v1.ProjectService/ListProjects", {}, "unauthenticated", token=False
    )
    assert "missing token" in message

    project_id = caller.ok(
        "depot.core.v1.ProjectService/CreateProject",
        {"name": f"errors-{caller.protocol}", "regionId": "us-east-1"},
    )["project"]["projectId"]
    build = caller.ok("depot.build.v1.BuildService/CreateBuild", {"projectId": project_id})
    done = {"buildId": build["buildId"], "success": {}}
    assert caller.ok("depot.build.v1.BuildService/FinishBuild", done) == {}
    assert caller.ok("depot.build.v1.BuildService/FinishBuild", done) == {}
    caller.error(
        "depot.build.v1.BuildService/FinishBuild",
        {"buildId": build["buildId"], "error": {"error": "late"}},
        "failed_precondition",
    )
    caller.error(
        "depot.build.v1.BuildService/CreateBuild",
        {"projectId": project_id},
        "permission_denied",
        token=build["buildToken"],
    )


# Server reflection: no --schema.


def test_list_services_by_reflection(server: ServerProcess) -> None:
    result = buf_curl("--http2-prior-knowledge", "--list-services", server.url)
    assert result.returncode == 0, result
    assert set(result.stdout.split()) == OUR_SERVICES | REFLECTION_SERVICES
    assert any("ServerReflectionInfo" in line for line in result.verbose), result.verbose


def test_list_methods_by_reflection(server: ServerProcess) -> None:
    result = buf_curl("--http2-prior-knowledge", "--list-methods", server.url)
    assert result.returncode == 0, result
    methods = set(result.stdout.split())
    seed_methods = {
        f"depot.core.v1.ProjectService/{name}"
        for name in (
            "ListProjects",
            "CreateProject",
            "GetProject",
            "UpdateProject",
            "DeleteProject",
            "ResetProjectCache",
            "ListProjectTokens",
            "CreateProjectToken",
            "DeleteProjectToken",
        )
    } | {
        f"depot.build.v1.BuildService/{name}"
        for name in ("CreateBuild", "FinishBuild", "GetBuild", "ListBuilds")
    }
    assert seed_methods <= methods
    assert {
        "depot.core.v1.BuildService/GetBuild",
        "depot.core.v1.BuildService/ListBuilds",
        "depot.core.v1.OrganizationService/ListOrganizations",
    } <= methods


def test_grpc_call_by_reflection(server: ServerProcess, org: Org) -> None:
    grpc_flags = ("--http2-prior-knowledge", "--protocol", "grpc")
    result = buf_curl(
        *grpc_flags,
        f"{server.url}/depot.core.v1.ProjectService/CreateProject",
        token=org.token,
        data={"name": "reflected", "regionId": "us-east-1"},
    )
    # The schema came from the server, over gRPC.
    assert any(
        line.endswith("POST /grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
        for line in result.verbose
    ), result.verbose
    assert any(
        'Server reflection has resolved file "depot/core/v1/project.proto"' in line
        for line in result.verbose
    ), result.verbose
    project = result.json()["project"]
    assert (project["name"], project["regionId"], project["organizationId"]) == (
        "reflected",
        "us-east-1",
        org.id,
    )

    listed = buf_curl(
        *grpc_flags,
        f"{server.url}/depot.core.v1.ProjectService/ListProjects",
        token=org.token,
        data={},
    )
    assert listed.json() == {"projects": [project]}

    missing = buf_curl(
        *grpc_flags,
        f"{server.url}/depot.core.v1.ProjectService/GetProject",
        token=org.token,
        data={"projectId": "0000000000"},
    )
    assert missing.returncode == EXIT["not_found"], missing
    assert missing.error() == {"code": "not_found", "message": "project 0000000000 not found"}
