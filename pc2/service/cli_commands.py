"""The service's ``pc2`` subcommands; each takes an argv list and returns an exit code."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pc2.service.core.config import Settings


def _argv(argv: list[str]) -> list[str]:
    # `pc2 serve -- --port 9000` passes the separator through; it is not an argument.
    return argv[1:] if argv[:1] == ["--"] else argv


def _settings(args: argparse.Namespace, **extra: object) -> Settings:
    overrides = {k: v for k, v in extra.items() if v is not None}
    if getattr(args, "data_dir", None):
        overrides["DATA_DIR"] = Path(args.data_dir)
    if getattr(args, "database_url", None):
        overrides["DATABASE_URL"] = args.database_url
    return Settings(**overrides)


def serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pc2 serve", description="Run the PC² Curate API. With no PC2_* settings: "
                                "SQLite and an embedded broker under ./.pc2 and a worker child process.")
    p.add_argument("--host", help="bind address (PC2_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (PC2_PORT, default 8000)")
    p.add_argument("--data-dir", help="PC2_DATA_DIR (default ./.pc2)")
    p.add_argument("--database-url", help="PC2_DATABASE_URL (default: SQLite in the data dir)")
    p.add_argument("--no-worker", action="store_true", help="do not start the child worker")
    p.add_argument("--api-only", action="store_true", help="production API: migrate, no local key, no worker")
    return p


def serve(argv: list[str]) -> int:
    args = serve_parser().parse_args(_argv(argv))
    from pc2.service.embedded import serve as run

    settings = _settings(args, HOST=args.host, PORT=args.port, EMBEDDED=False if args.api_only else None)
    return run(settings, with_worker=False if (args.no_worker or args.api_only) else None)


def worker_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pc2 worker", description="Run a Celery worker for the PC² tasks.")
    p.add_argument("-Q", "--queues", default="gpu,cpu", help="queues to consume: gpu (training), cpu (ingest, "
                   "export, webhooks); default both")
    p.add_argument("-c", "--concurrency", type=int, help="worker processes (PC2_WORKER_CONCURRENCY, default 1)")
    p.add_argument("--data-dir", help="PC2_DATA_DIR")
    p.add_argument("--loglevel", default=None, help="PC2_LOG_LEVEL (default info)")
    p.add_argument("-n", "--hostname", help="Celery node name")
    return p


def worker(argv: list[str]) -> int:
    args = worker_parser().parse_args(_argv(argv))
    if args.data_dir:  # the Celery app reads its settings from the environment at import
        os.environ["PC2_DATA_DIR"] = str(Path(args.data_dir).resolve())
    from pc2.service.core.config import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    if settings.EMBEDDED:  # one machine, zero set-up: the worker may be the first to touch the DB
        from pc2.service.core.migrate import upgrade

        upgrade(settings.database_url)
    from pc2.service.embedded import worker_command

    cmd = worker_command(queues=args.queues, concurrency=args.concurrency or settings.WORKER_CONCURRENCY,
                         loglevel=args.loglevel or settings.LOG_LEVEL, name=args.hostname)
    # Become the Celery worker (same pid, signals reach it directly); the app is named by module
    # path, so this package never imports the workers itself.
    sys.stdout.flush()
    os.execv(cmd[0], cmd)
    return 0  # not reached


def db_upgrade_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pc2 db upgrade", description="Apply Alembic migrations to the database.")
    p.add_argument("revision", nargs="?", default="head")
    p.add_argument("--database-url", help="PC2_DATABASE_URL (default: SQLite in the data dir)")
    p.add_argument("--data-dir", help="PC2_DATA_DIR")
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the database to come up")
    return p


def db_upgrade(argv: list[str]) -> int:
    args = db_upgrade_parser().parse_args(_argv(argv))
    from pc2.service.core.migrate import current, upgrade

    settings = _settings(args)
    _wait_for_db(settings.database_url, args.wait)
    upgrade(settings.database_url, args.revision)
    print(f"database at revision {current(settings.database_url)}")
    return 0


def _wait_for_db(url: str, seconds: float) -> None:
    import time

    from pc2.service.core.db import ping

    deadline = time.monotonic() + seconds
    while True:
        try:
            ping(url)
            return
        except Exception as exc:  # noqa: BLE001 - keep waiting until the deadline
            if time.monotonic() >= deadline:
                if seconds:
                    print(f"database not reachable after {seconds:.0f}s: {exc}", file=sys.stderr)
                return
            time.sleep(1.0)


def keys_create_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pc2 keys create", description="Create an API key for a team (printed once; "
                                "only its hash is stored).")
    p.add_argument("--team", default="local", help="team name (created if new)")
    p.add_argument("--name", default="", help="a label for the key")
    p.add_argument("--database-url", help="PC2_DATABASE_URL")
    p.add_argument("--data-dir", help="PC2_DATA_DIR")
    return p


def keys_create(argv: list[str]) -> int:
    args = keys_create_parser().parse_args(_argv(argv))
    from pc2.service.core.db import session_scope
    from pc2.service.core.migrate import upgrade
    from pc2.service.core.security import create_key

    settings = _settings(args)
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as session:
        team, key = create_key(session, team_name=args.team, key_name=args.name)
        team_id = team.id
    print(key)
    print(f"team {args.team} ({team_id}); keep the key: only its hash is stored", file=sys.stderr)
    return 0


PARSERS = {"serve": serve_parser, "worker": worker_parser, "db_upgrade": db_upgrade_parser,
           "keys_create": keys_create_parser}


def run_demo(argv: list[str]) -> int:
    from pc2.service.demo import run_demo as demo

    return demo(argv)
