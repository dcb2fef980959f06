"""Readiness, and a database outage in the domain's words (`Unavailable`)."""

from __future__ import annotations

import pytest

from depot_api.domain import errors
from depot_api.store.database import create_engine
from depot_api.store.errors import StoreUnavailable
from depot_api.wiring import Domain


def test_a_store_outage_is_unavailable_keeping_the_databases_error_for_the_log() -> None:
    cause = OSError("connection refused")
    try:
        raise StoreUnavailable("OSError") from cause
    except StoreUnavailable as e:
        outage = e
    reported = errors.as_domain_error(outage)
    assert isinstance(reported, errors.Unavailable)
    assert reported.message == "the database is busy or unreachable; retry shortly"
    assert reported.__cause__ is cause


@pytest.mark.parametrize("error", [errors.NotFound("x"), KeyError("a bug")])
def test_other_errors_are_reported_as_they_are(error: Exception) -> None:
    assert errors.as_domain_error(error) is error


async def test_a_migrated_database_is_healthy(domain: Domain) -> None:
    await domain.health.check()


async def test_a_database_that_is_not_migrated_is_unavailable(
    domain: Domain, database_url: str
) -> None:
    engine = create_engine(database_url)  # someone else wipes the schema under the server
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("DROP TABLE alembic_version")
    finally:
        await engine.dispose()
    with pytest.raises(errors.Unavailable) as raised:
        await domain.health.check()
    assert raised.value.message == "the database is busy or unreachable; retry shortly"
