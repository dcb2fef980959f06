"""The official `depot` CLI (npm @depot/cli-linux-x64, pinned in tests/e2e/node/package.json and
installed by `make install`) against a real server, with agents running the stand-in BuildKit
daemon: the project commands, `list builds`, `cache reset`, and `depot build` from creating the
build to BuildKit's readiness probe over mutual TLS, and the build's end as the CLI reported it.

The CLI talks to http:// URLs over HTTP/2 with prior knowledge, in Connect's binary protocol.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from protobuf import Oneof
from pyqwest import Client, HTTPTransport, HTTPVersion
from sqlalchemy import select

from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depot.cli.v1 import build_pb as cli_build_pb
from depot_api.gen.depot.cli.v1.build_connect import BuildServiceClient as CliBuildServiceClient
from depot_api.gen.depot.core.v1 import build_pb as core_build_pb
from depot_api.gen.depot.core.v1 import org_pb, project_pb
from depot_api.gen.depot.core.v1.org_connect import OrganizationServiceClient
from depot_api.models import Build, BuildStatus, StatusReport
from depot_api.store import Store, open_store, schema
from depot_api.store.database import create_engine
from tests.helpers import ServerProcess, running_server

from .machines import Api, Cluster, api, api_for, cluster

__all__ = ["api", "cluster"]

NODE_DIR = Path(__file__).resolve().parent / "node"
CLI_VERSION = "2.102.12"
DEPOT = NODE_DIR / "node_modules" / "@depot" / "cli-linux-x64" / "bin" / "depot"


@pytest.fixture(scope="module", autouse=True)
def depot_cli_installed() -> None:
    if not DEPOT.exists():
        pytest.fail("the depot CLI is not installed in tests/e2e/node: run `make install`")
    version = subprocess.run([str(DEPOT), "--version"], capture_output=True, text=True, check=True)
    assert f"depot version {CLI_VERSION} " in version.stdout, version.stdout


def depot(
    server_url: str, token: str, *args: str, home: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as CI would: no terminal, no config file, only the variables given here."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "DEPOT_API_URL": server_url,
        "DEPOT_TOKEN": token,
        "DEPOT_NO_UPDATE_NOTIFIER": "1",
        **(extra_env or {}),
    }
    home.mkdir(exist_ok=True)
    return subprocess.run(
        [str(DEPOT), *args], capture_output=True, text=True, env=env, cwd=home, timeout=120
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
async def store(cluster: Cluster) -> AsyncIterator[Store]:
    """The server's own database, to see what it kept."""
    opened = open_store(cluster.server.database)
    try:
        yield opened
    finally:
        await opened.close()


def _org_token(api: Api) -> str:
    return api.org["authorization"].removeprefix("Bearer ")


def _dockerfile(directory: Path) -> Path:
    directory.mkdir()
    (directory / "Dockerfile").write_text("FROM scratch\nCOPY hello /hello\n")
    (directory / "hello").write_text("hello\n")
    return directory


async def test_project_commands(cluster: Cluster, api: Api, home: Path) -> None:
    url, token = cluster.server.url, _org_token(api)

    created = json.loads(ok(depot(url, token, "projects", "create", "cli-made", home=home)))
    project_id = created["project_id"]
    assert created["name"] == "cli-made"
    assert created["cache_policy"] == {"keep_bytes": 50 * 2**30, "keep_days": 14}

    listed = list(csv.reader(io.StringIO(ok(depot(url, token, "projects", "list", home=home)))))
    assert listed == [["Project ID", "Name"], [project_id, "cli-made"]]

    shown = ok(depot(url, token, "projects", "get", project_id, home=home))
    assert f"Project ID:       {project_id}" in shown
    assert "Name:             cli-made" in shown
    assert "Cache storage:    50 GB" in shown

    updated = ok(
        depot(
            url, token, "projects", "update", project_id,
            "--name", "cli-renamed", "--cache-storage-policy", "20",
            home=home,
        )
    )  # fmt: skip
    assert "Name:             cli-renamed" in updated
    assert "Cache storage:    20 GB" in updated
    assert "Cache retention:  14 days" in updated  # kept: the CLI read it back first

    project = (
        await api.projects.get_project(
            project_pb.GetProjectRequest(project_id=project_id), headers=api.org
        )
    ).project
    org_name = (await _org_names(api))[project.organization_id]
    reset = ok(depot(url, token, "cache", "reset", "--project", project_id, home=home))
    assert reset.strip() == f"Cache reset for cli-renamed ({org_name})"

    deleted = ok(depot(url, token, "projects", "delete", "-p", project_id, "-y", home=home))
    assert f"Successfully deleted project {project_id}" in deleted
    assert ok(depot(url, token, "projects", "list", home=home)) == ""  # no header either
    missing = depot(url, token, "projects", "get", project_id, home=home)
    assert missing.returncode != 0
    assert "not_found" in missing.stderr + missing.stdout


