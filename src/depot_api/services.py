"""The RPC services served: one entry each.

Everything else about them is derived from this table once, at start (app.py): the routes (by
each application's path), the interceptors (by each entry's guard), gRPC reflection and the
refusals' catalog (by the descriptors). Adding an RPC service is adding its entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from connectrpc.server import ConnectASGIApplication
from protobuf import DescFile

from depot_api.api.build_service import BuildServiceImpl
from depot_api.api.buildkit_service import BuildKitServiceImpl
from depot_api.api.cli_build_service import CliBuildServiceImpl
from depot_api.api.cli_projects_service import CliProjectsServiceImpl
from depot_api.api.cli_unserved import CliLoginServiceImpl, CliPushServiceImpl
from depot_api.api.core_build_service import CoreBuildServiceImpl
from depot_api.api.guard import Guard
from depot_api.api.insights_service import BuildInsightsServiceImpl
from depot_api.api.machine_service import MachineServiceImpl
from depot_api.api.organization_service import OrganizationServiceImpl
from depot_api.api.project_service import ProjectServiceImpl
from depot_api.api.public_url import PublicURL, origin
from depot_api.api.usage_service import UsageServiceImpl
from depot_api.config import Settings
from depot_api.gen.depot.build.v1 import build_connect, build_pb
from depot_api.gen.depot.buildkit.v1 import buildkit_connect, buildkit_pb
from depot_api.gen.depot.cli.v1 import build_connect as cli_build_connect
from depot_api.gen.depot.cli.v1 import build_pb as cli_build_pb
from depot_api.gen.depot.cli.v1 import push_connect, push_pb
from depot_api.gen.depot.cli.v1beta1 import login_connect, login_pb, projects_connect, projects_pb
from depot_api.gen.depot.core.v1 import build_connect as core_build_connect
from depot_api.gen.depot.core.v1 import build_pb as core_build_pb
from depot_api.gen.depot.core.v1 import (
    org_connect,
    org_pb,
    project_connect,
    project_pb,
    usage_connect,
    usage_pb,
)
from depot_api.gen.depotapi.insights.v1 import insights_connect, insights_pb
from depot_api.gen.depotapi.machine.v1 import machine_connect, machine_pb
from depot_api.wiring import Domain


@dataclass(frozen=True, slots=True)
class Service:
    # The generated ASGI application class (…ServiceASGIApplication).
    application: Callable[..., ConnectASGIApplication[Any]]
    implementation: object
    # The .proto file that declares the service: for reflection and the refusals' messages.
    descriptor: DescFile
    guard: Guard = Guard.TOKEN


def public_url_of(settings: Settings) -> PublicURL:
    scheme = "https" if settings.tls_cert is not None else "http"
    return PublicURL(settings.public_url, origin(scheme, settings.host, settings.port))


def served(domain: Domain, settings: Settings) -> tuple[Service, ...]:
    heartbeat_ms = int(settings.machine_heartbeat.total_seconds() * 1000)
    return (
        Service(
            project_connect.ProjectServiceASGIApplication,
            ProjectServiceImpl(domain.projects, domain.tokens, domain.trust_policies),
            project_pb.desc(),
        ),
        Service(
            build_connect.BuildServiceASGIApplication,
            BuildServiceImpl(domain.builds, domain.insights),
            build_pb.desc(),
        ),
        Service(
            core_build_connect.BuildServiceASGIApplication,
            CoreBuildServiceImpl(
                domain.builds, domain.insights, domain.shares, public_url_of(settings)
            ),
            core_build_pb.desc(),
        ),
        Service(
            usage_connect.UsageServiceASGIApplication,
            UsageServiceImpl(domain.usage),
            usage_pb.desc(),
        ),
        Service(
            insights_connect.BuildInsightsServiceASGIApplication,
            BuildInsightsServiceImpl(domain.insights),
            insights_pb.desc(),
        ),
        Service(
            org_connect.OrganizationServiceASGIApplication,
            OrganizationServiceImpl(domain.organizations),
            org_pb.desc(),
        ),
        Service(
            buildkit_connect.BuildKitServiceASGIApplication,
            BuildKitServiceImpl(domain.endpoints),
            buildkit_pb.desc(),
        ),
        Service(
            machine_connect.MachineServiceASGIApplication,
            MachineServiceImpl(domain.machines, domain.connections, domain.insights, heartbeat_ms),
            machine_pb.desc(),
            Guard.MACHINE,
        ),
        Service(
            cli_build_connect.BuildServiceASGIApplication,
            CliBuildServiceImpl(
                domain.builds, domain.endpoints, domain.build_reports, settings.build_url
            ),
            cli_build_pb.desc(),
        ),
        Service(
            projects_connect.ProjectsServiceASGIApplication,
            CliProjectsServiceImpl(domain.projects, domain.organizations),
            projects_pb.desc(),
        ),
        Service(push_connect.PushServiceASGIApplication, CliPushServiceImpl(), push_pb.desc()),
        Service(
            login_connect.LoginServiceASGIApplication,
            CliLoginServiceImpl(),
            login_pb.desc(),
            Guard.NONE,
        ),
    )
