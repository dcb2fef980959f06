"""depot.build.v1.BuildService: CreateBuild and FinishBuild as Depot serves them, plus the
seed's GetBuild and ListBuilds (a bare Build with BUILD_STATUS_* names)."""

from __future__ import annotations

from depot_api.api.build_listing import builds_page
from depot_api.api.convert import (
    micros_timestamp,
    optional_micros_timestamp,
)
from depot_api.api.guard import Context, current_principal
from depot_api.domain.builds import Builds, Outcome, duration_seconds
from depot_api.domain.errors import InvalidArgument
from depot_api.gen.depot.build.v1 import build_connect
from depot_api.gen.depot.build.v1 import build_pb as pb
from depot_api.models import Build, BuildStatus

_SEED_STATUS = {
    BuildStatus.RUNNING: pb.BuildStatus.RUNNING,
    BuildStatus.SUCCESS: pb.BuildStatus.FINISHED,
    BuildStatus.FAILED: pb.BuildStatus.FAILED,
    BuildStatus.ERROR: pb.BuildStatus.FAILED,
    BuildStatus.CANCELED: pb.BuildStatus.CANCELED,
}


class BuildServiceImpl(build_connect.BuildService):
    def __init__(self, builds: Builds) -> None:
        self._builds = builds

    async def create_build(
        self, request: pb.CreateBuildRequest, ctx: Context
    ) -> pb.CreateBuildResponse:
        build, secret = await self._builds.create(current_principal(), request.project_id)
        return pb.CreateBuildResponse(build_id=build.id, build_token=secret)

    async def finish_build(
        self, request: pb.FinishBuildRequest, ctx: Context
    ) -> pb.FinishBuildResponse:
        await self._builds.finish(current_principal(), request.build_id, _outcome(request))
        return pb.FinishBuildResponse()

    async def get_build(self, request: pb.GetBuildRequest, ctx: Context) -> pb.Build:
        return seed_build_message(await self._builds.get(current_principal(), request.build_id))

    async def list_builds(
        self, request: pb.ListBuildsRequest, ctx: Context
    ) -> pb.ListBuildsResponse:
        page = await builds_page(self._builds, request)
        return pb.ListBuildsResponse(
            builds=[seed_build_message(b) for b in page.items],
            next_page_token=page.next_page_token,
        )


def _outcome(request: pb.FinishBuildRequest) -> Outcome:
    """The outcome, given the real way (top-level success/error) or the seed's (result.*)."""
    if request.outcome is not None and request.result is not None:
        raise InvalidArgument("give the outcome either as success/error or inside result, not both")
    choice = request.outcome if request.result is None else request.result.outcome
    if choice is None:
        raise InvalidArgument(
            'an outcome is required: "success": {} or "error": {"error": "…"} '
            '(or the same inside "result")'
        )
    if isinstance(choice.value, pb.FinishBuildRequest.BuildError):
        return Outcome.failed(choice.value.error)
    return Outcome.success()


def seed_build_message(build: Build) -> pb.Build:
    return pb.Build(
        build_id=build.id,
        project_id=build.project_id,
        status=_SEED_STATUS[build.status],
        created_at=micros_timestamp(build.created_us),
        build_duration_seconds=duration_seconds(build),
        started_at=optional_micros_timestamp(build.started_us),
        finished_at=optional_micros_timestamp(build.finished_us),
    )
