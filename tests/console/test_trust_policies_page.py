"""A project's trust policies page in the console, through the in-process server on SQLite
and PostgreSQL: the list, adding a policy of each CI provider, removing one, the refusals
(bad input in the domain's words, a duplicate, another organization's project or policy, a
form without its form token), and escaping."""

from __future__ import annotations

import pytest

from depot_api.domain.principal import Principal
from depot_api.domain.trust_policies import PolicyInput
from depot_api.models import CiProvider
from tests.conftest import InProcessAPI
from tests.console_client import ConsoleBrowser
from tests.factories import new_project

CIRCLE_ORG = "8a3e3f4e-0c4e-4c3a-9f1e-2b6a7c8d9e0f"
CIRCLE_PROJECT = "1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d"


def policies_path(project_id: str) -> str:
    return f"/console/projects/{project_id}/trust-policies"


async def policies(api: InProcessAPI, admin: Principal, project_id: str) -> list[tuple[str, ...]]:
    listed = await api.app.domain.trust_policies.list(admin, project_id)
    return [(p.provider.value, p.owner, p.name) for p in listed]


async def test_the_page_lists_the_projects_policies(
    api: InProcessAPI, admin: Principal, browser: ConsoleBrowser
) -> None:
    domain = api.app.domain
    project_id = await new_project(domain, admin, "web")
    other_id = await new_project(domain, admin, "other")
    empty = await browser.get(policies_path(project_id))
    assert empty.status == 200
    assert 'aria-current="page">Trust policies<' in empty.text
    assert "No trust policies" in empty.text
    github = await domain.trust_policies.add(
        admin, project_id, PolicyInput(CiProvider.GITHUB, "octo-org", "octo-repo", "o", "n")
    )
    await domain.trust_policies.add(
        admin, other_id, PolicyInput(CiProvider.GITHUB, "elsewhere", "repo", "o", "n")
    )
    page = await browser.get(policies_path(project_id))
    assert page.status == 200
    assert "<code>octo-org/octo-repo</code>" in page.text and "GitHub Actions" in page.text
    assert f'action="{policies_path(project_id)}/{github.id}/remove"' in page.text
    assert "elsewhere" not in page.text
    for form in ("add-github", "add-circleci", "add-buildkite"):
        assert f'id="{form}"' in page.text


@pytest.mark.parametrize(
    ("provider", "owner", "name", "kept"),
    [
        ("github", "octo-org", "octo-org/octo-repo", ("octo-org", "octo-repo")),
        ("circleci", CIRCLE_ORG.upper(), CIRCLE_PROJECT, (CIRCLE_ORG, CIRCLE_PROJECT)),
        ("buildkite", "My-Org", "deploy.pipeline", ("my-org", "deploy.pipeline")),
    ],
)
async def test_adding_and_removing_a_policy(
    api: InProcessAPI,
    admin: Principal,
    browser: ConsoleBrowser,
    provider: str,
    owner: str,
    name: str,
    kept: tuple[str, str],
) -> None:
    project_id = await new_project(api.app.domain, admin)
    csrf = (await browser.get(policies_path(project_id))).csrf()
    added = await browser.post(
        policies_path(project_id),
        {"csrf": csrf, "provider": provider, "owner": owner, "name": name},
    )
    assert added.status == 303, added.text
    [policy] = await api.app.domain.trust_policies.list(admin, project_id)
    assert (policy.provider.value, policy.owner, policy.name) == (provider, *kept)
    assert added.location == f"{policies_path(project_id)}?added={policy.id}"
    page = await browser.get(added.location)
    assert f"Trust policy <code>{policy.id}</code> added" in page.text
    assert kept[0] in page.text and kept[1] in page.text
    # The Remove form asks first (static/console.js; without script it is sent as it is).
    assert (
        f'action="{policies_path(project_id)}/{policy.id}/remove" data-confirm="Remove the '
    ) in page.text
    assert f" policy {kept[0]}/{kept[1]}? Its CI jobs can no longer create builds" in page.text

    removed = await browser.post(f"{policies_path(project_id)}/{policy.id}/remove", {"csrf": csrf})
    assert (removed.status, removed.location) == (
        303,
        f"{policies_path(project_id)}?removed={policy.id}",
    )
    assert await policies(api, admin, project_id) == []
    page = await browser.get(removed.location)
    assert f"Trust policy <code>{policy.id}</code> removed" in page.text
    assert "No trust policies" in page.text
    again = await browser.post(f"{policies_path(project_id)}/{policy.id}/remove", {"csrf": csrf})
    assert again.status == 404 and "not found" in again.text