async def test_login_and_pull_token_explain_themselves(
    cluster: Cluster, api: Api, home: Path
) -> None:
    url, token = cluster.server.url, _org_token(api)
    pull = depot(url, token, "pull-token", "--project", await api.project("p"), home=home)
    assert pull.returncode != 0
    assert "unimplemented: depot-api has no image registry" in pull.stderr
    # `depot org list` sends only the config file's token: with none, an empty Bearer.
    orgs = depot(url, token, "org", "list", home=home)
    assert orgs.returncode != 0
    assert "unauthenticated" in orgs.stderr


async def test_depot_build_reaches_buildkit_and_the_end_is_recorded(
    cluster: Cluster, api: Api, home: Path, tmp_path: Path, store: Store
) -> None:
    project_id = await api.project("cli-build")
    context = _dockerfile(tmp_path / "context")

    result = depot(
        cluster.server.url, _org_token(api), "build", "--project", project_id, str(context),
        home=home,
    )  # fmt: skip

    # The stand-in cannot build: the CLI fails after BuildKit's readiness probe succeeded.
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "[depot] launching amd64 machine" in output
    assert "[depot] connecting to amd64 machine" in output
    assert "standin-buildkitd cannot build" in output
    builds = (await api.builds.list_builds(_list(project_id), headers=api.org)).builds
    assert len(builds) == 1
    build_id = builds[0].build_id
    # The machine's front door admitted this build's client certificate (mutual TLS with
    # what the server issued), and its daemon answered (the readiness probe, then Solve).
    assert await _admitted(store, build_id)

    ended = await store.builds.get_build(build_id)
    assert ended is not None
    assert ended.status.value == "failed"
    assert ended.error_message is not None
    assert "standin-buildkitd cannot build" in ended.error_message
    assert ended.started_at is not None  # it got its machine

    # Progress was streamed and kept frame by frame: the CLI's bootstrap steps.
    names = _vertex_names(await store.builds.list_status_reports(build_id))
    assert "[depot] launching amd64 machine" in names
    assert "[depot] connecting to amd64 machine" in names
    # Health was reported (the first ping goes out as the CLI starts acquiring).
    assert await _last_health(cluster.server.database, build_id) is not None


async def test_depot_build_attaches_to_a_build_created_through_the_api(
    cluster: Cluster, api: Api, home: Path, tmp_path: Path, store: Store
) -> None:
    project_id = await api.project("sdk-created")
    created = await api.build(project_id)
    context = _dockerfile(tmp_path / "context")

    # As Depot documents it: DEPOT_BUILD_ID and the build token, no project flag.
    result = depot(
        cluster.server.url, created.build_token, "build", str(context),
        home=home, extra_env={"DEPOT_BUILD_ID": created.build_id},
    )  # fmt: skip

    assert result.returncode != 0
    assert "standin-buildkitd cannot build" in result.stdout + result.stderr
    assert await _admitted(store, created.build_id)
    ended = await store.builds.get_build(created.build_id)
    assert ended is not None
    assert ended.status.value == "failed"
    builds = (await api.builds.list_builds(_list(project_id), headers=api.org)).builds
    assert [b.build_id for b in builds] == [created.build_id]  # no second build was made


async def test_depot_build_with_no_agent_fails_at_once_saying_what_to_do(
    home: Path, tmp_path: Path
) -> None:
    """No agent ever registered: the CLI used to print "launching amd64 machine" and then
    nothing for the acquire timeout (300 s). Now the build fails within seconds (the CLI's own
    deadline here is 120 s) and the CLI prints what to do."""
    quick = {"DEPOT_API_MACHINE_HEARTBEAT": "0.2"}  # a short start-up grace
    with running_server(tmp_path / "data", env=quick) as server:
        project_id = await api_for(server, server.org_token).project("no-agent")
        context = _dockerfile(tmp_path / "context")
        result = depot(
            server.url, server.org_token, "build", "--project", project_id, str(context),
            home=home,
        )  # fmt: skip
        builds = await _builds_of(server, project_id)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "[depot] launching amd64 machine" in output
    assert "failed_precondition: no amd64 BuildKit machine to wait for" in output, output
    assert "depot-api agent --platform amd64" in output
    assert "--wait-for-machines" in output
    # The CLI finished its build with that error.
    assert [(b.status, "no amd64 BuildKit machine" in b.error_message) for b in builds] == [
        (BuildStatus.FAILED, True)
    ]


async def _builds_of(server: ServerProcess, project_id: str) -> list[Build]:
    opened = open_store(server.database)
    try:
        return await opened.builds.list_builds(project_id, None, 10)
    finally:
        await opened.close()


