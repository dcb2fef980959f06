"""Errors the domain raises; the transport maps each to one Connect code.

    DomainError
    ├── InvalidArgument       bad input; the message names the field
    ├── Unauthenticated       no token, or one that is malformed, unknown, revoked or expired
    ├── PermissionDenied      a valid token whose scope does not cover the operation
    ├── NotFound              no such resource within the caller's scope
    ├── AlreadyExists         a unique name is taken
    ├── FailedPrecondition    the resource is in a state that forbids the operation
    ├── ResourceExhausted     no capacity now (no BuildKit machine became ready); retry later
    └── Unavailable           a transient fault (the database is busy or unreachable); retry

Messages are written for the caller: they never carry exception text from below.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error the domain raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DomainError):
    pass


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
