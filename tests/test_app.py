"""The ASGI application's own routes."""

from __future__ import annotations

import pytest

from depot_api.store.database import create_engine

from .conftest import InProcessAPI


async def test_healthz(api: InProcessAPI) -> None:
    response = await api.http.get("http://test/healthz")
    assert (response.status, response.content) == (200, b"ok\n")


async def test_readyz_checks_the_database(api: InProcessAPI) -> None:
    response = await api.http.get("http://test/readyz")
    assert (response.status, response.content) == (200, b"ready\n")


async def test_readyz_reports_a_database_that_is_not_usable(api: InProcessAPI) -> None:
    # Someone else wipes the schema under the running server.
    engine = create_engine(api.settings.database_url)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("DROP TABLE alembic_version")
    finally:
        await engine.dispose()
    response = await api.http.get("http://test/readyz")
    assert response.status == 503
    assert response.content == b"database unavailable\n"


async def test_unknown_paths_are_404_naming_the_path(api: InProcessAPI) -> None:
    response = await api.http.get("http://test/nope")
    assert response.status == 404
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.content == (
        b"/nope not found: RPCs are POSTed to /package.Service/Method; "
        b"the other paths are /healthz, /readyz, /openapi.yaml, /metrics, "
        b"and the console at /console/\n"
    )


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.yaml"])
async def test_plain_routes_refuse_other_methods_saying_which(api: InProcessAPI, path: str) -> None:
    response = await api.http.post(f"http://test{path}", content=b"{}")
    assert response.status == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.content == f"{path} is read with GET (or HEAD), not POST\n".encode()
    head = await api.http.head(f"http://test{path}")
    assert head.status == 200
