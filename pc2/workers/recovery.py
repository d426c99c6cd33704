"""Watchdog in each worker's main process: re-queues running jobs whose owner stopped beating.

With Redis an unacked message only comes back after the visibility timeout (hours, so long
training tasks are not redelivered while they run), and the file-system broker never redelivers.
A job whose heartbeat is older than ``PC2_JOB_LEASE_S`` is therefore put back to ``queued`` (one
conditional UPDATE, so only one watchdog wins) and sent again; the next worker resumes it from
its checkpoint.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import select, update

from pc2.service.core.config import Settings
from pc2.service.core.db import session_scope
from pc2.service.core.queue import send
from pc2.service.models import Job
from pc2.workers.lease import stale_before

log = logging.getLogger("pc2.workers.recovery")


def requeue_stale_jobs(settings: Settings) -> list[str]:
    """Put back every running job whose heartbeat is older than the lease; returns their ids."""
    cutoff = stale_before(settings.JOB_LEASE_S)
    requeued: list[str] = []
    with session_scope(settings.database_url) as session:
        ids = session.scalars(select(Job.id).where(Job.status == "running", Job.heartbeat_at < cutoff)).all()
    for job_id in ids:
        with session_scope(settings.database_url) as session:
            res = session.execute(
                update(Job).where(Job.id == job_id, Job.status == "running", Job.heartbeat_at < cutoff)
                .values(status="queued", phase="requeued", worker=None)
            )
            won = res.rowcount == 1
        if won:
            send(settings, "curate.run", job_id)
            requeued.append(job_id)
            log.warning("job %s lost its worker; re-queued to resume from its checkpoint", job_id)
    return requeued


class Watchdog:
    _instance: "Watchdog | None" = None

    def __init__(self, settings: Settings):
        self.settings = settings
        self.interval = max(0.5, min(settings.JOB_LEASE_S / 2, 30.0))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pc2-watchdog", daemon=True)

    @classmethod
    def start(cls, settings: Settings) -> None:
        if cls._instance is None:
            cls._instance = cls(settings)
            cls._instance._thread.start()

    @classmethod
    def stop(cls) -> None:
        if cls._instance is not None:
            cls._instance._stop.set()
            cls._instance = None

    def _run(self) -> None:
        while True:
            try:
                requeue_stale_jobs(self.settings)
            except Exception:  # noqa: BLE001 - keep watching; the DB may be back next round
                log.exception("stale-job scan failed")
            if self._stop.wait(self.interval):
                return
