"""A project's trust policies page: which CI jobs may build in it without a stored token
(docs/oidc.md), a form per CI provider that adds one, and a Remove button per policy.

The forms name the two fields as each provider does; the domain checks them (and says what is
wrong in the words of the form's labels).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from depot_api.api.console.web import Page, PageRequest, Redirect, with_query
from depot_api.domain.errors import AlreadyExists, InvalidArgument
from depot_api.domain.trust_policies import PolicyInput
from depot_api.models import CiProvider, Project


@dataclass(frozen=True, slots=True)
class ProviderForm:
    """How the page asks for one provider's policy: its name and its two fields' labels."""

    provider: CiProvider
    title: str
    owner_label: str
    name_label: str
    owner_hint: str
    name_hint: str


PROVIDER_FORMS = (
    ProviderForm(
        CiProvider.GITHUB,
        "GitHub Actions",
        "Repository owner",
        "Repository",
        "octo-org",
        "octo-repo",
    ),
    ProviderForm(
        CiProvider.CIRCLECI,
        "CircleCI",
        "Organization ID",
        "Project ID",
        "UUID from the organization's settings",
        "UUID from the project's settings",
    ),
    ProviderForm(
        CiProvider.BUILDKITE,
        "Buildkite",
        "Organization slug",
        "Pipeline slug",
        "my-org",
        "my-pipeline",
    ),
)
_FORM_OF = {form.provider.value: form for form in PROVIDER_FORMS}
# An ID's shape (domain/ids.py): a notice names a policy only when the query holds one.
_ID = re.compile(r"[a-z0-9]{10}")


def policies_path(project_id: str) -> str:
    return f"/console/projects/{project_id}/trust-policies"


async def trust_policies_page(request: PageRequest) -> Page:
    notices = {}
    for event in ("added", "removed"):
        policy_id = request.query.get(event, "")
        if _ID.fullmatch(policy_id):
            notices[event] = policy_id
    return await _page(request, notices=notices)


async def add_policy(request: PageRequest) -> Page | Redirect:
    project_id = request.params["project_id"]
    chosen = request.form.get("provider", "")
    form = _FORM_OF.get(chosen)
    entered = {"provider": chosen, **{k: request.form.get(k, "") for k in ("owner", "name")}}
    if form is None:
        names = ", ".join(f.provider.value for f in PROVIDER_FORMS)
        return await _page(request, error=f"Choose a CI provider: one of {names}.", entered=entered)
    given = PolicyInput(
        form.provider, entered["owner"], entered["name"], form.owner_label, form.name_label
    )
    try:
        policy = await request.domain.trust_policies.add(request.principal, project_id, given)
    except AlreadyExists as taken:
        return await _page(request, error=taken.message, entered=entered, status=409)
    except InvalidArgument as bad:
        return await _page(request, error=bad.message, entered=entered)
    return Redirect(with_query(policies_path(project_id), added=policy.id))


async def remove_policy(request: PageRequest) -> Redirect:
    project_id = request.params["project_id"]
    policy_id = request.params["policy_id"]
    await request.domain.trust_policies.remove(request.principal, project_id, policy_id)
    return Redirect(with_query(policies_path(project_id), removed=policy_id))


async def _page(
    request: PageRequest,
    *,
    notices: dict[str, str] | None = None,
    error: str = "",
    entered: dict[str, str] | None = None,
    status: int = 400,
) -> Page:
    principal, project_id = request.principal, request.params["project_id"]
    project: Project = await request.domain.projects.get(principal, project_id)
    policies = await request.domain.trust_policies.list(principal, project.id)
    # The provider form an error is about: it shows the error and keeps what was entered.
    entered = entered or {}
    error_provider = entered.get("provider", "") if error else ""
    if error_provider not in _FORM_OF:
        error_provider = ""
    return Page(
        "project_trust_policies.html",
        {
            "project": project,
            "tab": "trust-policies",
            "policies": policies,
            "forms": PROVIDER_FORMS,
            "titles": {form.provider: form.title for form in PROVIDER_FORMS},
            "notices": notices or {},
            "error": error,
            "entered": entered,
            "error_provider": error_provider,
        },
        status=status if error else 200,
    )
