"""depot.core.v1.BuildService: the real read side of builds (STATUS_* names, paging)."""

from __future__ import annotations

from depot_api.api.build_listing import builds_page
from depot_api.api.convert import (
    micros_timestamp,
    optional_micros_timestamp,
)
from depot_api.api.guard import Context, current_principal
from depot_api.api.public_url import PublicURL
from depot_api.domain.builds import Builds, duration_seconds
from depot_api.domain.insights import Insights
from depot_api.domain.shares import Shares
from depot_api.gen.depot.core.v1 import build_connect
from depot_api.gen.depot.core.v1 import build_pb as pb
from depot_api.models import Build, BuildInsights, BuildStatus

_STATUS = {
    BuildStatus.RUNNING: pb.Build.Status.RUNNING,
    BuildStatus.SUCCESS: pb.Build.Status.SUCCESS,
    BuildStatus.FAILED: pb.Build.Status.FAILED,
    BuildStatus.ERROR: pb.Build.Status.ERROR,
    BuildStatus.CANCELED: pb.Build.Status.CANCELED,
}


class CoreBuildServiceImpl(build_connect.BuildService):
    def __init__(
        self, builds: Builds, insights: Insights, shares: Shares, public_url: PublicURL
    ) -> None:
        self._builds = builds
        self._insights = insights
        self._shares = shares
        self._public_url = public_url

    async def share_build(
        self, request: pb.ShareBuildRequest, ctx: Context
    ) -> pb.ShareBuildResponse:
        secret = await self._shares.share(current_principal(), request.build_id)
        return pb.ShareBuildResponse(share_url=self._public_url.share_link(secret))

    async def stop_sharing_build(
        self, request: pb.StopSharingBuildRequest, ctx: Context
    ) -> pb.StopSharingBuildResponse:
        await self._shares.stop(current_principal(), request.build_id)
        return pb.StopSharingBuildResponse()

    async def list_builds(
        self, request: pb.ListBuildsRequest, ctx: Context
    ) -> pb.ListBuildsResponse:
        page = await builds_page(self._builds, request)
        counters = await self._insights.counters(page.items)
        return pb.ListBuildsResponse(
            builds=[build_message(b, counters.get(b.id)) for b in page.items],
            next_page_token=page.next_page_token,
        )

    async def get_build(self, request: pb.GetBuildRequest, ctx: Context) -> pb.GetBuildResponse:
        build = await self._builds.get(current_principal(), request.build_id)
        counters = await self._insights.counters([build])
        return pb.GetBuildResponse(build=build_message(build, counters.get(build.id)))


def build_message(build: Build, insights: BuildInsights | None) -> pb.Build:
    """The build with its insights counters when it has any (absent otherwise: nothing was
    reported of its steps)."""
    duration = duration_seconds(build)
    return pb.Build(
        build_id=build.id,
        status=_STATUS[build.status],
        created_at=micros_timestamp(build.created_us),
        started_at=optional_micros_timestamp(build.started_us),
        finished_at=optional_micros_timestamp(build.finished_us),
        # The real field is an int32 of whole seconds.
        build_duration_seconds=None if duration is None else round(duration),
        saved_duration_seconds=None if insights is None else round(insights.saved_us / 1e6),
        cached_steps=None if insights is None else insights.cached_steps,
        total_steps=None if insights is None else insights.total_steps,
    )
