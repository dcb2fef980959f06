"""A project's tokens page: the project's live tokens, a form that makes one, and a Revoke
button per token.

A new token's secret is shown once, in the answer to the POST that made it (a page, not a
redirect), so it is never in a URL, a history entry or a log; console pages are never cached.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from depot_api.api.console.web import Page, PageRequest, Redirect, with_query
from depot_api.domain.errors import InvalidArgument, InvalidField
from depot_api.models import Project, Token
from depot_api.times import utc_now

# What the form offers; "never" means no expiry (the API's 0).
LIFETIMES: dict[str, tuple[str, timedelta | None]] = {
    "never": ("Never expires", None),
    "1d": ("1 day", timedelta(days=1)),
    "7d": ("7 days", timedelta(days=7)),
    "30d": ("30 days", timedelta(days=30)),
    "90d": ("90 days", timedelta(days=90)),
}
DEFAULT_LIFETIME = "never"
# An ID's shape (domain/ids.py): a notice names a token only when the query holds one, so a
# crafted link cannot make the page say something else.
_ID = re.compile(r"[a-z0-9]{10}")


@dataclass(frozen=True, slots=True)
class NewToken:
    token: Token
    secret: str


def tokens_path(project_id: str) -> str:
    return f"/console/projects/{project_id}/tokens"


async def tokens_page(request: PageRequest) -> Page:
    revoked = request.query.get("revoked", "")
    return await _page(request, revoked=revoked if _ID.fullmatch(revoked) else "")


async def create_token(request: PageRequest) -> Page:
    description = request.form.get("description", "").strip()
    lifetime_key = request.form.get("lifetime", DEFAULT_LIFETIME)
    entered = {"description": description, "lifetime": lifetime_key}
    if not description:
        return await _page(
            request, error="Describe the token (what or who uses it).", entered=entered
        )
    if lifetime_key not in LIFETIMES:
        choices = ", ".join(label for label, _ in LIFETIMES.values())
        return await _page(request, error=f"Choose a lifetime: {choices}.", entered=entered)
    try:
        token, secret = await request.domain.tokens.create_project_token(
            request.principal,
            request.params["project_id"],
            description,
            LIFETIMES[lifetime_key][1],
        )
    except InvalidField as bad:
        return await _page(request, error=bad.naming_field("Description"), entered=entered)
    except InvalidArgument as bad:
        return await _page(request, error=bad.message, entered=entered)
    return await _page(request, created=NewToken(token, secret))


async def revoke_token(request: PageRequest) -> Redirect:
    project_id = request.params["project_id"]
    token_id = request.params["token_id"]
    # With the project's ID: a token of another project (even of this organization) is
    # refused as not found, so a form aimed at one project cannot revoke another's token.
    await request.domain.tokens.delete_project_token(request.principal, token_id, project_id)
    return Redirect(with_query(tokens_path(project_id), revoked=token_id))


async def _page(
    request: PageRequest,
    *,
    created: NewToken | None = None,
    revoked: str = "",
    error: str = "",
    entered: dict[str, str] | None = None,
) -> Page:
    principal, project_id = request.principal, request.params["project_id"]
    project: Project = await request.domain.projects.get(principal, project_id)
    tokens = await request.domain.tokens.list_project_tokens(principal, project.id)
    now = utc_now()
    return Page(
        "project_tokens.html",
        {
            "project": project,
            "tab": "tokens",
            "tokens": tokens,
            "expired": {token.id for token in tokens if _expired(token, now)},
            "created": created,
            "revoked": revoked,
            "error": error,
            "entered": entered or {"description": "", "lifetime": DEFAULT_LIFETIME},
            "lifetimes": {key: label for key, (label, _) in LIFETIMES.items()},
        },
        status=400 if error else 200,
    )


def _expired(token: Token, now: datetime) -> bool:
    return token.expires_at is not None and token.expires_at <= now
