from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from depot_api.domain import builds as builds_module
from depot_api.domain import machines as machines_module
from depot_api.domain import organizations as organizations_module
from depot_api.domain import projects as projects_module
from depot_api.domain import tokens as tokens_module
from depot_api.domain.errors import InvalidArgument
from depot_api.domain.ids import is_id, new_id, quoted, require_id, with_fresh_ids
from depot_api.domain.principal import Principal
from depot_api.domain.token_format import PREFIXES, mint
from depot_api.models import Platform, TokenKind
from depot_api.store.errors import DuplicateKey
from depot_api.wiring import Domain

from ..factories import new_project


def test_new_ids_have_the_shape() -> None:
    assert all(is_id(new_id()) for _ in range(100))


def test_a_bad_id_is_echoed_short_and_printable() -> None:
    with pytest.raises(InvalidArgument, match=r'build_id "a\\nb" is not a valid ID'):
        require_id("a\nb", "build_id")
    assert quoted("x" * 100) == '"' + "x" * 40 + '…"'


def test_a_bad_id_is_echoed_in_its_own_script() -> None:
    """Only what would not print is escaped: "café" was echoed as "caf\\xe9"."""
    with pytest.raises(InvalidArgument) as refused:
        require_id("café", "project_id")
    assert refused.value.message.startswith('project_id "café" is not a valid ID')
    assert quoted("日本\u200b\ud800\t") == '"日本\\u200b\\ud800\\t"'


@pytest.mark.parametrize("kind", list(PREFIXES))
def test_a_token_secret_in_an_id_field_is_not_echoed(kind: TokenKind) -> None:
    secret = mint(kind)
    with pytest.raises(InvalidArgument) as refused:
        require_id(secret, "build_id")
    assert secret[4:10] not in refused.value.message
    assert f'"{secret[:4]}…" (a token secret, not repeated here)' in refused.value.message


async def test_an_insert_that_clashes_is_run_again_with_fresh_ids() -> None:
    made: list[str] = []

    async def insert() -> str:
        made.append(new_id())
        if len(made) < 3:
            raise DuplicateKey(made[-1])
        return made[-1]

    assert await with_fresh_ids(insert) == made[-1]
    assert len(made) == 3 and len(set(made)) == 3


async def test_the_third_clash_in_a_row_is_raised() -> None:
    attempts = 0

    async def insert() -> None:
        nonlocal attempts
        attempts += 1
        raise DuplicateKey("a1b2c3d4e5")

    with pytest.raises(DuplicateKey):
        await with_fresh_ids(insert)
    assert attempts == 3


async def test_a_build_whose_new_id_is_taken_gets_another(
    domain: Domain, admin: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = await new_project(domain, admin)
    taken, _ = await domain.builds.create(admin, project)
    fresh = iter([taken.id])  # the first ID the next build draws is the taken one
    monkeypatch.setattr(builds_module, "new_id", lambda: next(fresh, None) or new_id())
    build, secret = await domain.builds.create(admin, project)
    assert build.id != taken.id
    assert (await domain.authenticator.authenticate(f"Bearer {secret}")).build_id == build.id


async def test_a_token_whose_new_id_is_taken_gets_another(
    domain: Domain, admin: Principal, monkeypatch: pytest.MonkeyPatch
) -> None:
    org_id = next(iter(admin.org_ids))
    taken, _ = await domain.tokens.create_org_token(org_id, "first")
    fresh = iter([taken.id])
    monkeypatch.setattr(tokens_module, "new_id", lambda: next(fresh, None) or new_id())
    token, secret = await domain.tokens.create_org_token(org_id, "second")
    assert token.id != taken.id
    assert (await domain.authenticator.authenticate(f"Bearer {secret}")).token_id == token.id


@pytest.mark.parametrize("kind", ["organization", "user", "machine", "project"])
async def test_whatever_is_made_with_a_taken_id_gets_another(
    domain: Domain, admin: Principal, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Organizations, users and machines let the database's IntegrityError through on a clash
    (`internal` for the caller), and a project answered `already_exists`; now each draws
    another ID, as builds and tokens did."""
    token, _ = await domain.tokens.create_machine_token("agents")
    agent = Principal(token.id, TokenKind.MACHINE, frozenset())
    make: dict[str, tuple[Any, Callable[[], Awaitable[Any]]]] = {
        "organization": (organizations_module, lambda: domain.organizations.create("o")),
        "user": (organizations_module, lambda: domain.organizations.create_user("u")),
        "machine": (
            machines_module,
            lambda: domain.machines.register(agent, Platform.AMD64, "10.0.0.1:1", 1),
        ),
        "project": (
            projects_module,
            lambda: domain.projects.create(
                admin,
                name=new_id(),
                region_id="us-east-1",
                organization_id=None,
                cache_policy=None,
                hardware=None,
            ),
        ),
    }
    module, create = make[kind]
    taken = (await create()).id
    fresh = iter([taken])
    monkeypatch.setattr(module, "new_id", lambda: next(fresh, None) or new_id())
    assert (await create()).id != taken
