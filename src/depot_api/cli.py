"""The `depot-api` command: serve, migrate, admin commands that work on the data directory,
and the agent.

Settings come from config.py's table, which gives the flags, their help and their checks. A
misstep ends with one line on standard error that names the setting as it was given, and exit
status 2 when a value is wrong as written (usage) or 1 when what it names is missing or
unusable (environment: a file, the database).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import textwrap
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import NoReturn

from depot_api.agent.agent import Agent, Refused
from depot_api.agent.options import BadOption, add_agent_command, agent_options
from depot_api.config import (
    ADMIN,
    CONFIG_ENV,
    MIGRATE,
    SERVE,
    SETTINGS,
    Resolved,
    Setting,
    SettingError,
    Settings,
    file_keys,
    resolve,
    settings_of,
)
from depot_api.config_file import ConfigFile, ConfigFileError, read_config_file
from depot_api.domain.connections import CONNECTION_RETENTION, LIST_DEFAULT, LIST_MAX
from depot_api.domain.errors import DomainError, InvalidArgument
from depot_api.domain.tokens import lifetime_of
from depot_api.logs import configure_logging
from depot_api.models import MachineConnection
from depot_api.report_build import ReportFailed, report_build
from depot_api.server.address import claim_address
from depot_api.server.errors import ServeError
from depot_api.server.supervisor import Supervisor
from depot_api.setting_kinds import LOG_LEVELS
from depot_api.startup import (
    EnvironmentProblem,
    check_tls_files,
    database_problems,
    migrate_database,
    open_database,
    prepare,
)
from depot_api.tracing import configure_tracing
from depot_api.wiring import Domain, build_domain

USAGE_ERROR = 2
ENVIRONMENT_ERROR = 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "agent":
            return asyncio.run(_agent(args))
        if args.command == "report-build":
            return _report_build(args)
        return _run(args, resolve_args(args, os.environ))
    except (SettingError, ConfigFileError) as e:
        return _failed(str(e), USAGE_ERROR)
    except DomainError as e:
        return _failed(e.message, USAGE_ERROR)
    except ServeError as e:
        return _failed(str(e), ENVIRONMENT_ERROR)
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace, resolved: Resolved) -> int:
    settings = resolved.settings
    try:
        if args.command == "config":
            return _show_config(resolved)
        if args.command == "serve":
            return asyncio.run(_serve(settings))
        if args.command == "migrate":
            return asyncio.run(_migrate(settings))
        return asyncio.run(_admin(args, settings))
    except EnvironmentProblem as e:
        return _failed(f"{resolved.describe(e.field)}: {e.problem}", ENVIRONMENT_ERROR)


def _report_build(args: argparse.Namespace) -> int:
    try:
        reported = report_build(args.server, args.build_id, args.token, args.file)
    except ReportFailed as e:
        return _failed(str(e), USAGE_ERROR if e.usage else ENVIRONMENT_ERROR)
    print(
        f"uploaded {reported.messages} status messages of build {args.build_id}: "
        f"{reported.merged} merged, {reported.repeated} already there"
    )
    return 0


def _failed(message: str, status: int) -> int:
    print(f"depot-api: {message}", file=sys.stderr)
    return status


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake on the command line is one line, not the usage and a line."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="depot-api",
        description="A self-hostable control plane that speaks Depot's API.",
        epilog="`depot-api serve --help` (and migrate's and admin's) lists the settings, with "
        "their environment variables and defaults; those only in the environment "
        "(DEPOT_API_SECRET_KEY above all) and the log levels are at its end.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('depot-api')}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the API server",
        description="Run the API server: migrate the database, then serve on one port.",
        epilog=_environment_only(SERVE),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_setting_flags(serve, SERVE)

    migrate = commands.add_parser(
        "migrate",
        help="apply the database migrations and exit (the server also applies them at start)",
        epilog=_environment_only(MIGRATE),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_setting_flags(migrate, MIGRATE)

    admin_epilog = _environment_only(ADMIN)
    admin = commands.add_parser(
        "admin",
        help="administer the data directory directly",
        epilog=admin_epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = admin.add_subparsers(dest="action", required=True)
    data_dir = _Parser(add_help=False)
    _add_setting_flags(data_dir, ADMIN)
    lifetime = _Parser(add_help=False)
    lifetime.add_argument(
        "--expires-in-days",
        type=int,
        metavar="DAYS",
        help="the token stops working this many days from now (default: it never expires)",
    )

    def action(name: str, help: str, *, expires: bool = False) -> argparse.ArgumentParser:
        return actions.add_parser(
            name,
            parents=[data_dir, lifetime] if expires else [data_dir],
            help=help,
            epilog=admin_epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    org = action("create-org", "create an organization")
    org.add_argument("--name", required=True, help="the organization's name")
    action("list-orgs", "list the organizations: ID, creation time, name")
    token = action("create-token", "create an organization token", expires=True)
    token.add_argument("--org", required=True, metavar="ORG_ID", help="the organization")
    token.add_argument("--description", default="", help="what the token is for (default: none)")
    user = action("create-user", "create a user")
    user.add_argument("--name", required=True, help="the user's name")
    member = action("add-member", "add a user to an organization")
    member.add_argument("--user", required=True, metavar="USER_ID", help="the user")
    member.add_argument("--org", required=True, metavar="ORG_ID", help="the organization")
    user_token = action("create-user-token", "create a token for a user", expires=True)
    user_token.add_argument("--user", required=True, metavar="USER_ID", help="the user")
    user_token.add_argument(
        "--description", default="", help="what the token is for (default: none)"
    )
    machine_token = action(
        "create-machine-token",
        "create a token for the agents on BuildKit hosts (machine service only)",
        expires=True,
    )
    machine_token.add_argument(
        "--description", default="", help="what the token is for (default: none)"
    )
    action(
        "list-tokens",
        "list the organization, user, machine and project tokens: kind, expiry, last use",
    )
    revoke = action("revoke-token", "revoke a token of any kind, at once")
    revoke.add_argument(
        "--token", required=True, metavar="TOKEN_ID", help="the token's ID (not its secret)"
    )
    action("list-machines", "list BuildKit machines")
    connections = action(
        "list-connections",
        "list client connections to machines, newest first: who used a machine, and who was "
        "refused",
    )
    connections.add_argument("--machine", metavar="MACHINE_ID", help="only this machine's")
    connections.add_argument("--build", metavar="BUILD_ID", help="only this build's")
    connections.add_argument(
        "--limit",
        type=int,
        default=LIST_DEFAULT,
        metavar="N",
        help=f"at most this many (default: {LIST_DEFAULT}, at most {LIST_MAX})",
    )
    drain = action(
        "drain-machine",
        "take no new project on a machine; its agent stops once the machine is free",
    )
    drain.add_argument("--machine", required=True, metavar="MACHINE_ID", help="the machine")

    config = commands.add_parser(
        "config",
        help="show the effective configuration",
        description="Show each setting's effective value and where it came from (a flag, the "
        "environment, the configuration file or the default), secrets masked. It takes the "
        "flags of serve, migrate and admin, so that a command line can be checked as it is.",
    )
    config_actions = config.add_subparsers(dest="action", required=True)
    show = config_actions.add_parser("show", help="print every setting, its value and source")
    _add_setting_flags(show, None)

    add_agent_command(commands)

    report = commands.add_parser(
        "report-build",
        help="upload the BuildKit progress log of a build run elsewhere, for its insights",
        description="Upload a build's `docker buildx build --progress=rawjson` log (one JSON "
        "SolveStatus per line) so that the build's steps, logs and cache hits show as for "
        "builds on depot-api's machines. The log is checked whole first: a bad line uploads "
        "nothing. Running it again is harmless: what arrived is not merged twice.",
    )
    report.add_argument("--server", required=True, metavar="URL", help="the depot-api server")
    report.add_argument("--build-id", required=True, metavar="ID", help="the build")
    report.add_argument(
        "--token", required=True, metavar="BUILD_TOKEN", help="the build's token (CreateBuild's)"
    )
    report.add_argument(
        "file", nargs="?", default="-", metavar="FILE", help="the log; - or none: standard input"
    )
    return parser


def _add_setting_flags(parser: argparse.ArgumentParser, command: str | None) -> None:
    """A flag for each setting of the command (of every command: None) that has one, its help
    from the table, and --config.

    Every flag is read as text and left None when not given: resolve() then takes the value
    from the flag, the environment, the file or the default, and checks it, the same way for
    each."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"a TOML file of settings, below flags and the environment (env {CONFIG_ENV}; "
        "default: none)",
    )
    chosen = [s for s in SETTINGS if s.commands] if command is None else settings_of(command)
    for setting in chosen:
        if setting.flag is None:
            continue
        help = f"{setting.help} (env {setting.env}; default: {setting.describe_default()})"
        help = help.replace("%", "%%")  # argparse formats help with %
        if setting.kind.switch:
            parser.add_argument(
                setting.flag, dest=setting.field, action=argparse.BooleanOptionalAction, help=help
            )
        elif setting.kind.repeatable:
            parser.add_argument(
                setting.flag, dest=setting.field, metavar=setting.metavar, help=help,
                action="append",
            )  # fmt: skip
        else:
            parser.add_argument(
                setting.flag, dest=setting.field, metavar=setting.metavar, help=help
            )


