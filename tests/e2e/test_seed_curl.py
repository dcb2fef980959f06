"""The seed document (shared/seed/depot-build-api.md), to the letter, with the real curl binary
against the real server process: every operation but GetEndpoint, with the seed's paths,
camelCase JSON request shapes and response shapes, over HTTP/1.1 and over h2c."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.helpers import ServerProcess

from .conftest import Org
from .wire import ID, CurlResult, assert_timestamp, curl, curl_post

PROJECTS = "/depot.core.v1.ProjectService"
BUILDS = "/depot.build.v1.BuildService"

# The seed's CreateProjectRequest example, verbatim.
SEED_CREATE_PROJECT = {
    "name": "my-app",
    "regionId": "us-east-1",
    "cachePolicy": {"keepBytes": "53687091200", "keepDays": 14},
}

# Property names of the seed's response schemas.
SEED_PROJECT_KEYS = {
    "projectId",
    "organizationId",
    "name",
    "regionId",
    "createdAt",
    "cachePolicy",
}
SEED_BUILD_KEYS = {
    "buildId",
    "projectId",
    "status",
    "createdAt",
    "buildDurationSeconds",
    "savedDurationSeconds",
    "cachedSteps",
    "totalSteps",
}
SEED_BUILD_STATUSES = {
    "BUILD_STATUS_UNSPECIFIED",
    "BUILD_STATUS_RUNNING",
    "BUILD_STATUS_FINISHED",
    "BUILD_STATUS_FAILED",
    "BUILD_STATUS_CANCELED",
}
# What this server adds beyond the seed (the real API's fields; see the protos).
EXTRA_BUILD_KEYS = {"startedAt", "finishedAt", "insights"}

# --flag for curl, and the %{http_version} curl must report for it.
HTTP_VERSIONS = {
    "http1.1": ("--http1.1", "1.1"),
    "h2c": ("--http2-prior-knowledge", "2"),
}


class SeedClient:
    """POSTs seed-shaped JSON with curl, as one caller, over one HTTP version."""

    def __init__(self, server: ServerProcess, http: str, token: str | None) -> None:
        self.server = server
        self.http = http
        self.token = token
        self._flag, self._version = HTTP_VERSIONS[http]

    def as_token(self, token: str | None) -> SeedClient:
        return SeedClient(self.server, self.http, token)

    def call(self, path: str, body: dict[str, Any] | str) -> CurlResult:
        text = body if isinstance(body, str) else json.dumps(body)
        result = curl_post(f"{self.server.url}{path}", text, token=self.token, flags=[self._flag])
        assert result.http_version == self._version, result
        assert result.scheme == "http", result
        return result

    def ok(self, path: str, body: dict[str, Any] | str) -> Any:
        result = self.call(path, body)
        assert result.status == 200, result
        assert result.content_type == "application/json", result
        return result.json()

    def error(self, path: str, body: dict[str, Any] | str, status: int, code: str) -> str:
        """Assert a Connect error with this HTTP status and code; return its message."""
        result = self.call(path, body)
        assert result.status == status, result
        assert result.content_type == "application/json", result
        error = result.json()
        assert set(error) == {"code", "message"}, error
        assert error["code"] == code, error
        assert isinstance(error["message"], str), error
        assert error["message"], error
        return error["message"]


@pytest.fixture(params=sorted(HTTP_VERSIONS))
def seed(request: pytest.FixtureRequest, server: ServerProcess, org: Org) -> SeedClient:
    return SeedClient(server, request.param, org.token)


def create_project(seed: SeedClient, name: str, region: str = "eu-central-1") -> dict[str, Any]:
    body = seed.ok(f"{PROJECTS}/CreateProject", {"name": name, "regionId": region})
    assert set(body) == {"project"}, body
    return body["project"]


def create_build(seed: SeedClient, project_id: str) -> tuple[str, str]:
    body = seed.ok(f"{BUILDS}/CreateBuild", {"projectId": project_id})
    assert set(body) == {"buildId", "buildToken"}, body
    assert ID.fullmatch(body["buildId"]), body
    assert isinstance(body["buildToken"], str), body
    assert len(body["buildToken"]) >= 20, body
    return body["buildId"], body["buildToken"]


def get_build(seed: SeedClient, build_id: str) -> dict[str, Any]:
    build = seed.ok(f"{BUILDS}/GetBuild", {"buildId": build_id})
    assert set(build) <= SEED_BUILD_KEYS | EXTRA_BUILD_KEYS, build
    assert build["status"] in SEED_BUILD_STATUSES, build
    return build


def assert_finished_build(
    build: dict[str, Any], build_id: str, project_id: str, status: str
) -> None:
    assert build["buildId"] == build_id
    assert build["projectId"] == project_id
    assert build["status"] == status
    created = assert_timestamp(build["createdAt"])
    finished = assert_timestamp(build["finishedAt"])
    assert created <= finished
    duration = build["buildDurationSeconds"]
    assert isinstance(duration, float | int), build
    assert not isinstance(duration, bool), build
    # No machine was acquired, so the build ran from its creation to its finish.
    assert duration == pytest.approx((finished - created).total_seconds(), abs=1e-3)
    assert set(build) == {
        "buildId",
        "projectId",
        "status",
        "createdAt",
        "buildDurationSeconds",
        "finishedAt",
    }, build


# Projects: ListProjects, CreateProject, GetProject, UpdateProject, ResetProjectCache,
# DeleteProject.


def test_project_lifecycle(seed: SeedClient, org: Org) -> None:
    assert seed.ok(f"{PROJECTS}/ListProjects", {}) == {}

    before = datetime.now(UTC)
    created = seed.ok(f"{PROJECTS}/CreateProject", SEED_CREATE_PROJECT)
    assert set(created) == {"project"}, created
    project = created["project"]
    assert set(project) == SEED_PROJECT_KEYS, project
    project_id = project["projectId"]
    assert ID.fullmatch(project_id), project
    created_at = assert_timestamp(project["createdAt"], near=before)
    assert project == {
        "projectId": project_id,
        "organizationId": org.id,
        "name": "my-app",
        "regionId": "us-east-1",
        "createdAt": project["createdAt"],
        # keepBytes stays an int64 JSON string; keepGb (the real API's field) is derived
        # from it: 53687091200 bytes = 50 GiB.
        "cachePolicy": {"keepBytes": "53687091200", "keepDays": 14, "keepGb": 50},
    }
    assert created_at >= before - timedelta(seconds=1)

    assert seed.ok(f"{PROJECTS}/GetProject", {"projectId": project_id}) == {"project": project}
    assert seed.ok(f"{PROJECTS}/ListProjects", {}) == {"projects": [project]}

    # UpdateProject: only the fields present change.
    renamed = seed.ok(f"{PROJECTS}/UpdateProject", {"projectId": project_id, "name": "my-app-2"})
    assert renamed == {"project": {**project, "name": "my-app-2"}}
    updated = seed.ok(
        f"{PROJECTS}/UpdateProject",
        {
            "projectId": project_id,
            "regionId": "eu-central-1",
            "cachePolicy": {"keepBytes": "1073741824", "keepDays": 7},
        },
    )
    expected = {
        **project,
        "name": "my-app-2",
        "regionId": "eu-central-1",
        "cachePolicy": {"keepBytes": "1073741824", "keepDays": 7, "keepGb": 1},
    }
    assert updated == {"project": expected}
    assert seed.ok(f"{PROJECTS}/GetProject", {"projectId": project_id}) == {"project": expected}

    # ResetProjectCache: an EmptyResponse, and the project is otherwise unchanged.
    assert seed.ok(f"{PROJECTS}/ResetProjectCache", {"projectId": project_id}) == {}
    assert seed.ok(f"{PROJECTS}/GetProject", {"projectId": project_id}) == {"project": expected}

    # DeleteProject: an EmptyResponse; afterwards the project is gone everywhere.
    assert seed.ok(f"{PROJECTS}/DeleteProject", {"projectId": project_id}) == {}
    message = seed.error(f"{PROJECTS}/GetProject", {"projectId": project_id}, 404, "not_found")
    assert message == f"project {project_id} not found"
    assert seed.ok(f"{PROJECTS}/ListProjects", {}) == {}
    seed.error(f"{PROJECTS}/DeleteProject", {"projectId": project_id}, 404, "not_found")
    seed.error(f"{PROJECTS}/ResetProjectCache", {"projectId": project_id}, 404, "not_found")


def test_project_defaults_and_duplicate_name(seed: SeedClient) -> None:
    # Only the seed's required fields: the cache policy gets the Depot CLI's defaults.
    project = create_project(seed, "plain", region="us-east-1")
    assert project["cachePolicy"] == {"keepDays": 14, "keepGb": 50}
    assert set(project) == SEED_PROJECT_KEYS, project

    message = seed.error(
        f"{PROJECTS}/CreateProject",
        {"name": "plain", "regionId": "eu-central-1"},
        409,
        "already_exists",
    )
    assert '"plain"' in message
    seed.error(
        f"{PROJECTS}/CreateProject",
        {"name": "other", "regionId": "mars-north-1"},
        400,
        "invalid_argument",
    )
    seed.error(f"{PROJECTS}/CreateProject", {"regionId": "us-east-1"}, 400, "invalid_argument")
    seed.error(f"{PROJECTS}/CreateProject", {"name": "nameless-region"}, 400, "invalid_argument")


def test_list_projects_pages(seed: SeedClient) -> None:
    projects = [create_project(seed, f"paged-{i}") for i in range(5)]

    # Without pageSize: every project, oldest first, and no nextPageToken.
    assert seed.ok(f"{PROJECTS}/ListProjects", {}) == {"projects": projects}

    seen: list[dict[str, Any]] = []
    request: dict[str, Any] = {"pageSize": 2}
    pages = 0
    while True:
        page = seed.ok(f"{PROJECTS}/ListProjects", request)
        pages += 1
        assert set(page) <= {"projects", "nextPageToken"}, page
        assert 1 <= len(page["projects"]) <= 2, page
        seen.extend(page["projects"])
        if "nextPageToken" not in page:
            break
        assert isinstance(page["nextPageToken"], str), page
        assert page["nextPageToken"], page
        request = {"pageSize": 2, "pageToken": page["nextPageToken"]}
        assert pages < 10, "paging does not terminate"
    assert pages == 3
    assert seen == projects

    # A page size equal to the count: one full page and no token.
    assert seed.ok(f"{PROJECTS}/ListProjects", {"pageSize": 5}) == {"projects": projects}
    # One short: a token that leads to the last project alone.
    first = seed.ok(f"{PROJECTS}/ListProjects", {"pageSize": 4})
    assert first["projects"] == projects[:4]
    last = seed.ok(f"{PROJECTS}/ListProjects", {"pageSize": 4, "pageToken": first["nextPageToken"]})
    assert last == {"projects": projects[4:]}

    seed.error(f"{PROJECTS}/ListProjects", {"pageToken": "not-a-token"}, 400, "invalid_argument")
    seed.error(f"{PROJECTS}/ListProjects", {"pageSize": -1}, 400, "invalid_argument")


# Project tokens: CreateProjectToken, ListProjectTokens, DeleteProjectToken.


def test_project_tokens(seed: SeedClient) -> None:
    project = create_project(seed, "tokens")
    other = create_project(seed, "tokens-other")
    project_id = project["projectId"]
    assert seed.ok(f"{PROJECTS}/ListProjectTokens", {"projectId": project_id}) == {}

    created = seed.ok(
        f"{PROJECTS}/CreateProjectToken", {"projectId": project_id, "description": "ci"}
    )
    assert set(created) == {"tokenId", "secret"}, created
    token_id, secret = created["tokenId"], created["secret"]
    assert ID.fullmatch(token_id), created
    assert isinstance(secret, str), created
    assert len(secret) >= 20, created
    bare = seed.ok(f"{PROJECTS}/CreateProjectToken", {"projectId": project_id})
    assert set(bare) == {"tokenId", "secret"}, bare
    assert bare["secret"] != secret

    listed = seed.ok(f"{PROJECTS}/ListProjectTokens", {"projectId": project_id})
    assert set(listed) == {"tokens"}, listed
    # The seed's fields, as the seed gives them: an empty description is omitted. Beyond the
    # seed, each token shows when it was made (neither was used yet, nor given an expiry).
    for token in listed["tokens"]:
        assert set(token) - {"tokenId", "description"} == {"createdAt"}, token
        assert token.pop("createdAt").endswith("Z"), token
    assert sorted(listed["tokens"], key=lambda t: t["tokenId"]) == sorted(
        [{"tokenId": token_id, "description": "ci"}, {"tokenId": bare["tokenId"]}],
        key=lambda t: t["tokenId"],
    )
    # The secret never appears in a listing.
    assert secret not in json.dumps(listed)

    # The secret is a Bearer token for builds of its own project.
    as_project = seed.as_token(secret)
    build_id, _ = create_build(as_project, project_id)
    assert get_build(as_project, build_id)["status"] == "BUILD_STATUS_RUNNING"
    assert (
        as_project.ok(f"{BUILDS}/ListBuilds", {"projectId": project_id})["builds"][0]["buildId"]
        == build_id
    )
    # ... but not for another project, nor for managing projects.
    as_project.error(
        f"{BUILDS}/CreateBuild", {"projectId": other["projectId"]}, 403, "permission_denied"
    )
    as_project.error(f"{PROJECTS}/ListProjects", {}, 403, "permission_denied")

    # DeleteProjectToken with the seed's {projectId, tokenId}.
    assert (
        seed.ok(f"{PROJECTS}/DeleteProjectToken", {"projectId": project_id, "tokenId": token_id})
        == {}
    )
    message = as_project.error(
        f"{BUILDS}/CreateBuild", {"projectId": project_id}, 401, "unauthenticated"
    )
    assert "revoked" in message
    as_project.error(f"{BUILDS}/GetBuild", {"buildId": build_id}, 401, "unauthenticated")
    remaining = seed.ok(f"{PROJECTS}/ListProjectTokens", {"projectId": project_id})["tokens"]
    assert [t["tokenId"] for t in remaining] == [bare["tokenId"]]
    # Deleting it again, or naming the wrong project, finds nothing.
    seed.error(
        f"{PROJECTS}/DeleteProjectToken",
        {"projectId": project_id, "tokenId": token_id},
        404,
        "not_found",
    )
    seed.error(
        f"{PROJECTS}/DeleteProjectToken",
        {"projectId": other["projectId"], "tokenId": bare["tokenId"]},
        404,
        "not_found",
    )
    # The other token still works.
    create_build(seed.as_token(bare["secret"]), project_id)


# Builds: CreateBuild, GetBuild, FinishBuild, ListBuilds.


def test_build_lifecycle(seed: SeedClient) -> None:
    project_id = create_project(seed, "builds")["projectId"]
    assert seed.ok(f"{BUILDS}/ListBuilds", {"projectId": project_id}) == {}

    ok_id, _ = create_build(seed, project_id)
    running = get_build(seed, ok_id)
    assert running == {
        "buildId": ok_id,
        "projectId": project_id,
        "status": "BUILD_STATUS_RUNNING",
        "createdAt": running["createdAt"],
    }
    assert_timestamp(running["createdAt"])

    # The seed's success shape.
    success = {"buildId": ok_id, "result": {"success": {}}}
    assert seed.ok(f"{BUILDS}/FinishBuild", success) == {}
    finished = get_build(seed, ok_id)
    assert_finished_build(finished, ok_id, project_id, "BUILD_STATUS_FINISHED")
    assert finished["createdAt"] == running["createdAt"]
    # A repeated identical finish is fine (clients retry), in either shape; nothing changes.
    assert seed.ok(f"{BUILDS}/FinishBuild", success) == {}
    assert seed.ok(f"{BUILDS}/FinishBuild", {"buildId": ok_id, "success": {}}) == {}
    assert get_build(seed, ok_id) == finished
    # A different outcome afterwards is refused.
    message = seed.error(
        f"{BUILDS}/FinishBuild",
        {"buildId": ok_id, "result": {"error": {"error": "boom"}}},
        400,
        "failed_precondition",
    )
    assert ok_id in message
    assert get_build(seed, ok_id) == finished

    # The seed's error shape.
    failed_id, _ = create_build(seed, project_id)
    failure = {"buildId": failed_id, "result": {"error": {"error": "boom"}}}
    assert seed.ok(f"{BUILDS}/FinishBuild", failure) == {}
    failed = get_build(seed, failed_id)
    assert_finished_build(failed, failed_id, project_id, "BUILD_STATUS_FAILED")
    assert seed.ok(f"{BUILDS}/FinishBuild", failure) == {}
    seed.error(
        f"{BUILDS}/FinishBuild",
        {"buildId": failed_id, "result": {"success": {}}},
        400,
        "failed_precondition",
    )

    running_id, _ = create_build(seed, project_id)

    # ListBuilds: {"builds": [...]}, newest first, each a seed Build.
    listed = seed.ok(f"{BUILDS}/ListBuilds", {"projectId": project_id})
    assert set(listed) == {"builds"}, listed
    assert [b["buildId"] for b in listed["builds"]] == [running_id, failed_id, ok_id]
    assert listed["builds"][1:] == [failed, finished]
    assert listed["builds"][0]["status"] == "BUILD_STATUS_RUNNING"
    for build in listed["builds"]:
        assert set(build) <= SEED_BUILD_KEYS | EXTRA_BUILD_KEYS, build

    # FinishBuild needs an outcome.
    seed.error(f"{BUILDS}/FinishBuild", {"buildId": running_id}, 400, "invalid_argument")
    assert get_build(seed, running_id)["status"] == "BUILD_STATUS_RUNNING"


def test_build_token_drives_its_own_build(seed: SeedClient) -> None:
    project_id = create_project(seed, "build-token")["projectId"]
    build_id, build_token = create_build(seed, project_id)
    other_id, _ = create_build(seed, project_id)
    as_build = seed.as_token(build_token)

    assert get_build(as_build, build_id)["status"] == "BUILD_STATUS_RUNNING"
    as_build.error(f"{BUILDS}/GetBuild", {"buildId": other_id}, 403, "permission_denied")
    as_build.error(f"{BUILDS}/CreateBuild", {"projectId": project_id}, 403, "permission_denied")
    as_build.error(f"{BUILDS}/ListBuilds", {"projectId": project_id}, 403, "permission_denied")

    failure = {"buildId": build_id, "result": {"error": {"error": "boom"}}}
    assert as_build.ok(f"{BUILDS}/FinishBuild", failure) == {}
    assert_finished_build(get_build(seed, build_id), build_id, project_id, "BUILD_STATUS_FAILED")


# Errors.


def test_errors(seed: SeedClient) -> None:
    project_id = create_project(seed, "errors")["projectId"]
    build_id, _ = create_build(seed, project_id)

    # A body that is not JSON.
    seed.error(f"{PROJECTS}/CreateProject", '{"name": "x",', 400, "invalid_argument")
    seed.error(f"{BUILDS}/GetBuild", "not json", 400, "invalid_argument")
    # A JSON value of the wrong type for a field.
    seed.error(f"{BUILDS}/GetBuild", {"buildId": ["x"]}, 400, "invalid_argument")

    # No token, an empty one, a malformed one.
    anonymous = seed.as_token(None)
    message = anonymous.error(f"{PROJECTS}/ListProjects", {}, 401, "unauthenticated")
    assert "missing token" in message
    anonymous.error(f"{BUILDS}/GetBuild", {"buildId": build_id}, 401, "unauthenticated")
    anonymous.error(f"{PROJECTS}/CreateProject", SEED_CREATE_PROJECT, 401, "unauthenticated")
    seed.as_token("not-a-real-token").error(f"{PROJECTS}/ListProjects", {}, 401, "unauthenticated")

    # An ID of the right shape that does not exist: not_found, for every project operation.
    missing = "0000000000"
    for method in (
        "GetProject",
        "DeleteProject",
        "ResetProjectCache",
        "ListProjectTokens",
        "CreateProjectToken",
    ):
        message = seed.error(f"{PROJECTS}/{method}", {"projectId": missing}, 404, "not_found")
        assert message == f"project {missing} not found"
    seed.error(f"{PROJECTS}/UpdateProject", {"projectId": missing, "name": "x"}, 404, "not_found")
    seed.error(
        f"{PROJECTS}/DeleteProjectToken",
        {"projectId": project_id, "tokenId": missing},
        404,
        "not_found",
    )
    seed.error(f"{BUILDS}/CreateBuild", {"projectId": missing}, 404, "not_found")
    seed.error(f"{BUILDS}/ListBuilds", {"projectId": missing}, 404, "not_found")
    seed.error(f"{BUILDS}/GetBuild", {"buildId": missing}, 404, "not_found")
    seed.error(
        f"{BUILDS}/FinishBuild", {"buildId": missing, "result": {"success": {}}}, 404, "not_found"
    )

    # An ID of the wrong shape: invalid_argument, naming the field.
    for bad in ("ABCDEFGHIJ", "short", "abcdefghijk", "../../etc/"):
        message = seed.error(f"{PROJECTS}/GetProject", {"projectId": bad}, 400, "invalid_argument")
        assert "projectId" in message
        seed.error(f"{BUILDS}/CreateBuild", {"projectId": bad}, 400, "invalid_argument")
        message = seed.error(f"{BUILDS}/GetBuild", {"buildId": bad}, 400, "invalid_argument")
        assert "buildId" in message
    seed.error(f"{PROJECTS}/GetProject", {}, 400, "invalid_argument")

    # Another organization's project looks exactly like a missing one.
    other_org = seed.as_token(seed.server.org_token)
    message = other_org.error(f"{PROJECTS}/GetProject", {"projectId": project_id}, 404, "not_found")
    assert message == f"project {project_id} not found"
    other_org.error(f"{BUILDS}/GetBuild", {"buildId": build_id}, 404, "not_found")

    # An unknown method is a 404, not a crash.
    result = seed.call(f"{PROJECTS}/NoSuchMethod", {})
    assert result.status == 404, result


def test_refusals_say_what_is_expected(seed: SeedClient) -> None:
    """Requests that reach no operation, as people type them with curl: each refusal has a
    body that says what is expected (they were empty)."""
    flags = [HTTP_VERSIONS[seed.http][0], "-H", f"Authorization: Bearer {seed.token}"]
    url = seed.server.url

    # `curl -d` sends application/x-www-form-urlencoded.
    result = curl(f"{url}{PROJECTS}/ListProjects", *flags, "-d", "{}")
    assert (result.status, result.content_type) == (415, "application/json"), result
    error = result.json()
    assert error["code"] == "unimplemented", error
    assert "takes Content-Type application/json" in error["message"], error
    assert "not application/x-www-form-urlencoded" in error["message"], error

    result = curl(f"{url}{PROJECTS}/ListProjects", *flags)  # a GET
    assert (result.status, result.content_type) == (405, "application/json"), result
    assert result.json() == {
        "code": "unimplemented",
        "message": "depot.core.v1.ProjectService/ListProjects is called with POST, not GET",
    }

    json_post = ["-H", "Content-Type: application/json", "-d", "{}"]
    result = curl(f"{url}{PROJECTS}/ListProject", *flags, *json_post)
    assert (result.status, result.content_type) == (404, "application/json"), result
    error = result.json()
    assert error["code"] == "unimplemented", error
    assert error["message"].startswith(f"{PROJECTS}/ListProject: "), error
    assert "ListProjects" in error["message"], error

    result = curl(f"{url}/depot.core.v2.ProjectService/ListProjects", *flags, *json_post)
    assert (result.status, result.content_type) == (404, "application/json"), result
    assert "no service depot.core.v2.ProjectService" in result.json()["message"]

    result = curl(f"{url}/v1/projects", *flags)
    assert (result.status, result.content_type) == (404, "text/plain; charset=utf-8"), result
    assert result.text.startswith("/v1/projects not found: "), result

    result = curl(f"{url}/healthz", *flags, "-d", "{}")
    assert (result.status, result.content_type) == (405, "text/plain; charset=utf-8"), result
    assert result.text == "/healthz is read with GET (or HEAD), not POST\n", result


def test_json_callers_read_json_names_and_utf8(seed: SeedClient) -> None:
    message = seed.error(f"{PROJECTS}/GetProject", {"projectId": "café"}, 400, "invalid_argument")
    assert message.startswith('projectId "café" is not a valid ID'), message
    result = seed.call(f"{PROJECTS}/GetProject", '{"projectId": "café"}')
    assert '"café' in result.text, result  # UTF-8 in the body, not an escape
    message = seed.error(
        f"{PROJECTS}/CreateProject",
        {"name": "x", "regionId": "us-east-1", "cachePolicy": {"keepDays": -1}},
        400,
        "invalid_argument",
    )
    assert message.startswith("cachePolicy.keepDays must be between"), message


def test_server_log_has_no_tracebacks(seed: SeedClient, server: ServerProcess) -> None:
    """Ordinary successful calls must not make the server log tracebacks."""
    log_start = len(server.output)
    project_id = create_project(seed, "quiet")["projectId"]
    for _ in range(5):
        build_id, _ = create_build(seed, project_id)
        get_build(seed, build_id)
        assert seed.ok(f"{BUILDS}/FinishBuild", {"buildId": build_id, "success": {}}) == {}
    seed.ok(f"{BUILDS}/ListBuilds", {"projectId": project_id})
    # The server writes its log lines asynchronously; give the last ones time to arrive.
    time.sleep(0.5)
    log = "".join(server.output[log_start:])
    assert "Traceback" not in log, log