async def test_depot_build_without_a_project_fails_with_the_project_list(
    cluster: Cluster, api: Api, home: Path, tmp_path: Path
) -> None:
    await api.project("choose-me")
    context = _dockerfile(tmp_path / "context")
    result = depot(cluster.server.url, _org_token(api), "build", str(context), home=home)
    # not_found starts onboarding; without a terminal the CLI prints the projects and stops.
    assert result.returncode != 0
    assert "choose-me" in result.stdout + result.stderr


async def test_list_builds_shows_the_statuses_and_durations_the_server_holds(
    cluster: Cluster, api: Api, home: Path
) -> None:
    project_id = await api.project("listed")
    outcomes = {
        "finished": Oneof("success", build_pb.FinishBuildRequest.BuildSuccess()),
        "failed": Oneof("error", build_pb.FinishBuildRequest.BuildError(error="boom")),
    }
    expected_status: dict[str, str] = {}
    for status, outcome in outcomes.items():
        build = await api.build(project_id)
        if status == "failed":
            await asyncio.sleep(1.2)  # a duration that shows in whole seconds
        await api.builds.finish_build(
            build_pb.FinishBuildRequest(build_id=build.build_id, outcome=outcome),
            headers=api.org,
        )
        expected_status[build.build_id] = status
    canceled = await api.build(project_id)
    await _cancel_as_the_cli_does(api, canceled)
    expected_status[canceled.build_id] = "canceled"
    running = await api.build(project_id)
    expected_status[running.build_id] = "running"

    printed = ok(depot(cluster.server.url, _org_token(api), "list", "builds",
                       "--project", project_id, home=home))  # fmt: skip
    now = datetime.now(UTC)
    rows = list(csv.reader(io.StringIO(printed)))
    assert rows[0] == ["Build ID", "Status", "Started", "Duration (s)"]
    held = {
        b.build_id: b
        for b in (await api.core_builds.list_builds(_core_list(project_id), headers=api.org)).builds
    }
    assert [r[0] for r in rows[1:]] == list(reversed(expected_status))  # newest first
    for build_id, status, started, duration in rows[1:]:
        assert status == expected_status[build_id]
        created_at = held[build_id].created_at.to_datetime().astimezone(UTC)
        assert started == created_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        if status == "running":
            assert 0 <= int(duration) <= (now - created_at).total_seconds() + 1
        else:
            finished_at = held[build_id].finished_at.to_datetime().astimezone(UTC)
            assert int(duration) == int((finished_at - created_at).total_seconds())
    failed = next(r for r in rows[1:] if r[1] == "failed")
    assert int(failed[3]) >= 1


async def _cancel_as_the_cli_does(api: Api, build: build_pb.CreateBuildResponse) -> None:
    """As the CLI does on Ctrl-C: depot.cli.v1 FinishBuild{canceled} with the build token, in
    Connect's binary protocol over HTTP/2."""
    client = CliBuildServiceClient(
        api.url, http_client=Client(HTTPTransport(http_version=HTTPVersion.HTTP2))
    )
    await client.finish_build(
        cli_build_pb.FinishBuildRequest(
            build_id=build.build_id,
            result=Oneof("canceled", cli_build_pb.FinishBuildRequest.BuildCanceled()),
        ),
        headers={"authorization": f"Bearer {build.build_token}"},
    )


async def _admitted(store: Store, build_id: str) -> bool:
    """Whether a machine's front door reported an admitted connection of the build that the
    daemon answered (its agent reports ended connections with its next heartbeat)."""
    for _ in range(100):
        found = await store.connections.list_connections(
            machine_id=None, build_id=build_id, limit=10
        )
        if any(c.admitted and c.bytes_to_client > 0 and c.closed_at for c in found):
            return True
        await asyncio.sleep(0.1)
    return False


def _vertex_names(reports: list[StatusReport]) -> set[str]:
    names: set[str] = set()
    for report in reports:
        frame = cli_build_pb.ReportStatusStreamRequest.from_binary(report.report)
        for status in frame.statuses:
            names.update(v.name for v in status.vertexes)
    return names


async def _last_health(database_url: str, build_id: str) -> int | None:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            health: int | None = await conn.scalar(
                select(schema.builds.c.last_health_at).where(schema.builds.c.id == build_id)
            )
            return health
    finally:
        await engine.dispose()


async def _org_names(api: Api) -> dict[str, str]:
    client = OrganizationServiceClient(api.url, http_client=api.http)
    listed = await client.list_organizations(org_pb.ListOrganizationsRequest(), headers=api.org)
    return {o.org_id: o.name for o in listed.organizations}


def _list(project_id: str) -> build_pb.ListBuildsRequest:
    return build_pb.ListBuildsRequest(project_id=project_id)


def _core_list(project_id: str) -> core_build_pb.ListBuildsRequest:
    return core_build_pb.ListBuildsRequest(project_id=project_id)
