"""Admission: who may make a call, and whether this process takes it now. One path for every
route: connectrpc's (the RequestGuard interceptor) and the seed's plain JSON GetEndpoint view
(seed_endpoint.py), which connectrpc does not serve.

Every call is checked in this order:
1. authentication: the token (refused: `unauthenticated`);
2. the token's kind: a machine token works on the machine service and nowhere else, and the
   machine service takes nothing else; a CI job's OIDC token creates builds and does nothing
   else (`permission_denied`);
3. the drain: a process shutting down takes no new call (`unavailable`);
4. the call rate of the token, with a retry hint as Retry-After and RetryInfo
   (`resource_exhausted`);
5. for a stream, the token's open streams (`resource_exhausted`).

The resolved Principal reaches the handler through a ContextVar, on every protocol. Errors are
mapped to Connect errors by api/errors.py, for both routes.

Each service names its Guard (services.py); guard_interceptors gives each guard's interceptors.
"""

from __future__ import annotations

import contextvars
import enum
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from connectrpc.interceptor import Interceptor
from connectrpc.method import StreamType
from connectrpc.request import RequestContext

from depot_api.api.drain import Drain, DrainInterceptor
from depot_api.api.errors import call_error
from depot_api.api.limits import Limits
from depot_api.api.observing import note_principal
from depot_api.domain.auth import Authenticator
from depot_api.domain.errors import PermissionDenied
from depot_api.domain.principal import Principal
from depot_api.models import TokenKind

# What a CI job's OIDC token may call: creating a build (the depot CLI's and the build API's).
# Everything after that is done with the build's own token.
CI_PROCEDURES = frozenset(
    {"depot.cli.v1.BuildService/CreateBuild", "depot.build.v1.BuildService/CreateBuild"}
)

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


class Guard(enum.Enum):
    """Who may call a service."""

    # Any token but a machine token.
    TOKEN = enum.auto()
    # Machine tokens only: the service of the agents on BuildKit hosts.
    MACHINE = enum.auto()
    # No token, and no limits; errors are mapped as everywhere. The depot CLI's login must
    # reach its handler to explain itself; gRPC reflection is served so too.
    NONE = enum.auto()


def guard_interceptors(
    authenticator: Authenticator, limits: Limits, drain: Drain
) -> dict[Guard, list[Interceptor]]:
    """Each guard's interceptors, made once and shared by the services it guards.

    The RequestGuard comes first: it then runs before the body is parsed, and the drain, which
    runs streams in tasks of their own, needs the caller it admitted in their context.
    """

    def admitting(*, machines: bool) -> list[Interceptor]:
        admission = Admission(authenticator, limits, drain, machines=machines)
        return [RequestGuard(admission), DrainInterceptor(drain)]

    return {
        Guard.TOKEN: admitting(machines=False),
        Guard.MACHINE: admitting(machines=True),
        Guard.NONE: [ErrorMapping()],
    }


@dataclass(frozen=True, slots=True)
class Admitted:
    """An admitted call: its caller, and what release undoes (the caller's context, the
    stream it counted)."""

    principal: Principal
    context: contextvars.Token[Principal | None]
    stream_of: str | None


class Admission:
    """machines=True admits to the machine service (machine tokens only); otherwise machine
    tokens are refused."""

    def __init__(
        self, authenticator: Authenticator, limits: Limits, drain: Drain, *, machines: bool
    ) -> None:
        self._authenticator = authenticator
        self._limits = limits
        self._drain = drain
        self._machines = machines

    async def admit(
        self,
        authorization: str | None,
        *,
        procedure: str,
        streaming: bool,
        response_headers: MutableMapping[str, str],
    ) -> Admitted:
        """Admit a call, or raise why not. An admitted call must be released, once."""
        principal = await self._authenticator.authenticate(authorization)
        if (principal.kind is TokenKind.MACHINE) != self._machines:
            raise PermissionDenied(
                "the machine service takes machine tokens only"
                if self._machines
                else "a machine token is valid for the machine service only"
            )
        if principal.kind is TokenKind.CI and procedure not in CI_PROCEDURES:
            raise PermissionDenied(
                "a CI job's OIDC token may only create builds (CreateBuild); "
                "every later call takes the build token CreateBuild returns"
            )
        self._drain.refuse_if_draining()
        self._limits.check_rate(principal.token_id, response_headers)
        note_principal(principal)
        stream_of = None
        if streaming:
            self._limits.open_stream(principal.token_id)
            stream_of = principal.token_id
        return Admitted(principal, _principal.set(principal), stream_of)

    def release(self, admitted: Admitted) -> None:
        _principal.reset(admitted.context)
        if admitted.stream_of is not None:
            self._limits.close_stream(admitted.stream_of)


class RequestGuard:
    """The Admission in front of a connectrpc service, and its error mapping.

    As the first metadata interceptor it runs before the request body is parsed, so a request
    without a valid token costs no parsing.
    """

    def __init__(self, admission: Admission) -> None:
        self._admission = admission

    async def on_start(self, ctx: Context) -> Admitted:
        try:
            return await self._admission.admit(
                ctx.request_headers.get("authorization"),
                procedure=f"{ctx.method.service_name}/{ctx.method.name}",
                streaming=ctx.method.stream_type is not StreamType.UNARY,
                response_headers=ctx.response_headers,
            )
        except Exception as e:
            # on_end does not run for an interceptor whose on_start raised: map here.
            raise call_error(e, ctx) from None

    async def on_end(self, admitted: Admitted, ctx: Context, error: Exception | None) -> None:
        self._admission.release(admitted)
        if error is not None:
            raise call_error(error, ctx) from None


class ErrorMapping:
    """The guard's error mapping without its admission, for the services called without a
    token (the depot CLI's login, gRPC reflection): their errors are mapped the same way."""

    async def on_start(self, ctx: Context) -> None:
        return None

    async def on_end(self, token: None, ctx: Context, error: Exception | None) -> None:
        if error is not None:
            raise call_error(error, ctx) from None
