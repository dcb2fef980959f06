"""The depot-api command: admin commands on a data directory, migrate, help, and settings from
flags and the environment."""

from __future__ import annotations

import argparse
import asyncio
import re
import stat
from collections.abc import Callable, Iterator
from datetime import timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from alembic import command as alembic
from alembic.config import Config
from sqlalchemy import Connection

import depot_api.store
from depot_api.cli import _parser, main, resolve_args
from depot_api.config import SettingError, Settings
from depot_api.domain.connections import ReportedConnection
from depot_api.domain.principal import Principal
from depot_api.domain.token_format import kind_of
from depot_api.models import Platform, TokenKind
from depot_api.startup import prepare
from depot_api.store import open_store
from depot_api.store.database import create_engine
from depot_api.store.migrating import head_revision
from depot_api.store.urls import sqlite_url
from depot_api.times import utc_now
from depot_api.wiring import build_domain

from .databases import BACKENDS, database

MIGRATIONS = Path(depot_api.store.__file__).parent / "migrations"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_admin_commands_print_what_they_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = ["--data-dir", str(tmp_path)]
    code, out, _ = run(capsys, "admin", "create-org", "--name", "acme", *d)
    org_id = last_line(out)
    assert code == 0 and len(org_id) == 10

    code, out, _ = run(capsys, "admin", "create-token", "--org", org_id, "--description", "ci", *d)
    assert code == 0 and kind_of(last_line(out)) is TokenKind.ORG

    code, out, _ = run(capsys, "admin", "create-user", "--name", "ada", *d)
    user_id = last_line(out)
    code, out, _ = run(capsys, "admin", "add-member", "--user", user_id, "--org", org_id, *d)
    assert code == 0
    code, out, _ = run(capsys, "admin", "create-user-token", "--user", user_id, *d)
    secret = last_line(out)
    assert code == 0 and kind_of(secret) is TokenKind.USER

    async def principal_orgs() -> frozenset[str]:
        store = open_store(sqlite_url(tmp_path))
        try:
            domain = build_domain(store, Settings(data_dir=tmp_path))
            return (await domain.authenticator.authenticate(f"Bearer {secret}")).org_ids
        finally:
            await store.close()

    assert asyncio.run(principal_orgs()) == {org_id}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("create-token", "--org", "nosuchorg0"), "organization nosuchorg0 not found"),
        (("create-token", "--org", "BAD"), "org"),
        (("create-org", "--name", ""), "name is required"),
        (("add-member", "--user", "0123456789", "--org", "0123456789"), "user 0123456789"),
        (("create-machine-token", "--expires-in-days", "0"), "must be a positive number"),
        (("create-machine-token", "--expires-in-days", "3651"), "is too long"),
        (("revoke-token", "--token", "0123456789"), "token 0123456789 not found"),
    ],
)
def test_admin_errors_are_clear(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    code, out, err = run(capsys, "admin", *args, "--data-dir", str(tmp_path))
    assert code == 2
    assert message in err
    assert "Traceback" not in out + err


def test_bootstrap_happens_once_with_a_private_token_file(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    secret = asyncio.run(prepare(settings))
    assert secret is not None and kind_of(secret) is TokenKind.ORG
    path = settings.initial_token_path
    assert path.read_text().strip() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.data_dir.stat().st_mode) == 0o700
    assert asyncio.run(prepare(settings)) is None  # never printed twice
    assert path.read_text().strip() == secret


def test_settings_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "DEPOT_API_HOST": "0.0.0.0",
            "DEPOT_API_PORT": "9999",
            "DEPOT_API_DATA_DIR": "/srv/depot",
            "DEPOT_API_BUILD_TOKEN_GRACE": "5",
            "DEPOT_API_REGIONS": "home-1,home-2",
            "DEPOT_API_MAX_MESSAGE_BYTES": "1024",
        }
    )
    assert settings.host == "0.0.0.0" and settings.port == 9999
    assert settings.data_dir == Path("/srv/depot")
    assert settings.build_token_grace == timedelta(seconds=5)
    assert settings.regions == ("home-1", "home-2")
    assert settings.max_message_bytes == 1024
    assert Settings.from_env(settings.to_env()).regions == settings.regions


