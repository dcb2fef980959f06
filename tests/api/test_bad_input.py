"""Bad input gets a clear 4xx-class Connect error and changes nothing that is stored."""

from __future__ import annotations

import json

import pytest

from ..conftest import InProcessAPI, bearer, raw_post

P = "/depot.core.v1.ProjectService/"
B = "/depot.build.v1.BuildService/"
CB = "/depot.core.v1.BuildService/"
JSON = {"content-type": "application/json"}


async def post_json(api: InProcessAPI, path: str, body: str | bytes) -> tuple[int, dict[str, str]]:
    data = body.encode() if isinstance(body, str) else body
    status, _, content = await raw_post(api, path, data, {**JSON, **bearer(api.org_token)})
    assert b"Traceback" not in content
    return status, json.loads(content) if content else {}


async def make_project(api: InProcessAPI, name: str = "app") -> dict[str, object]:
    status, body = await post_json(
        api, P + "CreateProject", json.dumps({"name": name, "regionId": "us-east-1"})
    )
    assert status == 200, body
    return body["project"]  # type: ignore[return-value]


def assert_invalid(status: int, body: dict[str, str], *words: str) -> None:
    assert (status, body["code"]) == (400, "invalid_argument"), body
    for word in words:
        assert word in body["message"], body["message"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("{", ("unmarshal",)),
        ("", ("unmarshal",)),
        ("[]", ("CreateProjectRequest",)),
        ('{"name": 5, "regionId": "us-east-1"}', ("name",)),
        ('{"name": "x", "regionId": "us-east-1", "hardware": "HARDWARE_8x8"}', ("Hardware",)),
        ('{"name": "x", "regionId": "us-east-1", "hardware": 99}', ("hardware",)),
        (
            '{"name": "x", "regionId": "us-east-1", '
            '"cachePolicy": {"keepBytes": "9223372036854775808"}}',
            ("cachePolicy.keepBytes",),
        ),
        (
            '{"name": "x", "regionId": "us-east-1", "cachePolicy": {"keepDays": 1.5}}',
            ("cachePolicy.keepDays",),
        ),
        (
            '{"name": "x", "regionId": "us-east-1", "cachePolicy": {"keepGb": -1}}',
            ("cachePolicy.keepGb",),
        ),
        (
            '{"name": "x", "regionId": "us-east-1", "cachePolicy": {"keepBytes": "-5"}}',
            ("cachePolicy.keepBytes",),
        ),
        (
            '{"name": "x", "regionId": "us-east-1", "cachePolicy": {"keepDays": 99999}}',
            ("cachePolicy.keepDays",),
        ),
        ('{"name": "", "regionId": "us-east-1"}', ("name", "required")),
        ('{"name": "   ", "regionId": "us-east-1"}', ("name",)),
        ('{"name": " padded", "regionId": "us-east-1"}', ("name", "white space")),
        (json.dumps({"name": "x" * 129, "regionId": "us-east-1"}), ("name", "too long")),
        (json.dumps({"name": "a\nb", "regionId": "us-east-1"}), ("name", "control")),
        ('{"name": "x"}', ("regionId", "us-east-1")),
        ('{"name": "x", "regionId": "mars-1"}', ("regionId", "mars-1")),
        ('{"name": "x", "regionId": "us-east-1", "organizationId": "NOPE"}', ("organizationId",)),
        (b'{"name": "\xff", "regionId": "us-east-1"}', ("unmarshal",)),
        ("[" * 5000 + "]" * 5000, ("unmarshal",)),
    ],
)
async def test_create_project_rejects(
    api: InProcessAPI, body: str | bytes, words: tuple[str, ...]
) -> None:
    status, response = await post_json(api, P + "CreateProject", body)
    assert_invalid(status, response, *words)
    status, listed = await post_json(api, P + "ListProjects", "{}")
    assert (status, listed) == (200, {})  # nothing was created


