"""Errors the store raises. They speak of storage, never of transport."""

from __future__ import annotations


class StoreError(Exception):
    """Base of the store's errors."""


class NameTaken(StoreError):
    """A unique name (a project's, within its organization) is already in use."""


class DuplicateKey(StoreError):
    """A generated primary key or secret hash clashed; the caller may retry with a new one."""


class StoreUnavailable(StoreError):
    """The database is unreachable, locked or overloaded; the operation did not complete."""


class ConstraintViolation(StoreError):
    """A statement broke a unique or foreign-key constraint; `constraint` names it as the
    database did (PostgreSQL: the constraint's name; SQLite: its message, which names the
    columns). The store turns it into NameTaken or DuplicateKey."""

    def __init__(self, constraint: str) -> None:
        super().__init__(constraint)
        self.constraint = constraint
