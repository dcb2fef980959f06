"""Projects: who may see and change them, and what a valid project looks like."""

from __future__ import annotations

import builtins
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from depot_api.domain.errors import AlreadyExists, InvalidField, NotFound, PermissionDenied
from depot_api.domain.ids import is_id, new_id, quoted, require_id, with_fresh_ids
from depot_api.domain.paging import decode_page_token, page_of, resolve_page_size
from depot_api.domain.principal import Principal
from depot_api.domain.text import require_name
from depot_api.models import CachePolicy, Hardware, Page, Project, TokenKind
from depot_api.store.errors import NameTaken
from depot_api.store.interface import MachineStore, ProjectStore
from depot_api.times import to_micros

# The Depot CLI's defaults for a new project's cache.
DEFAULT_CACHE_POLICY = CachePolicy(keep_gb=50, keep_days=14)
DEFAULT_REGIONS = ("us-east-1", "eu-central-1")
PROJECT_PAGE_DEFAULT = 1000
PROJECT_PAGE_MAX = 1000
_GIB = 1 << 30
_INT32_MAX = (1 << 31) - 1
_KEEP_DAYS_MAX = 36_500


@dataclass(frozen=True, slots=True)
class CachePolicyInput:
    """A cache policy as a caller sends it: zeros mean "not given"."""

    keep_gb: int = 0
    keep_days: int = 0
    keep_bytes: int | None = None


