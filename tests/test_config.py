"""Settings: where each value comes from, what a bad one says, and the environment the server
hands its worker processes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from depot_api.config import SettingError, Settings, resolve
from depot_api.domain.secretbox import SecretBox


def test_a_flag_wins_over_the_environment_which_wins_over_the_default() -> None:
    environ = {"DEPOT_API_PORT": "abc", "DEPOT_API_HOST": "0.0.0.0"}
    resolved = resolve("serve", {"port": "9000"}, environ)
    assert resolved.settings.port == 9000  # the bad variable is never read
    assert resolved.settings.host == "0.0.0.0"
    assert resolved.settings.workers == 0
    assert resolved.describe("port") == "--port 9000"
    assert resolved.describe("host") == "DEPOT_API_HOST=0.0.0.0"
    assert resolved.describe("workers") == "--workers (default: 0)"


def test_an_empty_variable_counts_as_unset() -> None:
    assert resolve("serve", {}, {"DEPOT_API_PORT": ""}).settings.port == 8080


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("DEPOT_API_PORT=abc", "must be a whole number from 0 to 65535"),
        ("--port -1", "must be a whole number from 0 to 65535"),
        ("--workers 2.5", "must be a whole number, 0 or more"),
        ("DEPOT_API_ACQUIRE_TIMEOUT=5m", "must be a number of seconds (such as 120 or 0.5)"),
        ("DEPOT_API_MACHINE_HEARTBEAT=0", "must be a number of seconds (such as 120 or 0.5), more"),
        ("DEPOT_API_LIVENESS_WINDOW=1e20", "must be a number of seconds"),
        ("--build-token-grace inf", "must be a number of seconds"),
        ("--rate-limit nan", "must be a number, 0 or more"),
        ("--log-level verbose", "must be one of debug, info, warning, error"),
        ("--host localhost", "must be an IP address"),
        ("--regions ,", "must name at least one"),
        ("--database mysql://db/x", "uses the unsupported scheme mysql://"),
        ("--database sqlite://", "must name a SQLite file"),
        ("DEPOT_API_DATABASE_URL=nonsense", "must be a database URL"),
        ("--tls-cert c.pem", "needs --tls-key (or DEPOT_API_TLS_KEY) too"),
        ("DEPOT_API_TLS_KEY=k.pem", "needs --tls-cert (or DEPOT_API_TLS_CERT) too"),
        ("DEPOT_API_OIDC_ISSUERS=gitlab=https://gitlab.com",
         "'gitlab=https://gitlab.com' must be PROVIDER=URL with PROVIDER one of github, "
         "circleci, buildkite"),
        ("DEPOT_API_OIDC_ISSUERS=github", "'github' must be PROVIDER=URL"),
        ("DEPOT_API_OIDC_ISSUERS=github=http://issuer.example.com",
         "github's URL 'http://issuer.example.com' must use https:// "
         "(plain http:// only for a loopback address)"),
        ("DEPOT_API_OIDC_ISSUERS=github=ftp://x", "github's URL 'ftp://x' must be an https:// URL"),
        ("DEPOT_API_OIDC_ISSUERS=github=https://a,github=https://b", "names github twice"),
        ("--oidc-leeway 601", "must be a number of seconds (such as 120 or 0.5), 0 or more and "
         "at most 600"),
        ("DEPOT_API_OIDC_KEYS_REFETCH=0", "must be a number of seconds (such as 120 or 0.5), "
         "more than 0"),
    ],
)  # fmt: skip
def test_a_bad_value_is_named_as_it_was_given(given: str, message: str) -> None:
    flags, environ = {}, {}
    if given.startswith("--"):
        flag, value = given.split(" ", 1)
        flags[flag.removeprefix("--").replace("-", "_")] = value
    else:
        name, value = given.split("=", 1)
        environ[name] = value
    with pytest.raises(SettingError) as raised:
        resolve("serve", flags, environ)
    assert str(raised.value).startswith(f"{given}: {message}")


def test_secrets_are_never_shown() -> None:
    with pytest.raises(SettingError) as raised:
        resolve("serve", {}, {"DEPOT_API_SECRET_KEY": "hunter2hunter2"})
    assert str(raised.value).startswith("DEPOT_API_SECRET_KEY: must be a Fernet key")
    assert "hunter2" not in str(raised.value)

    with pytest.raises(SettingError) as raised:
        resolve("serve", {"database": "mysql://ada:hunter2@db/x"}, {})
    assert "hunter2" not in str(raised.value) and "ada:***@db" in str(raised.value)


def test_a_command_reads_only_its_own_settings() -> None:
    environ = {"DEPOT_API_PORT": "abc", "DEPOT_API_DATA_DIR": "/srv/depot"}
    resolved = resolve("migrate", {}, environ)
    assert resolved.settings.data_dir == Path("/srv/depot")
    assert resolved.settings.port == 8080


def test_the_environment_handed_to_workers_gives_the_same_settings(tmp_path: Path) -> None:
    settings = Settings(
        host="0.0.0.0",
        port=9999,
        data_dir=tmp_path,
        database="postgresql://u:p@db:5432/depot",
        workers=3,
        tls_cert=tmp_path / "c.pem",
        tls_key=tmp_path / "k.pem",
        build_token_grace=timedelta(seconds=0.5),
        regions=("home-1", "home-2"),
        max_message_bytes=1024,
        rate_limit=2.5,
        rate_burst=7,
        max_streams_per_token=0,
        log_level="debug",
        shutdown_grace=timedelta(seconds=3),
        drain_dir=tmp_path / "run",
        machine_heartbeat=timedelta(seconds=0.2),
        acquire_timeout=timedelta(seconds=10),
        max_build_duration=timedelta(hours=2),
        secret_key=SecretBox.generate_key().decode(),
        build_url="https://ci.example.com/{project_id}/{build_id}",
        oidc_issuers=(("github", "http://127.0.0.1:9000"), ("circleci", "https://c.example/org")),
        oidc_audiences=("https://ci.example.com", "other"),
        oidc_leeway=timedelta(seconds=5),
        oidc_keys_refetch=timedelta(seconds=2.5),
    )
    env = settings.to_env()
    assert Settings.from_env(env) == settings
    # Written as people write them.
    assert env["DEPOT_API_BUILD_TOKEN_GRACE"] == "0.5"
    assert env["DEPOT_API_SHUTDOWN_GRACE"] == "3"
    assert env["DEPOT_API_MAX_BUILD_DURATION"] == "7200"
    assert Settings.from_env(Settings().to_env()) == Settings(
        data_dir=Path.cwd() / "depot-api-data"
    )


def test_oidc_issuers_are_read_as_provider_url_pairs() -> None:
    resolved = resolve(
        "serve",
        {"oidc_issuers": "GitHub=http://127.0.0.1:8/,buildkite=https://[::1]:9/kite"},
        {"DEPOT_API_OIDC_AUDIENCES": " a, ,b "},
    )
    assert resolved.settings.oidc_issuers == (
        ("github", "http://127.0.0.1:8"),
        ("buildkite", "https://[::1]:9/kite"),
    )
    assert resolved.settings.oidc_audiences == ("a", "b")
    assert Settings().oidc_issuers == () and Settings().oidc_audiences == ()
    with pytest.raises(SettingError, match="must have no query or fragment"):
        resolve("serve", {"oidc_issuers": "buildkite=https://a?x=1"}, {})
