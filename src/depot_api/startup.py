"""What runs once before a server starts serving: the data directory, migrations, and the
first organization of an empty database."""

from __future__ import annotations

import os
from pathlib import Path

from depot_api.config import Settings
from depot_api.store.engine import create_engine, migrate, startup_lock
from depot_api.store.sql import SqlStore
from depot_api.wiring import build_domain


async def prepare(settings: Settings) -> str | None:
    """Create the data directory, migrate the database and bootstrap it if it is empty.

    Returns the initial organization token's secret when this call created it (it is also
    written to the data directory, mode 0600); None when the database already had an
    organization. Safe to run from many processes at once.
    """
    make_data_dir(settings.data_dir)
    engine = create_engine(settings.database_url)
    store = SqlStore(engine)
    try:
        async with startup_lock(engine):
            await migrate(engine)
            secret = await build_domain(store, settings).organizations.bootstrap()
    finally:
        await store.close()  # and the engine with it
    if secret is not None:
        fd = os.open(settings.initial_token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
    return secret


def make_data_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
