"""The official Depot Node SDK (@depot/sdk-node 1.4.0) manages trust policies on a real server
(both databases): adds one of each provider, lists them, removes one; and a CI job's OIDC
token (GitHub Actions, from a local issuer the server trusts) creates a build through the
SDK's build API, and can do nothing else. tests/e2e/node/sdk_trust_policies.mjs makes the
calls and prints what it saw."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from depot_api.store.database import create_engine
from depot_api.store.schema import builds as builds_table
from tests.databases import BACKENDS, database
from tests.helpers import ServerProcess, running_server
from tests.oidc_issuer import LocalIssuer, local_issuer

from .conftest import admin
from .node_scripts import run_node_script

CIRCLE_ORG = "2f1a5c8e-8b54-4c5a-9b53-0c1f1b2d3e4f"
CIRCLE_PROJECT = "7d3e9a10-55b2-4e0c-a4c1-9f8e7d6c5b4a"
PERMISSION_DENIED, NOT_FOUND, INVALID_ARGUMENT = 7, 5, 3


@dataclass
class Site:
    server: ServerProcess
    issuer: LocalIssuer


@pytest.fixture(scope="module", params=BACKENDS)
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    root = tmp_path_factory.mktemp(f"sdk-trust-{request.param}")
    with ExitStack() as stack:
        issuer = stack.enter_context(local_issuer())
        url = stack.enter_context(database(request.param, root))
        # The issuer through the environment this time (the flag is used by the CLI's test).
        server = stack.enter_context(
            running_server(
                root / "data",
                "--database",
                url,
                env={"DEPOT_API_OIDC_ISSUERS": f"github={issuer.url}"},
            )
        )
        yield Site(server, issuer)


def run_script(site: Site, org_token: str, oidc: str) -> dict[str, Any]:
    env = {
        "DEPOT_E2E_OIDC": oidc,
        "DEPOT_E2E_CIRCLE_ORG": CIRCLE_ORG,
        "DEPOT_E2E_CIRCLE_PROJECT": CIRCLE_PROJECT,
    }
    return run_node_script("sdk_trust_policies.mjs", site.server.url, org_token, env)


async def test_the_sdk_adds_lists_and_removes_policies_and_a_ci_token_builds(
    site: Site, tmp_path: Path
) -> None:
    org_id = admin(site.server, "create-org", "--name", "sdk trust")
    org_token = admin(site.server, "create-token", "--org", org_id)
    seen = run_script(site, org_token, site.issuer.github_token("acme", "app"))

    github = {"provider": "github", "repositoryOwner": "acme", "repository": "app"}
    circle = {
        "provider": "circleci",
        "organizationUuid": CIRCLE_ORG,
        "projectUuid": CIRCLE_PROJECT,
    }
    kite = {"provider": "buildkite", "organizationSlug": "acme", "pipelineSlug": "deploy"}
    added = seen["added"]
    assert [{k: v for k, v in p.items() if k != "id"} for p in added] == [github, circle, kite]
    assert len({p["id"] for p in added}) == 3
    assert seen["listed"] == added
    assert seen["afterRemoval"] == added[1:]

    # The build the OIDC token made records the policy that admitted it.
    engine = create_engine(site.server.database)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    select(builds_table.c.trust_policy_id, builds_table.c.status).where(
                        builds_table.c.id == seen["createdBuildId"]
                    )
                )
            ).one()
    finally:
        await engine.dispose()
    assert tuple(row) == (added[0]["id"], "success")

    assert seen["oidcCannotList"]["code"] == PERMISSION_DENIED
    assert "may only create builds" in seen["oidcCannotList"]["message"]
    assert seen["refusedAfterRemoval"]["code"] == PERMISSION_DENIED
    assert "GitHub repository acme/app" in seen["refusedAfterRemoval"]["message"]
    assert seen["removedTwice"]["code"] == NOT_FOUND
    assert seen["noProvider"]["code"] == INVALID_ARGUMENT
    assert "a provider is required" in seen["noProvider"]["message"]
