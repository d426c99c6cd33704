"""Running the stack: migrations + first key, the worker as a child process, uvicorn.

``pc2 serve`` on the embedded default is the production code path on other parts: the same app,
the same Celery tasks, only SQLite and a file-system broker instead of Postgres and Redis.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

from sqlalchemy import func, select

from pc2.service.core.config import Settings
from pc2.service.core.db import session_scope
from pc2.service.core.migrate import upgrade
from pc2.service.core.security import create_key
from pc2.service.models import ApiKey


def bootstrap(settings: Settings) -> tuple[str | None, bool]:
    """Migrate the database; on the embedded default create a local key when none exists.

    Returns (key or None, created now). The local key is kept in ``DATA_DIR/local_api_key``
    (mode 0600) so later starts can show it again; production keys are only ever printed once.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    if not settings.EMBEDDED:
        return None, False
    with session_scope(settings.database_url) as session:
        if (session.scalar(select(func.count()).select_from(ApiKey)) or 0) == 0:
            _, key = create_key(session, team_name="local", key_name="local default")
            _write_private(settings.local_key_file, key)
            return key, True
    path = settings.local_key_file
    return (path.read_text().strip() if path.exists() else None), False


def _write_private(path, text: str) -> None:  # type: ignore[no-untyped-def]
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def worker_command(*, queues: str = "gpu,cpu", concurrency: int = 1, loglevel: str = "info",
                   name: str | None = None) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "pc2.workers.celery_app", "worker",
            "-Q", queues, "-c", str(concurrency), "--pool", "prefork", "-n", name or f"pc2-{uuid.uuid4().hex[:8]}@%h",
            "--without-mingle", "--without-gossip", "--without-heartbeat", "--loglevel", loglevel]


def start_worker(settings: Settings, *, queues: str = "gpu,cpu", concurrency: int | None = None,
                 stdout=None, stderr=None, extra_env: dict[str, str] | None = None) -> subprocess.Popen:  # type: ignore[no-untyped-def]
    """Start a Celery worker as a child process with these settings in its environment.

    It gets its own process group so stopping it also stops its pool children.
    """
    env = {**os.environ, **settings.env(), **(extra_env or {})}
    cmd = worker_command(queues=queues, concurrency=concurrency or settings.WORKER_CONCURRENCY,
                         loglevel=settings.LOG_LEVEL)
    return subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr, start_new_session=True)


def stop_worker(proc: subprocess.Popen, timeout: float = 20.0) -> None:  # type: ignore[type-arg]
    """Warm shutdown (SIGTERM to the main process, which stops its pool), then SIGKILL the whole
    group if it does not leave in time. Signalling the pool children directly would make the main
    process treat them as lost and slow its shutdown down."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


class ServerThread:
    """uvicorn in a background thread (demo, tests that want a real socket)."""

    def __init__(self, settings: Settings, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        from pc2.service.main import create_app

        config = uvicorn.Config(create_app(settings), host=host, port=port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="pc2-uvicorn", daemon=True)

    def start(self, timeout: float = 30.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve(settings: Settings, *, with_worker: bool | None = None) -> int:
    """Foreground server (``pc2 serve``): migrate, print URL and key, run worker child + uvicorn."""
    import uvicorn

    from pc2.service.main import create_app

    key, created = bootstrap(settings)
    url = f"http://{settings.HOST}:{settings.PORT}"
    print(f"PC² Curate API: {url}   (docs: {url}/docs)", flush=True)
    print(f"data dir: {settings.data_dir}   database: {settings.database_url.split('@')[-1]}", flush=True)
    if key and created:
        print(f"local API key (created now, saved to {settings.local_key_file}):\n  {key}", flush=True)
    elif key:
        print(f"local API key (from {settings.local_key_file}):\n  {key}", flush=True)
    worker = None
    if settings.EMBEDDED if with_worker is None else with_worker:
        worker = start_worker(settings)
        print(f"worker: pid {worker.pid} (queues gpu,cpu)", flush=True)
    try:
        uvicorn.run(create_app(settings), host=settings.HOST, port=settings.PORT, log_level=settings.LOG_LEVEL)
    finally:
        if worker is not None:
            stop_worker(worker)
    return 0
