"""depotapi.machine.v1.MachineService: what the agents on BuildKit hosts call."""

from __future__ import annotations

from typing import Literal

from protobuf import Oneof

from depot_api.api.convert import time_of
from depot_api.api.guard import Context, current_principal
from depot_api.api.platforms import platform_from_wire
from depot_api.api.status_messages import decode_status_messages
from depot_api.domain.connections import Connections, ReportedConnection
from depot_api.domain.insights import Insights, ReportedBuild
from depot_api.domain.machines import Assignment, HealthReport, Machines, Stop
from depot_api.gen.depotapi.machine.v1 import machine_connect
from depot_api.gen.depotapi.machine.v1 import machine_pb as pb
from depot_api.models import InsightsFlags


class MachineServiceImpl(machine_connect.MachineService):
    def __init__(
        self,
        machines: Machines,
        connections: Connections,
        insights: Insights,
        heartbeat_interval_ms: int,
    ) -> None:
        self._machines = machines
        self._connections = connections
        self._insights = insights
        self._interval_ms = heartbeat_interval_ms

    async def register(self, request: pb.RegisterRequest, ctx: Context) -> pb.RegisterResponse:
        machine = await self._machines.register(
            current_principal(),
            platform_from_wire(request.platform),
            request.endpoint,
            request.capacity,
        )
        return pb.RegisterResponse(machine_id=machine.id, heartbeat_interval_ms=self._interval_ms)

    async def heartbeat(self, request: pb.HeartbeatRequest, ctx: Context) -> pb.HeartbeatResponse:
        desired = await self._machines.heartbeat(
            current_principal(),
            request.machine_id,
            HealthReport(
                running_binding_id=request.running_binding_id,
                buildkit_ready=request.buildkit_ready,
                disk_used_bytes=request.disk_used_bytes,
                buildkit_error=request.buildkit_error,
            ),
        )
        if isinstance(desired, Assignment):
            assignment: Oneof[Literal["assignment"], pb.HeartbeatResponse.Assignment] = Oneof(
                "assignment",
                pb.HeartbeatResponse.Assignment(
                    binding_id=desired.binding_id,
                    project_id=desired.project_id,
                    cache_generation=desired.cache_generation,
                    server_cert=desired.server_cert,
                    server_key=desired.server_key,
                    ca_cert=desired.ca_cert,
                    server_name=desired.server_name,
                    keep_gb=desired.keep_gb,
                    keep_days=desired.keep_days,
                ),
            )
            return pb.HeartbeatResponse(desired=assignment)
        if isinstance(desired, Stop):
            return pb.HeartbeatResponse(desired=_STOP)
        return pb.HeartbeatResponse(desired=_IDLE)

    async def admit_connection(
        self, request: pb.AdmitConnectionRequest, ctx: Context
    ) -> pb.AdmitConnectionResponse:
        admission = await self._connections.admit(
            current_principal(), request.machine_id, request.binding_id, request.build_id
        )
        return pb.AdmitConnectionResponse(admitted=admission.admitted, refusal=admission.refusal)

    async def report_connections(
        self, request: pb.ReportConnectionsRequest, ctx: Context
    ) -> pb.ReportConnectionsResponse:
        await self._connections.report(
            current_principal(),
            request.machine_id,
            [_reported(i, report) for i, report in enumerate(request.connections)],
        )
        return pb.ReportConnectionsResponse()

    async def report_build_status(
        self, request: pb.ReportBuildStatusRequest, ctx: Context
    ) -> pb.ReportBuildStatusResponse:
        # Every message of every build is decoded before anything is merged: a malformed one
        # refuses the whole call.
        reports = [
            ReportedBuild(
                build_id=batch.build_id,
                messages=decode_status_messages(
                    batch.status_responses, f"builds[{index}].status_responses"
                ),
                flags=InsightsFlags(dropped=batch.dropped, side_listener=batch.side_listener),
            )
            for index, batch in enumerate(request.builds)
        ]
        await self._insights.report_from_machine(current_principal(), request.machine_id, reports)
        return pb.ReportBuildStatusResponse()


def _reported(index: int, report: pb.ConnectionReport) -> ReportedConnection:
    return ReportedConnection(
        connection_id=report.connection_id,
        build_id=report.build_id,
        binding_id=report.binding_id,
        peer=report.peer,
        opened_at=time_of(report.opened_at, f"connections[{index}].opened_at"),
        closed_at=time_of(report.closed_at, f"connections[{index}].closed_at"),
        admitted=report.admitted,
        refusal=report.refusal,
        bytes_from_client=report.bytes_from_client,
        bytes_to_client=report.bytes_to_client,
    )


_STOP: Oneof[Literal["stop"], pb.HeartbeatResponse.Stop] = Oneof(
    "stop", pb.HeartbeatResponse.Stop()
)
_IDLE: Oneof[Literal["idle"], pb.HeartbeatResponse.Idle] = Oneof(
    "idle", pb.HeartbeatResponse.Idle()
)
