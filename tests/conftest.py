"""Shared fixtures: synthetic corpora, throwaway Postgres databases, Redis, and running stacks
(API app + real Celery worker processes) on Postgres/Redis and on the embedded default."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

# Small enough to train in seconds on two CPU cores; same engine code path as production.
# Three cross-fitted folds: the default's code path at the two-network cost.
TINY_CONFIG: dict[str, Any] = {"epochs": 2, "warmup_epochs": 1, "embed_dim": 64, "word_dim": 64,
                               "num_classes": 16, "batch_size": 64, "threads": 1, "cross_fit_folds": 3}
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"
REDIS_DB = 11  # our own Redis database number, flushed before and after the session


# Enough training for detection quality to show (ROC-AUC >= 0.8) on the 2,000-pair corpus.
QUALITY_CONFIG: dict[str, Any] = {"epochs": 4, "warmup_epochs": 2, "embed_dim": 128, "word_dim": 128,
                                  "num_classes": 32, "batch_size": 32, "lr": 3e-3, "threads": 1, "cross_fit_folds": 3}


@pytest.fixture(scope="session")
def tiny_config() -> dict[str, Any]:
    return dict(TINY_CONFIG)


@pytest.fixture(scope="session")
def quality_config() -> dict[str, Any]:
    return dict(QUALITY_CONFIG)


def _synth(tmp_path_factory, n_pairs: int):
    from pc2.models import synth

    out = tmp_path_factory.mktemp(f"synth{n_pairs}")
    # A small world (20 concepts, one language) so a small corpus still has something to learn.
    return synth.generate(out, n_pairs=n_pairs, noise_rate=0.3, regions=8, dim=32, n_test=0, seed=0,
                          n_concepts=20, n_scenes=8, languages=("en",))


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """600 pairs, 30 % noise, with ground truth: for flows where quality is not measured."""
    return _synth(tmp_path_factory, 600)


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory):
    """2,000 pairs, 30 % noise, with ground truth (pc2.models.synth)."""
    return _synth(tmp_path_factory, 2000)


# -- Postgres / Redis -----------------------------------------------------------------------------
def _pg_admin():
    import psycopg

    try:
        return psycopg.connect(PG_ADMIN, autocommit=True)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"PostgreSQL not reachable on 127.0.0.1:5432: {exc}")


class PgDatabases:
    """Creates uniquely named databases and drops them all at the end."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def create(self) -> str:
        name = f"pc2_test_{uuid.uuid4().hex[:10]}"
        with _pg_admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.names.append(name)
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"

    def drop_all(self) -> None:
        from pc2.service.core.db import reset_engines

        reset_engines()
        with _pg_admin() as conn:
            for name in self.names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_databases():
    dbs = PgDatabases()
    yield dbs
    dbs.drop_all()


@pytest.fixture(scope="session")
def redis_url():
    import redis

    url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        client.flushdb()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"Redis not reachable on 127.0.0.1:6379: {exc}")
    yield url
    client.flushdb()


