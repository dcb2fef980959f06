"""Settings: every setting once, in one table, and where each value comes from.

SETTINGS names each setting's Settings field, environment variable, flag (if it has one),
kind of value (setting_kinds.py), help and whether it is secret. The flags and `--help` of
`depot-api`, the validation of every value, and the environment that `depot-api serve` hands
its worker processes all come from it, so a name or a default is written in one place.

A value comes from its flag when the flag is given, else from its environment variable (an
empty one counts as unset), else from the configuration file (`--config FILE`, or
DEPOT_API_CONFIG; config_file.py), else from the default in Settings. A file's keys are the
`field` names of the table's rows.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Literal

from depot_api.config_file import ConfigFile
from depot_api.domain.insights import DEFAULT_LOG_RETENTION, DEFAULT_MAX_LOG_BYTES
from depot_api.domain.projects import DEFAULT_REGIONS
from depot_api.models import CiProvider
from depot_api.setting_kinds import (
    LOG_FORMATS,
    LOG_LEVELS,
    Kind,
    base_url,
    build_url_template,
    choice,
    database_url,
    fernet_key,
    ip_address,
    listen_address,
    number,
    on_off,
    optional_word_list,
    path,
    provider_urls,
    seconds,
    whole_number,
    word_list,
)

DEFAULT_DATA_DIR = Path("depot-api-data")

# The commands that read settings (the agent has settings of its own).
SERVE, MIGRATE, ADMIN = "serve", "migrate", "admin"
# Where the configuration file is named when --config is not given.
CONFIG_ENV = "DEPOT_API_CONFIG"


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = DEFAULT_DATA_DIR
    # A database URL (postgresql://…); None means SQLite in the data directory.
    database: str | None = None
    # Server processes sharing the port; 0 means one per CPU core.
    workers: int = 0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # How long a build token keeps working after its build ends (final status flushes).
    build_token_grace: timedelta = timedelta(seconds=120)
    # How long a console sign-in lasts.
    console_session_lifetime: timedelta = timedelta(hours=12)
    regions: tuple[str, ...] = DEFAULT_REGIONS
    # The largest request message accepted, in bytes.
    max_message_bytes: int = 4 * 1024 * 1024
    # Abuse limits, per token and per server process: calls a second (sustained; bursts of
    # rate_burst), and streams open at once. 0 turns a limit off.
    rate_limit: float = 200.0
    rate_burst: int = 400
    max_streams_per_token: int = 200
    log_level: str = "info"
    # Log lines as readable text or as one JSON object each (logs.py).
    log_format: str = "text"
    # Where /metrics is served: "" on the API's own port, else IP:PORT of its own listener in
    # the supervisor (metrics.py), so that it need not be public.
    metrics_address: str = ""
    # On SIGTERM, how long calls in flight may take to finish before the server stops anyway.
    shutdown_grace: timedelta = timedelta(seconds=30)
    # Set by the supervisor for its workers only: where it asks them to drain
    # (server/supervisor.py).
    drain_dir: Path | None = None
    # BuildKit machines. Agents heartbeat every machine_heartbeat; one silent for
    # machine_lost_after is lost; a project gives its machine back after machine_idle_release
    # without builds. GetEndpoint waits at most acquire_timeout, sending `pending` every
    # pending_interval. A build that asked for a machine and then stays silent for
    # liveness_window is canceled.
    machine_heartbeat: timedelta = timedelta(seconds=1)
    machine_lost_after: timedelta = timedelta(seconds=15)
    machine_idle_release: timedelta = timedelta(seconds=300)
    acquire_timeout: timedelta = timedelta(seconds=300)
    pending_interval: timedelta = timedelta(seconds=10)
    liveness_window: timedelta = timedelta(seconds=180)
    # Client certificates expire this long after their build was created.
    max_build_duration: timedelta = timedelta(hours=24)
    # Builds wait for a machine even when no agent of their platform has been heard from
    # within machine_lost_after (for agents an autoscaler starts on demand); by default they
    # are refused at once with failed_precondition.
    wait_for_machines: bool = False
    # The key that seals private keys in the database; by default a file in the data directory.
    # Servers sharing one database must share it (DEPOT_API_SECRET_KEY).
    secret_key: str | None = None
    # Where a build can be looked at, for the depot CLI's "Build Summary" line: a template with
    # {project_id} and {build_id}, e.g. https://ci.example.com/depot/{project_id}/{build_id}.
    # Empty (the default): no URL is given.
    build_url: str = ""
    # Where people reach this server, for the links it makes (ShareBuild): a base URL such as
    # https://depot.example.com. Empty (the default): the address the request arrived at,
    # http(s)://host:port of the listening socket.
    public_url: str = ""
    # CI jobs' OIDC tokens (docs/oidc.md): issuers replaced per provider ((provider, URL)
    # pairs; the others keep their defaults), audiences accepted besides https://depot.dev,
    # the leeway on their times, and how often one issuer's keys may be fetched at most.
    oidc_issuers: tuple[tuple[str, str], ...] = ()
    oidc_audiences: tuple[str, ...] = ()
    oidc_leeway: timedelta = timedelta(seconds=30)
    oidc_keys_refetch: timedelta = timedelta(seconds=30)
    # Build insights: the logs one build keeps at most (past it they are cut with a marker),
    # and how long builds' logs are kept (their steps and counters stay).
    max_build_log_bytes: int = DEFAULT_MAX_LOG_BYTES
    build_log_retention: timedelta = DEFAULT_LOG_RETENTION

    @property
    def database_url(self) -> str:
        from depot_api.store.urls import sqlite_url

        return self.database or sqlite_url(self.data_dir)

    @property
    def secret_key_path(self) -> Path:
        return self.data_dir / "secret.key"

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    @property
    def initial_token_path(self) -> Path:
        return self.data_dir / "initial-org-token"

    def to_env(self) -> dict[str, str]:
        """The DEPOT_API_* variables that make from_env() give these settings back."""
        env = {}
        for setting in SETTINGS:
            value = getattr(self, setting.field)
            if value is None or value == "":
                continue
            if isinstance(value, Path):
                value = value.resolve()  # workers may run elsewhere than the current directory
            env[setting.env] = setting.kind.show(value)
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Every setting from the environment (os.environ by default), the rest defaults.

        Raises SettingError for a value that is not valid."""
        return resolve(None, {}, os.environ if environ is None else environ).settings