async def test_unknown_keys_are_ignored(api: InProcessAPI) -> None:
    status, body = await post_json(
        api, P + "CreateProject", '{"name": "x", "regionId": "us-east-1", "color": "blue"}'
    )
    assert status == 200, body
    assert body["project"]["name"] == "x"


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        (P + "GetProject", '{"projectId": "ABC"}', ("projectId", "ABC")),
        (P + "GetProject", "{}", ("projectId", "required")),
        (P + "DeleteProject", '{"projectId": "../../etc"}', ("projectId",)),
        (P + "ListProjects", '{"pageSize": -1}', ("pageSize",)),
        (P + "ListProjects", '{"pageSize": 1001}', ("pageSize", "1000")),
        (P + "ListProjects", '{"pageToken": "garbage"}', ("pageToken",)),
        (P + "UpdateToken", '{"tokenId": "x"}', ("tokenId",)),
        (P + "DeleteToken", "{}", ("tokenId", "required")),
        (B + "CreateBuild", '{"projectId": "0123456789ab"}', ("projectId",)),
        (B + "GetBuild", '{"buildId": "not an id"}', ("buildId",)),
        (B + "FinishBuild", '{"buildId": "0123456789"}', ("outcome",)),
        (B + "ListBuilds", '{"projectId": "0123456789", "pageSize": 5000}', ("pageSize",)),
        (
            CB + "ListBuilds",
            '{"projectId": "0123456789", "pageToken": "cDE6eDp5"}',
            ("pageToken",),
        ),
        (CB + "GetBuild", '{"buildId": ""}', ("buildId",)),
    ],
)
async def test_rejected_with_field_named(
    api: InProcessAPI, path: str, body: str, words: tuple[str, ...]
) -> None:
    status, response = await post_json(api, path, body)
    assert_invalid(status, response, *words)


async def test_finish_with_both_shapes_is_rejected(api: InProcessAPI) -> None:
    project = await make_project(api)
    status, build = await post_json(
        api, B + "CreateBuild", json.dumps({"projectId": project["projectId"]})
    )
    assert status == 200
    body = {"buildId": build["buildId"], "success": {}, "result": {"error": {"error": "x"}}}
    status, response = await post_json(api, B + "FinishBuild", json.dumps(body))
    assert_invalid(status, response, "not both")
    status, seen = await post_json(api, B + "GetBuild", json.dumps({"buildId": build["buildId"]}))
    assert seen["status"] == "BUILD_STATUS_RUNNING"  # unchanged


async def test_rejected_update_changes_nothing(api: InProcessAPI) -> None:
    project = await make_project(api)
    pid = project["projectId"]
    status, response = await post_json(
        api, P + "UpdateProject", json.dumps({"projectId": pid, "name": "new", "regionId": "x"})
    )
    assert_invalid(status, response, "regionId")
    status, after = await post_json(api, P + "GetProject", json.dumps({"projectId": pid}))
    assert after["project"] == project


async def test_duplicate_name_is_already_exists(api: InProcessAPI) -> None:
    await make_project(api, "same")
    status, response = await post_json(
        api, P + "CreateProject", '{"name": "same", "regionId": "us-east-1"}'
    )
    assert (status, response["code"]) == (409, "already_exists")
    assert '"same"' in response["message"]


async def test_renaming_onto_a_taken_name_is_already_exists(api: InProcessAPI) -> None:
    await make_project(api, "one")
    two = await make_project(api, "two")
    status, response = await post_json(
        api, P + "UpdateProject", json.dumps({"projectId": two["projectId"], "name": "one"})
    )
    assert (status, response["code"]) == (409, "already_exists")
    status, after = await post_json(
        api, P + "GetProject", json.dumps({"projectId": two["projectId"]})
    )
    assert after["project"]["name"] == "two"


async def test_invalid_protobuf_is_invalid_argument(api: InProcessAPI) -> None:
    status, _, content = await raw_post(
        api,
        P + "CreateProject",
        b"\xff\xff\xff\xff",
        {"content-type": "application/proto", **bearer(api.org_token)},
    )
    assert status == 400
    assert json.loads(content)["code"] == "invalid_argument"


async def test_unknown_hardware_number_in_protobuf(api: InProcessAPI) -> None:
    # name="x" (field 1), region_id="us-east-1" (field 3), hardware=99 (field 5)
    message = b"\x0a\x01x" + b"\x1a\x09us-east-1" + b"\x28\x63"
    status, _, content = await raw_post(
        api,
        P + "CreateProject",
        message,
        {"content-type": "application/proto", **bearer(api.org_token)},
    )
    assert status == 400
    assert "hardware 99" in json.loads(content)["message"]


async def test_wrong_content_type_is_415(api: InProcessAPI) -> None:
    status, headers, _ = await raw_post(
        api, P + "ListProjects", b"{}", {"content-type": "text/plain", **bearer(api.org_token)}
    )
    assert status == 415
    assert "application/json" in headers["accept-post"]


async def test_unknown_method_is_404(api: InProcessAPI) -> None:
    status, _, _ = await raw_post(api, P + "Nope", b"{}", {**JSON, **bearer(api.org_token)})
    assert status == 404


async def test_oversized_message_is_rejected(api: InProcessAPI) -> None:
    body = json.dumps({"name": "x" * (api.settings.max_message_bytes + 1), "regionId": "us-east-1"})
    status, _, content = await raw_post(
        api, P + "CreateProject", body.encode(), {**JSON, **bearer(api.org_token)}
    )
    assert status == 429
    assert json.loads(content)["code"] == "resource_exhausted"
