"""``curate.run``: train PC² on a dataset, score every pair, store results; resumable and idempotent."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pyarrow.parquet as pq
from sqlalchemy import update

from pc2.models.config import PC2Config
from pc2.service import layout
from pc2.service.core.config import Settings
from pc2.service.core.db import session_scope
from pc2.service.core.queue import send
from pc2.service.models import Dataset, Job, utcnow
from pc2.service.results_db import replace_pair_results
from pc2.service.storage import atomic_local_target
from pc2.workers import lease
from pc2.workers.celery_app import app
from pc2.workers.common import error_detail, settings, store, worker_id

log = logging.getLogger("pc2.workers.curate")


class ProgressWriter:
    """Engine progress -> the job row, at most one write per interval (plus phase changes)."""

    def __init__(self, url: str, job_id: str, me: str, interval_s: float):
        self.url, self.job_id, self.me, self.interval = url, job_id, me, interval_s
        self.last = 0.0
        self.phase: str | None = None
        self.lost = False

    def __call__(self, p: Any) -> None:
        now = time.monotonic()
        if p.phase == self.phase and now - self.last < self.interval:
            return
        self.last, self.phase = now, p.phase
        live = {"losses": {k: round(float(v), 5) for k, v in (p.losses or {}).items()}, "split": dict(p.split or {})}
        self.lost = not lease.touch(self.url, self.job_id, self.me, phase=p.phase, epoch=int(p.epoch),
                                    epochs=int(p.epochs), progress=float(min(max(p.fraction, 0.0), 1.0)),
                                    eta_s=None if p.eta_s is None else float(p.eta_s), metrics=live)


class StopCheck:
    """``should_stop`` for the engine: polls the job row (throttled) for a cancel or a lost claim."""

    def __init__(self, url: str, job_id: str, me: str, heartbeat: lease.Heartbeat, interval_s: float = 0.5):
        self.url, self.job_id, self.me, self.hb, self.interval = url, job_id, me, heartbeat, interval_s
        self.last = 0.0
        self.cancelled = False
        self.lost = False

    def __call__(self) -> bool:
        if self.hb.lost.is_set():
            self.lost = True
            return True
        now = time.monotonic()
        if now - self.last < self.interval:
            return False
        self.last = now
        mine, cancel = lease.owned(self.url, self.job_id, self.me)
        self.lost, self.cancelled = not mine, cancel
        return self.lost or self.cancelled


@app.task(name="curate.run", bind=True, acks_late=True)
def curate_run(self, job_id: str) -> str:  # type: ignore[no-untyped-def]
    """Run job ``job_id`` to the end (or to a cancel), resuming from its checkpoint if one exists."""
    return run_job(settings(), job_id)


def run_job(s: Settings, job_id: str) -> str:
    from pc2.models import ingest
    from pc2.models.engine import Cancelled, curate

    me = worker_id()
    if not lease.claim(s.database_url, job_id, me, s.JOB_LEASE_S):
        return _finish_cancel_if_requested(s, job_id)
    with session_scope(s.database_url) as session:
        job = session.get(Job, job_id)
        ds = session.get(Dataset, job.dataset_id)
        session.expunge_all()
    hb_interval = max(0.2, min(s.JOB_LEASE_S / 4, 15.0))
    with lease.Heartbeat(s.database_url, job_id, me, hb_interval) as hb:
        stop = StopCheck(s.database_url, job_id, me, hb)
        try:
            config = PC2Config.from_dict(job.config)
            loaded = ingest.load_prepared(layout.prepared_dir(s, store(s), ds.id))
            corpus = getattr(loaded, "corpus", loaded)
            workdir = layout.job_workdir(s, job_id)
            result = curate(corpus, config, workdir=workdir,
                            progress=ProgressWriter(s.database_url, job_id, me, s.PROGRESS_INTERVAL_S),
                            should_stop=stop)
            dup_of = _duplicates_and_indexes(s, workdir, corpus, result)
            _store_results(s, job_id, me, ds, corpus, result, dup_of)
        except Cancelled:
            if stop.cancelled and not stop.lost:
                _set_terminal(s, job_id, me, status="cancelled")
                _notify(s, job_id)
            return "cancelled" if stop.cancelled else "lost"
        except Exception as exc:  # noqa: BLE001 - recorded on the job row, reported by webhook
            log.exception("job %s failed", job_id)
            if _set_terminal(s, job_id, me, status="failed", error=error_detail(exc)):
                _notify(s, job_id)
            return "failed"
    _notify(s, job_id)
    return "succeeded"


def _duplicates_and_indexes(s: Settings, workdir: Any, corpus: Any, result: Any) -> Any:
    """Near-duplicate groups (counted in the metrics) and the search indexes, before the job succeeds
    so that a succeeded job is always searchable."""
    from pc2.models.search import DEFAULT_DUPLICATE_THRESHOLD, build_job_indexes, duplicate_groups

    dup_of = duplicate_groups(corpus, float(getattr(s, "DEDUP_THRESHOLD", DEFAULT_DUPLICATE_THRESHOLD)))
    result.metrics["n_duplicates"] = int((dup_of >= 0).sum())
    build_job_indexes(workdir, noisy=result.noisy)
    return dup_of


def _store_results(s: Settings, job_id: str, me: str, ds: Dataset, corpus: Any, result: Any,
                   dup_of: Any = None) -> None:
    """Annotated Parquet to the store, then rows + success in one transaction (or none of it)."""
    from pc2.models.results import annotate

    manifest = pq.read_table(layout.prepared_dir(s, store(s), ds.id) / "manifest.parquet")
    table = annotate(manifest, corpus, result, duplicate_of=dup_of)
    tmp = atomic_local_target(layout.job_workdir(s, job_id) / "annotated.parquet")
    pq.write_table(table, tmp, compression="zstd")
    store(s).move_in(tmp, layout.annotated_key(job_id))
    metrics = json.loads(json.dumps(dict(result.metrics), default=_plain))
    with session_scope(s.database_url) as session:
        replace_pair_results(session, job_id, table)
        done = session.execute(
            update(Job).where(Job.id == job_id, Job.worker == me, Job.status == "running")
            .values(status="succeeded", phase="done", progress=1.0, eta_s=0.0, metrics=metrics,
                    finished_at=utcnow(), heartbeat_at=utcnow())
        )
        if done.rowcount != 1:
            raise _LostClaim(job_id)


def _plain(obj: Any) -> Any:
    """numpy scalars/arrays inside engine metrics -> JSON values."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


