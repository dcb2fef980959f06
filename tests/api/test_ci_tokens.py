"""CI jobs' OIDC tokens against the in-process server (SQLite and PostgreSQL), with a local
issuer on 127.0.0.1 serving discovery and keys over real HTTP: trust policies managed over the
API, a token admitted by a matching policy (on the CLI's and the build API's CreateBuild) and
recorded on the build, a table of forged tokens each refused with its code and nothing made,
the issuer's outage and recovery, and no JWT kept anywhere."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import jwt
import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from cryptography.hazmat.primitives import serialization
from protobuf import Oneof
from sqlalchemy import Table, select

from depot_api.config import Settings
from depot_api.gen.depot.build.v1 import build_pb
from depot_api.gen.depot.cli.v1 import build_pb as cli_pb
from depot_api.gen.depot.core.v1 import project_pb as pb
from depot_api.store.database import create_engine
from depot_api.store.schema import metadata
from tests.oidc_issuer import LocalIssuer, local_issuer, rsa_key

from ..conftest import Clients, InProcessAPI, bearer

CIRCLE_ORG = "2f1a5c8e-8b54-4c5a-9b53-0c1f1b2d3e4f"
CIRCLE_PROJECT = "7d3e9a10-55b2-4e0c-a4c1-9f8e7d6c5b4a"


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    with local_issuer() as running:
        yield running


@pytest.fixture
def settings(tmp_path: Path, database_url: str, issuer: LocalIssuer) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database=database_url,
        oidc_issuers=(
            ("github", issuer.url),
            ("circleci", issuer.url + "/circleci"),
            ("buildkite", issuer.url + "/buildkite"),
        ),
        # Short, so that the outage test sees the issuer again soon after it is back.
        oidc_keys_refetch=timedelta(seconds=0.05),
    )


async def _project(api: InProcessAPI, name: str = "app") -> str:
    created = await api.clients().projects.create_project(
        pb.CreateProjectRequest(name=name, region_id="us-east-1"), headers=bearer(api.org_token)
    )
    assert created.project is not None
    return created.project.project_id


def _github(owner: str, repository: str) -> pb.AddTrustPolicyRequest:
    return pb.AddTrustPolicyRequest(
        provider=Oneof(
            "github", pb.TrustPolicy.GitHub(repository_owner=owner, repository=repository)
        )
    )


def _circleci(organization: str) -> pb.AddTrustPolicyRequest:
    return pb.AddTrustPolicyRequest(
        provider=Oneof(
            "circleci",
            pb.TrustPolicy.CircleCI(organization_uuid=organization, project_uuid=CIRCLE_PROJECT),
        )
    )


def _buildkite() -> pb.AddTrustPolicyRequest:
    return pb.AddTrustPolicyRequest(
        provider=Oneof(
            "buildkite", pb.TrustPolicy.Buildkite(organization_slug="acme", pipeline_slug="deploy")
        )
    )


async def _add(api: InProcessAPI, project_id: str, request: pb.AddTrustPolicyRequest) -> str:
    request.project_id = project_id
    added = await api.clients().projects.add_trust_policy(request, headers=bearer(api.org_token))
    assert added.trust_policy is not None
    return added.trust_policy.trust_policy_id


async def _build_count(api: InProcessAPI, project_id: str) -> int:
    listed = await api.clients().builds.list_builds(
        build_pb.ListBuildsRequest(project_id=project_id), headers=bearer(api.org_token)
    )
    return len(listed.builds)


async def _cli_create(clients: Clients, project_id: str, token: str) -> cli_pb.CreateBuildResponse:
    return await clients.cli_builds.create_build(
        cli_pb.CreateBuildRequest(project_id=project_id), headers=bearer(token)
    )


# Trust policies over the API.


async def test_policies_are_added_listed_and_removed(api: InProcessAPI) -> None:
    project_id = await _project(api)
    projects = api.clients("connect-json").projects
    admin = bearer(api.org_token)
    github = await _add(api, project_id, _github("Acme", "acme/App"))
    circle = await _add(
        api,
        project_id,
        _circleci(CIRCLE_ORG.upper()),
    )
    kite = await _add(
        api,
        project_id,
        _buildkite(),
    )
    listed = await projects.list_trust_policies(
        pb.ListTrustPoliciesRequest(project_id=project_id), headers=admin
    )
    assert [p.trust_policy_id for p in listed.trust_policies] == [github, circle, kite]
    shown = [p.provider.value for p in listed.trust_policies if p.provider is not None]
    assert shown == [
        pb.TrustPolicy.GitHub(repository_owner="Acme", repository="App"),  # owner/name: name
        pb.TrustPolicy.CircleCI(organization_uuid=CIRCLE_ORG, project_uuid=CIRCLE_PROJECT),
        pb.TrustPolicy.Buildkite(organization_slug="acme", pipeline_slug="deploy"),
    ]
    await projects.remove_trust_policy(
        pb.RemoveTrustPolicyRequest(project_id=project_id, trust_policy_id=circle), headers=admin
    )
    listed = await projects.list_trust_policies(
        pb.ListTrustPoliciesRequest(project_id=project_id), headers=admin
    )
    assert [p.trust_policy_id for p in listed.trust_policies] == [github, kite]
    with pytest.raises(ConnectError) as again:
        await projects.remove_trust_policy(
            pb.RemoveTrustPolicyRequest(project_id=project_id, trust_policy_id=circle),
            headers=admin,
        )
    assert again.value.code is Code.NOT_FOUND
    with pytest.raises(ConnectError) as twice:
        await _add(api, project_id, _github("acme", "app"))
    assert twice.value.code is Code.ALREADY_EXISTS
    assert github in twice.value.message


@pytest.mark.parametrize(
    ("provider", "message"),
    [
        (None, "a provider is required"),
        (
            Oneof("github", pb.TrustPolicy.GitHub(repository_owner="", repository="app")),
            "github.repositoryOwner an empty value is not a GitHub account name",
        ),
        (
            Oneof("github", pb.TrustPolicy.GitHub(repository_owner="acme", repository="a b")),
            'github.repository "a b" is not a GitHub repository name',
        ),
        (
            Oneof("github", pb.TrustPolicy.GitHub(repository_owner="acme", repository="evil/app")),
            'github.repository names the owner "evil", not "acme"',
        ),
        (
            Oneof(
                "circleci",
                pb.TrustPolicy.CircleCI(organization_uuid="acme", project_uuid=CIRCLE_PROJECT),
            ),
            'circleci.organizationUuid "acme" is not a UUID',
        ),
        (
            Oneof(
                "buildkite",
                pb.TrustPolicy.Buildkite(organization_slug="acme", pipeline_slug=""),
            ),
            "buildkite.pipelineSlug an empty value is not a Buildkite slug",
        ),
    ],
)
async def test_a_bad_policy_is_invalid_argument_and_adds_nothing(
    api: InProcessAPI, provider: object, message: str
) -> None:
    project_id = await _project(api)
    request = pb.AddTrustPolicyRequest(project_id=project_id, provider=provider)  # type: ignore[arg-type]
    with pytest.raises(ConnectError) as refused:
        await api.clients("connect-json").projects.add_trust_policy(
            request, headers=bearer(api.org_token)
        )
    assert refused.value.code is Code.INVALID_ARGUMENT
    assert message in refused.value.message
    listed = await api.clients().projects.list_trust_policies(
        pb.ListTrustPoliciesRequest(project_id=project_id), headers=bearer(api.org_token)
    )
    assert list(listed.trust_policies) == []


# Admission.


async def test_a_matching_token_creates_builds_and_the_build_records_its_policy(
    api: InProcessAPI, issuer: LocalIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    project_id = await _project(api)
    policy_id = await _add(api, project_id, _github("acme", "app"))
    token = issuer.github_token("acme", "app")
    clients = api.clients("connect-proto")

    created = await _cli_create(clients, project_id, token)
    created_too = await clients.builds.create_build(
        build_pb.CreateBuildRequest(project_id=project_id), headers=bearer(token)
    )
    for build_id in (created.build_id, created_too.build_id):
        build = await api.app.domain.store.builds.get_build(build_id)
        assert build is not None and build.trust_policy_id == policy_id

    # Everything after CreateBuild goes through the build token.
    await clients.cli_builds.finish_build(
        cli_pb.FinishBuildRequest(
            build_id=created.build_id,
            result=Oneof("success", cli_pb.FinishBuildRequest.BuildSuccess()),
        ),
        headers=bearer(created.build_token),
    )
    # The JWT itself can do nothing else.
    with pytest.raises(ConnectError) as refused:
        await clients.cli_builds.get_build(
            cli_pb.GetBuildRequest(build_id=created.build_id), headers=bearer(token)
        )
    assert refused.value.code is Code.PERMISSION_DENIED
    assert "may only create builds" in refused.value.message

    # No JWT is kept in the database or written to the log.
    assert not await _rows_containing(api, token.split(".")[2])
    assert token.split(".")[2] not in caplog.text


async def test_circleci_and_buildkite_tokens_are_admitted_by_their_policies(
    api: InProcessAPI, issuer: LocalIssuer
) -> None:
    project_id = await _project(api)
    circle_policy = await _add(
        api,
        project_id,
        _circleci(CIRCLE_ORG),
    )
    kite_policy = await _add(
        api,
        project_id,
        _buildkite(),
    )
    # CircleCI's own token (CIRCLE_OIDC_TOKEN_V2) is issued for its organization's ID.
    circle = issuer.token(
        {
            "aud": CIRCLE_ORG,
            "sub": f"org/{CIRCLE_ORG}/project/{CIRCLE_PROJECT}/user/u",
            "oidc.circleci.com/project-id": CIRCLE_PROJECT,
        },
        issuer=f"{issuer.url}/circleci/{CIRCLE_ORG}",
    )
    kite = issuer.token(
        {
            "sub": "organization:acme:pipeline:deploy:ref:refs/heads/main",
            "organization_slug": "acme",
            "pipeline_slug": "deploy",
        },
        issuer=f"{issuer.url}/buildkite",
    )
    clients = api.clients()
    for token, policy in ((circle, circle_policy), (kite, kite_policy)):
        created = await _cli_create(clients, project_id, token)
        build = await api.app.domain.store.builds.get_build(created.build_id)
        assert build is not None and build.trust_policy_id == policy


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256_with_public_key(issuer: LocalIssuer, claims: dict[str, object]) -> str:
    """The classic forgery: HMAC keyed with the issuer's public key, which anyone has."""
    public = (
        issuer.keys[0]
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    payload = _b64(json.dumps(claims).encode())
    signature = hmac.new(public, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


def _none_alg(claims: dict[str, object]) -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "k1"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}."


def _claims(**override: object) -> dict[str, object]:
    now = int(time.time())
    return {
        "iss": "{issuer}",
        "aud": "https://depot.dev",
        "sub": "repo:acme/app:ref:refs/heads/main",
        "repository_owner": "acme",
        "repository": "acme/app",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        **override,
    }


HOUR = 3600
FORGED = {
    "wrong key": (
        lambda i: i.token(_github_claims(), key=rsa_key("k1")),
        Code.UNAUTHENTICATED,
        "signature does not verify",
    ),
    "alg none": (lambda i: _none_alg(_resolved(i)), Code.UNAUTHENTICATED, "'none' is not accepted"),
    "HS256 with the public key": (
        lambda i: _hs256_with_public_key(i, _resolved(i)),
        Code.UNAUTHENTICATED,
        "'HS256' is not accepted",
    ),
    "expired": (
        lambda i: i.token(_github_claims(), issued_at=time.time() - 2 * HOUR, lifetime_s=HOUR),
        Code.UNAUTHENTICATED,
        "has expired",
    ),
    "not yet valid": (
        lambda i: i.token(_github_claims(nbf=int(time.time()) + HOUR)),
        Code.UNAUTHENTICATED,
        "not valid yet",
    ),
    "issued in the future": (
        # iat ahead, nbf now: iat is checked on its own.
        lambda i: i.token(_github_claims(nbf=int(time.time())), issued_at=time.time() + HOUR),
        Code.UNAUTHENTICATED,
        "not valid yet",
    ),
    "wrong audience": (
        lambda i: i.token(_github_claims(aud="https://example.com")),
        Code.UNAUTHENTICATED,
        "audience 'https://example.com' is not accepted",
    ),
    "wrong issuer": (
        lambda i: i.token(_github_claims(), issuer="https://token.example.com"),
        Code.UNAUTHENTICATED,
        "issuer 'https://token.example.com' is not one this server trusts",
    ),
    "unknown key ID": (
        lambda i: i.token(_github_claims(), headers={"kid": "no-such-key"}),
        Code.UNAUTHENTICATED,
        "publishes no key with ID 'no-such-key'",
    ),
    "no key ID": (
        lambda i: jwt.encode(_resolved(i), i.keys[0].private, algorithm="RS256"),
        Code.UNAUTHENTICATED,
        "names no key ID (kid)",
    ),
    "not a JWT": (
        lambda i: "eyJub3QiOiJqc29u.bm9wZQ.bm9wZQ",
        Code.UNAUTHENTICATED,
        "malformed token: not a depot-api token nor a JWT",
    ),
    "no repository claim": (
        lambda i: i.token({"repository_owner": "acme"}),
        Code.UNAUTHENTICATED,
        "has no repository claim",
    ),
    "repository of another owner": (
        lambda i: i.token({"repository_owner": "acme", "repository": "evil/app"}),
        Code.UNAUTHENTICATED,
        "repository 'evil/app' is not owned by its repository_owner 'acme'",
    ),
    "another repository": (
        lambda i: i.github_token("acme", "other"),
        Code.PERMISSION_DENIED,
        "admits GitHub repository acme/other",
    ),
}


def _github_claims(**override: object) -> dict[str, object]:
    claims = _claims(**override)
    del claims["iss"], claims["iat"], claims["nbf"], claims["exp"]
    if "nbf" in override:
        claims["nbf"] = override["nbf"]
    return claims


def _resolved(issuer: LocalIssuer) -> dict[str, object]:
    return {**_claims(), "iss": issuer.url}


@pytest.mark.parametrize("case", list(FORGED))
async def test_a_forged_token_is_refused_and_creates_nothing(
    api: InProcessAPI, issuer: LocalIssuer, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    make, code, message = FORGED[case]
    project_id = await _project(api)
    await _add(api, project_id, _github("acme", "app"))
    token = make(issuer)
    clients = api.clients("connect-proto")
    for create in (
        lambda: _cli_create(clients, project_id, token),
        lambda: clients.builds.create_build(
            build_pb.CreateBuildRequest(project_id=project_id), headers=bearer(token)
        ),
    ):
        with pytest.raises(ConnectError) as refused:
            await create()
        assert refused.value.code is code, refused.value.message
        assert message in refused.value.message
        assert token not in refused.value.message
    assert await _build_count(api, project_id) == 0
    signature = token.rsplit(".", 1)[1]
    assert not signature or signature not in caplog.text  # alg none has no signature
    assert token not in caplog.text


async def test_a_policy_removed_a_moment_ago_admits_nothing(
    api: InProcessAPI, issuer: LocalIssuer
) -> None:
    project_id = await _project(api)
    policy_id = await _add(api, project_id, _github("acme", "app"))
    token = issuer.github_token("acme", "app")
    clients = api.clients()
    await _cli_create(clients, project_id, token)  # admitted while the policy stands
    await clients.projects.remove_trust_policy(
        pb.RemoveTrustPolicyRequest(project_id=project_id, trust_policy_id=policy_id),
        headers=bearer(api.org_token),
    )
    with pytest.raises(ConnectError) as refused:
        await _cli_create(clients, project_id, token)
    assert refused.value.code is Code.PERMISSION_DENIED
    assert "admits GitHub repository acme/app" in refused.value.message
    assert await _build_count(api, project_id) == 1
    # The build it admitted still names it.
    removed = await api.app.domain.store.trust_policies.get_trust_policy(policy_id)
    assert removed is not None and removed.removed_at is not None


async def test_an_unknown_project_is_refused_like_an_unmatched_one(
    api: InProcessAPI, issuer: LocalIssuer
) -> None:
    token = issuer.github_token("acme", "app")
    with pytest.raises(ConnectError) as refused:
        await _cli_create(api.clients(), "abcdefghij", token)
    assert refused.value.code is Code.PERMISSION_DENIED
    assert 'no trust policy of project "abcdefghij" admits GitHub repository acme/app' in (
        refused.value.message
    )


async def test_an_issuer_outage_is_unavailable_and_then_over(
    api: InProcessAPI, issuer: LocalIssuer
) -> None:
    project_id = await _project(api)
    await _add(api, project_id, _github("acme", "app"))
    token = issuer.github_token("acme", "app")
    clients = api.clients()
    issuer.down = True
    with pytest.raises(ConnectError) as refused:
        await _cli_create(clients, project_id, token)
    assert refused.value.code is Code.UNAVAILABLE
    assert "cannot be fetched" in refused.value.message
    assert await _build_count(api, project_id) == 0
    issuer.down = False
    deadline = time.monotonic() + 30
    codes = []
    while True:  # the next fetch is allowed once the refetch interval (0.05 s) has passed
        try:
            created = await _cli_create(clients, project_id, token)
            break
        except ConnectError as e:
            codes.append(e.code)
        assert time.monotonic() < deadline, "the issuer's keys were never fetched again"
    assert set(codes) <= {Code.UNAVAILABLE}
    assert created.build_id


async def test_a_rotated_key_is_fetched_once(api: InProcessAPI, issuer: LocalIssuer) -> None:
    project_id = await _project(api)
    await _add(api, project_id, _github("acme", "app"))
    clients = api.clients()
    await _cli_create(clients, project_id, issuer.github_token("acme", "app"))
    assert issuer.jwks_requests() == 1
    issuer.rotate(rsa_key("k2"))
    await asyncio.sleep(0.1)  # past the refetch interval: a rotation is rarer than that
    for _ in range(3):
        await _cli_create(clients, project_id, issuer.github_token("acme", "app"))
    assert issuer.jwks_requests() == 2


async def _rows_containing(api: InProcessAPI, needle: str) -> list[str]:
    engine = create_engine(api.settings.database_url)
    found = []
    try:
        async with engine.connect() as conn:
            for table in metadata.sorted_tables:
                assert isinstance(table, Table)
                for row in await conn.execute(select(table)):
                    if needle in repr(tuple(row)):
                        found.append(table.name)
    finally:
        await engine.dispose()
    return found
