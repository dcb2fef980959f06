"""Errors the domain raises; the transport maps each to one Connect code.

    DomainError
    ├── InvalidArgument       bad input; the message names the field
    │   └── InvalidField      bad input in one field, named as data (see there)
    ├── Unauthenticated       no token, or one that is malformed, unknown, revoked or expired
    ├── PermissionDenied      a valid token whose scope does not cover the operation
    ├── NotFound              no such resource within the caller's scope
    ├── AlreadyExists         a unique name is taken
    ├── FailedPrecondition    the resource is in a state that forbids the operation
    ├── ResourceExhausted     no capacity now (no BuildKit machine became ready); retry later
    └── Unavailable           a transient fault (the database is busy or unreachable); retry

Messages are written for the caller: they never carry exception text from below.

The store's failures pass through the domain's calls as the store raised them (catching them
around every store call would cost every call); the transport asks as_domain_error what one
means, so only the domain knows the store's errors.
"""

from __future__ import annotations

from depot_api.store.errors import StoreUnavailable

DATABASE_UNAVAILABLE = "the database is busy or unreachable; retry shortly"


class DomainError(Exception):
    """Base of every error the domain raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DomainError):
    pass


class InvalidField(InvalidArgument):
    """Bad input in one field: the message is the field's name, then the problem.

    The field is kept apart, as its path in the request as the protos name it
    ("cache_policy.keep_gb"), so that the transport can name it as the caller wrote it (a
    JSON caller writes "cachePolicy.keepGb"); the domain knows no wire format.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem

    def naming_field(self, name: str) -> str:
        """The message with the field called name."""
        return f"{name} {self.problem}"


class Unauthenticated(DomainError):
    pass


class PermissionDenied(DomainError):
    pass


class NotFound(DomainError):
    pass


class AlreadyExists(DomainError):
    pass


class FailedPrecondition(DomainError):
    pass


class ResourceExhausted(DomainError):
    pass


class Unavailable(DomainError):
    pass


def as_domain_error(error: Exception) -> Exception:
    """error as the domain reports it: a store that is busy or unreachable is Unavailable,
    with the database's own error as its cause (for the log, never for the caller); any
    other error is returned as it is."""
    if isinstance(error, StoreUnavailable):
        unavailable = Unavailable(DATABASE_UNAVAILABLE)
        unavailable.__cause__ = error.__cause__ or error
        return unavailable
    return error