class _LostClaim(Exception):
    def __init__(self, job_id: str):
        super().__init__(f"job {job_id} was taken over by another worker; results not written")


def _set_terminal(s: Settings, job_id: str, me: str, *, status: str, error: dict | None = None) -> bool:
    with session_scope(s.database_url) as session:
        res = session.execute(
            update(Job).where(Job.id == job_id, Job.worker == me, Job.status == "running")
            .values(status=status, error=error, finished_at=utcnow(), eta_s=None)
        )
        return res.rowcount == 1


def _finish_cancel_if_requested(s: Settings, job_id: str) -> str:
    """A job cancelled while queued, or one another worker owns: nothing to run here."""
    with session_scope(s.database_url) as session:
        job = session.get(Job, job_id)
        if job is None:
            return "gone"
        if job.status == "queued" and job.cancel_requested:
            job.status, job.finished_at = "cancelled", utcnow()
            return "cancelled"
        return job.status


def _notify(s: Settings, job_id: str) -> None:
    with session_scope(s.database_url) as session:
        job = session.get(Job, job_id)
        if job is None or not job.callback_url:
            return
        job.webhook_status = "pending"
    try:
        send(s, "webhook.deliver", job_id)
    except Exception:  # noqa: BLE001 - a broker blip must not fail a finished job
        log.exception("could not enqueue webhook for job %s", job_id)
