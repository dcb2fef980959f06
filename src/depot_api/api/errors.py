"""Domain errors as Connect errors.

Expected errors carry the domain's message (written for the caller), naming a field as the
caller writes it (api/field_names.py). An error from below the domain is read as the domain
reports it (a database outage is `unavailable`); anything else is a bug: the caller gets a
generic `internal` message and the log gets the traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from protobuf import DescMessage

from depot_api.api.field_names import is_json, json_path
from depot_api.api.observing import note_error_code
from depot_api.domain import errors as domain
from depot_api.domain.secretbox import SecretBoxError

log = logging.getLogger("depot_api.api")

_CODES: dict[type[domain.DomainError], Code] = {
    domain.InvalidArgument: Code.INVALID_ARGUMENT,
    domain.Unauthenticated: Code.UNAUTHENTICATED,
    domain.PermissionDenied: Code.PERMISSION_DENIED,
    domain.NotFound: Code.NOT_FOUND,
    domain.AlreadyExists: Code.ALREADY_EXISTS,
    domain.FailedPrecondition: Code.FAILED_PRECONDITION,
    domain.ResourceExhausted: Code.RESOURCE_EXHAUSTED,
    domain.Unavailable: Code.UNAVAILABLE,
}


# connectrpc answers a request message flagged as compressed when no compression was
# negotiated with `internal` (as grpc-go does). It is the caller's malformed framing, which
# connectrpc reports as `invalid_argument` in every other case; `internal` here means a bug.
_COMPRESSED_WITHOUT_COMPRESSION = "sent compressed message without compression support"


def call_error(error: Exception, ctx: RequestContext[Any, Any]) -> ConnectError:
    """to_connect_error for an error of this call, its fields named as its caller writes them."""
    method = ctx.method
    json_request = None
    if is_json(ctx.request_headers.get("content-type", "")):
        json_request = method.input.desc()
    return to_connect_error(
        error, f"{method.service_name}/{method.name}", json_request=json_request
    )


def to_connect_error(
    error: Exception, procedure: str, *, json_request: DescMessage | None = None
) -> ConnectError:
    """The Connect error for error. json_request, the request message's descriptor, is given
    when the caller wrote JSON: a field is then named by its JSON name.

    Its code is noted in the call's record, for the request's log line and metrics."""
    mapped = _connect_error_of(error, procedure, json_request)
    note_error_code(mapped.code.value)
    return mapped


def _connect_error_of(
    error: Exception, procedure: str, json_request: DescMessage | None
) -> ConnectError:
    if isinstance(error, ConnectError):
        if error.code is Code.INTERNAL and _COMPRESSED_WITHOUT_COMPRESSION in error.message:
            return ConnectError(Code.INVALID_ARGUMENT, error.message)
        return error
    error = domain.as_domain_error(error)
    if isinstance(error, domain.DomainError):
        if isinstance(error, domain.Unavailable) and error.__cause__ is not None:
            # The cause stays in the log: it tells an operator what failed (a lock, a timeout).
            log.warning("%s: %s: %r", procedure, error.message, error.__cause__)
        message = error.message
        if json_request is not None and isinstance(error, domain.InvalidField):
            message = error.naming_field(json_path(json_request, error.field))
        return ConnectError(_code_of(error), _utf8_safe(message))
    if isinstance(error, SecretBoxError):
        log.error(
            "%s: a sealed key cannot be opened: servers that share a database must share "
            "DEPOT_API_SECRET_KEY (or the data directory's secret.key)",
            procedure,
        )
        return ConnectError(Code.INTERNAL, "internal error")
    log.error("%s: unexpected error", procedure, exc_info=error)
    return ConnectError(Code.INTERNAL, "internal error")


def _utf8_safe(message: str) -> str:
    """message, any lone surrogate in it written as an escape (\\ud800).

    A message may quote what the caller sent, and JSON can carry a lone surrogate ("\\ud800")
    that UTF-8 cannot: connectrpc failed to write such a message, answering nothing. Every
    other character is kept as it is: messages are UTF-8 on every protocol.
    """
    try:
        message.encode()
    except UnicodeEncodeError:
        return message.encode("utf-8", "backslashreplace").decode()
    return message


def _code_of(error: domain.DomainError) -> Code:
    for kind in type(error).__mro__:
        code = _CODES.get(kind)
        if code is not None:
            return code
    return Code.INTERNAL
