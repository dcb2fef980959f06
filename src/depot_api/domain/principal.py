"""Who is calling: the resolved identity and scope of a request's token."""

from __future__ import annotations

from dataclasses import dataclass

from depot_api.domain.ci_identity import CiIdentity
from depot_api.domain.errors import PermissionDenied
from depot_api.models import TokenKind


@dataclass(frozen=True, slots=True)
class Principal:
    """A caller with a valid token.

    org_ids are the organizations the caller acts in: the org token's one, the user's
    memberships, or the organization of the project or build a narrower token is bound to.
    A CI job (kind CI) acts in none: its identity (ci) reaches a project only through that
    project's trust policies, when it creates a build.
    """

    token_id: str
    kind: TokenKind
    org_ids: frozenset[str]
    user_id: str | None = None
    project_id: str | None = None
    build_id: str | None = None
    ci: CiIdentity | None = None

    @property
    def manages_organizations(self) -> bool:
        """Org and user tokens manage projects and tokens; narrower ones do not."""
        return self.kind in (TokenKind.ORG, TokenKind.USER)

    def require_manager(self, action: str) -> None:
        if not self.manages_organizations:
            raise PermissionDenied(
                f"a {self.kind.value} token cannot {action}; use an organization or user token"
            )
