"""The command line of `depot-api agent`: every option also comes from a DEPOT_API_AGENT_*
variable, or from the TOML file of `--config FILE` (DEPOT_API_AGENT_CONFIG), whose keys are the
options' names (`server`, `log_format`, ...). A flag wins, then the variable, then the file.
Every value is checked before the agent starts, so a mistake costs one line naming the flag,
variable or file, not a loop of retries against a wrong address.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from depot_api.agent.agent import AgentConfig
from depot_api.config_file import ConfigFileError, read_config_file

_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_LOG_FORMATS = ("text", "json")
CONFIG_ENV = "DEPOT_API_AGENT_CONFIG"
_PLATFORMS = ("amd64", "arm64")
_MAX_CAPACITY = 1000  # what the server accepts at registration
_MAX_BUFFER_MB = 4096
# What the server accepts as an endpoint: a host name or IPv4 address, or [IPv6].
_HOST = r"[A-Za-z0-9.\-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]"


@dataclass(frozen=True)
class _Option:
    name: str  # the attribute, and the flag and variable derived from it
    metavar: str
    help: str
    default: str | None = None  # as people write it
    default_help: str = ""  # for an option whose default is not a fixed value

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "DEPOT_API_AGENT_" + self.name.upper()

    @property
    def required(self) -> bool:
        return self.default is None and not self.default_help


_OPTIONS = (
    _Option("server", "URL", "the depot-api base URL, e.g. http://api:8080"),
    _Option("token", "TOKEN", "a machine token; the variable keeps it out of `ps`"),
    _Option("platform", "{amd64,arm64}", "the builds this host serves"),
    _Option(
        "advertise",
        "HOST:PORT",
        "where clients reach this host's BuildKit daemon (a host name, IPv4 address or "
        "[IPv6] address, and a port 1-65535)",
    ),
    _Option(
        "listen",
        "HOST:PORT",
        "where the agent's front door listens: the only way in to the daemon",
        default_help="default 0.0.0.0 and the advertised port",
    ),
    _Option(
        "buildkitd",
        "PROGRAM",
        "BuildKit's daemon, started by the agent on a unix socket: a name on PATH or a path",
        "buildkitd",
    ),
    _Option(
        "docker_socket",
        "PATH",
        "instead of starting buildkitd, use the BuildKit built into the Docker Engine whose "
        "API socket this is (e.g. /var/run/docker.sock)",
        default_help="not used unless given",
    ),
    _Option(
        "state_dir",
        "DIR",
        "the daemon's certificates, configuration and caches",
        "depot-agent-state",
    ),
    _Option(
        "capacity",
        "N",
        f"builds at once, 0-{_MAX_CAPACITY}, reported to the server (informational: a machine "
        "serves one project, and all its builds of the platform share it)",
        "1",
    ),
    _Option(
        "build_insights",
        "{on,off}",
        "read the BuildKit status that each build's client receives and report its steps and "
        "logs to the server",
        "on",
    ),
    _Option(
        "insights_buffer_mb",
        "MB",
        "the most build status, in MiB, held while the server has not taken it "
        f"(1-{_MAX_BUFFER_MB}); past it the oldest is dropped and counted",
        "64",
    ),
    _Option("log_level", "LEVEL", "one of " + ", ".join(_LOG_LEVELS), "info"),
    _Option(
        "log_format",
        "FORMAT",
        "log lines as readable text or one JSON object each: " + ", ".join(_LOG_FORMATS),
        "text",
    ),
)


class BadOption(Exception):
    """A flag or variable with a value the agent cannot use; str() is the whole message."""


@dataclass(frozen=True)
class AgentOptions:
    config: AgentConfig
    log_level: str
    log_format: str = "text"


def add_agent_command(commands: argparse._SubParsersAction[Any]) -> None:
    agent = commands.add_parser(
        "agent",
        help="run on a BuildKit host: serve builds with it",
        description="Run on a BuildKit host: register with depot-api and run BuildKit's "
        "daemon for the project the server assigns. Every option may instead be given in "
        "its environment variable or in the --config file; a flag wins over the variable, "
        "which wins over the file.",
    )
    agent.add_argument(
        "--config",
        metavar="FILE",
        help=f"a TOML file of these options, keyed by their names (env {CONFIG_ENV})",
    )
    for option in _OPTIONS:
        if option.required:
            where = "required"
        else:
            where = option.default_help or f"default {option.default}"
        # No argparse default: an option left out is looked up in the environment later.
        agent.add_argument(
            option.flag, metavar=option.metavar, help=f"{option.help} (env {option.env}; {where})"
        )


def agent_options(args: argparse.Namespace, environ: Mapping[str, str]) -> AgentOptions:
    """The agent's settings from its flags, else its variables, else the defaults."""
    given: dict[str, tuple[str, str]] = {}  # name -> (value, where it came from)
    named = getattr(args, "config", None) or environ.get(CONFIG_ENV)
    try:
        file = None if not named else read_config_file(Path(named), [o.name for o in _OPTIONS])
    except ConfigFileError as e:
        raise BadOption(str(e)) from None
    for option in _OPTIONS:
        flag_value: str | None = getattr(args, option.name)
        if flag_value is not None:
            given[option.name] = (flag_value, option.flag)
        elif environ.get(option.env):
            given[option.name] = (environ[option.env], option.env)
        elif file is not None and option.name in file.texts:
            given[option.name] = (file.texts[option.name], f"{option.name} in {file.path}")
        elif option.default is not None:
            given[option.name] = (option.default, option.flag)
    missing = [o for o in _OPTIONS if o.required and o.name not in given]
    if missing:
        raise BadOption("missing " + ", ".join(f"{o.flag} (or {o.env})" for o in missing))

    advertise = _host_port(*given["advertise"], empty_host=False)
    if "listen" in given:
        listen = _host_port(*given["listen"], empty_host=True)
    else:
        listen = "0.0.0.0:" + advertise.rsplit(":", 1)[1]
    docker_socket = given.get("docker_socket")
    buildkitd_chosen = (
        args.buildkitd is not None
        or bool(environ.get("DEPOT_API_AGENT_BUILDKITD"))
        or (file is not None and "buildkitd" in file.texts)
    )
    if docker_socket is not None and buildkitd_chosen:
        raise BadOption(
            f"{docker_socket[1]} and --buildkitd (or DEPOT_API_AGENT_BUILDKITD) choose two "
            "different daemons; give one of them"
        )
    config = AgentConfig(
        server=_server_url(*given["server"]),
        token=_token(*given["token"]),
        platform=_one_of(*given["platform"], _PLATFORMS),
        advertise=advertise,
        listen=listen,
        buildkitd=_not_empty(*given["buildkitd"]),
        state_dir=Path(_not_empty(*given["state_dir"])),
        capacity=_capacity(*given["capacity"]),
        docker_socket=None if docker_socket is None else Path(_not_empty(*docker_socket)),
        build_insights=_one_of(*given["build_insights"], ("on", "off")) == "on",
        insights_buffer_bytes=_buffer_mb(*given["insights_buffer_mb"]) << 20,
    )
    return AgentOptions(
        config,
        _one_of(*given["log_level"], _LOG_LEVELS).lower(),
        _one_of(*given["log_format"], _LOG_FORMATS),
    )