@dataclass(frozen=True)
class Setting:
    field: str
    env: str
    kind: Kind
    help: str
    # None: set through the environment only.
    flag: str | None = None
    metavar: str | None = None
    # How --help states the default when the default value alone says too little.
    default_text: str | None = None
    # The commands that read it.
    commands: frozenset[str] = frozenset({SERVE})
    # Its value is never shown, in messages or anywhere else.
    secret: bool = False

    @property
    def default(self) -> object:
        return _DEFAULTS[self.field]

    def describe_default(self) -> str:
        if self.default_text is not None:
            return self.default_text
        return self.kind.show(self.default)


_DEFAULTS = {f.name: f.default for f in fields(Settings)}
_ALL_COMMANDS = frozenset({SERVE, MIGRATE, ADMIN})

_MACHINE_TIMING = seconds(above_low=True)

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "data_dir", "DEPOT_API_DATA_DIR", path(), flag="--data-dir", metavar="DIR",
        help="local state, and the SQLite database unless --database is given",
        commands=_ALL_COMMANDS,
    ),
    Setting(
        "database", "DEPOT_API_DATABASE_URL", database_url(), flag="--database", metavar="URL",
        help="a PostgreSQL URL such as postgresql://user:password@host:5432/db "
        "(or postgres://), or sqlite:///path",
        default_text="SQLite in the data directory", commands=_ALL_COMMANDS,
    ),
    Setting(
        "host", "DEPOT_API_HOST", ip_address(), flag="--host", metavar="IP",
        help="the IP address to listen on (0.0.0.0: every IPv4 address)",
    ),
    Setting(
        "port", "DEPOT_API_PORT", whole_number(0, 65535), flag="--port", metavar="PORT",
        help="the port to listen on; 0: any free port (printed at start)",
    ),
    Setting(
        "workers", "DEPOT_API_WORKERS", whole_number(0), flag="--workers", metavar="N",
        help="server processes sharing the port; 0: one per CPU core",
    ),
    Setting(
        "tls_cert", "DEPOT_API_TLS_CERT", path(optional=True), flag="--tls-cert",
        metavar="FILE", default_text="none, cleartext",
        help="serve TLS with this PEM certificate (chain); needs --tls-key",
    ),
    Setting(
        "tls_key", "DEPOT_API_TLS_KEY", path(optional=True), flag="--tls-key", metavar="FILE",
        default_text="none", help="the certificate's PEM private key, unencrypted",
    ),
    Setting(
        # At least a second: the cookie's Max-Age is whole seconds, and 0 would end it at once.
        "console_session_lifetime", "DEPOT_API_CONSOLE_SESSION_LIFETIME", seconds(low=1.0),
        flag="--console-session-lifetime", metavar="SECONDS",
        help="how long a console sign-in lasts",
    ),
    Setting(
        "build_token_grace", "DEPOT_API_BUILD_TOKEN_GRACE", seconds(),
        flag="--build-token-grace", metavar="SECONDS",
        help="how long a build token works after its build ends",
    ),
    Setting(
        "regions", "DEPOT_API_REGIONS", word_list(), flag="--regions", metavar="REGION,...",
        help="comma-separated region IDs projects may use",
    ),
    Setting(
        "max_message_bytes", "DEPOT_API_MAX_MESSAGE_BYTES", whole_number(1),
        flag="--max-message-bytes", metavar="BYTES", help="the largest request message accepted",
    ),
    Setting(
        "rate_limit", "DEPOT_API_RATE_LIMIT", number(0), flag="--rate-limit", metavar="CALLS",
        help="calls a second per token and process, sustained; 0: no limit",
    ),
    Setting(
        "rate_burst", "DEPOT_API_RATE_BURST", whole_number(1), flag="--rate-burst",
        metavar="CALLS", help="calls a token may make at once above the rate",
    ),
    Setting(
        "max_streams_per_token", "DEPOT_API_MAX_STREAMS_PER_TOKEN", whole_number(0),
        flag="--max-streams-per-token", metavar="N",
        help="streams one token may hold open per process; 0: no limit",
    ),
    Setting(
        "shutdown_grace", "DEPOT_API_SHUTDOWN_GRACE", seconds(high=timedelta(hours=1)),
        flag="--shutdown-grace", metavar="SECONDS",
        help="on SIGTERM, how long calls in flight may take to finish",
    ),
    Setting(
        "log_level", "DEPOT_API_LOG_LEVEL", choice(LOG_LEVELS), flag="--log-level",
        metavar="LEVEL", help=f"how much to log: {', '.join(LOG_LEVELS)}",
    ),
    Setting(
        "log_format", "DEPOT_API_LOG_FORMAT", choice(LOG_FORMATS), flag="--log-format",
        metavar="FORMAT", help="log lines as readable text, or as one JSON object each: "
        + ", ".join(LOG_FORMATS),
    ),
    Setting(
        "metrics_address", "DEPOT_API_METRICS_ADDRESS", listen_address(),
        flag="--metrics-address", metavar="IP:PORT", default_text="/metrics on the API's port",
        help="serve /metrics on this address only, not on the API's port",
    ),
    Setting(
        "build_url", "DEPOT_API_BUILD_URL", build_url_template(), flag="--build-url",
        metavar="TEMPLATE", default_text="none",
        help="the build URL the depot CLI prints, with {project_id} and {build_id}",
    ),
    Setting(
        "public_url", "DEPOT_API_PUBLIC_URL", base_url(), flag="--public-url", metavar="URL",
        default_text="the address the server listens on",
        help="the base of the links the server makes (shared builds), as people reach it, "
        "e.g. https://depot.example.com",
    ),
    Setting(
        "wait_for_machines", "DEPOT_API_WAIT_FOR_MACHINES", on_off(),
        flag="--wait-for-machines",
        help="let builds wait for a BuildKit machine even when no agent of their platform has "
        "been heard from lately (agents an autoscaler starts on demand); otherwise such builds "
        "fail at once, saying what to do",
    ),
    Setting(
        "secret_key", "DEPOT_API_SECRET_KEY", fernet_key(), secret=True,
        default_text="the data directory's secret.key, made on first use",
        help="the key that seals private keys in the database (a Fernet key); "
        "servers sharing a database must share it",
        commands=frozenset({SERVE, ADMIN}),
    ),
    Setting(
        "max_build_log_bytes", "DEPOT_API_MAX_BUILD_LOG_BYTES", whole_number(1),
        flag="--max-build-log-bytes", metavar="BYTES",
        help="the step logs one build keeps at most; past it they are cut with a marker",
    ),
    Setting(
        "build_log_retention", "DEPOT_API_BUILD_LOG_RETENTION", seconds(above_low=True),
        flag="--build-log-retention", metavar="SECONDS",
        help="how long builds' step logs are kept (their steps and counters stay)",
    ),
    Setting(
        "machine_heartbeat", "DEPOT_API_MACHINE_HEARTBEAT", _MACHINE_TIMING,
        help="seconds between agent heartbeats",
    ),
    Setting(
        "machine_lost_after", "DEPOT_API_MACHINE_LOST_AFTER", _MACHINE_TIMING,
        help="seconds of silence after which a machine is lost",
    ),
    Setting(
        "machine_idle_release", "DEPOT_API_MACHINE_IDLE_RELEASE", _MACHINE_TIMING,
        help="seconds a project keeps a machine no build uses",
    ),
    Setting(
        "acquire_timeout", "DEPOT_API_ACQUIRE_TIMEOUT", _MACHINE_TIMING,
        help="seconds GetEndpoint waits for a machine",
    ),
    Setting(
        "pending_interval", "DEPOT_API_PENDING_INTERVAL", _MACHINE_TIMING,
        help="seconds between GetEndpoint's pending keep-alives",
    ),
    Setting(
        "liveness_window", "DEPOT_API_LIVENESS_WINDOW", _MACHINE_TIMING,
        help="seconds of silence after which a build that asked for a machine is canceled",
    ),
    Setting(
        "max_build_duration", "DEPOT_API_MAX_BUILD_DURATION", _MACHINE_TIMING,
        help="seconds a build's client certificates stay valid",
    ),
    Setting(
        "oidc_issuers", "DEPOT_API_OIDC_ISSUERS",
        provider_urls([provider.value for provider in CiProvider]),
        flag="--oidc-issuer", metavar="PROVIDER=URL",
        default_text="GitHub Actions, CircleCI and Buildkite's own",
        help="replace a CI provider's OIDC issuer (github, circleci: the URL before the "
        "organization ID, buildkite); repeatable",
    ),
    Setting(
        "oidc_audiences", "DEPOT_API_OIDC_AUDIENCES", optional_word_list(),
        flag="--oidc-audience", metavar="AUDIENCE", default_text="none",
        help="an OIDC token audience accepted besides https://depot.dev; repeatable",
    ),
    Setting(
        "oidc_leeway", "DEPOT_API_OIDC_LEEWAY", seconds(high=timedelta(minutes=10)),
        flag="--oidc-leeway", metavar="SECONDS",
        help="how far OIDC tokens' times (exp, nbf, iat) may be off",
    ),
    Setting(
        "oidc_keys_refetch", "DEPOT_API_OIDC_KEYS_REFETCH", seconds(above_low=True),
        help="the least seconds between two fetches of one OIDC issuer's keys",
    ),
    # Set by the supervisor for its workers only (server/supervisor.py).
    Setting(
        "drain_dir", "DEPOT_API_DRAIN_DIR", path(optional=True),
        help="where the supervisor asks its workers to drain", commands=frozenset(),
    ),
)  # fmt: skip


