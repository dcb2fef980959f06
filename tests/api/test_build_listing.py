"""The three ListBuilds (the seed's depot.build.v1, Depot's depot.core.v1, the depot CLI's
depot.cli.v1) page alike: one path reads their requests (api/build_listing.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from depot_api.config import Settings
from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depot.cli.v1 import build_pb as cli_build_pb
from depot_api.gen.depot.core.v1 import build_pb as core_build_pb

from ..conftest import Clients, InProcessAPI, bearer
from ..factories import new_project

# A page: its build IDs and the next page's token.
Page = tuple[list[str], str]
# A ListBuilds: (clients, project, page size, page token, headers) -> a page.
Listing = Callable[[Clients, str, int, str, dict[str, str]], Awaitable[Page]]


async def seed(c: Clients, project: str, size: int, token: str, h: dict[str, str]) -> Page:
    request = build_pb.ListBuildsRequest(project_id=project, page_size=size, page_token=token)
    page = await c.builds.list_builds(request, headers=h)
    return [b.build_id for b in page.builds], page.next_page_token


async def core(c: Clients, project: str, size: int, token: str, h: dict[str, str]) -> Page:
    request = core_build_pb.ListBuildsRequest(project_id=project, page_size=size, page_token=token)
    page = await c.core_builds.list_builds(request, headers=h)
    return [b.build_id for b in page.builds], page.next_page_token


async def cli(c: Clients, project: str, size: int, token: str, h: dict[str, str]) -> Page:
    request = cli_build_pb.ListBuildsRequest(project_id=project, page_size=size, page_token=token)
    page = await c.cli_builds.list_builds(request, headers=h)
    return [b.id for b in page.builds], page.next_page_token


LISTINGS: dict[str, Listing] = {"seed": seed, "core": core, "cli": cli}


@pytest.fixture
def database_url(sqlite_database_url: str) -> str:
    return sqlite_database_url  # the listing's SQL is tested on both engines elsewhere


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database=database_url, rate_limit=0)


async def three_builds(api: InProcessAPI) -> tuple[str, set[str]]:
    """A project with three builds; returns it and its builds."""
    admin = await api.app.domain.authenticator.authenticate(f"Bearer {api.org_token}")
    project = await new_project(api.app.domain, admin)
    builds = {(await api.app.domain.builds.create(admin, project))[0].id for _ in range(3)}
    return project, builds


@pytest.mark.parametrize("protocol", ["connect-json", "connect-proto"])
async def test_the_three_listings_page_alike(api: InProcessAPI, protocol: str) -> None:
    project, builds = await three_builds(api)
    clients, h = api.clients(protocol), bearer(api.org_token)
    newest_first, _ = await seed(clients, project, 0, "", h)
    assert set(newest_first) == builds
    for name, listing in LISTINGS.items():
        assert await listing(clients, project, 0, "", h) == (newest_first, ""), name
        first, token = await listing(clients, project, 2, "", h)
        assert first == newest_first[:2] and token, name
        # A token is a position in the listing: any of the three continues from it.
        for other in LISTINGS.values():
            assert await other(clients, project, 2, token, h) == (newest_first[2:], ""), name


@pytest.mark.parametrize("size", [-1, 1001])
@pytest.mark.parametrize("listing", LISTINGS.values(), ids=list(LISTINGS))
async def test_a_page_size_out_of_range_is_refused_alike(
    api: InProcessAPI, listing: Listing, size: int
) -> None:
    project, _ = await three_builds(api)
    with pytest.raises(ConnectError) as refused:
        await listing(api.clients(), project, size, "", bearer(api.org_token))
    assert refused.value.code == Code.INVALID_ARGUMENT
    assert refused.value.message == f"pageSize must be between 1 and 1000, got {size}"


@pytest.mark.parametrize("listing", LISTINGS.values(), ids=list(LISTINGS))
async def test_a_page_token_from_elsewhere_is_refused_alike(
    api: InProcessAPI, listing: Listing
) -> None:
    project, _ = await three_builds(api)
    with pytest.raises(ConnectError) as refused:
        await listing(api.clients(), project, 0, "garbage", bearer(api.org_token))
    assert refused.value.code == Code.INVALID_ARGUMENT
    assert refused.value.message == "pageToken is not a page token returned by this listing"
