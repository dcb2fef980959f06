"""What runs once before a command does its work: checks that what the settings name is there
and usable (the TLS files, the data directory, the sealing key, the database), migrations, and
the first organization of an empty database."""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from depot_api.config import Settings
from depot_api.domain.secretbox import load_or_create_key
from depot_api.store import Store, open_store
from depot_api.store.database import explained_errors
from depot_api.store.errors import DatabaseUnusable
from depot_api.store.migrating import Migration
from depot_api.wiring import build_domain


class EnvironmentProblem(Exception):
    """A setting is well formed but what it names is missing or unusable: a file, a directory,
    a database. `field` is the Settings field, so the caller can name the setting as given."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field
        self.problem = problem


async def prepare(settings: Settings) -> str | None:
    """Create the data directory, migrate the database and bootstrap it if it is empty.

    Returns the initial organization token's secret when this call created it (it is also
    written to the data directory, mode 0600); None when the database already had an
    organization. Safe to run from many processes at once. Raises EnvironmentProblem when the
    data directory, the sealing key or the database cannot be used.
    """
    make_data_dir(settings.data_dir)
    check_secret_key(settings)
    store = open_store(settings.database_url)
    try:
        async with database_problems(settings), store.startup_lock():
            await store.migrate()
            secret = await build_domain(store, settings).organizations.bootstrap()
    finally:
        await store.close()
    if secret is not None:
        fd = os.open(settings.initial_token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
    return secret


async def migrate_database(settings: Settings) -> Migration:
    """Bring the database's schema to the newest revision; say from which."""
    make_data_dir(settings.data_dir)
    store = open_store(settings.database_url)
    try:
        async with database_problems(settings), store.startup_lock():
            return await store.migrate()
    finally:
        await store.close()


async def open_database(settings: Settings) -> Store:
    """A store over the migrated database, for the admin commands."""
    make_data_dir(settings.data_dir)
    check_secret_key(settings)
    store = open_store(settings.database_url)
    try:
        async with database_problems(settings), store.startup_lock():
            await store.migrate()
    except BaseException:
        await store.close()
        raise
    return store


def make_data_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise EnvironmentProblem("data_dir", "is a file, not a directory") from None
    except OSError as e:
        raise EnvironmentProblem("data_dir", f"cannot create the directory: {e.strerror}") from e


def check_secret_key(settings: Settings) -> None:
    """The sealing key file must hold a key (unless DEPOT_API_SECRET_KEY gives one); it is made
    on first use."""
    if settings.secret_key is not None:
        return  # checked with the other settings
    path = settings.secret_key_path
    try:
        load_or_create_key(path)
    except ValueError:
        raise EnvironmentProblem(
            "data_dir",
            f"{path} does not hold a valid key (URL-safe base64 of 32 bytes); it seals the "
            "private keys in the database, so restore it from a backup rather than replace it",
        ) from None
    except OSError as e:
        raise EnvironmentProblem("data_dir", f"cannot read or create {path}: {e.strerror}") from e


def check_tls_files(settings: Settings) -> None:
    """The certificate and key must be readable PEM that a TLS server can load, and match."""
    if settings.tls_cert is None or settings.tls_key is None:
        return
    cert = _read("tls_cert", settings.tls_cert)
    key = _read("tls_key", settings.tls_key)
    try:
        x509.load_pem_x509_certificates(cert)
    except ValueError:
        raise EnvironmentProblem("tls_cert", "does not hold a PEM certificate") from None
    try:
        load_pem_private_key(key, password=None)
    except TypeError:  # the key is encrypted
        raise EnvironmentProblem(
            "tls_key", "holds an encrypted private key; the server needs it unencrypted"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise EnvironmentProblem("tls_key", "does not hold a PEM private key") from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(settings.tls_cert, settings.tls_key)
    except ssl.SSLError as e:
        problem = (
            f"is not the private key of the certificate in {settings.tls_cert}"
            if e.reason == "KEY_VALUES_MISMATCH"
            else f"cannot serve TLS with it and the certificate ({e.reason or e})"
        )
        raise EnvironmentProblem("tls_key", problem) from None


def _read(field: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise EnvironmentProblem(field, f"cannot read the file: {e.strerror}") from None


@asynccontextmanager
async def database_problems(settings: Settings) -> AsyncIterator[None]:
    """Report a database that cannot be used as a problem of the setting that names it:
    --database, or the data directory when the database is its SQLite file."""
    try:
        async with explained_errors(settings.database_url):
            yield
    except DatabaseUnusable as e:
        field = "database" if settings.database else "data_dir"
        raise EnvironmentProblem(field, str(e)) from e