def _server_url(value: str, source: str) -> str:
    """An http:// or https:// URL with a host (and maybe a port and a path prefix)."""
    parts = urlsplit(value)
    if any(c.isspace() for c in value):
        raise BadOption(f'{source} "{value}" is not a URL: it has blanks in it')
    if "://" not in value:
        raise BadOption(f'{source} "{value}" is not a URL; give http://{value}')
    if parts.scheme not in ("http", "https"):
        raise BadOption(f'{source} "{value}" must start with http:// or https://')
    try:
        port_ok = parts.port != 0
    except ValueError:  # not a number, or out of range
        port_ok = False
    if not parts.hostname or not port_ok:
        raise BadOption(f'{source} "{value}" needs a host and, if any, a port 1-65535')
    if parts.username is not None or "?" in value or "#" in value:
        raise BadOption(
            f'{source} "{value}" must be the server\'s base URL, without user, query or fragment'
        )
    return value.rstrip("/")


def _host_port(value: str, source: str, *, empty_host: bool) -> str:
    host = f"(?:{_HOST}){'?' if empty_host else ''}"
    match = re.fullmatch(f"({host}):([0-9]{{1,5}})", value)
    if match is None or not 0 < int(match[2]) < 65536:
        example = "0.0.0.0:1234" if empty_host else "buildkit-1.internal:1234"
        raise BadOption(f'{source} "{value}" must be HOST:PORT with a port 1-65535, e.g. {example}')
    return value


def _one_of(value: str, source: str, choices: tuple[str, ...]) -> str:
    if value.lower() not in choices:
        raise BadOption(f'{source} "{value}" must be one of ' + ", ".join(choices))
    return value.lower()


def _capacity(value: str, source: str) -> int:
    try:
        capacity = int(value)
    except ValueError:
        capacity = -1
    if not 0 <= capacity <= _MAX_CAPACITY:
        raise BadOption(f'{source} "{value}" must be a whole number from 0 to {_MAX_CAPACITY}')
    return capacity


def _buffer_mb(value: str, source: str) -> int:
    try:
        megabytes = int(value)
    except ValueError:
        megabytes = 0
    if not 1 <= megabytes <= _MAX_BUFFER_MB:
        raise BadOption(f'{source} "{value}" must be a whole number from 1 to {_MAX_BUFFER_MB}')
    return megabytes


def _token(value: str, source: str) -> str:
    # Surrounding blanks come from files and shells; inside a token they cannot be sent.
    token = value.strip()
    if not token or not token.isprintable() or any(c.isspace() for c in token):
        raise BadOption(f"{source} must be a machine token (dpm_...), without spaces in it")
    return token


def _not_empty(value: str, source: str) -> str:
    if not value.strip():
        raise BadOption(f"{source} must not be empty")
    return value
