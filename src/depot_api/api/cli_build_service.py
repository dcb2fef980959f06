"""depot.cli.v1.BuildService: the build protocol of the official `depot` CLI (and depot-go).

The same builds, tokens and machines as every other layer, in the CLI's words: a build is
created with a person, organization or project token and then driven with its build token;
the machine is polled for (GetBuildKitConnection answers `pending` with a wait, then `active`);
health pings carry back `cancels_at` once the build has ended; progress arrives on a client
stream and is kept frame by frame. What needs a registry is answered `unimplemented`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from protobuf import Oneof

from depot_api.api.build_listing import builds_page
from depot_api.api.convert import (
    micros_timestamp,
    optional_micros_timestamp,
    optional_timestamp,
)
from depot_api.api.guard import Context, current_principal
from depot_api.api.platforms import platform_from_wire
from depot_api.domain.build_reports import BuildReports
from depot_api.domain.builds import Builds, Outcome
from depot_api.domain.endpoints import Active, Endpoints, Pending
from depot_api.domain.errors import InvalidArgument, NotFound
from depot_api.domain.ids import is_id, quoted
from depot_api.gen.depot.cli.v1 import build_connect
from depot_api.gen.depot.cli.v1 import build_pb as pb
from depot_api.models import Build, BuildStatus

_STATUS = {
    BuildStatus.RUNNING: pb.BuildStatus.RUNNING,
    BuildStatus.SUCCESS: pb.BuildStatus.FINISHED,
    BuildStatus.FAILED: pb.BuildStatus.FAILED,
    BuildStatus.ERROR: pb.BuildStatus.FAILED,
    BuildStatus.CANCELED: pb.BuildStatus.CANCELED,
}
_NO_REGISTRY = (
    "depot-api has no image registry: builds push to your own registry with --push; "
    "--load uses the local Docker daemon"
)


class CliBuildServiceImpl(build_connect.BuildService):
    def __init__(
        self, builds: Builds, endpoints: Endpoints, reports: BuildReports, build_url: str
    ) -> None:
        self._builds = builds
        self._endpoints = endpoints
        self._reports = reports
        self._build_url = build_url

    async def create_build(
        self, request: pb.CreateBuildRequest, ctx: Context
    ) -> pb.CreateBuildResponse:
        engine = request.required_engine.engine if request.required_engine else None
        if engine is not None and engine.field == "dagger":
            raise ConnectError(Code.UNIMPLEMENTED, "depot-api serves BuildKit builds, not Dagger")
        project_id = request.project_id or ""
        # The CLI starts its project picker on not_found, so a missing or impossible project
        # ID is reported as not found rather than as invalid.
        if not is_id(project_id):
            raise NotFound(
                f"project {quoted(project_id)} not found; pass --project or set DEPOT_PROJECT_ID"
                if project_id
                else "no project given; pass --project, set DEPOT_PROJECT_ID or add depot.json"
            )
        build, secret = await self._builds.create(current_principal(), project_id)
        return pb.CreateBuildResponse(
            build_id=build.id,
            build_token=secret,
            build_url=self._url(build),
            project_id=build.project_id,
        )

    async def get_build(self, request: pb.GetBuildRequest, ctx: Context) -> pb.GetBuildResponse:
        build = await self._builds.get(current_principal(), request.build_id)
        return pb.GetBuildResponse(
            build_id=build.id, project_id=build.project_id, build_url=self._url(build)
        )

    async def finish_build(
        self, request: pb.FinishBuildRequest, ctx: Context
    ) -> pb.FinishBuildResponse:
        await self._builds.finish(current_principal(), request.build_id, _outcome(request))
        return pb.FinishBuildResponse()

    async def get_build_kit_connection(
        self, request: pb.GetBuildKitConnectionRequest, ctx: Context
    ) -> pb.GetBuildKitConnectionResponse:
        platform = platform_from_wire(request.platform)
        answer = await self._endpoints.poll(current_principal(), request.build_id, platform)
        if isinstance(answer, Pending):
            return _pending(answer)
        return _active(answer)

    async def report_build_health(
        self, request: pb.ReportBuildHealthRequest, ctx: Context
    ) -> pb.ReportBuildHealthResponse:
        platform_from_wire(request.platform)
        ended = await self._endpoints.health(current_principal(), request.build_id)
        return pb.ReportBuildHealthResponse(cancels_at=optional_timestamp(ended))

    async def report_status_stream(
        self, request: AsyncIterator[pb.ReportStatusStreamRequest], ctx: Context
    ) -> pb.ReportStatusStreamResponse:
        sink = self._reports.sink(current_principal())
        async for frame in request:
            await sink.keep(frame.build_id, frame.to_binary())
        return pb.ReportStatusStreamResponse()

    async def report_status(
        self, request: pb.ReportStatusRequest, ctx: Context
    ) -> pb.ReportStatusResponse:
        # CLIs before v2.76.2 send each batch unary; the payload is the stream's frame.
        await self._reports.sink(current_principal()).keep(request.build_id, request.to_binary())
        return pb.ReportStatusResponse()

    async def report_timings(
        self, request: pb.ReportTimingsRequest, ctx: Context
    ) -> pb.ReportTimingsResponse:
        # Sent by CLIs before v2.40.0; accepted from the build's own callers and not kept.
        await self._builds.get(current_principal(), request.build_id)
        return pb.ReportTimingsResponse()

    async def report_build_context(
        self, request: pb.ReportBuildContextRequest, ctx: Context
    ) -> pb.ReportBuildContextResponse:
        # Sent by CLIs before v2.43.0; accepted from the build's own callers and not kept.
        await self._builds.get(current_principal(), request.build_id)
        return pb.ReportBuildContextResponse()

    async def list_builds(
        self, request: pb.ListBuildsRequest, ctx: Context
    ) -> pb.ListBuildsResponse:
        page = await builds_page(self._builds, request)
        return pb.ListBuildsResponse(
            builds=[_build_message(b) for b in page.items], next_page_token=page.next_page_token
        )

    async def get_pull_info(
        self, request: pb.GetPullInfoRequest, ctx: Context
    ) -> pb.GetPullInfoResponse:
        raise ConnectError(Code.UNIMPLEMENTED, _NO_REGISTRY)

    async def get_pull_token(
        self, request: pb.GetPullTokenRequest, ctx: Context
    ) -> pb.GetPullTokenResponse:
        raise ConnectError(Code.UNIMPLEMENTED, _NO_REGISTRY)

    def _url(self, build: Build) -> str:
        return self._build_url.format(project_id=build.project_id, build_id=build.id)


def _outcome(request: pb.FinishBuildRequest) -> Outcome:
    result = request.result
    if result is None:
        raise InvalidArgument("a result is required: success, error or canceled")
    if isinstance(result.value, pb.FinishBuildRequest.BuildError):
        return Outcome.failed(result.value.error)
    if isinstance(result.value, pb.FinishBuildRequest.BuildCanceled):
        return Outcome.canceled()
    return Outcome.success()


def _pending(pending: Pending) -> pb.GetBuildKitConnectionResponse:
    # Never zero: the CLI re-polls at once on wait_ms 0.
    wait_ms = max(int(pending.retry_after.total_seconds() * 1000), 1)
    choice: Oneof[Literal["pending"], pb.GetBuildKitConnectionResponse.PendingConnection] = Oneof(
        "pending", pb.GetBuildKitConnectionResponse.PendingConnection(wait_ms=wait_ms)
    )
    return pb.GetBuildKitConnectionResponse(connection=choice)


def _active(active: Active) -> pb.GetBuildKitConnectionResponse:
    choice: Oneof[Literal["active"], pb.GetBuildKitConnectionResponse.ActiveConnection] = Oneof(
        "active",
        pb.GetBuildKitConnectionResponse.ActiveConnection(
            endpoint=active.endpoint,
            server_name=active.server_name,
            cert=pb.Cert(cert=active.client_cert, key=active.client_key),
            ca_cert=pb.Cert(cert=active.ca_cert),
        ),
    )
    return pb.GetBuildKitConnectionResponse(connection=choice)


def _build_message(build: Build) -> pb.Build:
    return pb.Build(
        id=build.id,
        status=_STATUS[build.status],
        created_at=micros_timestamp(build.created_us),
        finished_at=optional_micros_timestamp(build.finished_us),
    )