def test_defaults_without_environment() -> None:
    settings = Settings.from_env({})
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.data_dir == Path("depot-api-data")


@pytest.mark.parametrize("template", ["{build}", "{project_id", "{build_id.x}", "{0}"])
def test_serve_refuses_a_build_url_with_unknown_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], template: str
) -> None:
    code, _, err = run(capsys, "serve", "--data-dir", str(tmp_path), "--build-url", template)
    assert code == 2
    assert "--build-url" in err and "{project_id} and {build_id}" in err
    assert not (tmp_path / "depot-api.sqlite3").exists()  # refused before starting anything


def test_admin_tokens_expire_list_and_revoke(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = ["--data-dir", str(tmp_path)]
    _, out, _ = run(capsys, "admin", "create-machine-token", "--expires-in-days", "7", *d)
    token_id = out.split()[2]  # "machine token <id> created; …"
    secret = last_line(out)
    code, out, _ = run(capsys, "admin", "list-tokens", *d)
    [line] = [row for row in out.splitlines() if row.startswith(token_id)]
    assert code == 0 and " machine " in line and "expires=never" not in line
    assert "last-used=never" in line and secret not in out
    code, out, _ = run(capsys, "admin", "revoke-token", "--token", token_id, *d)
    assert code == 0 and f"token {token_id} is revoked" in out
    _, out, _ = run(capsys, "admin", "list-tokens", *d)
    assert token_id not in out


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--rate-limit", "-1"),
        ("--rate-limit", "nan"),
        ("--rate-burst", "0"),
        ("--max-streams-per-token", "-1"),
        ("--shutdown-grace", "-1"),
        ("--shutdown-grace", "3601"),
        ("--max-message-bytes", "0"),
    ],
)
def test_serve_refuses_limits_out_of_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    code, _, err = run(capsys, "serve", "--data-dir", str(tmp_path), flag, value)
    assert code == 2
    assert err.startswith(f"depot-api: {flag} {value}: must be ")
    assert not (tmp_path / "depot-api.sqlite3").exists()  # refused before starting anything


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"depot-api {version('depot-api')}"


def test_serve_help_lists_environment_only_settings_log_levels_and_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    # argparse wraps lines; compare the words only.
    help_text = " ".join(capsys.readouterr().out.split())
    env_only = [
        "DEPOT_API_SECRET_KEY",
        "DEPOT_API_MACHINE_HEARTBEAT (default: 1)",
        "DEPOT_API_MACHINE_LOST_AFTER",
        "DEPOT_API_MACHINE_IDLE_RELEASE",
        "DEPOT_API_ACQUIRE_TIMEOUT",
        "DEPOT_API_PENDING_INTERVAL",
        "DEPOT_API_LIVENESS_WINDOW",
        "DEPOT_API_MAX_BUILD_DURATION",
    ]
    for name in env_only:
        assert name.split()[0] in help_text
    assert "seconds between agent heartbeats (default: 1)" in help_text
    assert "the key that seals private keys" in help_text
    assert "debug, info, warning, error" in help_text
    # Defaults as people write them.
    assert "DEPOT_API_BUILD_TOKEN_GRACE; default: 120)" in help_text
    assert "DEPOT_API_SHUTDOWN_GRACE; default: 30)" in help_text
    assert "DEPOT_API_RATE_LIMIT; default: 200)" in help_text
    assert "(default: 86400)" in help_text
    assert ".0)" not in help_text and ".0;" not in help_text


SERVE_FLAGS = {
    "--data-dir": "DATA_DIR",
    "--database": "DATABASE_URL",
    "--host": "HOST",
    "--port": "PORT",
    "--workers": "WORKERS",
    "--tls-cert": "TLS_CERT",
    "--tls-key": "TLS_KEY",
    "--build-token-grace": "BUILD_TOKEN_GRACE",
    "--regions": "REGIONS",
    "--max-message-bytes": "MAX_MESSAGE_BYTES",
    "--rate-limit": "RATE_LIMIT",
    "--rate-burst": "RATE_BURST",
    "--max-streams-per-token": "MAX_STREAMS_PER_TOKEN",
    "--shutdown-grace": "SHUTDOWN_GRACE",
    "--log-level": "LOG_LEVEL",
    "--build-url": "BUILD_URL",
    "--wait-for-machines": "WAIT_FOR_MACHINES",
}


