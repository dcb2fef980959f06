"""The configuration file (--config): below flags and the environment, refused whole with one
line when anything in it is wrong; `depot-api config show`; the reference in the docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from depot_api.cli import main
from depot_api.config import MASK, SETTINGS
from depot_api.config_reference import reference
from depot_api.domain.secretbox import SecretBox

from .databases import BACKENDS, database
from .helpers import REPO


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _shown(out: str) -> dict[str, tuple[str, str]]:
    """config show's lines as key -> (value, source)."""
    rows = {}
    for line in out.splitlines():
        key, rest = line.split(None, 1)
        value, source = rest.rsplit("  ", 1)
        rows[key] = (value.strip(), source.strip())
    return rows


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_flags_win_then_the_environment_then_the_file_then_the_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _write(
        tmp_path / "depot.toml",
        'port = 9000\nhost = "0.0.0.0"\nworkers = 3\nregions = ["eu-1", "us-2"]\n'
        "wait_for_machines = true\nrate_limit = 2.5\n",
    )
    monkeypatch.setenv("DEPOT_API_PORT", "9100")
    monkeypatch.setenv("DEPOT_API_WORKERS", "")  # empty: unset, so the file's value holds
    code, out, err = _run(capsys, "config", "show", "--config", str(config), "--host", "::1")
    assert (code, err) == (0, "")
    rows = _shown(out)
    assert rows["host"] == ("::1", "flag --host")
    assert rows["port"] == ("9100", "env DEPOT_API_PORT")
    assert rows["workers"] == ("3", f"file {config}")
    assert rows["regions"] == ("eu-1,us-2", f"file {config}")
    assert rows["wait_for_machines"] == ("true", f"file {config}")
    assert rows["rate_limit"] == ("2.5", f"file {config}")
    assert rows["log_level"] == ("info", "default")
    # Every setting people set is listed, once; the supervisor's own is not.
    assert sorted(rows) == sorted(s.field for s in SETTINGS if s.commands)


def test_the_file_can_be_named_in_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _write(tmp_path / "depot.toml", 'log_format = "json"\n')
    monkeypatch.setenv("DEPOT_API_CONFIG", str(config))
    code, out, _ = _run(capsys, "config", "show")
    assert code == 0
    assert _shown(out)["log_format"] == ("json", f"file {config}")


