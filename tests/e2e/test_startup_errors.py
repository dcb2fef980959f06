"""Every misstep at start gets one clear line: the real `depot-api` process, given a bad setting
or a missing part, exits with status 2 (a value wrong as written) or 1 (what it names is
missing or unusable) and one line on standard error that names the setting as it was given.
Never a traceback, never Envoy's bare "failed to start"."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.databases import POSTGRES_SERVER
from tests.helpers import BIN, stop_process

from .test_tls import self_signed

USAGE, ENVIRONMENT = 2, 1


def postgres_database(name: str) -> str:
    """A URL of a database on the test PostgreSQL server (which need not exist)."""
    return make_url(POSTGRES_SERVER).set(database=name).render_as_string(hide_password=False)


def missing_database() -> str:
    return postgres_database(f"depot_missing_{secrets.token_hex(6)}")


UNREACHABLE = "postgresql://postgres@127.0.0.1:1/depot"  # nothing listens on port 1


@dataclass
class Case:
    """A start that must fail: the extra arguments and environment (each may depend on the
    test's directory and a port held busy), the exit status, and what the line must say."""

    args: Callable[[Path, int], list[str]]
    status: int
    says: Callable[[Path, int], list[str]]
    env: dict[str, str] = field(default_factory=dict)


def certificate(directory: Path) -> tuple[Path, Path]:
    made = self_signed(directory)
    return made.cert, made.key


def a_key_for_both(directory: Path) -> list[str]:
    key = str(certificate(directory)[1])
    return ["--tls-cert", key, "--tls-key", key]


CASES = {
    # The list.
    "postgres-database-missing": Case(
        lambda d, p: ["--database", missing_database()],
        ENVIRONMENT,
        lambda d, p: ["--database postgresql://", "does not exist", "createdb"],
    ),
    "postgres-unreachable": Case(
        lambda d, p: ["--database", UNREACHABLE],
        ENVIRONMENT,
        lambda d, p: [f"--database {UNREACHABLE}", "cannot reach PostgreSQL at 127.0.0.1:1"],
    ),
    "unsupported-url-scheme": Case(
        lambda d, p: ["--database", "mysql://depot@db/depot"],
        USAGE,
        lambda d, p: ["--database mysql://depot@db/depot", "unsupported scheme mysql://"],
    ),
    "port-env-not-a-number": Case(
        lambda d, p: [],
        USAGE,
        lambda d, p: ["DEPOT_API_PORT=abc", "whole number from 0 to 65535"],
        env={"DEPOT_API_PORT": "abc"},
    ),
    "duration-env-with-a-unit": Case(
        lambda d, p: [],
        USAGE,
        lambda d, p: ["DEPOT_API_ACQUIRE_TIMEOUT=5m", "a number of seconds"],
        env={"DEPOT_API_ACQUIRE_TIMEOUT": "5m"},
    ),
    "log-level-unknown": Case(
        lambda d, p: ["--log-level", "verbose"],
        USAGE,
        lambda d, p: ["--log-level verbose", "debug, info, warning, error"],
    ),
    "secret-key-malformed": Case(
        lambda d, p: [],
        USAGE,
        lambda d, p: ["DEPOT_API_SECRET_KEY:", "Fernet key"],
        env={"DEPOT_API_SECRET_KEY": "not-a-key"},
    ),
    "port-out-of-range": Case(
        lambda d, p: ["--port", "99999"],
        USAGE,
        lambda d, p: ["--port 99999", "from 0 to 65535"],
    ),
    "tls-files-missing": Case(
        lambda d, p: ["--tls-cert", str(d / "none.pem"), "--tls-key", str(d / "none.key")],
        ENVIRONMENT,
        lambda d, p: [f"--tls-cert {d / 'none.pem'}", "No such file"],
    ),
    "port-in-use": Case(
        lambda d, p: ["--port", str(p)],
        ENVIRONMENT,
        lambda d, p: [str(p)],
    ),
    # More of the same kind.
    "tls-key-missing": Case(
        lambda d, p: ["--tls-cert", str(certificate(d)[0]), "--tls-key", str(d / "none.key")],
        ENVIRONMENT,
        lambda d, p: [f"--tls-key {d / 'none.key'}", "No such file"],
    ),
    "tls-cert-not-pem": Case(
        lambda d, p: a_key_for_both(d),
        ENVIRONMENT,
        lambda d, p: [f"--tls-cert {d / 'key.pem'}", "does not hold a PEM certificate"],
    ),
    "tls-key-of-another-certificate": Case(
        lambda d, p: [
            "--tls-cert",
            str(certificate(d / "one")[0]),
            "--tls-key",
            str(certificate(d / "two")[1]),
        ],
        ENVIRONMENT,
        lambda d, p: [f"--tls-key {d / 'two' / 'key.pem'}", "not the private key"],
    ),
    "tls-cert-without-key": Case(
        lambda d, p: [],
        USAGE,
        lambda d, p: ["DEPOT_API_TLS_CERT=cert.pem", "needs --tls-key"],
        env={"DEPOT_API_TLS_CERT": "cert.pem"},
    ),
    "host-not-an-address": Case(
        lambda d, p: ["--host", "localhost"],
        USAGE,
        lambda d, p: ["--host localhost", "IP address"],
    ),
    "workers-negative": Case(
        lambda d, p: [],
        USAGE,
        lambda d, p: ["DEPOT_API_WORKERS=-1", "0 or more"],
        env={"DEPOT_API_WORKERS": "-1"},
    ),
    "sqlite-file-not-a-database": Case(
        lambda d, p: [],
        ENVIRONMENT,
        lambda d, p: [f"--data-dir {d / 'data'}", "file is not a database"],
    ),
    "data-dir-is-a-file": Case(
        lambda d, p: ["--data-dir", str(d / "a-file")],
        ENVIRONMENT,
        lambda d, p: [f"--data-dir {d / 'a-file'}", "not a directory"],
    ),
    "unknown-flag": Case(
        lambda d, p: ["--prot", "8080"],
        USAGE,
        lambda d, p: ["unrecognized arguments: --prot"],
    ),
}


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port held by a plain listening socket, as another program would hold it."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize("name", CASES)
def test_serve_fails_with_one_clear_line(tmp_path: Path, busy_port: int, name: str) -> None:
    case = CASES[name]
    (tmp_path / "data").mkdir(mode=0o700)
    if name == "sqlite-file-not-a-database":
        (tmp_path / "data" / "depot-api.sqlite3").write_text("not a database")
    (tmp_path / "a-file").write_text("")
    args = case.args(tmp_path, busy_port)
    # A free port, one worker and a fresh data directory, unless the case sets them.
    for flag, value in [
        ("--data-dir", str(tmp_path / "data")),
        ("--port", "0"),
        ("--workers", "1"),
    ]:
        env_var = "DEPOT_API_" + flag.removeprefix("--").replace("-", "_").upper()
        if flag not in args and env_var not in case.env:
            args = [flag, value, *args]
    status, line = fail(["serve", *args], case.env, cwd=tmp_path)
    assert status == case.status, line
    for words in case.says(tmp_path, busy_port):
        assert words in line


@pytest.mark.parametrize("command", [["migrate"], ["admin", "list-orgs"]])
@pytest.mark.parametrize("where", ["missing", "unreachable"])
def test_migrate_and_admin_explain_a_database_they_cannot_use(
    tmp_path: Path, command: list[str], where: str
) -> None:
    url = missing_database() if where == "missing" else UNREACHABLE
    status, line = fail([*command, "--data-dir", str(tmp_path), "--database", url], {})
    assert status == ENVIRONMENT
    assert line.startswith(f"depot-api: --database {url}: ")
    assert ("does not exist" if where == "missing" else "cannot reach") in line


def test_the_database_named_in_the_environment_is_named_so(tmp_path: Path) -> None:
    url = missing_database()
    status, line = fail(["migrate", "--data-dir", str(tmp_path)], {"DEPOT_API_DATABASE_URL": url})
    assert status == ENVIRONMENT
    assert line.startswith(f"depot-api: DEPOT_API_DATABASE_URL={url}: ")


def test_a_password_in_a_url_is_not_shown(tmp_path: Path) -> None:
    url = "postgresql://depot:hunter2@127.0.0.1:1/depot"
    status, line = fail(["migrate", "--data-dir", str(tmp_path), "--database", url], {})
    assert status == ENVIRONMENT
    assert "hunter2" not in line and "depot:***@127.0.0.1:1" in line


def fail(args: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[int, str]:
    """Run `depot-api ARGS`, which must exit by itself with one line on standard error and
    no traceback; return its status and that line."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DEPOT_API_")}
    process = subprocess.Popen(
        [str(BIN / "depot-api"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**environ, **env},
        cwd=cwd,
    )
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        stop_process(process)
        out, err = process.communicate()
        pytest.fail(f"depot-api {' '.join(args)} did not exit:\n{out}{err}")
    assert "Traceback" not in out + err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on standard error, got:\n{err}"
    assert process.returncode != 0
    return process.returncode, lines[0]
