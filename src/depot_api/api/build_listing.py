"""ListBuilds, served three times: as the seed has it (depot.build.v1), as Depot has it
(depot.core.v1) and as the depot CLI calls it (depot.cli.v1). The three requests carry the same
three fields with the same meaning, so one path reads them; each service answers with its own
message for a build.

The paging rules are the domain's (Builds.list): a page size of 0 (or absent) is the default
page of 100 builds, at most 1000 may be asked for; an empty page token is the first page, a
token is one this listing returned. Newest build first. The CLI sets neither field and shows
the first page only.
"""

from __future__ import annotations

from typing import Protocol

from depot_api.api.guard import current_principal
from depot_api.domain.builds import Builds
from depot_api.models import Build, Page


class ListBuildsRequest(Protocol):
    @property
    def project_id(self) -> str: ...

    @property
    def page_size(self) -> int: ...

    @property
    def page_token(self) -> str: ...


async def builds_page(builds: Builds, request: ListBuildsRequest) -> Page[Build]:
    """The page of the project's builds that request asks for, as its caller may see it."""
    return await builds.list(
        current_principal(), request.project_id, request.page_size, request.page_token
    )