def resolve_args(args: argparse.Namespace, environ: Mapping[str, str]) -> Resolved:
    """The settings of the parsed command: each from its flag, its variable or its default."""
    flags = {s.field: _flag_text(s, getattr(args, s.field, None)) for s in SETTINGS if s.flag}
    command = None if args.command == "config" else args.command
    return resolve(command, flags, environ, _config_file(args.config, environ))


def _config_file(flag: str | None, environ: Mapping[str, str]) -> ConfigFile | None:
    named = flag if flag is not None else environ.get(CONFIG_ENV)
    if not named:
        return None
    return read_config_file(Path(named), file_keys())


def _show_config(resolved: Resolved) -> int:
    """One line per setting: its file key, its value (secrets masked) and where it came from."""
    rows = [
        (s.field, resolved.given[s.field].shown(), resolved.given[s.field].source)
        for s in SETTINGS
        if s.commands
    ]
    key_width = max(len(key) for key, _, _ in rows)
    value_width = min(40, max(len(value) for _, value, _ in rows))
    for key, value, source in rows:
        print(f"{key:<{key_width}}  {value:<{value_width}}  {source}".rstrip())
    return 0


def _flag_text(setting: Setting, value: str | bool | list[str] | None) -> str | None:
    """A flag's value as text for resolve(); a switch's flag gives True or False, a
    repeatable one the list of its values."""
    if isinstance(value, bool):
        return setting.kind.show(value)
    if isinstance(value, list):
        return ",".join(value)
    return value


