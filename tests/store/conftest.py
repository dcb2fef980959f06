"""Store tests: each aggregate against a real database (SQLite and PostgreSQL), through
open_store, with the records made here rather than through the domain."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from depot_api.domain.ids import new_id
from depot_api.models import (
    Build,
    BuildStatus,
    CachePolicy,
    Hardware,
    Machine,
    MachineState,
    Organization,
    Platform,
    Project,
    Token,
    TokenKind,
)
from depot_api.store import Store, open_store
from depot_api.times import to_micros

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """A moment, seconds after T0."""
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = open_store(database_url)
    await opened.migrate()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def second_store(store: Store, database_url: str) -> AsyncIterator[Store]:
    """Another process's store over the same database (its own connections)."""
    opened = open_store(database_url)
    try:
        yield opened
    finally:
        await opened.close()


async def new_org(store: Store, name: str = "acme", created: float = 0) -> Organization:
    org = Organization(id=new_id(), name=name, created_at=at(created))
    await store.orgs.insert_organization(org)
    return org


def project_record(org_id: str, name: str = "app", created: float = 0) -> Project:
    return Project(
        id=new_id(),
        org_id=org_id,
        name=name,
        region_id="us-east-1",
        hardware=Hardware.UNSPECIFIED,
        cache_policy=CachePolicy(keep_gb=50, keep_days=14),
        cache_generation=0,
        created_at=at(created),
    )


async def new_project(store: Store, org_id: str, name: str = "app", created: float = 0) -> Project:
    project = project_record(org_id, name, created)
    await store.projects.insert_project(project)
    return project


def token_record(
    kind: TokenKind,
    created: float = 0,
    *,
    org_id: str | None = None,
    user_id: str | None = None,
    project_id: str | None = None,
    build_id: str | None = None,
) -> Token:
    return Token(
        id=new_id(),
        kind=kind,
        secret_hash=secrets.token_hex(32),
        description="",
        created_at=at(created),
        org_id=org_id,
        user_id=user_id,
        project_id=project_id,
        build_id=build_id,
    )


def build_records(project: Project, created: float = 0) -> tuple[Build, Token]:
    build = Build(
        id=new_id(),
        project_id=project.id,
        org_id=project.org_id,
        status=BuildStatus.RUNNING,
        created_us=to_micros(at(created)),
    )
    token = token_record(
        TokenKind.BUILD,
        created,
        org_id=project.org_id,
        project_id=project.id,
        build_id=build.id,
    )
    return build, token


async def new_build(store: Store, project: Project, created: float = 0) -> Build:
    build, token = build_records(project, created)
    await store.builds.insert_build(build, token)
    return build


async def new_machine(
    store: Store, registered: float = 0, platform: Platform = Platform.AMD64
) -> Machine:
    token = token_record(TokenKind.MACHINE, registered)
    await store.orgs.insert_token(token)
    machine = Machine(
        id=new_id(),
        token_id=token.id,
        platform=platform,
        endpoint="10.0.0.1:1234",
        capacity=1,
        state=MachineState.ACTIVE,
        registered_at=at(registered),
        last_heartbeat_at=at(registered),
        changed_at=at(registered),
    )
    await store.machines.insert_machine(machine)
    return machine