def settings_of(command: str) -> list[Setting]:
    return [s for s in SETTINGS if command in s.commands]


@dataclass(frozen=True)
class Given:
    """Where one setting's value came from, and how the user wrote it."""

    setting: Setting
    origin: Literal["flag", "environment", "file", "default"]
    text: str = ""
    # The configuration file, for a value that came from one.
    file: Path | None = None

    def __str__(self) -> str:
        """The setting as the user gave it: `--port 99999`, `DEPOT_API_PORT=abc`, or
        `--data-dir (default: depot-api-data)`; a secret's value is never shown."""
        setting = self.setting
        if self.origin == "default":
            return f"{setting.flag or setting.env} (default: {setting.describe_default()})"
        if self.origin == "file":
            where = f"{setting.field} in {self.file}"
            return where if setting.secret else f"{where} ({self.shown()!r})"
        name = setting.flag if self.origin == "flag" and setting.flag else setting.env
        if setting.secret:
            return name
        shown = shlex.quote(self.shown())
        return f"{name} {shown}" if self.origin == "flag" else f"{name}={shown}"

    def shown(self) -> str:
        """The value as written, fit to show: a URL's password hidden, a secret as ****."""
        if self.origin == "default":
            return self.setting.describe_default()
        if self.setting.secret:
            return MASK
        return self.setting.kind.redact(self.text)

    @property
    def source(self) -> str:
        """Where the value came from: `flag --port`, `env DEPOT_API_PORT`, `file x.toml`,
        `default`."""
        if self.origin == "flag":
            return f"flag {self.setting.flag}"
        if self.origin == "environment":
            return f"env {self.setting.env}"
        if self.origin == "file":
            return f"file {self.file}"
        return "default"


