"""The interceptor in front of every RPC: authentication first, error mapping last.

As the first metadata interceptor it runs before the request body is parsed, so a request
without a valid token costs no parsing. The resolved Principal reaches the handler
through a ContextVar, on every protocol.
"""

from __future__ import annotations

import contextvars
from typing import Any

from connectrpc.request import RequestContext

from depot_api.api.errors import to_connect_error
from depot_api.domain.auth import Authenticator
from depot_api.domain.errors import PermissionDenied
from depot_api.domain.principal import Principal
from depot_api.models import TokenKind

# Handlers take the context of any request and response type.
Context = RequestContext[Any, Any]

_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "depot_api_principal", default=None
)


def current_principal() -> Principal:
    """The authenticated caller of the RPC being handled."""
    principal = _principal.get()
    if principal is None:
        raise RuntimeError("no authenticated principal: is the RequestGuard installed?")
    return principal


class RequestGuard:
    """machines=True guards the machine service (machine tokens only); otherwise machine
    tokens are refused: they work on the machine service and nowhere else."""

    def __init__(self, authenticator: Authenticator, *, machines: bool = False) -> None:
        self._authenticator = authenticator
        self._machines = machines

    async def on_start(self, ctx: Context) -> contextvars.Token[Principal | None]:
        try:
            principal = await self._authenticator.authenticate(
                ctx.request_headers.get("authorization")
            )
            if (principal.kind is TokenKind.MACHINE) != self._machines:
                raise PermissionDenied(
                    "the machine service takes machine tokens only"
                    if self._machines
                    else "a machine token is valid for the machine service only"
                )
        except Exception as e:
            # on_end does not run for an interceptor whose on_start raised: map here.
            raise to_connect_error(e, _procedure(ctx)) from None
        return _principal.set(principal)

    async def on_end(
        self,
        token: contextvars.Token[Principal | None],
        ctx: Context,
        error: Exception | None,
    ) -> None:
        _principal.reset(token)
        if error is not None:
            raise to_connect_error(error, _procedure(ctx)) from None


def _procedure(ctx: Context) -> str:
    return f"{ctx.method.service_name}/{ctx.method.name}"
