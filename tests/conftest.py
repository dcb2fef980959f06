"""Fixtures: an in-process application over a real SQLite file, with clients for every protocol."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from connectrpc.codec import proto_json_codec
from connectrpc.protocol import ProtocolType
from pyqwest import Client
from pyqwest.testing import ASGITransport

from depot_api.app import DepotAPI, create_app
from depot_api.config import Settings
from depot_api.gen.depot.build.v1.build_connect import BuildServiceClient
from depot_api.gen.depot.buildkit.v1.buildkit_connect import BuildKitServiceClient
from depot_api.gen.depot.cli.v1.build_connect import BuildServiceClient as CliBuildServiceClient
from depot_api.gen.depot.cli.v1.push_connect import PushServiceClient as CliPushServiceClient
from depot_api.gen.depot.cli.v1beta1.login_connect import (
    LoginServiceClient as CliLoginServiceClient,
)
from depot_api.gen.depot.cli.v1beta1.projects_connect import (
    ProjectsServiceClient as CliProjectsServiceClient,
)
from depot_api.gen.depot.core.v1.build_connect import BuildServiceClient as CoreBuildServiceClient
from depot_api.gen.depot.core.v1.org_connect import OrganizationServiceClient
from depot_api.gen.depot.core.v1.project_connect import ProjectServiceClient
from depot_api.gen.depot.core.v1.usage_connect import UsageServiceClient
from depot_api.gen.depotapi.insights.v1.insights_connect import BuildInsightsServiceClient
from depot_api.gen.depotapi.machine.v1.machine_connect import MachineServiceClient
from depot_api.startup import prepare

from .databases import BACKENDS, drop_reusable_databases, reusable_database
from .docker_engine import HOW_TO_DESELECT, DockerEngine, EngineUnavailable, running_engine

PROTOCOLS = {
    "connect-json": (ProtocolType.CONNECT, "json"),
    "connect-proto": (ProtocolType.CONNECT, "proto"),
    "grpc": (ProtocolType.GRPC, "proto"),
    "grpc-web": (ProtocolType.GRPC_WEB, "proto"),
}


@dataclass
class Clients:
    projects: ProjectServiceClient
    builds: BuildServiceClient
    core_builds: CoreBuildServiceClient
    organizations: OrganizationServiceClient
    buildkit: BuildKitServiceClient
    machines: MachineServiceClient
    cli_builds: CliBuildServiceClient
    cli_projects: CliProjectsServiceClient
    cli_push: CliPushServiceClient
    cli_login: CliLoginServiceClient
    usage: UsageServiceClient
    insights: BuildInsightsServiceClient


@dataclass
class InProcessAPI:
    app: DepotAPI
    settings: Settings
    org_token: str
    http: Client

    def clients(self, protocol: str = "connect-json") -> Clients:
        kind, codec = PROTOCOLS[protocol]
        options = {
            "protocol": kind,
            "codec": proto_json_codec() if codec == "json" else None,
            "http_client": self.http,
        }
        base = "http://test"
        return Clients(
            projects=ProjectServiceClient(base, **options),
            builds=BuildServiceClient(base, **options),
            core_builds=CoreBuildServiceClient(base, **options),
            organizations=OrganizationServiceClient(base, **options),
            buildkit=BuildKitServiceClient(base, **options),
            machines=MachineServiceClient(base, **options),
            cli_builds=CliBuildServiceClient(base, **options),
            cli_projects=CliProjectsServiceClient(base, **options),
            cli_push=CliPushServiceClient(base, **options),
            cli_login=CliLoginServiceClient(base, **options),
            usage=UsageServiceClient(base, **options),
            insights=BuildInsightsServiceClient(base, **options),
        )


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test that stores anything runs once on SQLite and once on PostgreSQL."""
    (tmp_path / "data").mkdir(mode=0o700)
    with reusable_database(request.param, tmp_path / "data") as url:
        yield url


@pytest.fixture
def sqlite_database_url(tmp_path: Path) -> Iterator[str]:
    """For a module whose tests are about process state, not storage: it overrides
    database_url with this, and runs on SQLite only."""
    (tmp_path / "data").mkdir(mode=0o700)
    with reusable_database("sqlite", tmp_path / "data") as url:
        yield url


@pytest.fixture(scope="session", autouse=True)
def _drop_reusable_databases() -> Iterator[None]:
    yield
    drop_reusable_databases()


# Set by CI, where the tests on the real BuildKit must run: deselecting them fails the run.
REQUIRE_BUILDKIT = "DEPOT_API_REQUIRE_BUILDKIT"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test on the private Docker Engine is a `buildkit` test, marked or not, so that
    `-m "not buildkit"` always deselects exactly the tests that need it."""
    for item in items:
        if "docker_engine" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.buildkit)


def pytest_deselected(items: list[pytest.Item]) -> None:
    if os.environ.get(REQUIRE_BUILDKIT) != "1":
        return
    dropped = [item.nodeid for item in items if item.get_closest_marker("buildkit")]
    if dropped:
        raise pytest.UsageError(
            f"{REQUIRE_BUILDKIT}=1, but {len(dropped)} buildkit tests were deselected "
            f"(the first: {dropped[0]}); they must run here"
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A buildkit test is never skipped: it runs, fails, or is deselected by its marker."""
    report: pytest.TestReport = yield
    if report.skipped and item.get_closest_marker("buildkit") and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"a buildkit test may not be skipped ({reason}); {HOW_TO_DESELECT}"
    return report


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """A private dockerd (the real BuildKit) for the whole session, with the base image."""
    try:
        with running_engine() as engine:
            yield engine
            return
    except EngineUnavailable as error:
        reason = str(error)
    # Outside the except block, so that the report is this line alone, with no chained error.
    pytest.fail(
        f"cannot start a private dockerd for the buildkit tests ({HOW_TO_DESELECT}): {reason}",
        pytrace=False,
    )


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database=database_url)


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[InProcessAPI]:
    org_token = await prepare(settings)
    assert org_token is not None
    app = create_app(settings)
    transport = ASGITransport(app)
    async with transport:
        http = Client(transport)
        yield InProcessAPI(app=app, settings=settings, org_token=org_token, http=http)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def raw_post(
    api: InProcessAPI, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    """POST raw bytes to the app; returns status, lower-cased headers and body."""
    response = await api.http.post(f"http://test{path}", headers=headers, content=body)
    return response.status, {k.lower(): v for k, v in response.headers.items()}, response.content
