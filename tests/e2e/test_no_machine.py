"""A build that asks for a machine no agent can give gets a clear error within seconds, on
all three ways of asking (the depot CLI's polled GetBuildKitConnection, the streamed
GetEndpoint, the seed's plain-JSON GetEndpoint), against a real server; with
--wait-for-machines it waits instead, and is served once an agent starts; the server logs it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Iterator
from pathlib import Path

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from pyqwest import Client, FullResponse

from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depot.cli.v1 import build_pb as cli_pb
from depot_api.gen.depot.cli.v1.build_connect import BuildServiceClient as CliBuildClient
from tests.helpers import ServerProcess, running_server

from .conftest import admin
from .machines import Api, agent, api_for, bearer, get_endpoint

# Quick heartbeats, so the start-up grace (five heartbeats) is short; the acquire timeout is
# the default, 300 s: every answer here must come long before it.
TIMINGS = {"DEPOT_API_MACHINE_HEARTBEAT": "0.2", "DEPOT_API_MACHINE_LOST_AFTER": "2"}
# The bound on each wait for an answer: far below the acquire timeout.
ANSWER_WITHIN = 30.0
CLI_AMD64 = cli_pb.BuilderPlatform.AMD64

NOTHING_TO_WAIT_FOR = "no amd64 BuildKit machine to wait for"


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server no agent ever talked to."""
    with running_server(tmp_path_factory.mktemp("no-agent") / "data", env=TIMINGS) as server:
        yield server


async def _build(server: ServerProcess, name: str) -> tuple[Api, build_pb.CreateBuildResponse]:
    """A build in a new project named `name`."""
    api = api_for(server, server.org_token)
    return api, await api.build(await api.project(name))


def _post_plain_json(api: Api, build: build_pb.CreateBuildResponse) -> Awaitable[FullResponse]:
    return api.http.post(
        f"{api.url}/depot.buildkit.v1.BuildKitService/GetEndpoint",
        headers={"content-type": "application/json", **bearer(build.build_token)},
        content=json.dumps({"buildId": build.build_id, "platform": "PLATFORM_AMD64"}).encode(),
    )


async def _poll_like_the_cli(server: ServerProcess, build: build_pb.CreateBuildResponse) -> str:
    """Poll GetBuildKitConnection as the depot CLI does (sleeping wait_ms between polls)
    until it answers something other than pending: the field, or the error's code."""
    client = CliBuildClient(server.url, http_client=Client())
    request = cli_pb.GetBuildKitConnectionRequest(build_id=build.build_id, platform=CLI_AMD64)
    while True:
        answer = await client.get_build_kit_connection(request, headers=bearer(build.build_token))
        assert answer.connection is not None
        if answer.connection.field != "pending":
            return answer.connection.field
        pending = answer.connection.value
        assert isinstance(pending, cli_pb.GetBuildKitConnectionResponse.PendingConnection)
        await asyncio.sleep(pending.wait_ms / 1000)


async def _logged(server: ServerProcess, text: str) -> None:
    """Wait (without blocking the event loop) until the server's output holds the text."""
    async with asyncio.timeout(ANSWER_WITHIN):
        while text not in "".join(server.output):  # noqa: ASYNC110 (a pipe fills it)
            await asyncio.sleep(0.1)


def _assert_names_what_to_do(message: str) -> None:
    assert message.startswith(NOTHING_TO_WAIT_FOR), message
    assert "heard from in the last 2s" in message
    assert "depot-api agent --platform amd64" in message
    assert "docs/machines.md" in message
    assert "--wait-for-machines" in message


async def test_the_polled_connection_is_refused(bare_server: ServerProcess) -> None:
    _, build = await _build(bare_server, "polled")
    with pytest.raises(ConnectError) as refused:
        await asyncio.wait_for(_poll_like_the_cli(bare_server, build), ANSWER_WITHIN)
    assert refused.value.code == Code.FAILED_PRECONDITION
    _assert_names_what_to_do(refused.value.message)


