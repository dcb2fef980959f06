"""A token's life through the API: made with an expiry, used, listed with its last use, and
revoked — at once, in every process that shares the database."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from pyqwest import Client
from pyqwest.testing import ASGITransport

from depot_api.app import create_app
from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depot.core.v1 import project_pb
from depot_api.gen.depot.core.v1.project_connect import ProjectServiceClient

from ..conftest import InProcessAPI, bearer, raw_post
from ..factories import new_project


async def _project(api: InProcessAPI) -> str:
    admin = await api.app.domain.authenticator.authenticate(f"Bearer {api.org_token}")
    return await new_project(api.app.domain, admin)


async def test_a_project_token_with_an_expiry(api: InProcessAPI) -> None:
    project_id = await _project(api)
    projects = api.clients("connect-json").projects
    created = await projects.create_token(
        project_pb.CreateTokenRequest(
            project_id=project_id, description="ci", expires_in_seconds=3600
        ),
        headers=bearer(api.org_token),
    )
    assert created.expires_at is not None
    forever = await projects.create_token(
        project_pb.CreateTokenRequest(project_id=project_id, description="forever"),
        headers=bearer(api.org_token),
    )
    assert forever.expires_at is None

    # Using a token shows in the listing.
    await api.clients("connect-json").builds.list_builds(
        build_pb.ListBuildsRequest(project_id=project_id), headers=bearer(created.secret)
    )
    listed = await projects.list_tokens(
        project_pb.ListTokensRequest(project_id=project_id), headers=bearer(api.org_token)
    )
    by_id = {t.token_id: t for t in listed.tokens}
    used, unused = by_id[created.token_id], by_id[forever.token_id]
    assert used.created_at is not None and used.expires_at is not None
    assert used.expires_at.seconds - used.created_at.seconds == 3600
    assert used.last_used_at is not None
    assert unused.expires_at is None and unused.last_used_at is None


@pytest.mark.parametrize("seconds", ["-1", "315360001", "9223372036854775807"])
async def test_an_expiry_out_of_range_is_invalid_argument(api: InProcessAPI, seconds: str) -> None:
    project_id = await _project(api)
    body = json.dumps(
        {"projectId": project_id, "description": "x", "expiresInSeconds": seconds}
    ).encode()
    status, _, answer = await raw_post(
        api,
        "/depot.core.v1.ProjectService/CreateProjectToken",
        body,
        {"content-type": "application/json", **bearer(api.org_token)},
    )
    assert status == 400, answer
    error = json.loads(answer)
    assert error["code"] == "invalid_argument"
    assert "expiresInSeconds" in error["message"]
    listed = await api.app.domain.store.orgs.list_project_tokens(project_id)
    assert listed == []


@pytest.fixture
async def second_process(api: InProcessAPI) -> AsyncIterator[ProjectServiceClient]:
    """Another application over the same database: what a second server process is."""
    transport = ASGITransport(create_app(api.settings))
    async with transport:
        yield ProjectServiceClient("http://test", http_client=Client(transport))


async def test_revocation_takes_effect_at_once_in_every_process(
    api: InProcessAPI, second_process: ProjectServiceClient
) -> None:
    project_id = await _project(api)
    first = api.clients("connect-proto").projects
    created = await first.create_token(
        project_pb.CreateTokenRequest(project_id=project_id, description="ci"),
        headers=bearer(api.org_token),
    )
    get = project_pb.ListTokensRequest(project_id=project_id)
    # The new token works in the other process (a project token may not list tokens, so
    # permission_denied shows it was authenticated there).
    with pytest.raises(ConnectError) as seen:
        await second_process.list_tokens(get, headers=bearer(created.secret))
    assert seen.value.code == Code.PERMISSION_DENIED

    await first.delete_token(
        project_pb.DeleteTokenRequest(token_id=created.token_id), headers=bearer(api.org_token)
    )
    with pytest.raises(ConnectError) as refused:
        await second_process.list_tokens(get, headers=bearer(created.secret))
    assert refused.value.code == Code.UNAUTHENTICATED
    assert "revoked" in refused.value.message
