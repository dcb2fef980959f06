"""depot.core.v1.UsageService: builds, build time, saved time and cache size per project over
a time window. GitHub Actions jobs and agent sandboxes are not run here: their lists are
empty."""

from __future__ import annotations

from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from depot_api.api.convert import time_of, timestamp
from depot_api.api.guard import Context, current_principal
from depot_api.domain.usage import Usage, Window
from depot_api.gen.depot.core.v1 import usage_connect
from depot_api.gen.depot.core.v1 import usage_pb as pb
from depot_api.models import ProjectUsage

_GB = 1024**3
# The cache's storage type in GetUsage's storage list.
CACHE_STORAGE_TYPE = "build-cache"


class UsageServiceImpl(usage_connect.UsageService):
    def __init__(self, usage: Usage) -> None:
        self._usage = usage

    async def list_project_usage(
        self, request: pb.ListProjectUsageRequest, ctx: Context
    ) -> pb.ListProjectUsageResponse:
        page = await self._usage.of_projects(
            current_principal(),
            self._window(request.start_at, request.end_at),
            request.page_size,
            request.page_token,
        )
        return pb.ListProjectUsageResponse(
            usage=[_project_usage(u) for u in page.items], next_page_token=page.next_page_token
        )

    async def get_project_usage(
        self, request: pb.GetProjectUsageRequest, ctx: Context
    ) -> pb.GetProjectUsageResponse:
        usage = await self._usage.of_project(
            current_principal(),
            request.project_id,
            self._window(request.start_at, request.end_at),
        )
        return pb.GetProjectUsageResponse(usage=_project_usage(usage))

    async def get_usage(self, request: pb.GetUsageRequest, ctx: Context) -> pb.GetUsageResponse:
        window = self._window(request.start_at, request.end_at)
        projects = await self._usage.of_organizations(current_principal(), window)
        return pb.GetUsageResponse(
            period_start=timestamp(window.start),
            period_end=timestamp(window.end),
            container_build=[
                pb.ContainerBuildUsage(
                    project_name=u.project_name,
                    build_count=u.build_count,
                    minutes_saved=u.saved_seconds / 60,
                    minutes_billed=u.build_seconds / 60,
                )
                for u in projects
            ],
            storage=[
                pb.StorageUsage(
                    storage_type=CACHE_STORAGE_TYPE,
                    total_gb=sum(u.cache_bytes for u in projects) / _GB,
                )
            ],
        )

    def _window(self, start: Timestamp | None, end: Timestamp | None) -> Window:
        return self._usage.window(time_of(start, "start_at"), time_of(end, "end_at"))


def _project_usage(u: ProjectUsage) -> pb.ProjectUsage:
    return pb.ProjectUsage(
        project_id=u.project_id,
        build_count=u.build_count,
        build_duration_seconds=round(u.build_seconds),
        # Whole gigabytes, rounded up: a cache that holds anything shows as at least 1.
        layer_cache_size_gb=-(-u.cache_bytes // _GB),
    )