@pytest.mark.parametrize(
    ("form", "message", "status"),
    [
        (
            {"provider": "github", "owner": "", "name": "repo"},
            "Repository owner an empty value is not a GitHub account name",
            400,
        ),
        (
            {"provider": "github", "owner": "octo org", "name": "repo"},
            "Repository owner &#34;octo org&#34; is not a GitHub account name",
            400,
        ),
        (
            {"provider": "github", "owner": "octo", "name": "someone-else/repo"},
            "Repository names the owner &#34;someone-else&#34;, not &#34;octo&#34;",
            400,
        ),
        (
            {"provider": "circleci", "owner": "not-a-uuid", "name": CIRCLE_PROJECT},
            "Organization ID &#34;not-a-uuid&#34; is not a UUID",
            400,
        ),
        (
            {"provider": "buildkite", "owner": "org", "name": "pipe line"},
            "Pipeline slug &#34;pipe line&#34; is not a Buildkite slug",
            400,
        ),
        (
            {"provider": "gitlab", "owner": "a", "name": "b"},
            "Choose a CI provider: one of github, circleci, buildkite",
            400,
        ),
        ({"owner": "a", "name": "b"}, "Choose a CI provider", 400),
        (
            {"provider": "github", "owner": "<script>alert(1)</script>", "name": "x"},
            "is not a GitHub account name",
            400,
        ),
    ],
)
async def test_bad_input_shows_the_form_again_and_adds_nothing(
    api: InProcessAPI,
    admin: Principal,
    browser: ConsoleBrowser,
    form: dict[str, str],
    message: str,
    status: int,
) -> None:
    project_id = await new_project(api.app.domain, admin)
    csrf = (await browser.get(policies_path(project_id))).csrf()
    answer = await browser.post(policies_path(project_id), {"csrf": csrf, **form})
    assert answer.status == status, answer.text
    assert 'role="alert"' in answer.text and message in answer.text, answer.text
    assert 'id="add-github"' in answer.text  # the forms, to try again
    assert "<script>alert" not in answer.text
    assert await policies(api, admin, project_id) == []


async def test_what_was_entered_is_kept_in_its_form(
    api: InProcessAPI, admin: Principal, browser: ConsoleBrowser
) -> None:
    project_id = await new_project(api.app.domain, admin)
    csrf = (await browser.get(policies_path(project_id))).csrf()
    answer = await browser.post(
        policies_path(project_id),
        {"csrf": csrf, "provider": "buildkite", "owner": '"><b>org', "name": "pipe"},
    )
    assert answer.status == 400
    assert 'value="&#34;&gt;&lt;b&gt;org"' in answer.text
    assert 'value="pipe"' in answer.text
    assert "<b>org" not in answer.text


async def test_a_duplicate_policy_is_refused_on_the_form(
    api: InProcessAPI, admin: Principal, browser: ConsoleBrowser
) -> None:
    project_id = await new_project(api.app.domain, admin)
    csrf = (await browser.get(policies_path(project_id))).csrf()
    form = {"csrf": csrf, "provider": "github", "owner": "octo", "name": "repo"}
    assert (await browser.post(policies_path(project_id), form)).status == 303
    again = await browser.post(policies_path(project_id), {**form, "owner": "OCTO"})
    assert again.status == 409
    assert "already has this trust policy" in again.text and 'role="alert"' in again.text
    assert await policies(api, admin, project_id) == [("github", "octo", "repo")]


async def test_forms_without_the_form_token_are_refused_and_change_nothing(
    api: InProcessAPI, admin: Principal, browser: ConsoleBrowser
) -> None:
    domain = api.app.domain
    project_id = await new_project(domain, admin)
    policy = await domain.trust_policies.add(
        admin, project_id, PolicyInput(CiProvider.GITHUB, "octo", "repo", "o", "n")
    )
    for csrf in ({}, {"csrf": ""}, {"csrf": "0" * 43}):
        added = await browser.post(
            policies_path(project_id),
            {**csrf, "provider": "github", "owner": "sneaky", "name": "repo"},
        )
        assert added.status == 403 and "did not come from this console session" in added.text
        removed = await browser.post(f"{policies_path(project_id)}/{policy.id}/remove", csrf)
        assert removed.status == 403
    assert await policies(api, admin, project_id) == [("github", "octo", "repo")]


async def test_another_organizations_project_and_policies_are_not_found(
    api: InProcessAPI, admin: Principal, browser: ConsoleBrowser
) -> None:
    domain = api.app.domain
    mine = await new_project(domain, admin, "mine")
    other_org = await domain.organizations.create("org-b")
    _, other_secret = await domain.tokens.create_org_token(other_org.id)
    other_admin = await domain.authenticator.authenticate(f"Bearer {other_secret}")
    foreign = await new_project(domain, other_admin, "foreign")
    foreign_policy = await domain.trust_policies.add(
        other_admin, foreign, PolicyInput(CiProvider.GITHUB, "theirs", "repo", "o", "n")
    )
    page = await browser.get(policies_path(foreign))
    assert page.status == 404 and f"project {foreign} not found" in page.text
    csrf = (await browser.get("/console/")).csrf()
    for form in (
        {"provider": "github", "owner": "mine", "name": "repo"},
        {"provider": "github", "owner": "bad owner", "name": "repo"},
    ):
        added = await browser.post(policies_path(foreign), {"csrf": csrf, **form})
        assert added.status == 404, added.text
    for project_id in (foreign, mine):
        removed = await browser.post(
            f"{policies_path(project_id)}/{foreign_policy.id}/remove", {"csrf": csrf}
        )
        assert removed.status == 404 and "Traceback" not in removed.text
    assert await policies(api, other_admin, foreign) == [("github", "theirs", "repo")]
    assert (await browser.get(policies_path("aaaaaaaaaa"))).status == 404
    assert (await browser.get(policies_path("Not-An-ID"))).status == 400
    bad_id = await browser.post(f"{policies_path(mine)}/Not-An-ID/remove", {"csrf": csrf})
    assert bad_id.status == 400 and "not a valid ID" in bad_id.text
