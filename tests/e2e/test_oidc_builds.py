"""The official depot CLI in CI, with no stored token, on both databases. In GitHub Actions its
OIDC token comes from a local stand-in for GitHub's token endpoint (ACTIONS_ID_TOKEN_REQUEST_URL
and _TOKEN, the two variables the pinned CLI looks for), signed with a key whose JWKS a local
issuer serves; a real server (its GitHub issuer pointed there with --oidc-issuer) admits it
through the project's trust policy, and the build runs on a real BuildKit through an agent.

As measured with the pinned CLI (2.102.12), with DEPOT_TOKEN unset:
- GitHub Actions: with both ACTIONS_ID_TOKEN_REQUEST_URL and _TOKEN set it GETs the request URL
  with `audience=https://depot.dev` added and `Authorization: bearer <request token>`
  (GITHUB_ACTIONS is not needed), and sends the `value` it reads as the Bearer of CreateBuild;
- CircleCI: it sends CIRCLE_OIDC_TOKEN_V2 as it is (CIRCLECI is not needed);
- Buildkite: it POSTs `{"audience": "https://depot.dev"}` to
  `$BUILDKITE_AGENT_ENDPOINT/jobs/$BUILDKITE_JOB_ID/oidc/tokens` with
  `Authorization: Token $BUILDKITE_AGENT_ACCESS_TOKEN`, and sends the `token` it reads.
Every later call carries the build token. The project comes from DEPOT_PROJECT_ID.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from protobuf import Oneof
from sqlalchemy import select

from depot_api.gen.depot.core.v1 import project_pb
from depot_api.models import BuildStatus
from depot_api.store import Store
from depot_api.store.database import create_engine
from depot_api.store.schema import metadata
from tests.databases import BACKENDS, database
from tests.docker_engine import DockerEngine
from tests.helpers import ServerProcess, running_server
from tests.oidc_issuer import (
    BUILDKITE_AGENT_API,
    BUILDKITE_ISSUER_PATH,
    REQUEST_TOKEN,
    TOKEN_ENDPOINT,
    LocalIssuer,
    local_issuer,
)

from .conftest import admin
from .machines import QUICK, Api, agent
from .test_depot_cli import DEPOT

# The module's organization, API clients and store, over this module's `site`.
from .test_real_builds import WRITES_OUTPUT, api, context_dir, org_token_of_site, store

__all__ = ["api", "org_token_of_site", "store"]

pytestmark = pytest.mark.buildkit


@dataclass
class Site:
    server: ServerProcess
    issuer: LocalIssuer


@pytest.fixture(scope="module", params=BACKENDS)
def site(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    docker_engine: DockerEngine,
) -> Iterator[Site]:
    if not DEPOT.exists():
        pytest.fail("the depot CLI is not installed in tests/e2e/node: run `make install`")
    root = tmp_path_factory.mktemp(f"oidc-{request.param}")
    with ExitStack() as stack:
        issuer = stack.enter_context(local_issuer())
        url = stack.enter_context(database(request.param, root))
        server = stack.enter_context(
            running_server(
                root / "data",
                "--database", url,
                # Repeatable: every provider's issuer is the local one.
                "--oidc-issuer", f"github={issuer.url}",
                "--oidc-issuer", f"circleci={issuer.url}/circleci",
                "--oidc-issuer", f"buildkite={issuer.url}{BUILDKITE_ISSUER_PATH}",
                env=QUICK,
            )
        )  # fmt: skip
        token = admin(server, "create-machine-token", "--description", "oidc builds")
        stack.enter_context(
            agent(server.url, token, root / "agent", docker_socket=docker_engine.socket)
        )
        yield Site(server, issuer)


def github_actions_build(
    site: Site, project_id: str, context: Path, output: Path
) -> subprocess.CompletedProcess[str]:
    """`depot build` as a GitHub Actions job runs it: the runner's token request variables."""
    return ci_build(
        site,
        project_id,
        context,
        output,
        {
            "GITHUB_ACTIONS": "true",
            # GitHub's own URL carries a query already; the CLI adds the audience to it.
            "ACTIONS_ID_TOKEN_REQUEST_URL": f"{site.issuer.url}{TOKEN_ENDPOINT}?api-version=2.0",
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN": REQUEST_TOKEN,
        },
    )


def ci_build(
    site: Site, project_id: str, context: Path, output: Path, ci_env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """`depot build` in a CI job: no DEPOT_TOKEN, only the server's URL, the project and
    what the CI provider sets."""
    home = context.parent / "home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "DEPOT_API_URL": site.server.url,
        "DEPOT_PROJECT_ID": project_id,
        "DEPOT_NO_UPDATE_NOTIFIER": "1",
        **ci_env,
    }
    return subprocess.run(
        [
            str(DEPOT), "build", "--network", "none", "--progress", "plain",
            "--output", f"type=local,dest={output}", str(context),
        ],
        capture_output=True, text=True, env=env, cwd=home, timeout=300,
    )  # fmt: skip


async def _trust(api: Api, project_id: str, owner: str, repository: str) -> str:
    return await _add(
        api,
        project_id,
        Oneof(
            "github", project_pb.TrustPolicy.GitHub(repository_owner=owner, repository=repository)
        ),
    )


def _job_of(issuer: LocalIssuer, owner: str, repository: str) -> None:
    """What the stand-in token endpoint says about the job: its repository."""
    issuer.github_claims = {
        "repository_owner": owner,
        "repository": f"{owner}/{repository}",
        "sub": f"repo:{owner}/{repository}:ref:refs/heads/main",
    }


