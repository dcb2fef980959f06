"""No token secret ever reaches the database file (or its write-ahead log) in clear."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect

from depot_api.domain.token_format import hash_secret
from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depot.core.v1 import project_pb
from depot_api.store.engine import create_engine

from .conftest import InProcessAPI, bearer


async def test_database_files_never_contain_a_secret(api: InProcessAPI) -> None:
    c = api.clients("connect-proto")
    h = bearer(api.org_token)
    secrets = [api.org_token]
    project = await c.projects.create_project(
        project_pb.CreateProjectRequest(name="p", region_id="us-east-1"), headers=h
    )
    pid = project.project.project_id
    for i in range(3):
        token = await c.projects.create_token(
            project_pb.CreateTokenRequest(project_id=pid, description=f"t{i}"), headers=h
        )
        secrets.append(token.secret)
        build = await c.builds.create_build(build_pb.CreateBuildRequest(project_id=pid), headers=h)
        secrets.append(build.build_token)

    d = api.app.domain
    org = await d.organizations.create("other")
    user = await d.organizations.create_user("u")
    await d.organizations.add_member(user.id, org.id)
    secrets.append((await d.tokens.create_org_token(org.id))[1])
    secrets.append((await d.tokens.create_user_token(user.id))[1])

    contents = await stored_bytes(api)
    for secret in secrets:
        assert secret.encode() not in contents
        # The body alone (without the prefix) must not be there either.
        assert secret[4:].encode() not in contents
    # The hashes are what is kept: at least the newest one is on disk somewhere.
    assert hash_secret(secrets[-1]).encode() in contents


async def stored_bytes(api: InProcessAPI) -> bytes:
    """Everything the database holds: SQLite's files byte for byte (free pages and the
    write-ahead log included), or every row of every table of PostgreSQL as text."""
    engine = create_engine(api.settings.database_url)
    try:
        if engine.dialect.name == "sqlite":
            files = [p for p in Path(api.settings.data_dir).iterdir() if "sqlite" in p.name]
            assert files, "no database files found"
            return b"".join(p.read_bytes() for p in files)
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
            assert "tokens" in tables
            dump = [
                str(row)
                for table in tables
                for row in await conn.exec_driver_sql(f'SELECT t::text FROM "{table}" t')
            ]
        return "\n".join(dump).encode()
    finally:
        await engine.dispose()
