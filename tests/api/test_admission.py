"""One admission for every route: a unary call and a stream served by connectrpc, and the
seed's plain JSON GetEndpoint served beside it, are refused for the same reasons, in the same
order, with the same answers (api/guard.py).

Admission is process state, not storage, so these tests run on SQLite only.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from connectrpc.errors import ConnectError

from depot_api.config import Settings
from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depot.buildkit.v1 import buildkit_pb

from ..conftest import InProcessAPI, bearer, raw_post
from ..factories import new_build

GET_ENDPOINT = "/depot.buildkit.v1.BuildKitService/GetEndpoint"

# A route's answer to a call about a build with a token: its error's code and message.
Route = Callable[[InProcessAPI, str, str], Awaitable[tuple[str, str]]]


@pytest.fixture
def database_url(sqlite_database_url: str) -> str:
    return sqlite_database_url


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # A burst of two calls, then (in any test's time) no more.
    return Settings(
        data_dir=tmp_path / "data", database=database_url, rate_limit=0.001, rate_burst=2
    )


async def unary(api: InProcessAPI, build_id: str, token: str) -> tuple[str, str]:
    builds = api.clients("connect-json").builds
    try:
        await builds.get_build(build_pb.GetBuildRequest(build_id=build_id), headers=bearer(token))
    except ConnectError as e:
        return e.code.value, e.message
    raise AssertionError("GetBuild was admitted")


async def stream(api: InProcessAPI, build_id: str, token: str) -> tuple[str, str]:
    buildkit = api.clients("connect-json").buildkit
    request = buildkit_pb.GetEndpointRequest(build_id=build_id)
    try:
        async for _ in buildkit.get_endpoint(request, headers=bearer(token)):
            pass
    except ConnectError as e:
        return e.code.value, e.message
    raise AssertionError("GetEndpoint was admitted")


async def plain_json(api: InProcessAPI, build_id: str, token: str) -> tuple[str, str]:
    body = json.dumps({"buildId": build_id}).encode()
    headers = {"content-type": "application/json", **bearer(token)}
    status, _, answer = await raw_post(api, GET_ENDPOINT, body, headers)
    assert status != 200, answer
    error = json.loads(answer)
    return error["code"], error["message"]


ROUTES: dict[str, Route] = {"unary": unary, "stream": stream, "plain JSON": plain_json}


async def answers(api: InProcessAPI, build_id: str, token: str) -> dict[str, tuple[str, str]]:
    return {name: await route(api, build_id, token) for name, route in ROUTES.items()}


async def test_a_machine_token_is_refused_alike_on_every_route(api: InProcessAPI) -> None:
    build_id, _ = await new_build(api.app.domain, api.org_token)
    _, machine_token = await api.app.domain.tokens.create_machine_token("agents")
    refusal = ("permission_denied", "a machine token is valid for the machine service only")
    assert await answers(api, build_id, machine_token) == dict.fromkeys(ROUTES, refusal)


async def test_a_draining_process_refuses_before_it_counts_the_rate(api: InProcessAPI) -> None:
    """A token out of calls gets `unavailable` from a process shutting down, on every route:
    the retry it asks for goes to another process, where the token's calls are counted
    afresh."""
    build_id, build_token = await new_build(api.app.domain, api.org_token)
    builds = api.clients("connect-json").builds
    for _ in range(2):  # the whole burst
        await builds.get_build(
            build_pb.GetBuildRequest(build_id=build_id), headers=bearer(build_token)
        )
    assert (await unary(api, build_id, build_token))[0] == "resource_exhausted"
    api.app.drain.start()
    refusal = ("unavailable", "the server is shutting down; retry the call")
    assert await answers(api, build_id, build_token) == dict.fromkeys(ROUTES, refusal)
