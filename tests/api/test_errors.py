from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from connectrpc.code import Code
from connectrpc.codec import proto_json_codec
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType
from connectrpc.request import Headers

from depot_api.api.errors import to_connect_error
from depot_api.domain import errors as domain
from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depot.build.v1.build_connect import BuildServiceClient
from depot_api.gen.depot.buildkit.v1 import buildkit_pb
from depot_api.gen.depot.buildkit.v1.buildkit_connect import BuildKitServiceClient
from depot_api.gen.depot.core.v1 import project_pb
from depot_api.gen.depot.core.v1.project_connect import ProjectServiceClient
from depot_api.store.errors import StoreUnavailable

from ..conftest import InProcessAPI, bearer, raw_post


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (domain.InvalidArgument("x"), Code.INVALID_ARGUMENT),
        (domain.Unauthenticated("x"), Code.UNAUTHENTICATED),
        (domain.PermissionDenied("x"), Code.PERMISSION_DENIED),
        (domain.NotFound("x"), Code.NOT_FOUND),
        (domain.AlreadyExists("x"), Code.ALREADY_EXISTS),
        (domain.FailedPrecondition("x"), Code.FAILED_PRECONDITION),
        (domain.Unavailable("x"), Code.UNAVAILABLE),
    ],
)
def test_domain_errors_keep_their_message(error: domain.DomainError, code: Code) -> None:
    mapped = to_connect_error(error, "svc/Method")
    assert (mapped.code, mapped.message) == (code, "x")


def test_an_invalid_field_is_named_by_the_proto_or_by_the_json_names() -> None:
    error = domain.InvalidField("cache_policy.keep_gb", "must not be negative, got -1")
    assert to_connect_error(error, "svc/Method").message == (
        "cache_policy.keep_gb must not be negative, got -1"
    )
    as_json = to_connect_error(
        error, "svc/Method", json_request=project_pb.CreateProjectRequest.desc()
    )
    assert (as_json.code, as_json.message) == (
        Code.INVALID_ARGUMENT,
        "cachePolicy.keepGb must not be negative, got -1",
    )


def test_a_lone_surrogate_in_a_domain_message_becomes_an_escape() -> None:
    mapped = to_connect_error(domain.NotFound("project \ud800x not found"), "svc/Method")
    assert mapped.message == "project \\ud800x not found"
    mapped.message.encode()  # connectrpc writes it as UTF-8


def test_connect_errors_pass_through() -> None:
    error = ConnectError(Code.RESOURCE_EXHAUSTED, "too big")
    assert to_connect_error(error, "svc/Method") is error


def test_store_outage_is_retryable_and_says_nothing_internal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    try:
        raise StoreUnavailable("OperationalError") from OSError("database is locked")
    except StoreUnavailable as e:
        outage = e
    with caplog.at_level(logging.WARNING, logger="depot_api.api"):
        mapped = to_connect_error(outage, "svc/Method")
    assert mapped.code == Code.UNAVAILABLE
    assert mapped.message == "the database is busy or unreachable; retry shortly"
    # The database's own error is for the operator: in the log, never in the answer.
    (record,) = caplog.records
    assert "svc/Method" in record.getMessage()
    assert "database is locked" in record.getMessage()


def test_bugs_become_a_generic_internal_error_and_a_logged_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    try:
        raise KeyError("row 42 of table secrets")
    except KeyError as e:
        with caplog.at_level(logging.ERROR, logger="depot_api.api"):
            mapped = to_connect_error(e, "depot.core.v1.ProjectService/GetProject")
    assert (mapped.code, mapped.message) == (Code.INTERNAL, "internal error")
    assert "row 42" not in mapped.message
    (record,) = caplog.records
    assert "GetProject" in record.getMessage()
    assert record.exc_info is not None


# ------------------------------------------------------------------ fields, as callers name them

# Each protocol and codec a client may speak, and whether its caller writes JSON.
CALLERS = {
    "connect-json": (ProtocolType.CONNECT, "json"),
    "connect-proto": (ProtocolType.CONNECT, "proto"),
    "grpc": (ProtocolType.GRPC, "proto"),
    "grpc-json": (ProtocolType.GRPC, "json"),
    "grpc-web": (ProtocolType.GRPC_WEB, "proto"),
    "grpc-web-json": (ProtocolType.GRPC_WEB, "json"),
}

Call = Callable[[ProjectServiceClient, BuildServiceClient, BuildKitServiceClient, Headers], Any]


async def _drain(stream: AsyncIterator[Any]) -> None:
    async for _ in stream:
        pass


