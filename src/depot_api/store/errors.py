"""Errors the store raises. They speak of storage, never of transport.

StoreError
├── NameTaken          a unique name is in use; the caller picked it, so it must choose again
├── DuplicateKey       a generated ID or secret hash clashed; retry with new ones
├── StoreUnavailable   the database did not answer; the operation did not happen; retry later
└── ConstraintViolation  raised by the driver layer, inside the store only: the aggregate
                       that ran the statement turns it into NameTaken or DuplicateKey
DatabaseUnusable       opening or migrating: the database cannot be used at all (at start)
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of the errors a store call raises."""


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


class DatabaseUnusable(Exception):
    """The database cannot be used: unreachable, missing, refusing the connection, or at a
    schema this version does not know. The message says which and what to do; it does not
    name the setting (the caller knows how the user gave it)."""
