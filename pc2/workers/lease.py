"""Job ownership: a worker claims a job row, keeps a heartbeat on it, and writes only while it owns it.

A claim is one conditional UPDATE, so two workers that receive the same job (a redelivered message,
a watchdog re-enqueue) cannot both run it. A claim is free to take when the job is queued, when its
owner's heartbeat is older than the lease, or when its owner was a process on this host that is gone.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

from sqlalchemy import and_, func, or_, select, update

from pc2.service.core.db import session_scope
from pc2.service.models import Job, utcnow
from pc2.workers.common import owner_is_dead


def claim(url: str, job_id: str, me: str, lease_s: float) -> bool:
    now = utcnow()
    stale = now - timedelta(seconds=lease_s)
    with session_scope(url) as session:
        row = session.execute(select(Job.status, Job.worker, Job.cancel_requested).where(Job.id == job_id)).first()
        if row is None or row.cancel_requested or row.status not in ("queued", "running"):
            return False
        takeable = or_(Job.status == "queued", Job.heartbeat_at.is_(None), Job.heartbeat_at < stale)
        if row.status == "running" and owner_is_dead(row.worker):
            takeable = or_(takeable, Job.worker == row.worker)
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.cancel_requested.is_(False), Job.status.in_(("queued", "running")), takeable)
            .values(status="running", worker=me, heartbeat_at=now, attempts=Job.attempts + 1,
                    started_at=func.coalesce(Job.started_at, now), error=None)
        )
        return result.rowcount == 1


def owned(url: str, job_id: str, me: str) -> tuple[bool, bool]:
    """(still mine, cancel requested)."""
    with session_scope(url) as session:
        row = session.execute(select(Job.worker, Job.status, Job.cancel_requested).where(Job.id == job_id)).first()
    if row is None:
        return False, True
    return row.worker == me and row.status == "running", bool(row.cancel_requested)


def touch(url: str, job_id: str, me: str, **values: object) -> bool:
    """Heartbeat (plus any progress ``values``) if this worker still owns the job."""
    with session_scope(url) as session:
        result = session.execute(
            update(Job).where(and_(Job.id == job_id, Job.worker == me, Job.status == "running"))
            .values(heartbeat_at=utcnow(), **values)
        )
        return result.rowcount == 1


class Heartbeat:
    """Refreshes the job's heartbeat from a thread, so a long engine phase without progress
    callbacks never looks dead. ``lost`` is set when another worker has taken the job."""

    def __init__(self, url: str, job_id: str, me: str, interval_s: float):
        self.url, self.job_id, self.me, self.interval = url, job_id, me, interval_s
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id[:8]}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not touch(self.url, self.job_id, self.me):
                    self.lost.set()
                    return
            except Exception:  # noqa: BLE001 - a DB blip must not kill the job; the next beat retries
                continue


def stale_before(lease_s: float) -> datetime:
    return datetime.now(timezone.utc) - timedelta(seconds=lease_s)