@pytest.mark.parametrize("args", [["serve"], ["migrate"], ["admin", "create-org"]])
def test_every_setting_flag_names_its_environment_variable(
    capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    with pytest.raises(SystemExit):
        main([*args, "--help"])
    help_text = capsys.readouterr().out
    flags = (
        SERVE_FLAGS
        if args == ["serve"]
        else {"--data-dir": "DATA_DIR", "--database": "DATABASE_URL"}
    )
    for flag, env in flags.items():
        # The flag's own help: from its line to the next option's or the end of the list.
        match = re.search(rf"^  {flag}[ ,].*?(?=^  -|\n\n)", help_text, re.MULTILINE | re.DOTALL)
        assert match is not None, flag
        own = " ".join(match.group(0).split())
        assert f"(env DEPOT_API_{env}; default: " in own, flag


def test_every_option_of_admin_has_a_help_line() -> None:
    admin = _subcommands(_parser())["admin"]
    actions = _subcommands(admin)
    assert "list-orgs" in actions
    for name, action in actions.items():
        for option in action._actions:
            assert option.help, f"admin {name} {option.option_strings} has no help"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subparsers.choices)


def test_admin_list_orgs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = ["--data-dir", str(tmp_path)]
    code, out, err = run(capsys, "admin", "list-orgs", *d)
    assert (code, out) == (0, "")
    assert err.strip() == "no organizations yet: create one with `depot-api admin create-org`"

    ids = [
        last_line(run(capsys, "admin", "create-org", "--name", name, *d)[1])
        for name in ("a", "b c")
    ]
    code, out, err = run(capsys, "admin", "list-orgs", *d)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ids
    assert lines[0].endswith(" 'a'") and lines[1].endswith(" 'b c'")
    assert "created=" in lines[0]


def test_admin_list_machines_says_when_there_are_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "admin", "list-machines", "--data-dir", str(tmp_path))
    assert (code, out) == (0, "")  # standard output stays one line per machine
    assert err.startswith("no machines: none has registered")


def test_admin_drain_machine_names_a_machine_it_does_not_know(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every admin action reaches its handler (draining a real machine: tests/e2e)."""
    machine = "0123456789"
    code, out, err = run(
        capsys, "admin", "drain-machine", "--machine", machine, "--data-dir", str(tmp_path)
    )
    assert (code, out) == (2, "")
    assert machine in err and "not found" in err


def test_a_setting_a_command_does_not_use_cannot_break_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The admin commands read the data directory, the database and the sealing key; a bad
    server setting in the environment is none of their business."""
    monkeypatch.setenv("DEPOT_API_PORT", "abc")
    monkeypatch.setenv("DEPOT_API_ACQUIRE_TIMEOUT", "5m")
    code, _, err = run(capsys, "admin", "create-org", "--name", "acme", "--data-dir", str(tmp_path))
    assert (code, err) == (0, "")


def test_a_flag_wins_over_a_bad_environment_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEPOT_API_DATABASE_URL", "mysql://nowhere/x")
    monkeypatch.setenv("DEPOT_API_DATA_DIR", str(tmp_path / "not-this-one"))
    code, out, err = run(
        capsys, "migrate", "--data-dir", str(tmp_path), "--database", sqlite_url(tmp_path)
    )
    assert (code, err) == (0, "")
    assert out.startswith("created the schema")
    assert not (tmp_path / "not-this-one").exists()


@pytest.fixture(params=BACKENDS)
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database(request.param, tmp_path) as url:
        yield url


def test_migrate_says_what_it_did(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], empty_database: str
) -> None:
    head = head_revision()
    migrate = ("migrate", "--data-dir", str(tmp_path), "--database", empty_database)
    assert run(capsys, *migrate) == (0, f"created the schema at revision {head}\n", "")
    assert run(capsys, *migrate) == (
        0,
        f"the schema is already at revision {head}; nothing to do\n",
        "",
    )


