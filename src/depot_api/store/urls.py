"""Database URLs: the forms people write, the driver each one gets, and how one is shown."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

# How messages describe the accepted URLs.
_URL_FORMS = "postgresql://user:password@host:5432/db (or postgres://), or sqlite:///path"


def sqlite_url(data_dir: Path) -> str:
    """The URL of the SQLite database in a data directory."""
    return f"sqlite+aiosqlite:///{(data_dir / 'depot-api.sqlite3').resolve()}"


def normalize_url(url: str) -> str:
    """Accept the URLs people write (postgresql://, postgres://, sqlite:///) and pick the
    asynchronous driver for each. ValueError says what is wrong with any other."""
    try:
        parsed = make_url(url)
        port = parsed.port
    except (ArgumentError, ValueError):
        raise ValueError(f"must be a database URL such as {_URL_FORMS}") from None
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"names port {port}; a port is a whole number from 1 to 65535")
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            # Each process would have a database of its own, forgotten when it exits.
            raise ValueError("must name a SQLite file: sqlite:///path/to/file")
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    raise ValueError(f"uses the unsupported scheme {parsed.drivername}://; use {_URL_FORMS}")


def shown_url(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        # Not a URL at all; shown as given unless it might hold a password.
        return url if "@" not in url else "(not shown: it may hold a password)"
