"""Abuse limits: a call rate and a number of open streams per token, with a retry hint.

The limits live in one process's memory and do not touch storage, so these tests run on
SQLite only.
"""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import timedelta
from pathlib import Path

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from depot_api.api.limits import RateLimiter, StreamLimiter
from depot_api.config import Settings
from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depot.buildkit.v1 import buildkit_pb
from depot_api.gen.depot.core.v1 import project_pb
from depot_api.gen.google.rpc.error_details_pb import RetryInfo

from ..conftest import PROTOCOLS, InProcessAPI, bearer, raw_post
from ..factories import new_build


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_sustained_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    assert [limiter.take("t") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("t") == pytest.approx(0.5)  # the next whole call, at 2 a second
    clock.now += 0.5
    assert limiter.take("t") == 0.0
    assert limiter.take("t") == pytest.approx(0.5)
    assert limiter.take("other") == 0.0  # each token has its own bucket


def test_a_refused_call_is_not_counted() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, 1, clock=clock)
    assert limiter.take("t") == 0.0
    for _ in range(5):
        assert limiter.take("t") == pytest.approx(1.0)
    clock.now += 1.0
    assert limiter.take("t") == 0.0


def test_rate_zero_is_no_limit() -> None:
    limiter = RateLimiter(0.0, 1)
    assert all(limiter.take("t") == 0.0 for _ in range(1000))


def test_idle_buckets_are_forgotten_so_the_table_stays_bounded() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, 1, clock=clock)
    for i in range(25_000):
        limiter.take(f"token-{i}")
        clock.now += 0.001
    clock.now += 10  # every bucket has filled up again
    limiter.take("late")
    assert len(limiter._buckets) <= 10_000


def test_stream_limiter_counts_and_releases() -> None:
    streams = StreamLimiter(2)
    assert streams.open("t") and streams.open("t")
    assert not streams.open("t")
    assert streams.open("u")
    streams.close("t")
    assert streams.open_count("t") == 1
    assert streams.open("t")
    unlimited = StreamLimiter(0)
    assert all(unlimited.open("t") for _ in range(1000))


@pytest.fixture
def database_url(sqlite_database_url: str) -> str:
    return sqlite_database_url


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database=database_url,
        rate_limit=1.0,
        rate_burst=2,
        max_streams_per_token=1,
        acquire_timeout=timedelta(seconds=1.5),
        pending_interval=timedelta(seconds=0.2),
        # Streams wait for a machine, though there is none, to the acquire timeout.
        wait_for_machines=True,
    )


LIST = "/depot.core.v1.ProjectService/ListProjects"
JSON = {"content-type": "application/json"}


async def test_over_the_rate_is_resource_exhausted_with_a_retry_hint(api: InProcessAPI) -> None:
    headers = {**JSON, **bearer(api.org_token)}
    for _ in range(2):
        status, _, _ = await raw_post(api, LIST, b"{}", headers)
        assert status == 200
    status, response_headers, body = await raw_post(api, LIST, b"{}", headers)
    assert status == 429
    error = json.loads(body)
    assert error["code"] == "resource_exhausted"
    assert "rate limit" in error["message"]
    assert response_headers["retry-after"] == "1"
    [detail] = error["details"]
    assert detail["type"] == "google.rpc.RetryInfo"
    hint = RetryInfo.from_binary(base64.b64decode(detail["value"] + "=="))
    assert hint.retry_delay is not None
    delay = hint.retry_delay.seconds + hint.retry_delay.nanos / 1e9
    assert 0 < delay <= 1.0


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
async def test_the_retry_hint_reaches_every_protocol(api: InProcessAPI, protocol: str) -> None:
    clients = api.clients(protocol)
    request = project_pb.ListProjectsRequest()
    with pytest.raises(ConnectError) as refused:  # noqa: PT012 (the third call is refused)
        for _ in range(3):
            await clients.projects.list_projects(request, headers=bearer(api.org_token))
    assert refused.value.code == Code.RESOURCE_EXHAUSTED
    [detail] = refused.value.details
    hint = detail.value(RetryInfo)
    assert hint is not None and hint.retry_delay is not None


async def test_each_token_has_its_own_allowance(api: InProcessAPI) -> None:
    admin = await api.app.domain.authenticator.authenticate(f"Bearer {api.org_token}")
    _, other = await api.app.domain.tokens.create_org_token(next(iter(admin.org_ids)))
    clients = api.clients("connect-proto")
    for _ in range(2):
        await clients.projects.list_projects(
            project_pb.ListProjectsRequest(), headers=bearer(api.org_token)
        )
    with pytest.raises(ConnectError) as refused:
        await clients.projects.list_projects(
            project_pb.ListProjectsRequest(), headers=bearer(api.org_token)
        )
    assert refused.value.code == Code.RESOURCE_EXHAUSTED
    await clients.projects.list_projects(project_pb.ListProjectsRequest(), headers=bearer(other))


