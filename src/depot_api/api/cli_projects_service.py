"""depot.cli.v1beta1.ProjectsService: the depot CLI's project list and cache reset."""

from __future__ import annotations

from depot_api.api.guard import Context, current_principal
from depot_api.domain.organizations import Organizations
from depot_api.domain.projects import Projects
from depot_api.gen.depot.cli.v1beta1 import projects_connect
from depot_api.gen.depot.cli.v1beta1 import projects_pb as pb


class CliProjectsServiceImpl(projects_connect.ProjectsService):
    def __init__(self, projects: Projects, organizations: Organizations) -> None:
        self._projects = projects
        self._organizations = organizations

    async def list_projects(
        self, request: pb.ListProjectsRequest, ctx: Context
    ) -> pb.ListProjectsResponse:
        projects = await self._projects.buildable(current_principal())
        org_names = await self._organizations.names({p.org_id for p in projects})
        return pb.ListProjectsResponse(
            projects=[
                pb.ListProjectsResponse.Project(
                    id=p.id, name=p.name, org_id=p.org_id, org_name=org_names.get(p.org_id, "")
                )
                for p in projects
            ]
        )

    async def reset_project_cache(
        self, request: pb.ResetProjectCacheRequest, ctx: Context
    ) -> pb.ResetProjectCacheResponse:
        principal = current_principal()
        await self._projects.reset(principal, request.project_id)
        project = await self._projects.get(principal, request.project_id)
        org_names = await self._organizations.names({project.org_id})
        return pb.ResetProjectCacheResponse(
            name=project.name, org_name=org_names.get(project.org_id, "")
        )