async def test_a_github_actions_job_builds_through_its_trust_policy(
    site: Site, api: Api, store: Store, tmp_path: Path
) -> None:
    project_id = await api.project("from-actions")
    policy_id = await _trust(api, project_id, "acme", "app")
    _job_of(site.issuer, "acme", "app")
    asked_before = len(site.issuer.audiences_asked)
    context = context_dir(tmp_path / "ctx", WRITES_OUTPUT, marker="built-by-a-ci-job")
    result = await asyncio.to_thread(
        github_actions_build, site, project_id, context, tmp_path / "out"
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"exit {result.returncode}\n{output}"
    assert (tmp_path / "out" / "work" / "output.txt").read_text() == (
        "built-by-a-ci-job\nwritten-by-run\n"
    )
    # The CLI asked the stand-in for a token for Depot's audience, once.
    assert site.issuer.audiences_asked[asked_before:] == ["https://depot.dev"]
    builds = await store.builds.list_builds(project_id, None, 10)
    assert len(builds) == 1, builds
    assert builds[0].status is BuildStatus.SUCCESS
    assert builds[0].trust_policy_id == policy_id
    # The JWT is in neither the server's log nor its database.
    for token in site.issuer.issued:
        signature = token.rsplit(".", 1)[1]
        assert signature not in "".join(site.server.output)
        assert signature not in await _database_text(site.server.database)


CIRCLE_ORG = "2f1a5c8e-8b54-4c5a-9b53-0c1f1b2d3e4f"
CIRCLE_PROJECT = "7d3e9a10-55b2-4e0c-a4c1-9f8e7d6c5b4a"


async def test_circleci_and_buildkite_jobs_build_through_their_trust_policies(
    site: Site, api: Api, store: Store, tmp_path: Path
) -> None:
    project_id = await api.project("from-other-ci")
    circle_policy = await _add(
        api,
        project_id,
        Oneof(
            "circleci",
            project_pb.TrustPolicy.CircleCI(
                organization_uuid=CIRCLE_ORG, project_uuid=CIRCLE_PROJECT
            ),
        ),
    )
    kite_policy = await _add(
        api,
        project_id,
        Oneof(
            "buildkite",
            project_pb.TrustPolicy.Buildkite(organization_slug="acme", pipeline_slug="deploy"),
        ),
    )
    site.issuer.buildkite_claims = {
        "sub": "organization:acme:pipeline:deploy:ref:refs/heads/main",
        "organization_slug": "acme",
        "pipeline_slug": "deploy",
    }
    # CircleCI puts the token in the job's environment, issued for the organization's ID.
    circle_token = site.issuer.token(
        {
            "aud": CIRCLE_ORG,
            "sub": f"org/{CIRCLE_ORG}/project/{CIRCLE_PROJECT}/user/someone",
            "oidc.circleci.com/project-id": CIRCLE_PROJECT,
        },
        issuer=f"{site.issuer.url}/circleci/{CIRCLE_ORG}",
    )
    jobs = {
        "circleci": {"CIRCLECI": "true", "CIRCLE_OIDC_TOKEN_V2": circle_token},
        "buildkite": {
            "BUILDKITE": "true",
            "BUILDKITE_AGENT_ENDPOINT": f"{site.issuer.url}{BUILDKITE_AGENT_API}",
            "BUILDKITE_AGENT_ACCESS_TOKEN": REQUEST_TOKEN,
            "BUILDKITE_JOB_ID": "0190-job",
        },
    }
    for provider, ci_env in jobs.items():
        context = context_dir(tmp_path / provider / "ctx", WRITES_OUTPUT, marker=provider)
        out = tmp_path / provider / "out"
        result = await asyncio.to_thread(ci_build, site, project_id, context, out, ci_env)
        assert result.returncode == 0, f"{provider}: {result.stdout}{result.stderr}"
        assert (out / "work" / "output.txt").read_text() == f"{provider}\nwritten-by-run\n"
    builds = await store.builds.list_builds(project_id, None, 10)
    assert sorted((b.status, b.trust_policy_id) for b in builds) == sorted(
        [(BuildStatus.SUCCESS, circle_policy), (BuildStatus.SUCCESS, kite_policy)]
    )


async def _add(api: Api, project_id: str, provider: Any) -> str:
    added = await api.projects.add_trust_policy(
        project_pb.AddTrustPolicyRequest(project_id=project_id, provider=provider),
        headers=api.org,
    )
    assert added.trust_policy is not None
    return added.trust_policy.trust_policy_id


async def test_a_job_of_another_repository_is_refused_and_builds_nothing(
    site: Site, api: Api, store: Store, tmp_path: Path
) -> None:
    project_id = await api.project("not-for-others")
    await _trust(api, project_id, "acme", "app")
    _job_of(site.issuer, "acme", "other")
    context = context_dir(tmp_path / "ctx", WRITES_OUTPUT)
    result = await asyncio.to_thread(
        github_actions_build, site, project_id, context, tmp_path / "out"
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "permission_denied" in output, output
    assert "GitHub repository acme/other" in output, output
    assert await store.builds.list_builds(project_id, None, 10) == []


async def _database_text(url: str) -> str:
    """Every row of every table, as text."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = [await conn.execute(select(table)) for table in metadata.sorted_tables]
            return "".join(repr(tuple(row)) for result in rows for row in result)
    finally:
        await engine.dispose()
