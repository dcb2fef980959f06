"""PostgreSQL goes away under a running server: callers get `unavailable` quickly, nothing is
corrupted, and the service recovers by itself when the database is back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from pyqwest import Client
from pyqwest.testing import ASGITransport
from sqlalchemy.engine import make_url

from depot_api.app import create_app
from depot_api.config import Settings
from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depot.build.v1.build_connect import BuildServiceClient
from depot_api.gen.depot.core.v1 import project_pb
from depot_api.gen.depot.core.v1.project_connect import ProjectServiceClient
from depot_api.startup import prepare

from .conftest import bearer
from .proxy import Relay


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_outage_is_unavailable_then_recovers(tmp_path: Path, database_url: str) -> None:
    url = make_url(database_url)
    relay = Relay(url.host or "127.0.0.1", url.port or 5432)
    await relay.start()
    through_relay = url.set(port=relay.port).render_as_string(hide_password=False)
    settings = Settings(data_dir=tmp_path / "data", database=through_relay)
    token = await prepare(settings)
    assert token is not None
    h = bearer(token)
    app = create_app(settings)
    try:
        async with ASGITransport(app) as transport:
            http = Client(transport)
            projects = ProjectServiceClient("http://test", http_client=http)
            builds = BuildServiceClient("http://test", http_client=http)
            project = await projects.create_project(
                project_pb.CreateProjectRequest(name="p", region_id="us-east-1"), headers=h
            )
            pid = project.project.project_id
            before = await builds.create_build(
                build_pb.CreateBuildRequest(project_id=pid), headers=h
            )

            await relay.cut()
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(ConnectError) as raised:
                    await builds.create_build(
                        build_pb.CreateBuildRequest(project_id=pid), headers=h
                    )
                assert raised.value.code == Code.UNAVAILABLE
                assert "retry" in raised.value.message
                assert time.monotonic() - started < 30  # bounded, never a hang
            ready = await http.get("http://test/readyz")
            assert ready.status == 503

            await relay.restore()
            after = await builds.create_build(
                build_pb.CreateBuildRequest(project_id=pid), headers=h
            )
            listed = await builds.list_builds(build_pb.ListBuildsRequest(project_id=pid), headers=h)
            assert [b.build_id for b in listed.builds] == [after.build_id, before.build_id]
            assert (await http.get("http://test/readyz")).status == 200
    finally:
        await relay.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_connections_killed_while_idle_are_replaced_before_use(
    tmp_path: Path, database_url: str
) -> None:
    """PostgreSQL restarted, or an operator ended sessions: the pool's idle connections are
    dead. No call may fail for it: a dead connection is noticed when it is taken from the
    pool, and replaced."""
    settings = Settings(data_dir=tmp_path / "data", database=database_url)
    token = await prepare(settings)
    assert token is not None
    h = bearer(token)
    app = create_app(settings)
    async with ASGITransport(app) as transport:
        http = Client(transport)
        projects = ProjectServiceClient("http://test", http_client=http)
        builds = BuildServiceClient("http://test", http_client=http)
        project = await projects.create_project(
            project_pb.CreateProjectRequest(name="p", region_id="us-east-1"), headers=h
        )
        pid = project.project.project_id
        # Several calls at once, so the pool holds several idle connections.
        await asyncio.gather(
            *(
                builds.create_build(build_pb.CreateBuildRequest(project_id=pid), headers=h)
                for _ in range(8)
            )
        )
        ended = await _end_other_sessions(database_url)
        assert ended >= 2
        await asyncio.sleep(0.2)  # the server's goodbye reaches the pool's sockets
        failures = []
        for i in range(30):
            call = (
                builds.create_build(build_pb.CreateBuildRequest(project_id=pid), headers=h)
                if i % 2
                else builds.list_builds(build_pb.ListBuildsRequest(project_id=pid), headers=h)
            )
            try:
                await call
            except ConnectError as e:
                failures.append(e.code)
        assert failures == []


async def _end_other_sessions(database_url: str) -> int:
    """Terminate every session of the test database but this one (as a restart would)."""
    url = make_url(database_url).set(drivername="postgresql")
    connection = await asyncpg.connect(url.render_as_string(hide_password=False))
    try:
        return int(
            await connection.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    finally:
        await connection.close()
