"""The console's vocabulary: a page request, what a handler answers, and the route table type.

A handler is `async (PageRequest) -> Answer`. It reads the domain with the signed-in
principal, exactly as an RPC would, so the console can show nothing the same token could not
read through the API.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode

from depot_api.api.public_url import PublicURL
from depot_api.domain.principal import Principal
from depot_api.wiring import Domain


@dataclass(frozen=True, slots=True)
class PageRequest:
    method: str
    path: str
    # The path's named parts (a project's or a build's ID), from the route's pattern.
    params: dict[str, str]
    query: dict[str, str]
    # A POST's form fields (application/x-www-form-urlencoded); empty for a GET.
    form: dict[str, str]
    principal: Principal
    domain: Domain
    # The form token every form of this session carries (csrf_field in the templates).
    csrf: str
    # The base of the links the server makes (a shared build's), as ShareBuild makes them.
    public_url: PublicURL


@dataclass(frozen=True, slots=True)
class Page:
    """A whole page: a template under templates/console/ and what it shows."""

    template: str
    context: dict[str, object] = field(default_factory=dict)
    status: int = 200


@dataclass(frozen=True, slots=True)
class Fragment:
    """Part of a page, fetched by the page's own script to update itself (console.js)."""

    template: str
    context: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Redirect:
    """After a form's POST: 303 to the page that shows its result."""

    location: str


Answer = Page | Fragment | Redirect
Handler = Callable[[PageRequest], Awaitable[Answer]]


def with_query(path: str, **query: str) -> str:
    """path with the non-empty query parameters given."""
    kept = {name: value for name, value in query.items() if value}
    return f"{path}?{urlencode(kept)}" if kept else path