# How a secret's value is shown: never, not even its length.
MASK = "********"


class SettingError(Exception):
    """A setting's value is wrong as written: a usage error."""

    def __init__(self, given: Given, problem: str) -> None:
        super().__init__(f"{given}: {problem}")


@dataclass(frozen=True)
class Resolved:
    """Settings, and for each one where its value came from."""

    settings: Settings
    given: Mapping[str, Given]

    def describe(self, field_name: str) -> str:
        """The setting of this Settings field as the user gave it, for messages."""
        return str(self.given[field_name])


def file_keys() -> frozenset[str]:
    """The keys a configuration file may have: every setting a command reads."""
    return frozenset(s.field for s in SETTINGS if s.commands)


def resolve(
    command: str | None,
    flags: Mapping[str, str | None],
    environ: Mapping[str, str],
    file: ConfigFile | None = None,
) -> Resolved:
    """The settings a command reads (every setting when command is None), each from its flag
    (flags maps a Settings field to the flag's text, None when not given), else from the
    environment, else from the configuration file, else its default.

    Raises SettingError, naming the setting as given, for the first value that is not valid.
    """
    values: dict[str, object] = {}
    given: dict[str, Given] = {}
    for setting in SETTINGS:
        source = given[setting.field] = _source(setting, command, flags, environ, file)
        if source.origin == "default":
            continue
        try:
            values[setting.field] = setting.kind.parse(source.text)
        except ValueError as e:
            raise SettingError(source, str(e)) from None
    settings = replace(Settings(), **values)  # type: ignore[arg-type]
    if (settings.tls_cert is None) != (settings.tls_key is None):
        present, missing = (
            ("tls_cert", "tls_key") if settings.tls_key is None else ("tls_key", "tls_cert")
        )
        needed = given[missing].setting
        raise SettingError(given[present], f"needs {needed.flag} (or {needed.env}) too")
    return Resolved(settings, given)


def _source(
    setting: Setting,
    command: str | None,
    flags: Mapping[str, str | None],
    environ: Mapping[str, str],
    file: ConfigFile | None,
) -> Given:
    if command is not None and command not in setting.commands:
        return Given(setting, "default")
    flag_text = flags.get(setting.field) if setting.flag else None
    if flag_text is not None:
        return Given(setting, "flag", flag_text)
    env_text = environ.get(setting.env)
    if env_text:
        return Given(setting, "environment", env_text)
    if file is not None and setting.commands and setting.field in file.texts:
        return Given(setting, "file", file.texts[setting.field], file.path)
    return Given(setting, "default")
