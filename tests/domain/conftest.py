"""Domain tests run on a real database (SQLite and PostgreSQL) with a clock the test moves by
hand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from depot_api.config import Settings
from depot_api.domain.principal import Principal
from depot_api.models import TokenKind
from depot_api.store import open_store
from depot_api.wiring import Domain, build_domain


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def domain_settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path, database=database_url, build_token_grace=timedelta(seconds=60)
    )


@pytest.fixture
async def domain(domain_settings: Settings, clock: Clock) -> AsyncIterator[Domain]:
    store = open_store(domain_settings.database_url)
    await store.migrate()
    built = build_domain(store, domain_settings, now=clock)
    try:
        yield built
    finally:
        await built.endpoints.close()
        await store.close()


@pytest.fixture
async def patient_domain(
    domain: Domain, domain_settings: Settings, clock: Clock
) -> AsyncIterator[Domain]:
    """The domain of a server started with --wait-for-machines, over the same database."""
    patient = build_domain(
        domain.store, replace(domain_settings, wait_for_machines=True), now=clock
    )
    try:
        yield patient
    finally:
        await patient.endpoints.close()


@pytest.fixture
async def admin(domain: Domain) -> Principal:
    org = await domain.organizations.create("acme")
    return Principal("t", TokenKind.ORG, frozenset({org.id}))
