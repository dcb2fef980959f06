"""The depot-api command: admin commands on a data directory, and settings from env."""

from __future__ import annotations

import asyncio
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from depot_api.cli import main
from depot_api.config import Settings
from depot_api.domain.token_format import kind_of
from depot_api.models import TokenKind
from depot_api.startup import prepare
from depot_api.store.engine import open_store, sqlite_url
from depot_api.wiring import build_domain


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
        store = await open_store(sqlite_url(tmp_path))
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
    with pytest.raises(SystemExit) as raised:
        main(["serve", "--data-dir", str(tmp_path), "--build-url", template])
    assert "--build-url may use {project_id} and {build_id}" in str(raised.value.code)
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
def test_serve_refuses_limits_out_of_range(tmp_path: Path, flag: str, value: str) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["serve", "--data-dir", str(tmp_path), flag, value])
    assert flag in str(raised.value.code)
    assert not (tmp_path / "depot-api.sqlite3").exists()  # refused before starting anything


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
    with pytest.raises(ValueError, match="DEPOT_API_WAIT_FOR_MACHINES must be true or false"):
        Settings.from_env({"DEPOT_API_WAIT_FOR_MACHINES": "maybe"})