def test_migrate_says_from_which_revision_it_upgraded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], empty_database: str
) -> None:
    asyncio.run(_on_database(empty_database, lambda c: _alembic_upgrade(c, "0002")))
    migrate = ("migrate", "--data-dir", str(tmp_path), "--database", empty_database)
    assert run(capsys, *migrate) == (
        0,
        f"upgraded the schema from revision 0002 to {head_revision()}\n",
        "",
    )


def test_migrate_refuses_a_schema_from_a_newer_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], empty_database: str
) -> None:
    migrate = ("migrate", "--data-dir", str(tmp_path), "--database", empty_database)
    assert run(capsys, *migrate)[0] == 0
    asyncio.run(
        _on_database(
            empty_database,
            lambda c: c.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'"),
        )
    )
    code, out, err = run(capsys, *migrate)
    assert (code, out) == (1, "")
    [line] = err.splitlines()
    assert line.startswith("depot-api: --database ")
    assert "revision 9999, which this version of depot-api does not know" in line


async def _on_database(url: str, work: Callable[[Connection], object]) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(work)
    finally:
        await engine.dispose()


def _alembic_upgrade(connection: Connection, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    alembic.upgrade(config, revision)


@pytest.mark.parametrize(
    ("value", "waits"),
    [("true", True), ("1", True), ("YES", True), ("on", True), ("false", False), ("0", False)],
)
def test_wait_for_machines_comes_from_the_environment(value: str, waits: bool) -> None:
    settings = Settings.from_env({"DEPOT_API_WAIT_FOR_MACHINES": value})
    assert settings.wait_for_machines is waits
    # Handed on to the server processes as it was given.
    assert Settings.from_env(settings.to_env()).wait_for_machines is waits
    assert Settings.from_env({}).wait_for_machines is False  # by default, builds are refused


def test_wait_for_machines_names_a_wrong_value() -> None:
    with pytest.raises(SettingError, match="DEPOT_API_WAIT_FOR_MACHINES=maybe: must be true or"):
        Settings.from_env({"DEPOT_API_WAIT_FOR_MACHINES": "maybe"})


@pytest.mark.parametrize(
    ("flag", "env", "waits"),
    [
        ("--wait-for-machines", "false", True),
        ("--no-wait-for-machines", "true", False),
        (None, "true", True),
    ],
)
def test_the_wait_for_machines_flag_wins_over_the_environment(
    flag: str | None, env: str, waits: bool
) -> None:
    """A switch's flag takes no value; given, it wins over the environment as every flag does."""
    args = _parser().parse_args(["serve", *([flag] if flag else [])])
    resolved = resolve_args(args, {"DEPOT_API_WAIT_FOR_MACHINES": env})
    assert resolved.settings.wait_for_machines is waits


def test_admin_list_connections(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], database_url: str
) -> None:
    d = ["--data-dir", str(tmp_path), "--database", database_url]
    code, out, err = run(capsys, "admin", "list-connections", *d)
    assert (code, out) == (0, "")  # standard output stays one line per connection
    assert err.strip() == ("no connections: machines report their connections, kept for 7 days")
    machine_id, other_id = asyncio.run(_report_connections(tmp_path, database_url))

    code, out, err = run(capsys, "admin", "list-connections", *d)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    opened = [line.split()[0] for line in lines]
    assert opened == sorted(opened, reverse=True) and len(lines) == 3
    assert lines[0].endswith(
        f" {other_id} build=- peer=10.0.0.9:1 refused='not TLS' in=0 out=0 duration=0.002s"
    )
    assert lines[1].endswith(
        f" {machine_id} build=abcdefghij peer=10.0.0.7:2 admitted in=300 out=9000 open"
    )
    assert lines[2].endswith(
        f" {machine_id} build=abcdefghij peer=10.0.0.7:1 admitted in=10 out=20 duration=9.000s"
    )

    code, out, _ = run(capsys, "admin", "list-connections", "--machine", machine_id, *d)
    assert out.splitlines() == lines[1:]
    code, out, _ = run(capsys, "admin", "list-connections", "--build", "abcdefghij", *d)
    assert out.splitlines() == lines[1:]
    code, out, _ = run(capsys, "admin", "list-connections", "--limit", "1", *d)
    assert out.splitlines() == lines[:1]
    code, out, err = run(
        capsys, "admin", "list-connections", "--machine", other_id, "--build", "abcdefghij", *d
    )
    assert (code, out) == (0, "")
    assert err.startswith(f"no connections of machine {other_id} and build abcdefghij: ")


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (("--limit", "0"), "limit must be between 1 and 10000, got 0"),
        (("--limit", "many"), "argument --limit: invalid int value: 'many'"),
        (("--machine", "nope"), 'machine "nope" is not a valid ID'),
        (("--build", "NOPE"), 'build "NOPE" is not a valid ID'),
    ],
)
def test_admin_list_connections_names_bad_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: tuple[str, ...], problem: str
) -> None:
    argv = ("admin", "list-connections", *flags, "--data-dir", str(tmp_path))
    try:
        code, out, err = run(capsys, *argv)
    except SystemExit as exit:  # argparse's own checks end the program
        code, (out, err) = int(str(exit.code)), capsys.readouterr()
    assert (code, out) == (2, "")
    assert problem in err and len(err.splitlines()) == 1


