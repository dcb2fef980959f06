"""Settings: every flag of `depot-api serve` also has a DEPOT_API_* environment variable.

The serve command hands its settings to the server process through the same variables, so
one place decides the names and the defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from depot_api.domain.projects import DEFAULT_REGIONS

DEFAULT_DATA_DIR = Path("depot-api-data")


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
    regions: tuple[str, ...] = DEFAULT_REGIONS
    # The largest request message accepted, in bytes.
    max_message_bytes: int = 4 * 1024 * 1024
    # Abuse limits, per token and per server process: calls a second (sustained; bursts of
    # rate_burst), and streams open at once. 0 turns a limit off.
    rate_limit: float = 200.0
    rate_burst: int = 400
    max_streams_per_token: int = 200
    log_level: str = "info"
    # On SIGTERM, how long calls in flight may take to finish before the server stops anyway.
    shutdown_grace: timedelta = timedelta(seconds=30)
    # Set by the supervisor for its workers only: where it asks them to drain (server.py).
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

    @property
    def database_url(self) -> str:
        from depot_api.store.engine import sqlite_url

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
        env = {
            "DEPOT_API_HOST": self.host,
            "DEPOT_API_PORT": str(self.port),
            "DEPOT_API_DATA_DIR": str(self.data_dir.resolve()),
            "DEPOT_API_BUILD_TOKEN_GRACE": str(self.build_token_grace.total_seconds()),
            "DEPOT_API_REGIONS": ",".join(self.regions),
            "DEPOT_API_MAX_MESSAGE_BYTES": str(self.max_message_bytes),
            "DEPOT_API_RATE_LIMIT": str(self.rate_limit),
            "DEPOT_API_RATE_BURST": str(self.rate_burst),
            "DEPOT_API_MAX_STREAMS_PER_TOKEN": str(self.max_streams_per_token),
            "DEPOT_API_LOG_LEVEL": self.log_level,
            "DEPOT_API_WORKERS": str(self.workers),
            "DEPOT_API_SHUTDOWN_GRACE": str(self.shutdown_grace.total_seconds()),
        }
        if self.drain_dir is not None:
            env["DEPOT_API_DRAIN_DIR"] = str(self.drain_dir.resolve())
        if self.database is not None:
            env["DEPOT_API_DATABASE_URL"] = self.database
        if self.secret_key is not None:
            env["DEPOT_API_SECRET_KEY"] = self.secret_key
        if self.build_url:
            env["DEPOT_API_BUILD_URL"] = self.build_url
        if self.wait_for_machines:
            env["DEPOT_API_WAIT_FOR_MACHINES"] = "true"
        for name, value in self._durations().items():
            env[f"DEPOT_API_{name}"] = str(value.total_seconds())
        if self.tls_cert is not None:
            env["DEPOT_API_TLS_CERT"] = str(self.tls_cert.resolve())
        if self.tls_key is not None:
            env["DEPOT_API_TLS_KEY"] = str(self.tls_key.resolve())
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        defaults = cls()

        def get(name: str) -> str | None:
            value = env.get(f"DEPOT_API_{name}")
            return value if value else None

        return cls(
            host=get("HOST") or defaults.host,
            port=int(get("PORT") or defaults.port),
            data_dir=Path(get("DATA_DIR") or defaults.data_dir),
            database=get("DATABASE_URL"),
            workers=int(get("WORKERS") or defaults.workers),
            tls_cert=_path(get("TLS_CERT")),
            tls_key=_path(get("TLS_KEY")),
            build_token_grace=timedelta(
                seconds=float(get("BUILD_TOKEN_GRACE") or defaults.build_token_grace.seconds)
            ),
            regions=tuple(r for r in (get("REGIONS") or "").split(",") if r) or defaults.regions,
            max_message_bytes=int(get("MAX_MESSAGE_BYTES") or defaults.max_message_bytes),
            rate_limit=float(get("RATE_LIMIT") or defaults.rate_limit),
            rate_burst=int(get("RATE_BURST") or defaults.rate_burst),
            max_streams_per_token=int(
                get("MAX_STREAMS_PER_TOKEN") or defaults.max_streams_per_token
            ),
            log_level=get("LOG_LEVEL") or defaults.log_level,
            shutdown_grace=timedelta(
                seconds=float(get("SHUTDOWN_GRACE") or defaults.shutdown_grace.total_seconds())
            ),
            drain_dir=_path(get("DRAIN_DIR")),
            secret_key=get("SECRET_KEY"),
            build_url=get("BUILD_URL") or defaults.build_url,
            wait_for_machines=_flag("WAIT_FOR_MACHINES", get("WAIT_FOR_MACHINES")),
            **{
                field.lower(): timedelta(seconds=float(value))
                for field in defaults._durations()
                if (value := get(field)) is not None
            },
        )

    def _durations(self) -> dict[str, timedelta]:
        """The machine-related durations, by the suffix of their environment variable."""
        return {
            "MACHINE_HEARTBEAT": self.machine_heartbeat,
            "MACHINE_LOST_AFTER": self.machine_lost_after,
            "MACHINE_IDLE_RELEASE": self.machine_idle_release,
            "ACQUIRE_TIMEOUT": self.acquire_timeout,
            "PENDING_INTERVAL": self.pending_interval,
            "LIVENESS_WINDOW": self.liveness_window,
            "MAX_BUILD_DURATION": self.max_build_duration,
        }


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def _flag(name: str, value: str | None) -> bool:
    """An on/off variable: true/false, 1/0, yes/no, on/off (any case); unset is off."""
    if value is None:
        return False
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"DEPOT_API_{name} must be true or false, not {value!r}")
