"""The ASGI application's own routes."""

from __future__ import annotations

import sqlite3
from contextlib import closing

from .conftest import InProcessAPI


async def test_healthz(api: InProcessAPI) -> None:
    response = await api.http.get("http://test/healthz")
    assert (response.status, response.content) == (200, b"ok\n")


async def test_readyz_checks_the_database(api: InProcessAPI) -> None:
    response = await api.http.get("http://test/readyz")
    assert (response.status, response.content) == (200, b"ready\n")


async def test_readyz_reports_a_database_that_is_not_usable(api: InProcessAPI) -> None:
    # Another process wipes the schema under the running server.
    with closing(sqlite3.connect(api.settings.data_dir / "depot-api.sqlite3")) as db:
        db.execute("DROP TABLE alembic_version")
    response = await api.http.get("http://test/readyz")
    assert response.status == 503
    assert response.content == b"database unavailable\n"


async def test_unknown_paths_are_404(api: InProcessAPI) -> None:
    response = await api.http.get("http://test/nope")
    assert response.status == 404
