"""Requests that reach no handler are refused with a body that says what is expected.

The requests are raw ASGI messages, as curl would send them (tests/api/wire.py): nothing
between the test and the app adds a header or a body.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from depot_api.api.refusals import Catalog
from depot_api.gen.depot.core.v1 import project_pb

from ..conftest import InProcessAPI, bearer
from .wire import Answer, Request, call

LIST_PROJECTS = "/depot.core.v1.ProjectService/ListProjects"
REPORT_STATUS_STREAM = "/depot.cli.v1.BuildService/ReportStatusStream"
GET_ENDPOINT = "/depot.buildkit.v1.BuildKitService/GetEndpoint"


@pytest.fixture
def database_url(sqlite_database_url: str) -> str:
    return sqlite_database_url  # nothing here is stored


async def send(
    api: InProcessAPI,
    path: str,
    *,
    content_type: str | None = None,
    method: str = "POST",
    body: bytes = b"{}",
    http_version: str = "1.1",
) -> Answer:
    headers = [(k.encode(), v.encode()) for k, v in bearer(api.org_token).items()]
    if content_type is not None:
        headers.append((b"content-type", content_type.encode()))
    request = Request(path, headers, [body], method=method, http_version=http_version)
    return await call(api.app, request)


def connect_error(answer: Answer) -> Any:
    """The answer's body as a Connect error, which the protocol wants in JSON."""
    assert answer.headers.get("content-type") == "application/json", answer
    error = json.loads(answer.body)
    assert set(error) == {"code", "message"}, error
    return error


async def test_a_form_post_is_415_saying_what_to_send(api: InProcessAPI) -> None:
    """`curl -d '{}'` sends application/x-www-form-urlencoded."""
    answer = await send(api, LIST_PROJECTS, content_type="application/x-www-form-urlencoded")
    assert answer.status == 415
    assert answer.headers["accept-post"] == "application/json, application/proto"
    error = connect_error(answer)
    assert error["code"] == "unimplemented"
    message = error["message"]
    assert message.startswith("depot.core.v1.ProjectService/ListProjects takes Content-Type ")
    for word in ("application/json", "application/proto", "gRPC", "gRPC-Web"):
        assert word in message, message
    assert "not application/x-www-form-urlencoded" in message


async def test_no_content_type_is_415_saying_so(api: InProcessAPI) -> None:
    answer = await send(api, LIST_PROJECTS)
    assert answer.status == 415
    assert "the request has none" in connect_error(answer)["message"]


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        (REPORT_STATUS_STREAM, "client-streaming"),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "bidi-streaming"),
    ],
)
async def test_a_stream_with_a_unary_content_type_is_415_naming_the_stream_types(
    api: InProcessAPI, path: str, kind: str
) -> None:
    answer = await send(api, path, content_type="application/json")
    assert answer.status == 415
    message = connect_error(answer)["message"]
    assert f"is {kind}" in message, message
    assert "application/connect+json or application/connect+proto" in message
    assert "not application/json" in message


async def test_getendpoint_names_its_plain_json_view_too(api: InProcessAPI) -> None:
    answer = await send(api, GET_ENDPOINT, content_type="text/plain")
    assert answer.status == 415
    message = connect_error(answer)["message"]
    assert "application/connect+json" in message
    assert "or application/json for one JSON answer" in message


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_another_http_method_is_405_naming_post(api: InProcessAPI, method: str) -> None:
    answer = await send(api, LIST_PROJECTS, content_type="application/json", method=method)
    assert answer.status == 405
    assert answer.headers["allow"] == "POST"
    error = connect_error(answer)
    assert error == {
        "code": "unimplemented",
        "message": f"depot.core.v1.ProjectService/ListProjects is called with POST, not {method}",
    }


async def test_an_unknown_method_of_a_known_service_is_404_listing_its_methods(
    api: InProcessAPI,
) -> None:
    path = "/depot.core.v1.ProjectService/ListProject"
    answer = await send(api, path, content_type="application/json")
    assert answer.status == 404
    error = connect_error(answer)
    assert error["code"] == "unimplemented"
    message = error["message"]
    assert message.startswith(f"{path}: depot.core.v1.ProjectService has no method")
    methods = [m.name for m in project_pb.desc().services[0].methods]
    assert message.endswith(", ".join(methods)), message


async def test_an_unknown_service_is_404_naming_it(api: InProcessAPI) -> None:
    path = "/depot.core.v1.ProjectServic/ListProjects"
    answer = await send(api, path, content_type="application/json")
    assert answer.status == 404
    error = connect_error(answer)
    assert error["code"] == "unimplemented"
    assert error["message"].startswith(f"{path}: no service depot.core.v1.ProjectServic here")
    assert "depot.core.v1.ProjectService," in error["message"]


@pytest.mark.parametrize(
    "content_type", ["application/grpc", "application/grpc-web+proto", "application/connect+json"]
)
async def test_other_protocols_keep_the_status_of_a_refusal(
    api: InProcessAPI, content_type: str
) -> None:
    """gRPC and gRPC-Web clients read a refusal from the HTTP status (their protocols say
    so); it stays what it was, and no gRPC status pretends the call ran."""
    unknown = await send(
        api, "/depot.core.v1.ProjectService/Nope", content_type=content_type, http_version="2"
    )
    wrong_method = await send(
        api, LIST_PROJECTS, content_type=content_type, method="GET", http_version="2"
    )
    for answer, status in ((unknown, 404), (wrong_method, 405)):
        assert answer.status == status, answer
        assert "grpc-status" not in answer.headers, answer
        assert connect_error(answer)["code"] == "unimplemented"


def test_the_catalog_knows_a_service_added_by_name() -> None:
    catalog = Catalog([project_pb.desc()])
    catalog.add_service("x.v1.Reflection", ["Info"], "bidi_streaming")
    assert catalog.not_found("/x.v1.Reflection/Nope").endswith("its methods: Info")
    assert "is bidi-streaming" in catalog.unsupported_media_type("/x.v1.Reflection/Info", "")
    assert catalog.is_rpc_path("/x.v1.Reflection/Info")
    assert not catalog.is_rpc_path("/healthz")
    assert not catalog.is_rpc_path("/a/b/c")
