"""The `depot-api` command: serve, and admin commands that work on the data directory."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from depot_api.config import Settings
from depot_api.domain.errors import DomainError
from depot_api.logs import configure_logging
from depot_api.store.engine import open_store
from depot_api.wiring import build_domain


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    settings = _settings(args)
    try:
        if args.command == "serve":
            return asyncio.run(_serve(settings))
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
        help="where the SQLite database lives (env DEPOT_API_DATA_DIR; default %(default)s)",
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
    settings = replace(Settings.from_env(), data_dir=args.data_dir)
    if args.command != "serve":
        return settings
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("depot-api: --tls-cert and --tls-key go together")
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
    )


async def _admin(args: argparse.Namespace, settings: Settings) -> int:
    _make_data_dir(settings.data_dir)
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


async def prepare_data_dir(settings: Settings) -> str | None:
    """Create the data directory, migrate the database, and bootstrap an empty one.

    Returns the initial organization token's secret when this call created it.
    """
    _make_data_dir(settings.data_dir)
    store = await open_store(settings.database_url)
    try:
        secret = await build_domain(store, settings).organizations.bootstrap()
    finally:
        await store.close()
    if secret is not None:
        path = settings.initial_token_path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
    return secret


def _make_data_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


async def _serve(settings: Settings) -> int:
    from pyvoy import PyvoyServer

    configure_logging(settings.log_level)
    secret = await prepare_data_dir(settings)
    if secret is not None:
        print(
            "Created an organization and its first token. It is shown once here and kept in "
            f"{settings.initial_token_path} (mode 0600):\n{secret}",
            flush=True,
        )
    tls: dict[str, Path] = {}
    if settings.tls_cert is not None and settings.tls_key is not None:
        tls = {"tls_cert": settings.tls_cert.resolve(), "tls_key": settings.tls_key.resolve()}
    server = PyvoyServer(
        "depot_api.asgi:app",
        address=settings.host,
        port=settings.port,
        env=settings.to_env(),
        lifespan=True,
        tls_enable_http3=False,
        stdout=None,
        stderr=None,
        **tls,  # type: ignore[arg-type]
    )
    await server.start()
    scheme = "https" if tls else "http"
    print(
        f"depot-api listening on {scheme}://{server.listener_address}:{server.listener_port}",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    exited = asyncio.ensure_future(server.wait())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not exited.done():
        await server.stop()
    stopping.cancel()
    code = await exited
    return 0 if stop.is_set() else (code or 1)


if __name__ == "__main__":
    sys.exit(main())
