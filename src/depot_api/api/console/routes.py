"""Every console page, by method and path (paths under /console; {name} is one segment)."""

from __future__ import annotations

from depot_api.api.console import build_page
from depot_api.api.console.console import Route, route
from depot_api.api.console.machines import machines_live, machines_page
from depot_api.api.console.project_builds import project_builds_page
from depot_api.api.console.project_tokens import create_token, revoke_token, tokens_page
from depot_api.api.console.projects import projects_page
from depot_api.api.console.trust_policies import add_policy, remove_policy, trust_policies_page

ROUTES: list[Route] = [
    route("GET", "/", projects_page),
    # A project's builds
    route("GET", "/projects/{project_id}", project_builds_page),
    # A project's tokens and trust policies
    route("GET", "/projects/{project_id}/tokens", tokens_page),
    route("POST", "/projects/{project_id}/tokens", create_token),
    route("POST", "/projects/{project_id}/tokens/{token_id}/revoke", revoke_token),
    route("GET", "/projects/{project_id}/trust-policies", trust_policies_page),
    route("POST", "/projects/{project_id}/trust-policies", add_policy),
    route("POST", "/projects/{project_id}/trust-policies/{policy_id}/remove", remove_policy),
    # Machines
    route("GET", "/machines", machines_page),
    route("GET", "/machines/live", machines_live),
    # One build
    route("GET", "/builds/{build_id}", build_page.build_page),
    route("GET", "/builds/{build_id}/live", build_page.build_live),
    route("GET", "/builds/{build_id}/logs", build_page.step_log_page),
    route("POST", "/builds/{build_id}/share", build_page.share_build),
    route("POST", "/builds/{build_id}/stop-sharing", build_page.stop_sharing_build),
]
