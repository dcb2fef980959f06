"""depot.build.v1.BuildService: CreateBuild, FinishBuild, GetBuildSteps and GetBuildStepLogs
as Depot serves them, plus the seed's GetBuild and ListBuilds (a bare Build with
BUILD_STATUS_* names, and the build's insights counters)."""

from __future__ import annotations

from depot_api.api.build_listing import builds_page
from depot_api.api.convert import (
    micros_timestamp,
    optional_micros_timestamp,
)
from depot_api.api.guard import Context, current_principal
from depot_api.domain.builds import Builds, Outcome, duration_seconds
from depot_api.domain.errors import InvalidArgument
from depot_api.domain.insights import Insights
from depot_api.gen.depot.build.v1 import build_connect
from depot_api.gen.depot.build.v1 import build_pb as pb
from depot_api.models import Build, BuildInsights, BuildStatus, BuildStep

_SEED_STATUS = {
    BuildStatus.RUNNING: pb.BuildStatus.RUNNING,
    BuildStatus.SUCCESS: pb.BuildStatus.FINISHED,
    BuildStatus.FAILED: pb.BuildStatus.FAILED,
    BuildStatus.ERROR: pb.BuildStatus.FAILED,
    BuildStatus.CANCELED: pb.BuildStatus.CANCELED,
}


class BuildServiceImpl(build_connect.BuildService):
    def __init__(self, builds: Builds, insights: Insights) -> None:
        self._builds = builds
        self._insights = insights

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

    async def get_build_steps(
        self, request: pb.GetBuildStepsRequest, ctx: Context
    ) -> pb.GetBuildStepsResponse:
        page = await self._insights.steps(
            current_principal(),
            request.project_id,
            request.build_id,
            request.page_size,
            request.page_token,
        )
        return pb.GetBuildStepsResponse(
            build_steps=[_step_message(step) for step in page.items],
            next_page_token=page.next_page_token or None,
        )

    async def get_build_step_logs(
        self, request: pb.GetBuildStepLogsRequest, ctx: Context
    ) -> pb.GetBuildStepLogsResponse:
        page = await self._insights.step_logs(
            current_principal(),
            request.project_id,
            request.build_id,
            request.build_step_digest,
            request.page_size,
            request.page_token,
        )
        return pb.GetBuildStepLogsResponse(
            logs=[
                pb.GetBuildStepLogsResponse.Log(
                    message=line.message, timestamp=micros_timestamp(line.at_us)
                )
                for line in page.items
            ],
            next_page_token=page.next_page_token or None,
        )

    async def get_build(self, request: pb.GetBuildRequest, ctx: Context) -> pb.Build:
        build = await self._builds.get(current_principal(), request.build_id)
        counters = await self._insights.counters([build])
        return seed_build_message(build, counters.get(build.id))

    async def list_builds(
        self, request: pb.ListBuildsRequest, ctx: Context
    ) -> pb.ListBuildsResponse:
        page = await builds_page(self._builds, request)
        counters = await self._insights.counters(page.items)
        return pb.ListBuildsResponse(
            builds=[seed_build_message(b, counters.get(b.id)) for b in page.items],
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


def seed_build_message(build: Build, insights: BuildInsights | None) -> pb.Build:
    return pb.Build(
        build_id=build.id,
        project_id=build.project_id,
        status=_SEED_STATUS[build.status],
        created_at=micros_timestamp(build.created_us),
        build_duration_seconds=duration_seconds(build),
        saved_duration_seconds=None if insights is None else insights.saved_us / 1_000_000,
        cached_steps=None if insights is None else insights.cached_steps,
        total_steps=None if insights is None else insights.total_steps,
        started_at=optional_micros_timestamp(build.started_us),
        finished_at=optional_micros_timestamp(build.finished_us),
    )


_CACHE_STATE = {
    True: pb.GetBuildStepsResponse.BuildStep.CacheState.CACHED,
    False: pb.GetBuildStepsResponse.BuildStep.CacheState.UNCACHED,
}


def _step_message(step: BuildStep) -> pb.GetBuildStepsResponse.BuildStep:
    return pb.GetBuildStepsResponse.BuildStep(
        name=step.name,
        digest=step.digest,
        # A step seen only through its logs has no start yet: the epoch, as an unset field
        # reads in the real API's clients.
        started_at=micros_timestamp(step.started_us or 0),
        completed_at=optional_micros_timestamp(step.completed_us),
        cache_state=_CACHE_STATE[step.cached],
        error=step.error or None,
        has_logs=step.has_logs,
    )