def _environment_only(command: str) -> str:
    """The help's epilog: the settings that have no flag, with their defaults, and the rest
    of what a user needs to write values."""
    lines = []
    only_env = [s for s in settings_of(command) if s.flag is None]
    if only_env:
        lines.append("settings only in the environment:")
        for setting in only_env:
            lines.append(f"  {setting.env}")
            text = f"{setting.help} (default: {setting.describe_default()})"
            lines.append(textwrap.fill(text, width=78, initial_indent=" " * 6,
                                       subsequent_indent=" " * 6))  # fmt: skip
        lines.append("")
    if command == SERVE:
        lines.append(f"log levels: {', '.join(LOG_LEVELS)}")
        lines.append("durations are numbers of seconds, such as 120 or 0.5")
    lines.append(
        "a flag wins over its environment variable, which wins over the --config file; an "
        "empty variable counts as unset"
    )
    return "\n".join(lines)


async def _migrate(settings: Settings) -> int:
    done = await migrate_database(settings)
    if done.before is None:
        print(f"created the schema at revision {done.after}")
    elif done.before == done.after:
        print(f"the schema is already at revision {done.after}; nothing to do")
    else:
        print(f"upgraded the schema from revision {done.before} to {done.after}")
    return 0


async def _admin(args: argparse.Namespace, settings: Settings) -> int:
    store = await open_database(settings)
    domain = build_domain(store, settings)
    try:
        async with database_problems(settings):
            await _administer(args, domain)
    finally:
        await store.close()
    return 0


