"""Domain tests run on a real database (SQLite and PostgreSQL) with a clock the test moves by
hand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from depot_api.config import Settings
from depot_api.domain.principal import Principal
from depot_api.models import TokenKind
from depot_api.store.engine import open_store
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
async def domain(tmp_path: Path, database_url: str, clock: Clock) -> AsyncIterator[Domain]:
    settings = Settings(
        data_dir=tmp_path, database=database_url, build_token_grace=timedelta(seconds=60)
    )
    store = await open_store(database_url)
    try:
        yield build_domain(store, settings, now=clock)
    finally:
        await store.close()


@pytest.fixture
async def admin(domain: Domain) -> Principal:
    org = await domain.organizations.create("acme")
    return Principal("t", TokenKind.ORG, frozenset({org.id}))
