"""depot.core.v1.OrganizationService: the organizations the caller acts in."""

from __future__ import annotations

from depot_api.api.convert import timestamp
from depot_api.api.guard import Context, current_principal
from depot_api.domain.organizations import Organizations
from depot_api.gen.depot.core.v1 import org_connect
from depot_api.gen.depot.core.v1 import org_pb as pb


class OrganizationServiceImpl(org_connect.OrganizationService):
    def __init__(self, organizations: Organizations) -> None:
        self._organizations = organizations

    async def list_organizations(
        self, request: pb.ListOrganizationsRequest, ctx: Context
    ) -> pb.ListOrganizationsResponse:
        orgs = await self._organizations.visible_to(current_principal())
        return pb.ListOrganizationsResponse(
            organizations=[
                pb.ListOrganizationsResponse.Organization(
                    org_id=o.id, name=o.name, created_at=timestamp(o.created_at)
                )
                for o in orgs
            ]
        )
