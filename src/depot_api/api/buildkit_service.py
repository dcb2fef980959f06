"""depot.buildkit.v1.BuildKitService: a BuildKit machine for a build, kept alive, released."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal

from protobuf import Oneof

from depot_api.api.guard import Context, current_principal
from depot_api.api.platforms import platform_from_wire
from depot_api.domain.endpoints import Active, Endpoints
from depot_api.gen.depot.buildkit.v1 import buildkit_connect
from depot_api.gen.depot.buildkit.v1 import buildkit_pb as pb

_PENDING_CHOICE: Oneof[Literal["pending"], pb.GetEndpointResponse.PendingConnection] = Oneof(
    "pending", pb.GetEndpointResponse.PendingConnection()
)
_PENDING = pb.GetEndpointResponse(connection=_PENDING_CHOICE)


class BuildKitServiceImpl(buildkit_connect.BuildKitService):
    def __init__(self, endpoints: Endpoints) -> None:
        self._endpoints = endpoints

    async def get_endpoint(
        self, request: pb.GetEndpointRequest, ctx: Context
    ) -> AsyncIterator[pb.GetEndpointResponse]:
        platform = platform_from_wire(request.platform)
        async for event in self._endpoints.acquire(current_principal(), request.build_id, platform):
            yield active_message(event) if isinstance(event, Active) else _PENDING

    async def report_health(
        self, request: AsyncIterator[pb.ReportHealthRequest], ctx: Context
    ) -> pb.ReportHealthResponse:
        principal = current_principal()
        async for report in request:
            platform_from_wire(report.platform)
            await self._endpoints.report_health(principal, report.build_id)
        return pb.ReportHealthResponse()

    async def release_endpoint(
        self, request: pb.ReleaseEndpointRequest, ctx: Context
    ) -> pb.ReleaseEndpointResponse:
        await self._endpoints.release(
            current_principal(), request.build_id, platform_from_wire(request.platform)
        )
        return pb.ReleaseEndpointResponse()


def active_message(active: Active) -> pb.GetEndpointResponse:
    choice: Oneof[Literal["active"], pb.GetEndpointResponse.ActiveConnection] = Oneof(
        "active",
        pb.GetEndpointResponse.ActiveConnection(
            endpoint=active.endpoint,
            server_name=active.server_name,
            cert=pb.CertificatePair(
                cert=pb.PublicCertificate(cert=active.client_cert),
                key=pb.PrivateKey(key=active.client_key),
            ),
            ca_cert=pb.PublicCertificate(cert=active.ca_cert),
        ),
    )
    return pb.GetEndpointResponse(connection=choice)