async def _administer(args: argparse.Namespace, domain: Domain) -> None:
    match args.action:
        case "create-org":
            org = await domain.organizations.create(args.name)
            print(f"organization {org.name!r} created\n{org.id}")
        case "list-orgs":
            orgs = await domain.organizations.all()
            for org in orgs:
                print(f"{org.id} created={org.created_at.isoformat()} {org.name!r}")
            if not orgs:
                _none("no organizations yet: create one with `depot-api admin create-org`")
        case "create-token":
            created, secret = await domain.tokens.create_org_token(
                args.org, args.description, _lifetime(args)
            )
            print(f"organization token {created.id} created; the secret is shown once:")
            print(secret)
        case "create-user":
            user = await domain.organizations.create_user(args.name)
            print(f"user {user.name!r} created\n{user.id}")
        case "add-member":
            await domain.organizations.add_member(args.user, args.org)
            print(f"user {args.user} is now a member of organization {args.org}")
        case "create-user-token":
            created, secret = await domain.tokens.create_user_token(
                args.user, args.description, _lifetime(args)
            )
            print(f"user token {created.id} created; the secret is shown once:")
            print(secret)
        case "create-machine-token":
            created, secret = await domain.tokens.create_machine_token(
                args.description, _lifetime(args)
            )
            print(f"machine token {created.id} created; the secret is shown once:")
            print(secret)
        case "list-tokens":
            for listed in await domain.tokens.list_standing():
                print(
                    f"{listed.id} {listed.kind.value} "
                    f"created={listed.created_at.isoformat()} "
                    f"expires={_when(listed.expires_at)} "
                    f"last-used={_when(listed.last_used_at)} "
                    f"scope={listed.project_id or listed.org_id or listed.user_id or '-'} "
                    f"{listed.description!r}"
                )
        case "revoke-token":
            await domain.tokens.revoke(args.token)
            print(f"token {args.token} is revoked")
        case "list-machines":
            machines = await domain.machines.list()
            for machine in machines:
                print(
                    f"{machine.id} {machine.platform.value} {machine.endpoint} "
                    f"{machine.state.value} project={machine.project_id or '-'} "
                    f"ready={'yes' if machine.ready else 'no'} "
                    f"last-heartbeat={machine.last_heartbeat_at.isoformat()} "
                    f"disk-used={machine.disk_used_bytes} "
                    f"error={machine.buildkit_error or '-'!r}"
                )
            if not machines:
                _none("no machines: none has registered (run `depot-api agent` on a BuildKit host)")
        case "list-connections":
            found = await domain.connections.list(
                machine_id=args.machine, build_id=args.build, limit=args.limit
            )
            for connection in found:
                print(_connection_line(connection))
            if not found:
                _none(_no_connections(args.machine, args.build))
        case "drain-machine":
            await domain.machines.drain(args.machine)
            print(f"machine {args.machine} is draining")
        case _:  # argparse takes only the actions above; a new one must be handled here
            raise AssertionError(f"admin action {args.action!r} is not handled")


def _none(message: str) -> None:
    """Say that a listing is empty, on standard error: standard output stays one line per item."""
    print(message, file=sys.stderr)


def _connection_line(c: MachineConnection) -> str:
    outcome = "admitted" if c.admitted else f"refused={c.refusal or '-'!r}"
    took = "open" if c.closed_at is None else f"duration={_seconds(c.closed_at - c.opened_at)}"
    return (
        f"{c.opened_at.isoformat()} {c.machine_id} build={c.build_id or '-'} peer={c.peer} "
        f"{outcome} in={c.bytes_from_client} out={c.bytes_to_client} {took}"
    )


def _seconds(span: timedelta) -> str:
    return f"{span.total_seconds():.3f}s"


def _no_connections(machine_id: str | None, build_id: str | None) -> str:
    of = " and ".join(
        f"{kind} {value}"
        for kind, value in (("machine", machine_id), ("build", build_id))
        if value is not None
    )
    kept = f"machines report their connections, kept for {CONNECTION_RETENTION.days} days"
    return f"no connections{f' of {of}' if of else ''}: {kept}"


def _lifetime(args: argparse.Namespace) -> timedelta | None:
    days: int | None = args.expires_in_days
    if days is None:
        return None
    if days <= 0:
        raise InvalidArgument("--expires-in-days must be a positive number of days")
    return lifetime_of(days * 86_400, "--expires-in-days")


def _when(at: datetime | None) -> str:
    return "never" if at is None else at.isoformat()


async def _serve(settings: Settings) -> int:
    check_tls_files(settings)
    configure_logging(settings.log_level, settings.log_format)
    # First of all: a server refused its port must not have touched the data directory.
    with claim_address(settings.host, settings.port):
        secret = await prepare(settings)
        if secret is not None:
            # The secret itself is not printed: standard output usually ends up in a log.
            print(
                "Created an organization and its first token. The token is in "
                f"{settings.initial_token_path} (mode 0600) and nowhere else: store it where "
                "your secrets go, then delete the file.",
                flush=True,
            )
        return await Supervisor(settings).run()


async def _agent(args: argparse.Namespace) -> int:
    try:
        options = agent_options(args, os.environ)
    except BadOption as e:
        print(f"depot-api agent: {e}", file=sys.stderr)
        return 2
    config = options.config
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Made after the handlers: once the directory exists, a SIGTERM stops the agent cleanly.
    try:
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        print(f"depot-api agent: cannot make --state-dir {config.state_dir}: {e}", file=sys.stderr)
        return 1
    # Only now: what went before is printed, and in-process callers keep their own logging.
    configure_logging(options.log_level, options.log_format)
    configure_tracing("depot-api-agent")
    try:
        status = await Agent(config).run(stop)
    except Refused as e:
        print(f"depot-api agent: {e}", file=sys.stderr)
        status = 1
    return _leave(status)


def _leave(status: int) -> NoReturn:
    """End the process now, skipping the interpreter's shutdown. The HTTP client's native
    threads may still be calling into Python then, which on Python 3.11 aborts the process
    (status 134, no message) now and then. Everything the agent owns is stopped by now."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    sys.exit(main())