class Projects:
    def __init__(
        self,
        *,
        project_store: ProjectStore,
        machine_store: MachineStore,
        regions: Sequence[str],
        now: Callable[[], datetime],
    ) -> None:
        self._project_store = project_store
        self._machine_store = machine_store
        self._regions = tuple(regions)
        self._now = now

    async def list(
        self, principal: Principal, page_size: int | None, page_token: str | None
    ) -> Page[Project]:
        principal.require_manager("list projects")
        limit = resolve_page_size(page_size, default=PROJECT_PAGE_DEFAULT, maximum=PROJECT_PAGE_MAX)
        after = decode_page_token(page_token)
        rows = await self._project_store.list_projects(sorted(principal.org_ids), after, limit + 1)
        return page_of(rows, limit, lambda p: (to_micros(p.created_at), p.id))

    async def buildable(self, principal: Principal) -> builtins.list[Project]:
        """Every project the caller may build in, oldest first: all of its organizations'
        for a person or organization token, its own for a project token. (The depot CLI
        lists them in one answer: it never pages.)"""
        if principal.kind is TokenKind.BUILD:
            raise PermissionDenied("a build token can only drive its own build")
        if principal.kind is TokenKind.PROJECT:
            assert principal.project_id is not None
            return [await self._visible(principal, principal.project_id)]
        projects: builtins.list[Project] = []
        after = None
        while True:
            rows = await self._project_store.list_projects(
                sorted(principal.org_ids), after, PROJECT_PAGE_MAX
            )
            projects.extend(rows)
            if len(rows) < PROJECT_PAGE_MAX:
                return projects
            after = (to_micros(rows[-1].created_at), rows[-1].id)

    async def get(self, principal: Principal, project_id: str) -> Project:
        return await self.get_managed(principal, project_id, "read projects")

    async def get_managed(self, principal: Principal, project_id: str, action: str) -> Project:
        """The project, if the caller manages its organization."""
        principal.require_manager(action)
        return await self._visible(principal, project_id)

    async def names_in_organizations(
        self, principal: Principal, project_ids: Iterable[str]
    ) -> dict[str, str]:
        """The names of those of the given projects that the caller's organizations own, by
        ID, in one read. Another organization's project, a deleted one and an ID that names
        nothing are all simply left out (a shared listing, such as the machines', shows them
        without a name)."""
        principal.require_manager("read projects")
        wanted = sorted({i for i in project_ids if is_id(i)})
        if not wanted:
            return {}
        return {
            project.id: project.name
            for project in await self._project_store.get_projects(wanted)
            if project.org_id in principal.org_ids
        }

    async def get_for_builds(self, principal: Principal, project_id: str) -> Project:
        """The project, if the caller may create and read its builds."""
        require_id(project_id, "project_id")
        if principal.kind is TokenKind.BUILD:
            raise PermissionDenied("a build token can only drive its own build")
        if principal.kind is TokenKind.PROJECT and principal.project_id != project_id:
            raise PermissionDenied(
                f"this project token belongs to project {principal.project_id}, not {project_id}"
            )
        return await self._visible(principal, project_id)

    async def create(
        self,
        principal: Principal,
        *,
        name: str,
        region_id: str,
        organization_id: str | None,
        cache_policy: CachePolicyInput | None,
        hardware: int | None,
    ) -> Project:
        principal.require_manager("create projects")
        org_id = self._target_org(principal, organization_id)
        name = require_name(name, "name")
        region_id = self._require_region(region_id)
        validated_hardware = _require_hardware(hardware or 0)
        policy = DEFAULT_CACHE_POLICY if cache_policy is None else _require_policy(cache_policy)
        created_at = self._now()

        async def insert() -> Project:
            project = Project(
                id=new_id(),
                org_id=org_id,
                name=name,
                region_id=region_id,
                hardware=validated_hardware,
                cache_policy=policy,
                cache_generation=0,
                created_at=created_at,
            )
            await self._project_store.insert_project(project)
            return project

        try:
            return await with_fresh_ids(insert)
        except NameTaken:
            raise AlreadyExists(
                f'a project named "{name}" already exists in organization {org_id}'
            ) from None

    async def update(
        self,
        principal: Principal,
        project_id: str,
        *,
        name: str | None,
        region_id: str | None,
        cache_policy: CachePolicyInput | None,
        hardware: int | None,
    ) -> Project:
        # Validate everything before touching the store, so a bad field changes nothing.
        principal.require_manager("update projects")
        require_id(project_id, "project_id")
        new_name = None if name is None else require_name(name, "name")
        new_region = None if region_id is None else self._require_region(region_id)
        new_hardware = None if hardware is None else _require_hardware(hardware)
        new_policy = None if cache_policy is None else _require_policy(cache_policy)
        await self._visible(principal, project_id)
        try:
            updated = await self._project_store.update_project(
                project_id,
                name=new_name,
                region_id=new_region,
                hardware=new_hardware,
                cache_policy=new_policy,
            )
        except NameTaken:
            raise AlreadyExists(f'a project named "{new_name}" already exists') from None
        if updated is None:
            raise NotFound(f"project {project_id} not found")
        return updated

    async def delete(self, principal: Principal, project_id: str) -> None:
        """Delete the project: its tokens stop working and its machines are given back."""
        project = await self.get_managed(principal, project_id, "delete projects")
        now = self._now()
        if not await self._project_store.delete_project(project.id, now):
            raise NotFound(f"project {project_id} not found")
        await self._machine_store.unbind_project_machines(project.id, now)

    async def reset(self, principal: Principal, project_id: str) -> int:
        """Start a new cache generation: the project's machines restart with an empty cache.
        Returns the generation's number."""
        project = await self.get_managed(principal, project_id, "reset projects")
        generation = await self._project_store.bump_cache_generation(project.id)
        if generation is None:
            raise NotFound(f"project {project_id} not found")
        await self._machine_store.rebind_project_machines(
            project.id, binding_id=new_id(), generation=generation, now=self._now()
        )
        return generation

    async def _visible(self, principal: Principal, project_id: str) -> Project:
        require_id(project_id, "project_id")
        project = await self._project_store.get_project(project_id)
        # Another organization's project is reported exactly like a missing one.
        if project is None or project.org_id not in principal.org_ids:
            raise NotFound(f"project {project_id} not found")
        return project

    def _target_org(self, principal: Principal, organization_id: str | None) -> str:
        if organization_id:
            require_id(organization_id, "organization_id")
            if organization_id not in principal.org_ids:
                raise NotFound(f"organization {organization_id} not found")
            return organization_id
        if len(principal.org_ids) != 1:
            raise InvalidField(
                "organization_id",
                f"is required: this token acts in {len(principal.org_ids)} organizations",
            )
        return next(iter(principal.org_ids))

    def _require_region(self, region_id: str) -> str:
        if region_id not in self._regions:
            given = quoted(region_id) if region_id else "missing"
            raise InvalidField(
                "region_id", f"is {given}; expected one of: {', '.join(self._regions)}"
            )
        return region_id


def _require_hardware(value: int) -> Hardware:
    try:
        return Hardware(value)
    except ValueError:
        raise InvalidField("hardware", f"{value} is not a known Hardware value") from None


def _require_policy(policy: CachePolicyInput) -> CachePolicy:
    """Validate a cache policy and settle keep_gb from the deprecated keep_bytes if needed."""
    if policy.keep_gb < 0:
        raise InvalidField("cache_policy.keep_gb", f"must not be negative, got {policy.keep_gb}")
    if not 0 <= policy.keep_days <= _KEEP_DAYS_MAX:
        raise InvalidField(
            "cache_policy.keep_days",
            f"must be between 0 (no age limit) and {_KEEP_DAYS_MAX}, got {policy.keep_days}",
        )
    if policy.keep_bytes is not None and policy.keep_bytes < 0:
        raise InvalidField(
            "cache_policy.keep_bytes", f"must not be negative, got {policy.keep_bytes}"
        )
    keep_gb = policy.keep_gb
    if keep_gb == 0 and policy.keep_bytes:
        keep_gb = min(math.ceil(policy.keep_bytes / _GIB), _INT32_MAX)
    if keep_gb == 0:
        keep_gb = DEFAULT_CACHE_POLICY.keep_gb
    return CachePolicy(keep_gb=keep_gb, keep_days=policy.keep_days, keep_bytes=policy.keep_bytes)