async def _report_connections(data_dir: Path, url: str) -> tuple[str, str]:
    """Two machines, and connections their agents reported: one admitted and closed, one
    admitted and still open (opened later), one refused (latest)."""
    store = open_store(url)
    try:
        domain = build_domain(store, Settings(data_dir=data_dir, database=url))
        agents = []
        for endpoint in ("10.0.0.1:1", "10.0.0.2:1"):
            token, _ = await domain.tokens.create_machine_token("agents")
            principal = Principal(token.id, TokenKind.MACHINE, frozenset())
            machine = await domain.machines.register(principal, Platform.AMD64, endpoint, 1)
            agents.append((principal, machine.id))
        now = utc_now().replace(microsecond=0)

        def report(connection_id: str, peer: str, opened: float, **fields: Any) -> Any:
            values: dict[str, Any] = {
                "connection_id": connection_id,
                "build_id": "abcdefghij",
                "binding_id": "0123456789",
                "peer": peer,
                "opened_at": now + timedelta(seconds=opened),
                "closed_at": None,
                "admitted": True,
                "refusal": "",
                "bytes_from_client": 0,
                "bytes_to_client": 0,
            }
            return ReportedConnection(**{**values, **fields})

        (principal, machine_id), (other_principal, other_id) = agents
        await domain.connections.report(
            principal,
            machine_id,
            [
                report(
                    "a", "10.0.0.7:1", -60, closed_at=now - timedelta(seconds=51),
                    bytes_from_client=10, bytes_to_client=20,
                ),
                report("b", "10.0.0.7:2", -30, bytes_from_client=300, bytes_to_client=9000),
            ],
        )  # fmt: skip
        await domain.connections.report(
            other_principal,
            other_id,
            [
                report(
                    "c", "10.0.0.9:1", -10, build_id="", binding_id="", admitted=False,
                    refusal="not TLS", closed_at=now - timedelta(seconds=10) + timedelta(
                        milliseconds=2
                    ),
                )
            ],
        )  # fmt: skip
        return machine_id, other_id
    finally:
        await store.close()


def test_oidc_issuer_and_audience_flags_repeat() -> None:
    args = _parser().parse_args(
        [
            "serve",
            "--oidc-issuer", "github=http://127.0.0.1:7000",
            "--oidc-issuer", "buildkite=https://kite.example.com",
            "--oidc-audience", "one",
            "--oidc-audience", "two",
        ]
    )  # fmt: skip
    settings = resolve_args(args, {"DEPOT_API_OIDC_ISSUERS": "circleci=https://ignored"}).settings
    # The flags win over the variable, as for every setting; each adds to the list.
    assert settings.oidc_issuers == (
        ("github", "http://127.0.0.1:7000"),
        ("buildkite", "https://kite.example.com"),
    )
    assert settings.oidc_audiences == ("one", "two")


def test_serve_refuses_an_oidc_issuer_over_plain_http(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys, "serve", "--data-dir", str(tmp_path), "--oidc-issuer", "github=http://ci.example"
    )
    assert code == 2
    assert "--oidc-issuer github=http://ci.example: github's URL" in err
    assert "must use https://" in err
    assert not (tmp_path / "depot-api.sqlite3").exists()