# -- stacks ---------------------------------------------------------------------------------------
class Stack:
    """The API (in-process ASGI client) over a database and broker, plus real worker processes."""

    def __init__(self, settings, log_dir: Path):
        from fastapi.testclient import TestClient

        from pc2.service.embedded import bootstrap
        from pc2.service.main import create_app

        self.settings = settings
        self.log_dir = log_dir
        bootstrap(settings)
        self.key = self.new_key("team-a")
        self.client = TestClient(create_app(settings))
        self.workers: list[subprocess.Popen] = []

    # keys and requests
    def new_key(self, team: str) -> str:
        from pc2.service.core.db import session_scope
        from pc2.service.core.security import create_key

        with session_scope(self.settings.database_url) as session:
            return create_key(session, team_name=team)[1]

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def get(self, path: str, key: str | None = None, **kw):
        return self.client.get(path, headers=self.headers(key), **kw)

    def post(self, path: str, key: str | None = None, **kw):
        return self.client.post(path, headers=self.headers(key), **kw)

    # workers
    def start_worker(self, **env: str) -> subprocess.Popen:
        from pc2.service.embedded import start_worker

        log = open(self.log_dir / f"worker-{len(self.workers)}.log", "wb")
        proc = start_worker(self.settings, stdout=log, stderr=subprocess.STDOUT, extra_env=env)
        self.workers.append(proc)
        return proc

    def kill_worker(self, proc: subprocess.Popen) -> None:
        """SIGKILL the worker and its pool children: no shutdown handlers run."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop(self) -> None:
        from pc2.service.embedded import stop_worker

        for proc in self.workers:
            stop_worker(proc, timeout=10)
        self.client.close()

    # the common flow
    def upload(self, corpus, name: str = "synthetic", key: str | None = None) -> str:
        with open(corpus.manifest_path, "rb") as m, open(corpus.features_path, "rb") as f:
            r = self.post("/v1/datasets", key=key, data={"name": name},
                          files=[("manifest", ("manifest.parquet", m)), ("features", ("features.npy", f))])
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def wait(self, path: str, done: tuple[str, ...], timeout: float = 180.0, key: str | None = None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            body = self.get(path, key=key).json()
            if body["status"] in done:
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} still {body['status']} after {timeout}s: {body}\n{self.worker_logs()}")
            time.sleep(0.2)

    def ready_dataset(self, corpus, key: str | None = None) -> str:
        ds = self.upload(corpus, key=key)
        body = self.wait(f"/v1/datasets/{ds}", ("ready", "failed"), key=key)
        assert body["status"] == "ready", body
        return ds

    def worker_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.log_dir.glob("worker-*.log")))


def _stack_settings(tmp: Path, **over: Any):
    from pc2.service.core.config import Settings

    base: dict[str, Any] = dict(DATA_DIR=tmp / "data", PROGRESS_INTERVAL_S=0.2, JOB_LEASE_S=4.0,
                                WEBHOOK_BACKOFF_S=0.2, WEBHOOK_MAX_RETRIES=3, WEBHOOK_SECRET="test-secret",
                                LOG_LEVEL="info")
    base.update(over)
    return Settings(**base)


@pytest.fixture(scope="session")
def pg_stack(tmp_path_factory, pg_databases, redis_url):
    """Postgres + Redis + one real Celery worker process (queues gpu, cpu)."""
    tmp = tmp_path_factory.mktemp("pg_stack")
    settings = _stack_settings(tmp, DATABASE_URL=pg_databases.create(), BROKER_URL=redis_url, EMBEDDED=False)
    stack = Stack(settings, tmp)
    stack.start_worker()
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def embedded_stack(tmp_path_factory):
    """The embedded default: SQLite + file-system broker + the worker child `pc2 serve` starts."""
    tmp = tmp_path_factory.mktemp("embedded_stack")
    stack = Stack(_stack_settings(tmp), tmp)
    stack.start_worker()
    yield stack
    stack.stop()


@pytest.fixture
def api(tmp_path):
    """API only (SQLite, file-system broker, no worker): request validation and auth paths."""
    stack = Stack(_stack_settings(tmp_path, MAX_UPLOAD_BYTES=64 * 1024,
                                  ALLOWED_ROOTS=[str(tmp_path / "shared")]), tmp_path)
    yield stack
    stack.stop()


# --- engine fixtures: a small synthetic corpus with ground truth ------------------------------------
import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from pc2.models import synth, tokenizer  # noqa: E402
from pc2.models.data import Corpus, FeatureStore  # noqa: E402


def load_synth_corpus(d, tok=None):
    m = pq.read_table(d / "manifest.parquet")
    caps = m["caption"].to_pylist()
    tok = tok or tokenizer.train_bpe(caps, 2000)
    off, ids = tokenizer.encode(tok, caps)
    corpus = Corpus(FeatureStore.open([d / "features.npy"]), np.asarray(m["feature_row"]), off, ids,
                    tokenizer.vocab_size(tok), m["pair_id"].to_pylist(), caps)
    return corpus, tok


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth600")
    synth.generate(d, n_pairs=600, noise_rate=0.5, regions=8, dim=32, n_test=100, n_concepts=20, n_scenes=5, languages=("en",), feature_noise=0.5, seed=3)
    return d


@pytest.fixture(scope="session")
def tiny_corpus(tiny_synth):
    corpus, _ = load_synth_corpus(tiny_synth)
    truth = pq.read_table(tiny_synth / "truth.parquet")
    return corpus, np.asarray(truth["noisy"].to_pylist(), dtype=bool)