async def test_unauthenticated_calls_are_not_rate_limited_by_a_token(api: InProcessAPI) -> None:
    """The limit is per token; refusing an unknown token costs no bucket (and no table row)."""
    for _ in range(5):
        status, _, body = await raw_post(api, LIST, b"{}", JSON)
        assert status == 401, body


async def _end_of_endpoint(api: InProcessAPI, build_id: str, token: str) -> ConnectError:
    """Wait on GetEndpoint until it ends: there are no machines, so it ends with an error."""
    stream = api.clients("connect-proto").buildkit.get_endpoint(
        buildkit_pb.GetEndpointRequest(build_id=build_id, platform=buildkit_pb.Platform.AMD64),
        headers=bearer(token),
    )
    try:
        async for _ in stream:
            pass
    except ConnectError as e:
        return e
    raise AssertionError("GetEndpoint ended without an error, but there are no machines")


async def _open_streams(api: InProcessAPI, token: str) -> int:
    principal = await api.app.domain.authenticator.authenticate(f"Bearer {token}")
    return api.app.limits.streams.open_count(principal.token_id)


async def _one_stream_waiting(
    api: InProcessAPI, build_id: str, token: str
) -> asyncio.Task[ConnectError]:
    """A GetEndpoint stream, open and counted, in a task."""
    waiting = asyncio.create_task(_end_of_endpoint(api, build_id, token))
    for _ in range(200):
        if await _open_streams(api, token) == 1:
            break
        await asyncio.sleep(0.01)
    assert await _open_streams(api, token) == 1
    return waiting


async def test_a_token_holds_at_most_its_streams(api: InProcessAPI) -> None:
    build_id, build_token = await new_build(api.app.domain, api.org_token)
    first = await _one_stream_waiting(api, build_id, build_token)

    refused = await asyncio.wait_for(_end_of_endpoint(api, build_id, build_token), 5)
    assert refused.code == Code.RESOURCE_EXHAUSTED
    assert "streams open" in refused.message

    # The first stream ends on its own (no machine came); its place is given back.
    ended = await asyncio.wait_for(first, 10)
    assert ended.code == Code.RESOURCE_EXHAUSTED
    assert "no amd64 BuildKit machine" in ended.message
    assert await _open_streams(api, build_token) == 0


async def test_the_plain_json_get_endpoint_counts_as_a_stream(api: InProcessAPI) -> None:
    build_id, build_token = await new_build(api.app.domain, api.org_token)
    first = await _one_stream_waiting(api, build_id, build_token)
    status, _, body = await raw_post(
        api,
        "/depot.buildkit.v1.BuildKitService/GetEndpoint",
        json.dumps({"buildId": build_id, "platform": "PLATFORM_AMD64"}).encode(),
        {**JSON, **bearer(build_token)},
    )
    assert status == 429, body
    assert "streams open" in json.loads(body)["message"]
    await asyncio.wait_for(first, 10)


async def test_the_plain_json_get_endpoint_gives_the_retry_hint_too(api: InProcessAPI) -> None:
    build_id, build_token = await new_build(api.app.domain, api.org_token)
    builds = api.clients("connect-proto").builds
    for _ in range(2):  # the burst
        await builds.get_build(
            build_pb.GetBuildRequest(build_id=build_id), headers=bearer(build_token)
        )
    status, headers, body = await raw_post(
        api,
        "/depot.buildkit.v1.BuildKitService/GetEndpoint",
        json.dumps({"buildId": build_id, "platform": "PLATFORM_AMD64"}).encode(),
        {**JSON, **bearer(build_token)},
    )
    assert status == 429, body
    error = json.loads(body)
    assert "rate limit" in error["message"]
    assert headers["retry-after"] == "1"
    [detail] = error["details"]
    assert detail["type"] == "google.rpc.RetryInfo"
    hint = RetryInfo.from_binary(base64.b64decode(detail["value"] + "=="))
    assert hint.retry_delay is not None


async def test_unary_calls_do_not_count_as_streams(api: InProcessAPI) -> None:
    build_id, build_token = await new_build(api.app.domain, api.org_token)
    builds = api.clients("connect-proto").builds
    await builds.get_build(build_pb.GetBuildRequest(build_id=build_id), headers=bearer(build_token))
    assert await _open_streams(api, build_token) == 0
