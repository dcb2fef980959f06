"""Graceful shutdown inside one process: once draining, new calls are refused with
`unavailable`, streams end with `unavailable`, and unary calls in flight finish.

Draining is process state, not storage, so these tests run on SQLite only. The real
SIGTERM path (the supervisor asking its workers) is in tests/e2e/test_shutdown.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from pyqwest import Client
from pyqwest.testing import ASGITransport

from depot_api.api.drain import Drain, DrainInterceptor
from depot_api.api.guard import Guard, guard_interceptors
from depot_api.config import Settings
from depot_api.gen.depot.buildkit.v1 import buildkit_pb
from depot_api.gen.depot.core.v1 import org_connect, org_pb, project_pb

from ..conftest import InProcessAPI, bearer, raw_post
from ..factories import new_build


@pytest.fixture
def database_url(sqlite_database_url: str) -> str:
    return sqlite_database_url


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # Streams wait (there are no machines, and they wait anyway) far longer than these tests
    # take.
    return Settings(
        data_dir=tmp_path / "data",
        database=database_url,
        acquire_timeout=timedelta(seconds=60),
        wait_for_machines=True,
    )


async def test_new_calls_are_refused_with_unavailable(api: InProcessAPI) -> None:
    projects = api.clients("connect-proto").projects
    await projects.list_projects(project_pb.ListProjectsRequest(), headers=bearer(api.org_token))
    api.app.drain.start()
    with pytest.raises(ConnectError) as refused:
        await projects.list_projects(
            project_pb.ListProjectsRequest(), headers=bearer(api.org_token)
        )
    assert refused.value.code == Code.UNAVAILABLE
    assert "shutting down" in refused.value.message


async def test_readiness_fails_while_draining(api: InProcessAPI) -> None:
    response = await api.http.get("http://test/readyz")
    assert response.status == 200
    api.app.drain.start()
    response = await api.http.get("http://test/readyz")
    assert response.status == 503
    assert b"shutting down" in response.content


@pytest.mark.parametrize("protocol", ["connect-proto", "grpc", "grpc-web"])
async def test_a_waiting_stream_ends_with_unavailable(api: InProcessAPI, protocol: str) -> None:
    build_id, build_token = await new_build(api.app.domain, api.org_token)
    stream = api.clients(protocol).buildkit.get_endpoint(
        buildkit_pb.GetEndpointRequest(build_id=build_id, platform=buildkit_pb.Platform.AMD64),
        headers=bearer(build_token),
    )
    messages = []
    with pytest.raises(ConnectError) as ended:  # noqa: PT012 (drain while reading the stream)
        async for message in stream:
            messages.append(message)
            api.app.drain.start()  # after the first `pending`
    assert ended.value.code == Code.UNAVAILABLE
    assert len(messages) == 1


async def test_a_client_stream_ends_with_unavailable(api: InProcessAPI) -> None:
    build_id, build_token = await new_build(api.app.domain, api.org_token)
    started = asyncio.Event()

    async def health() -> AsyncIterator[buildkit_pb.ReportHealthRequest]:
        yield buildkit_pb.ReportHealthRequest(
            build_id=build_id, platform=buildkit_pb.Platform.AMD64
        )
        started.set()
        await asyncio.sleep(60)  # a client that keeps its stream open for the build's life

    call = asyncio.create_task(
        api.clients("connect-proto").buildkit.report_health(health(), headers=bearer(build_token))
    )
    await started.wait()
    await asyncio.sleep(0.1)
    api.app.drain.start()
    with pytest.raises(ConnectError) as ended:
        await asyncio.wait_for(call, 10)
    assert ended.value.code == Code.UNAVAILABLE


async def test_the_plain_json_get_endpoint_ends_with_503(api: InProcessAPI) -> None:
    build_id, build_token = await new_build(api.app.domain, api.org_token)

    async def drain_soon() -> None:
        await asyncio.sleep(0.3)
        api.app.drain.start()

    drainer = asyncio.create_task(drain_soon())
    status, _, body = await raw_post(
        api,
        "/depot.buildkit.v1.BuildKitService/GetEndpoint",
        f'{{"buildId": "{build_id}", "platform": "PLATFORM_AMD64"}}'.encode(),
        {"content-type": "application/json", **bearer(build_token)},
    )
    await drainer
    assert status == 503, body
    assert b'"unavailable"' in body


class WaitingOrganizations(org_connect.OrganizationService):
    """A handler that waits until the test lets it answer."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def list_organizations(
        self, request: org_pb.ListOrganizationsRequest, ctx: Any
    ) -> org_pb.ListOrganizationsResponse:
        self.entered.set()
        await self.release.wait()
        return org_pb.ListOrganizationsResponse()


async def test_a_unary_call_in_flight_finishes(api: InProcessAPI) -> None:
    """A unary call admitted before the drain runs to its end, behind the interceptors every
    token-guarded service has; one that comes after is refused."""
    drain = Drain()
    interceptors = guard_interceptors(api.app.domain.authenticator, api.app.limits, drain)
    handler = WaitingOrganizations()
    app = org_connect.OrganizationServiceASGIApplication(
        handler, interceptors=interceptors[Guard.TOKEN]
    )
    async with ASGITransport(app) as transport:
        client = org_connect.OrganizationServiceClient("http://test", http_client=Client(transport))
        request = org_pb.ListOrganizationsRequest()
        call = asyncio.create_task(
            client.list_organizations(request, headers=bearer(api.org_token))
        )
        await asyncio.wait_for(handler.entered.wait(), 5)
        drain.start()
        with pytest.raises(ConnectError) as refused:
            await client.list_organizations(request, headers=bearer(api.org_token))
        assert refused.value.code == Code.UNAVAILABLE
        assert not call.done()
        handler.release.set()
        assert await asyncio.wait_for(call, 5) == org_pb.ListOrganizationsResponse()


async def test_a_stream_that_ends_on_its_own_is_not_disturbed() -> None:
    drain = Drain()
    interceptor = DrainInterceptor(drain)

    async def three(request: Any, ctx: Any) -> AsyncIterator[int]:
        for i in range(3):
            yield i

    assert [m async for m in interceptor.intercept_server_stream(three, None, None)] == [0, 1, 2]