@pytest.mark.parametrize("where", ["file", "env"])
def test_secrets_are_masked_wherever_they_come_from(
    where: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = SecretBox.generate_key().decode()
    url = "postgresql://ada:hunter2-password@db.internal:5432/depot"
    args = ["config", "show"]
    if where == "file":
        config = _write(tmp_path / "c.toml", f'secret_key = "{key}"\ndatabase = "{url}"\n')
        args += ["--config", str(config)]
    else:
        monkeypatch.setenv("DEPOT_API_SECRET_KEY", key)
        monkeypatch.setenv("DEPOT_API_DATABASE_URL", url)
    code, out, err = _run(capsys, *args)
    assert code == 0
    assert key not in out + err
    assert "hunter2-password" not in out + err
    rows = _shown(out)
    assert rows["secret_key"][0] == MASK
    assert rows["database"][0].startswith("postgresql://ada:")
    assert "db.internal:5432/depot" in rows["database"][0]


def test_a_wrong_secret_in_the_file_is_named_but_not_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write(tmp_path / "c.toml", 'secret_key = "hunter2hunter2"\n')
    code, out, err = _run(capsys, "serve", "--config", str(config))
    assert (code, out) == (2, "")
    assert err.startswith(f"depot-api: secret_key in {config}: must be a Fernet key")
    assert "hunter2" not in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"prot = 1\n", "unknown setting 'prot'; did you mean port?"),
        (b"log-level = 'info'\n", "unknown setting 'log-level'; write it log_level"),
        (b"drain_dir = '/tmp'\n", "unknown setting 'drain_dir'"),
        (b"[server]\nport = 1\n", "unknown setting 'server'"),
        (b"port = [1\n", "is not valid TOML: "),
        (b"port = 1\nport = 2\n", "is not valid TOML: "),
        (b"port = 80 80\n", "is not valid TOML: "),
        (b"port = \xff\n", "is not UTF-8 text"),
        (b"port = {a = 1}\n", "port must be a string, a number, true or false, or a list of "
         "strings (not a table)"),
        (b"regions = [1, 2]\n", "regions must be a string, a number, true or false, or a list "
         "of strings (not a list of other things than strings)"),
        (b"shutdown_grace = 1979-05-27\n", "(not a date or time)"),
        (b"port = 99999\n", "port in {file} ('99999'): must be a whole number from 0 to 65535"),
        (b"port = true\n", "port in {file} ('true'): must be a whole number"),
        (b"workers = 2.5\n", "workers in {file} ('2.5'): must be a whole number, 0 or more"),
        (b"rate_limit = nan\n", "rate_limit in {file} ('nan'): must be a number, 0 or more"),
        (b"acquire_timeout = inf\n", "acquire_timeout in {file} ('inf'): must be a number of"),
        (b"log_level = 'loud'\n", "log_level in {file} ('loud'): must be one of debug"),
        (b"metrics_address = 'localhost:9100'\n", "must be IP:PORT to listen on"),
        (b"tls_cert = 'c.pem'\n", "tls_cert in {file} ('c.pem'): needs --tls-key"),
        (b"database = 'mysql://ada:hunter2@db/x'\n", "unsupported scheme mysql://"),
    ],
)  # fmt: skip
def test_a_wrong_file_stops_the_start_with_one_line(
    content: bytes, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_bytes(content)
    data_dir = tmp_path / "data"
    code, out, err = _run(capsys, "serve", "--config", str(config), "--data-dir", str(data_dir))
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"depot-api: {config}: ") or err.startswith("depot-api: ")
    assert message.format(file=config) in err
    assert "hunter2" not in err
    assert not data_dir.exists()  # nothing was started


def test_a_file_that_cannot_be_read_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.toml"
    code, _, err = _run(capsys, "serve", "--config", str(missing))
    assert code == 2
    assert err == f"depot-api: {missing}: cannot be read: No such file or directory\n"
    code, _, err = _run(capsys, "serve", "--config", str(tmp_path))
    assert code == 2
    assert err.startswith(f"depot-api: {tmp_path}: cannot be read: ")


def test_a_setting_for_another_command_in_the_file_does_not_disturb(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One file serves every command: migrate ignores the server's port, but checks the
    database it reads."""
    config = _write(tmp_path / "c.toml", f'port = 9000\ndata_dir = "{tmp_path / "data"}"\n')
    code, out, err = _run(capsys, "migrate", "--config", str(config))
    assert (code, err) == (0, "")
    assert out.startswith("created the schema")
    assert (tmp_path / "data" / "depot-api.sqlite3").exists()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_database_comes_from_the_file(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with database(backend, tmp_path) as url:
        config = _write(tmp_path / "c.toml", f'database = "{url}"\ndata_dir = "{tmp_path / "d"}"\n')
        code, out, err = _run(capsys, "admin", "create-org", "--name", "acme", "--config",
                              str(config))  # fmt: skip
        assert (code, err) == (0, "")
        code, out, err = _run(capsys, "admin", "list-orgs", "--config", str(config))
        assert (code, err) == (0, "")
        assert "'acme'" in out
        # A flag still wins over the file: a fresh SQLite database has no organization.
        other = tmp_path / "other"
        code, out, err = _run(capsys, "admin", "list-orgs", "--config", str(config),
                              "--database", f"sqlite:///{other}.sqlite3")  # fmt: skip
        assert code == 0
        assert "'acme'" not in out


def test_the_configuration_reference_in_the_docs_is_the_table() -> None:
    docs = (REPO / "docs" / "operations.md").read_text()
    assert reference() in docs, (
        "docs/operations.md is behind the settings table: run "
        "`python -m depot_api.config_reference --write docs/operations.md`"
    )
