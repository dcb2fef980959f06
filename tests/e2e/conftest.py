"""End-to-end fixtures: one real `depot-api serve` process per test session, and a fresh
organization (with its own org token) per test, so tests never see each other's data."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.databases import BACKENDS, database
from tests.e2e.browser import browser  # noqa: F401  (a fixture for the console's tests)
from tests.helpers import BIN, ServerProcess, running_server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test in this folder `e2e`, so `pytest -m "not e2e"` runs the fast rest."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One server per backend: every end-to-end test runs on SQLite and on PostgreSQL."""
    data_dir = tmp_path_factory.mktemp(f"e2e-{request.param}") / "data"
    data_dir.mkdir(mode=0o700)
    with (
        database(request.param, data_dir) as url,
        running_server(data_dir, "--database", url) as process,
    ):
        yield process


@dataclass
class Org:
    id: str
    token: str


def admin(server: ServerProcess, *args: str) -> str:
    """Run `depot-api admin …` on the server's database and return its last output line."""
    result = subprocess.run(
        [
            str(BIN / "depot-api"),
            "admin",
            *args,
            "--data-dir",
            str(server.data_dir),
            "--database",
            server.database,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture
def org(server: ServerProcess, request: pytest.FixtureRequest) -> Org:
    org_id = admin(server, "create-org", "--name", request.node.name[:100])
    token = admin(server, "create-token", "--org", org_id, "--description", "e2e")
    return Org(id=org_id, token=token)
