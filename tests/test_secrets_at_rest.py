"""No token secret or private key ever reaches the database (its files, its write-ahead log)
in clear, nor the logs, nor an error message."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from connectrpc.errors import ConnectError
from sqlalchemy import inspect

from depot_api.domain.token_format import hash_secret
from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depot.core.v1 import build_pb as core_pb
from depot_api.gen.depot.core.v1 import project_pb
from depot_api.store.database import create_engine

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
        shared = await c.core_builds.share_build(
            core_pb.ShareBuildRequest(build_id=build.build_id), headers=h
        )
        # A share link's secret (kept hashed, and sealed so that ShareBuild can give it back).
        secrets.insert(1, shared.share_url.rsplit("/", 1)[1])

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


async def test_ca_private_keys_are_sealed_in_the_database(api: InProcessAPI) -> None:
    c = api.clients("connect-proto")
    h = bearer(api.org_token)
    project = await c.projects.create_project(
        project_pb.CreateProjectRequest(name="p", region_id="us-east-1"), headers=h
    )
    pid = project.project.project_id
    ca = await api.app.domain.endpoints._project_ca(pid)  # made on first use, then stored
    assert "PRIVATE KEY" in ca.key_pem
    contents = await stored_bytes(api)
    # The certificate is public and is stored as is (PostgreSQL's text dump escapes newlines).
    assert ca.cert_pem.splitlines()[1].encode() in contents
    assert b"PRIVATE KEY" not in contents
    for line in ca.key_pem.splitlines()[1:-1]:
        assert line.encode() not in contents


async def test_no_secret_reaches_the_logs_or_an_error_message(
    api: InProcessAPI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="depot_api")
    c = api.clients("connect-json")
    h = bearer(api.org_token)
    project = await c.projects.create_project(
        project_pb.CreateProjectRequest(name="p", region_id="us-east-1"), headers=h
    )
    pid = project.project.project_id
    token = await c.projects.create_token(
        project_pb.CreateTokenRequest(project_id=pid, description="ci"), headers=h
    )
    build = await c.builds.create_build(
        build_pb.CreateBuildRequest(project_id=pid), headers=bearer(token.secret)
    )
    secrets = [api.org_token, token.secret, build.build_token]
    ca = await api.app.domain.endpoints._project_ca(pid)

    # Calls that fail in every way a credential can: each message must not echo the secret.
    await c.projects.delete_token(project_pb.DeleteTokenRequest(token_id=token.token_id), headers=h)
    messages = []
    for header in (
        bearer(token.secret),  # revoked
        bearer(token.secret + "x"),  # malformed
        bearer(token.secret[:-1]),  # truncated
        {"authorization": token.secret},  # no scheme
        bearer(build.build_token),  # wrong kind for the call
    ):
        try:
            await c.projects.list_projects(project_pb.ListProjectsRequest(), headers=header)
        except ConnectError as e:
            messages.append(e.message)
        else:
            raise AssertionError(f"{header} was accepted")
    # A call that fails inside the domain, with a secret where an ID belongs.
    with pytest.raises(ConnectError) as not_an_id:
        await c.builds.get_build(build_pb.GetBuildRequest(build_id=build.build_token), headers=h)
    messages.append(not_an_id.value.message)
    everything = "\n".join([*messages, caplog.text])
    for secret in secrets:
        assert secret not in everything
        assert secret[4:-6] not in everything  # nor the random body alone
    for line in ca.key_pem.splitlines()[1:-1]:
        assert line not in everything
    assert "PRIVATE KEY" not in everything


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
