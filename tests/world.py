"""A small world of organizations, users, projects, builds and tokens of every kind, built
directly through the domain of an in-process app, for tests that need many callers."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Table, select

from depot_api.api.status_messages import decode_status_message
from depot_api.domain.builds import Outcome
from depot_api.domain.principal import Principal
from depot_api.domain.trust_policies import PolicyInput
from depot_api.gen.moby.buildkit.v1 import control_pb
from depot_api.models import CiProvider, Platform, TokenKind
from depot_api.store.database import create_engine
from depot_api.store.schema import metadata

from .conftest import InProcessAPI
from .factories import new_project

# The GitHub repository (owner, name) whose CI jobs project A's trust policy admits.
TRUSTED_REPOSITORY = ("acme", "app")
# The digest of the step in builds A and A2.
WORLD_STEP = "sha256:" + "5" * 64
WORLD_STEP_MESSAGE = decode_status_message(
    control_pb.StatusResponse(
        vertexes=[control_pb.Vertex(digest=WORLD_STEP, name="[1/1] RUN echo hi")],
        logs=[control_pb.VertexLog(vertex=WORLD_STEP, msg=b"hi\n", stream=1)],
    ).to_binary(),
    "world",
)


@dataclass
class World:
    org_a: str
    org_b: str
    project_a: str  # in org A
    project_a2: str  # in org A
    project_b: str  # in org B
    build_a: str  # running, in project A
    build_a2: str  # running, in project A
    build_b: str  # running, in project B
    tokens: dict[str, str]  # caller name -> secret ("" for no token)
    project_token_a_id: str
    # A trust policy of project A: GitHub repository TRUSTED_REPOSITORY.
    trust_policy_a_id: str
    machine_id: str  # registered with the "machine" caller's token

    def headers(self, caller: str) -> dict[str, str]:
        secret = self.tokens[caller]
        return {"authorization": f"Bearer {secret}"} if secret else {}


async def build_world(api: InProcessAPI) -> World:
    d = api.app.domain
    org_a = await d.organizations.create("org-a")
    org_b = await d.organizations.create("org-b")
    _, org_a_token = await d.tokens.create_org_token(org_a.id)
    _, org_b_token = await d.tokens.create_org_token(org_b.id)
    member = await d.organizations.create_user("member")
    await d.organizations.add_member(member.id, org_a.id)
    _, member_token = await d.tokens.create_user_token(member.id)
    outsider = await d.organizations.create_user("outsider")
    _, outsider_token = await d.tokens.create_user_token(outsider.id)

    admin_a = Principal("x", TokenKind.ORG, frozenset({org_a.id}))
    admin_b = Principal("y", TokenKind.ORG, frozenset({org_b.id}))

    project_a = await new_project(d, admin_a, "a")
    project_a2 = await new_project(d, admin_a, "a2")
    project_b = await new_project(d, admin_b, "b")
    pt_a, pt_a_secret = await d.tokens.create_project_token(admin_a, project_a, "ci")
    revoked, revoked_secret = await d.tokens.create_project_token(admin_a, project_a, "old")
    await d.tokens.delete_project_token(admin_a, revoked.id)
    build_a, build_a_token = await d.builds.create(admin_a, project_a)
    build_a2, _ = await d.builds.create(admin_a, project_a2)
    build_b, _ = await d.builds.create(admin_b, project_b)
    # A step with a log in each of org A's running builds, for the insights' readers.
    for build in (build_a, build_a2):
        await d.insights.upload(admin_a, build.id, [WORLD_STEP_MESSAGE])
    # An organization token past its expiry, and the token of a build that has ended (the
    # matrix runs with no grace period after a build ends).
    expired, expired_secret = d.tokens.new_token(TokenKind.ORG, "old", org_id=org_a.id)
    await d.store.orgs.insert_token(replace(expired, expires_at=expired.created_at))
    ended, ended_build_token = await d.builds.create(admin_a, project_a)
    await d.builds.finish(admin_a, ended.id, Outcome.success())
    policy = await d.trust_policies.add(
        admin_a,
        project_a,
        PolicyInput(CiProvider.GITHUB, *TRUSTED_REPOSITORY, "owner", "name"),
    )
    machine_token, machine_secret = await d.tokens.create_machine_token("agents")
    machine = await d.machines.register(
        Principal(machine_token.id, TokenKind.MACHINE, frozenset()),
        Platform.AMD64,
        "127.0.0.1:1234",
        1,
    )
    return World(
        org_a=org_a.id,
        org_b=org_b.id,
        project_a=project_a,
        project_a2=project_a2,
        project_b=project_b,
        build_a=build_a.id,
        build_a2=build_a2.id,
        build_b=build_b.id,
        project_token_a_id=pt_a.id,
        trust_policy_a_id=policy.id,
        machine_id=machine.id,
        tokens={
            "none": "",
            "malformed": "dpo_not-a-real-token",
            "unknown": _unknown_but_well_formed(),
            "revoked": revoked_secret,
            "expired": expired_secret,
            "ended_build": ended_build_token,
            "org": org_a_token,
            "other_org": org_b_token,
            "member": member_token,
            "outsider": outsider_token,
            "project": pt_a_secret,
            "build": build_a_token,
            "machine": machine_secret,
        },
    )


def _unknown_but_well_formed() -> str:
    from depot_api.domain.token_format import mint

    return mint(TokenKind.ORG)


class WorldCache:
    """The world, built once per database backend and then restored row for row into each
    later test's fresh database: copying a few dozen rows costs far less than making them
    through the domain, and the authorization matrix needs the same world a thousand times."""

    def __init__(self) -> None:
        self._saved: dict[str, tuple[World, list[tuple[Table, list[dict[str, Any]]]]]] = {}

    async def world(self, api: InProcessAPI) -> World:
        url = api.settings.database_url
        backend = url.split(":", 1)[0].split("+", 1)[0]
        engine = create_engine(url)
        try:
            saved = self._saved.get(backend)
            if saved is None:
                world = await build_world(api)
                async with engine.connect() as conn:
                    rows = [
                        (table, [dict(r._mapping) for r in await conn.execute(select(table))])
                        for table in metadata.sorted_tables
                    ]
                self._saved[backend] = (world, rows)
                return world
            world, rows = saved
            async with engine.begin() as conn:
                for table in reversed(metadata.sorted_tables):
                    await conn.execute(table.delete())
                for table, table_rows in rows:
                    if table_rows:
                        await conn.execute(table.insert(), table_rows)
            return world
        finally:
            await engine.dispose()
