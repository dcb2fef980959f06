"""The `depot-api` command: serve, and admin commands that work on the data directory."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import NoReturn

from depot_api.agent import Agent, Refused
from depot_api.agent_options import BadOption, add_agent_command, agent_options
from depot_api.config import Settings
from depot_api.domain.errors import DomainError, InvalidArgument
from depot_api.domain.tokens import lifetime_of
from depot_api.logs import configure_logging
from depot_api.server import Supervisor
from depot_api.startup import make_data_dir, prepare
from depot_api.store.engine import open_store
from depot_api.wiring import build_domain


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    settings = _settings(args)
    try:
        if args.command == "serve":
            return asyncio.run(_serve(settings))
        if args.command == "migrate":
            return asyncio.run(_migrate(settings))
        if args.command == "agent":
            return asyncio.run(_agent(args))
        return asyncio.run(_admin(args, settings))
    except DomainError as e:
        print(f"depot-api: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    env = Settings.from_env()
    parser = argparse.ArgumentParser(
        prog="depot-api", description="A self-hostable control plane that speaks Depot's API."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument(
        "--data-dir",
        type=Path,
        default=env.data_dir,
        help="local state, and the SQLite database unless --database is given "
        "(env DEPOT_API_DATA_DIR; default %(default)s)",
    )
    data_dir.add_argument(
        "--database",
        default=env.database,
        metavar="URL",
        help="a PostgreSQL URL such as postgresql://user@host/db "
        "(env DEPOT_API_DATABASE_URL; default: SQLite in the data directory)",
    )

    serve = commands.add_parser("serve", parents=[data_dir], help="run the API server")
    serve.add_argument("--host", default=env.host, help="env DEPOT_API_HOST (%(default)s)")
    serve.add_argument(
        "--port", type=int, default=env.port, help="env DEPOT_API_PORT (%(default)s); 0 = any"
    )
    serve.add_argument("--tls-cert", type=Path, default=env.tls_cert, help="env DEPOT_API_TLS_CERT")
    serve.add_argument("--tls-key", type=Path, default=env.tls_key, help="env DEPOT_API_TLS_KEY")
    serve.add_argument(
        "--build-token-grace",
        type=float,
        default=env.build_token_grace.total_seconds(),
        metavar="SECONDS",
        help="how long a build token works after its build ends "
        "(env DEPOT_API_BUILD_TOKEN_GRACE; %(default)s)",
    )
    serve.add_argument(
        "--regions",
        default=",".join(env.regions),
        help="comma-separated region IDs projects may use (env DEPOT_API_REGIONS; %(default)s)",
    )
    serve.add_argument(
        "--max-message-bytes",
        type=int,
        default=env.max_message_bytes,
        help="largest request message accepted (env DEPOT_API_MAX_MESSAGE_BYTES; %(default)s)",
    )
    serve.add_argument(
        "--rate-limit",
        type=float,
        default=env.rate_limit,
        metavar="CALLS",
        help="calls a second per token and process, sustained; 0 = no limit "
        "(env DEPOT_API_RATE_LIMIT; %(default)s)",
    )
    serve.add_argument(
        "--rate-burst",
        type=int,
        default=env.rate_burst,
        metavar="CALLS",
        help="calls a token may make at once above the rate (env DEPOT_API_RATE_BURST; "
        "%(default)s)",
    )
    serve.add_argument(
        "--max-streams-per-token",
        type=int,
        default=env.max_streams_per_token,
        metavar="N",
        help="streams one token may hold open per process; 0 = no limit "
        "(env DEPOT_API_MAX_STREAMS_PER_TOKEN; %(default)s)",
    )
    serve.add_argument(
        "--shutdown-grace",
        type=float,
        default=env.shutdown_grace.total_seconds(),
        metavar="SECONDS",
        help="on SIGTERM, how long calls in flight may take to finish "
        "(env DEPOT_API_SHUTDOWN_GRACE; %(default)s)",
    )
    serve.add_argument(
        "--log-level", default=env.log_level, help="env DEPOT_API_LOG_LEVEL (%(default)s)"
    )
    serve.add_argument(
        "--build-url",
        default=env.build_url,
        metavar="TEMPLATE",
        help="the build URL the depot CLI prints, with {project_id} and {build_id} "
        "(env DEPOT_API_BUILD_URL; default: none)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=env.workers,
        help="server processes sharing the port (env DEPOT_API_WORKERS; 0 = one per core)",
    )

    commands.add_parser(
        "migrate",
        parents=[data_dir],
        help="apply the database migrations and exit (the server also applies them at start)",
    )

    admin = commands.add_parser("admin", help="administer the data directory directly")
    actions = admin.add_subparsers(dest="action", required=True)
    lifetime = argparse.ArgumentParser(add_help=False)
    lifetime.add_argument(
        "--expires-in-days",
        type=int,
        metavar="DAYS",
        help="the token stops working this many days from now (default: it never expires)",
    )
    org = actions.add_parser("create-org", parents=[data_dir], help="create an organization")
    org.add_argument("--name", required=True)
    token = actions.add_parser(
        "create-token", parents=[data_dir, lifetime], help="create an organization token"
    )
    token.add_argument("--org", required=True)
    token.add_argument("--description", default="")
    user = actions.add_parser("create-user", parents=[data_dir], help="create a user")
    user.add_argument("--name", required=True)
    member = actions.add_parser(
        "add-member", parents=[data_dir], help="add a user to an organization"
    )
    member.add_argument("--user", required=True)
    member.add_argument("--org", required=True)
    user_token = actions.add_parser(
        "create-user-token", parents=[data_dir, lifetime], help="create a token for a user"
    )
    user_token.add_argument("--user", required=True)
    user_token.add_argument("--description", default="")
    machine_token = actions.add_parser(
        "create-machine-token",
        parents=[data_dir, lifetime],
        help="create a token for the agents on BuildKit hosts (machine service only)",
    )
    machine_token.add_argument("--description", default="")
    actions.add_parser(
        "list-tokens",
        parents=[data_dir],
        help="list the organization, user, machine and project tokens: kind, expiry, last use",
    )
    revoke = actions.add_parser(
        "revoke-token", parents=[data_dir], help="revoke a token of any kind, at once"
    )
    revoke.add_argument("--token", required=True, metavar="TOKEN_ID")
    actions.add_parser("list-machines", parents=[data_dir], help="list BuildKit machines")
    drain = actions.add_parser(
        "drain-machine",
        parents=[data_dir],
        help="take no new project on a machine; its agent stops once the machine is free",
    )
    drain.add_argument("--machine", required=True)

    add_agent_command(commands)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    if args.command == "agent":
        return Settings.from_env()
    settings = replace(Settings.from_env(), data_dir=args.data_dir, database=args.database)
    if args.command != "serve":
        return settings
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("depot-api: --tls-cert and --tls-key go together")
    try:
        args.build_url.format(project_id="p", build_id="b")
    except (AttributeError, KeyError, IndexError, ValueError):
        raise SystemExit(
            "depot-api: --build-url may use {project_id} and {build_id} and no other fields"
        ) from None
    if args.workers < 0:
        raise SystemExit("depot-api: --workers must be 0 (one per core) or more")
    if not 0 <= args.shutdown_grace <= 3600:
        raise SystemExit("depot-api: --shutdown-grace must be between 0 and 3600 seconds")
    if args.max_message_bytes < 1:
        raise SystemExit("depot-api: --max-message-bytes must be at least 1")
    if not args.rate_limit >= 0 or args.rate_burst < 1 or args.max_streams_per_token < 0:
        raise SystemExit(
            "depot-api: --rate-limit and --max-streams-per-token must be 0 (off) or more, "
            "and --rate-burst at least 1"
        )
    return replace(
        settings,
        host=args.host,
        port=args.port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        build_token_grace=timedelta(seconds=args.build_token_grace),
        regions=tuple(r.strip() for r in args.regions.split(",") if r.strip()),
        max_message_bytes=args.max_message_bytes,
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
        max_streams_per_token=args.max_streams_per_token,
        shutdown_grace=timedelta(seconds=args.shutdown_grace),
        log_level=args.log_level,
        workers=args.workers,
        build_url=args.build_url,
    )


async def _migrate(settings: Settings) -> int:
    make_data_dir(settings.data_dir)
    store = await open_store(settings.database_url)
    await store.close()
    print("the database schema is up to date")
    return 0


async def _admin(args: argparse.Namespace, settings: Settings) -> int:
    make_data_dir(settings.data_dir)
    store = await open_store(settings.database_url)
    domain = build_domain(store, settings)
    try:
        match args.action:
            case "create-org":
                org = await domain.organizations.create(args.name)
                print(f"organization {org.name!r} created\n{org.id}")
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
                for machine in await domain.machines.list():
                    print(
                        f"{machine.id} {machine.platform.value} {machine.endpoint} "
                        f"{machine.state.value} project={machine.project_id or '-'} "
                        f"ready={'yes' if machine.ready else 'no'} "
                        f"last-heartbeat={machine.last_heartbeat_at.isoformat()} "
                        f"disk-used={machine.disk_used_bytes} "
                        f"error={machine.buildkit_error or '-'!r}"
                    )
            case "drain-machine":
                await domain.machines.drain(args.machine)
                print(f"machine {args.machine} is draining")
    finally:
        await store.close()
    return 0


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
    configure_logging(settings.log_level)
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
    configure_logging(options.log_level)
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
