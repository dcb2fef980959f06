"""End-to-end fixtures: one real `depot-api serve` process per test session, and a fresh
organization (with its own org token) per test, so tests never see each other's data."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import BIN, ServerProcess, running_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("e2e") / "data") as process:
        yield process


@dataclass
class Org:
    id: str
    token: str


def admin(data_dir: Path, *args: str) -> str:
    """Run `depot-api admin …` on the data directory and return its last output line."""
    result = subprocess.run(
        [str(BIN / "depot-api"), "admin", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture
def org(server: ServerProcess, request: pytest.FixtureRequest) -> Org:
    org_id = admin(server.data_dir, "create-org", "--name", request.node.name[:100])
    token = admin(server.data_dir, "create-token", "--org", org_id, "--description", "e2e")
    return Org(id=org_id, token=token)