@pytest.mark.parametrize("protocol", ["connect-proto", "grpc"])
async def test_the_streamed_endpoint_is_refused(bare_server: ServerProcess, protocol: str) -> None:
    api, build = await _build(bare_server, f"streamed-{protocol}")
    client = api.grpc_buildkit if protocol == "grpc" else api.buildkit
    with pytest.raises(ConnectError) as refused:
        await asyncio.wait_for(get_endpoint(client, build), ANSWER_WITHIN)
    assert refused.value.code == Code.FAILED_PRECONDITION
    _assert_names_what_to_do(refused.value.message)


async def test_the_plain_json_endpoint_is_refused(bare_server: ServerProcess) -> None:
    api, build = await _build(bare_server, "plain")
    response = await asyncio.wait_for(_post_plain_json(api, build), ANSWER_WITHIN)
    assert response.status == 400, response.content
    body = json.loads(response.content)
    assert body["code"] == "failed_precondition"
    _assert_names_what_to_do(body["message"])


async def test_the_server_logs_the_refusal(bare_server: ServerProcess) -> None:
    _, build = await _build(bare_server, "logged")
    with pytest.raises(ConnectError):
        await asyncio.wait_for(_poll_like_the_cli(bare_server, build), ANSWER_WITHIN)
    line = f"build {build.build_id} asked for a BuildKit machine (amd64), but no agent"
    await _logged(bare_server, line)
    logged = [row for row in "".join(bare_server.output).splitlines() if line in row]
    assert all("level=WARNING" in row for row in logged), logged
    assert build.build_token not in "".join(bare_server.output)


async def test_with_wait_for_machines_builds_wait_until_an_agent_starts(tmp_path: Path) -> None:
    """For operators whose autoscaler starts agents on demand: no agent, yet builds wait
    (all three ways); an agent starts, and every one of them is served."""
    with running_server(tmp_path / "data", "--wait-for-machines", env=TIMINGS) as server:
        api = api_for(server, server.org_token)
        project = await api.project("app")  # one project: the one machine serves them all
        streamed, polled, plain = [await api.build(project) for _ in range(3)]

        stream = asyncio.create_task(get_endpoint(api.buildkit, streamed))
        poll = asyncio.create_task(_poll_like_the_cli(server, polled))
        json_answer = asyncio.create_task(_post_plain_json(api, plain))
        # Every build waits, and the server logs each one; none is answered, well past the
        # start-up grace (1 s here) and the liveness bound of machines (2 s).
        for build in (streamed, polled, plain):
            line = f"build {build.build_id} is waiting for a BuildKit machine (amd64)"
            await _logged(server, line)
            (row,) = [r for r in "".join(server.output).splitlines() if line in r]
            assert "level=INFO" in row and build.build_token not in row, row
        await asyncio.sleep(3)
        assert not any(task.done() for task in (stream, poll, json_answer))

        token = admin(server, "create-machine-token")
        with agent(server.url, token, tmp_path / "agent"):
            pending, active = await asyncio.wait_for(stream, ANSWER_WITHIN)
            assert pending >= 1
            assert await asyncio.wait_for(poll, ANSWER_WITHIN) == "active"
            response = await asyncio.wait_for(json_answer, ANSWER_WITHIN)
            assert response.status == 200, response.content
            assert json.loads(response.content)["endpoint"] == active.endpoint
        output = "".join(server.output)
        assert "Traceback" not in output and NOTHING_TO_WAIT_FOR not in output, output


async def test_with_an_agent_builds_wait_and_are_served(tmp_path: Path) -> None:
    with running_server(tmp_path / "data", env=TIMINGS) as server:
        token = admin(server, "create-machine-token")
        with agent(server.url, token, tmp_path / "agent"):
            api = api_for(server, server.org_token)
            project = await api.project("app")
            streamed, polled, plain = [await api.build(project) for _ in range(3)]
            _, active = await asyncio.wait_for(get_endpoint(api.buildkit, streamed), ANSWER_WITHIN)
            answer = await asyncio.wait_for(_poll_like_the_cli(server, polled), ANSWER_WITHIN)
            assert answer == "active"
            response = await asyncio.wait_for(_post_plain_json(api, plain), ANSWER_WITHIN)
            assert response.status == 200, response.content
            assert json.loads(response.content)["endpoint"] == active.endpoint
