from __future__ import annotations

import pytest

from depot_api.gen.depot.core.v1 import project_pb

from .conftest import PROTOCOLS, InProcessAPI


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_create_and_list_project(api: InProcessAPI, protocol: str) -> None:
    c = api.clients(protocol)
    auth = {"authorization": f"Bearer {api.org_token}"}
    created = await c.projects.create_project(
        project_pb.CreateProjectRequest(name="p", region_id="us-east-1"), headers=auth
    )
    listed = await c.projects.list_projects(project_pb.ListProjectsRequest(), headers=auth)
    assert [p.project_id for p in listed.projects] == [created.project.project_id]
