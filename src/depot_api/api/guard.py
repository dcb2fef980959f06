"""The interceptor in front of every RPC: authentication and abuse limits first, error
mapping last.

As the first metadata interceptor it runs before the request body is parsed, so a request
without a valid token costs no parsing. The resolved Principal reaches the handler
through a ContextVar, on every protocol.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

from connectrpc.method import StreamType
from connectrpc.request import RequestContext

from depot_api.api.errors import call_error
from depot_api.api.limits import Limits
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


@dataclass(frozen=True, slots=True)
class _Admitted:
    """What on_end needs to undo: the principal's context, and the stream it counted."""

    principal: contextvars.Token[Principal | None]
    stream_of: str | None


class RequestGuard:
    """machines=True guards the machine service (machine tokens only); otherwise machine
    tokens are refused: they work on the machine service and nowhere else."""

    def __init__(
        self, authenticator: Authenticator, limits: Limits, *, machines: bool = False
    ) -> None:
        self._authenticator = authenticator
        self._limits = limits
        self._machines = machines

    async def on_start(self, ctx: Context) -> _Admitted:
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
            raise call_error(e, ctx) from None
        self._limits.check_rate(principal.token_id, ctx.response_headers)
        stream_of = None
        if ctx.method.stream_type is not StreamType.UNARY:
            self._limits.open_stream(principal.token_id)
            stream_of = principal.token_id
        return _Admitted(_principal.set(principal), stream_of)

    async def on_end(self, admitted: _Admitted, ctx: Context, error: Exception | None) -> None:
        _principal.reset(admitted.principal)
        if admitted.stream_of is not None:
            self._limits.close_stream(admitted.stream_of)
        if error is not None:
            raise call_error(error, ctx) from None
