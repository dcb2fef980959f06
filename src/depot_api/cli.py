"""The `depot-api` command: serve, and admin commands that work on the data directory."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from depot_api.config import Settings
from depot_api.domain.errors import DomainError
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
        "--log-level", default=env.log_level, help="env DEPOT_API_LOG_LEVEL (%(default)s)"
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
    org = actions.add_parser("create-org", parents=[data_dir], help="create an organization")
    org.add_argument("--name", required=True)
    token = actions.add_parser(
        "create-token", parents=[data_dir], help="create an organization token"
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
        "create-user-token", parents=[data_dir], help="create a token for a user"
    )
    user_token.add_argument("--user", required=True)
    user_token.add_argument("--description", default="")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    settings = replace(Settings.from_env(), data_dir=args.data_dir, database=args.database)
    if args.command != "serve":
        return settings
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("depot-api: --tls-cert and --tls-key go together")
    if args.workers < 0:
        raise SystemExit("depot-api: --workers must be 0 (one per core) or more")
    return replace(
        settings,
        host=args.host,
        port=args.port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        build_token_grace=timedelta(seconds=args.build_token_grace),
        regions=tuple(r.strip() for r in args.regions.split(",") if r.strip()),
        max_message_bytes=args.max_message_bytes,
        log_level=args.log_level,
        workers=args.workers,
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
                created, secret = await domain.tokens.create_org_token(args.org, args.description)
                print(f"organization token {created.id} created; the secret is shown once:")
                print(secret)
            case "create-user":
                user = await domain.organizations.create_user(args.name)
                print(f"user {user.name!r} created\n{user.id}")
            case "add-member":
                await domain.organizations.add_member(args.user, args.org)
                print(f"user {args.user} is now a member of organization {args.org}")
            case "create-user-token":
                created, secret = await domain.tokens.create_user_token(args.user, args.description)
                print(f"user token {created.id} created; the secret is shown once:")
                print(secret)
    finally:
        await store.close()
    return 0


async def _serve(settings: Settings) -> int:
    configure_logging(settings.log_level)
    secret = await prepare(settings)
    if secret is not None:
        print(
            "Created an organization and its first token. It is shown once here and kept in "
            f"{settings.initial_token_path} (mode 0600):\n{secret}",
            flush=True,
        )
    return await Supervisor(settings).run()


if __name__ == "__main__":
    sys.exit(main())