# An RPC refused for one field, and that field's proto and JSON names.
FIELD_CASES: list[tuple[str, Call, str, str]] = [
    (
        "GetProject",
        lambda p, b, k, h: p.get_project(project_pb.GetProjectRequest(project_id="ABC"), headers=h),
        "project_id",
        "projectId",
    ),
    (
        "CreateProject",
        lambda p, b, k, h: p.create_project(
            project_pb.CreateProjectRequest(
                name="x", region_id="us-east-1", cache_policy=project_pb.CachePolicy(keep_gb=-1)
            ),
            headers=h,
        ),
        "cache_policy.keep_gb",
        "cachePolicy.keepGb",
    ),
    (
        "CreateProject in another region",
        lambda p, b, k, h: p.create_project(
            project_pb.CreateProjectRequest(name="x", region_id="mars-1"), headers=h
        ),
        "region_id",
        "regionId",
    ),
    (
        "ListProjects",
        lambda p, b, k, h: p.list_projects(
            project_pb.ListProjectsRequest(page_size=5000), headers=h
        ),
        "page_size",
        "pageSize",
    ),
    (
        "CreateProjectToken",
        lambda p, b, k, h: p.create_project_token(
            project_pb.CreateTokenRequest(project_id="0123456789", expires_in_seconds=-1),
            headers=h,
        ),
        "expires_in_seconds",
        "expiresInSeconds",
    ),
    (
        "ListBuilds",
        lambda p, b, k, h: b.list_builds(
            build_pb.ListBuildsRequest(project_id="0123456789", page_token="garbage"), headers=h
        ),
        "page_token",
        "pageToken",
    ),
    (
        "GetEndpoint (a stream)",
        lambda p, b, k, h: _drain(
            k.get_endpoint(buildkit_pb.GetEndpointRequest(build_id="nope"), headers=h)
        ),
        "build_id",
        "buildId",
    ),
]


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(
    ("call", "proto_name", "json_name"),
    [case[1:] for case in FIELD_CASES],
    ids=[case[0] for case in FIELD_CASES],
)
async def test_a_field_is_named_as_its_caller_writes_it(
    api: InProcessAPI, caller: str, call: Call, proto_name: str, json_name: str
) -> None:
    """JSON callers read JSON names (projectId); binary callers, whose generated code spells
    fields as the .proto file does, read proto names (project_id)."""
    protocol, codec = CALLERS[caller]
    options: dict[str, Any] = {
        "protocol": protocol,
        "codec": proto_json_codec() if codec == "json" else None,
        "http_client": api.http,
    }
    clients = (
        ProjectServiceClient("http://test", **options),
        BuildServiceClient("http://test", **options),
        BuildKitServiceClient("http://test", **options),
    )
    with pytest.raises(ConnectError) as raised:
        await call(*clients, Headers(bearer(api.org_token)))
    assert raised.value.code == Code.INVALID_ARGUMENT
    message = raised.value.message
    named, other = (json_name, proto_name) if codec == "json" else (proto_name, json_name)
    assert message.startswith(f"{named} "), message
    assert other not in message, message


async def test_the_seed_getendpoint_view_names_json_fields(api: InProcessAPI) -> None:
    status, _, body = await raw_post(
        api,
        "/depot.buildkit.v1.BuildKitService/GetEndpoint",
        b'{"buildId": "nope"}',
        {"content-type": "application/json", **bearer(api.org_token)},
    )
    assert status == 400
    assert json.loads(body)["message"].startswith('buildId "nope" is not a valid ID')


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ('{"cachePolicy": {"keepDays": "x"}}', "cachePolicy.keepDays"),
        (
            '{"cache_policy": {"keep_days": "x"}}',
            "cache_policy.keep_days",
        ),  # proto names are JSON too
        ('{"name": ["x"]}', "name"),
        ('{"regionId": 5}', "regionId"),
    ],
)
async def test_unreadable_json_names_the_field_as_written(
    api: InProcessAPI, body: str, path: str
) -> None:
    status, _, answer = await raw_post(
        api,
        "/depot.core.v1.ProjectService/CreateProject",
        body.encode(),
        {"content-type": "application/json", **bearer(api.org_token)},
    )
    assert status == 400
    message = json.loads(answer)["message"]
    assert message.startswith(f"unmarshal message: {path}: "), message
    assert "depot.core.v1" not in message, message


# ------------------------------------------------------------------ text beyond ASCII


@pytest.mark.parametrize("caller", CALLERS)
async def test_non_ascii_in_a_message_is_not_escaped(api: InProcessAPI, caller: str) -> None:
    protocol, codec = CALLERS[caller]
    projects = ProjectServiceClient(
        "http://test",
        protocol=protocol,
        codec=proto_json_codec() if codec == "json" else None,
        http_client=api.http,
    )
    with pytest.raises(ConnectError) as raised:
        await projects.get_project(
            project_pb.GetProjectRequest(project_id="café"), headers=bearer(api.org_token)
        )
    assert '"café" is not a valid ID' in raised.value.message, raised.value.message


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/depot.core.v1.ProjectService/GetProject", '{"projectId": "café"}'),
        ("/depot.buildkit.v1.BuildKitService/GetEndpoint", '{"buildId": "café"}'),  # seed view
    ],
)
async def test_json_error_bodies_are_utf8_not_escapes(
    api: InProcessAPI, path: str, body: str
) -> None:
    status, _, answer = await raw_post(
        api, path, body.encode(), {"content-type": "application/json", **bearer(api.org_token)}
    )
    assert status == 400
    assert '"café" is not a valid ID'.encode() in answer.replace(b'\\"', b'"'), answer


async def test_a_lone_surrogate_in_a_message_is_an_escape_not_a_crash(
    api: InProcessAPI,
) -> None:
    """JSON may carry "\\ud800", which UTF-8 cannot: connectrpc could not write a message
    quoting it, and the app raised instead of answering."""
    status, _, answer = await raw_post(
        api,
        "/depot.core.v1.ProjectService/CreateProject",
        b'{"name": "x", "regionId": "\\ud800"}',
        {"content-type": "application/json", **bearer(api.org_token)},
    )
    assert status == 400
    error = json.loads(answer)
    assert error["code"] == "invalid_argument"
    assert error["message"].startswith('regionId is "\\ud800"; expected one of: '), error
