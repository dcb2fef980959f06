"""depotapi.insights.v1.BuildInsightsService: status messages of a build run on BuildKit
elsewhere, uploaded by `depot-api report-build` with the build's token."""

from __future__ import annotations

from depot_api.api.guard import Context, current_principal
from depot_api.api.status_messages import decode_status_messages
from depot_api.domain.insights import Insights
from depot_api.gen.depotapi.insights.v1 import insights_connect
from depot_api.gen.depotapi.insights.v1 import insights_pb as pb


class BuildInsightsServiceImpl(insights_connect.BuildInsightsService):
    def __init__(self, insights: Insights) -> None:
        self._insights = insights

    async def upload_build_status(
        self, request: pb.UploadBuildStatusRequest, ctx: Context
    ) -> pb.UploadBuildStatusResponse:
        # Decoded whole before anything is merged: a malformed message stores nothing.
        messages = decode_status_messages(request.status_responses, "status_responses")
        result = await self._insights.upload(current_principal(), request.build_id, messages)
        return pb.UploadBuildStatusResponse(merged=result.merged, repeated=result.repeated)
