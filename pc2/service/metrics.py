"""Prometheus metrics: request latency (in process) and job/task figures read from the database.

Job state lives in the database, shared by every API replica and worker, so counts and task
durations are computed from it at scrape time instead of being kept in one process's memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import func, select

from pc2.service.core.db import session_factory
from pc2.service.models import Dataset, Export, Job

TASK_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
RECENT_TASKS = 10_000  # durations come from the newest finished rows of each kind


class DatabaseCollector:
    def __init__(self, database_url: str):
        self.url = database_url

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("pc2_database_up", "1 when the job tables could be read")
        try:
            metrics = list(self._from_database())
        except Exception:  # noqa: BLE001 - a scrape must still answer while the DB is away
            metrics = []
        up.add_metric([], 1.0 if metrics else 0.0)
        yield up
        yield from metrics

    def _from_database(self) -> Iterable[Metric]:
        session = session_factory(self.url)()
        try:
            jobs = GaugeMetricFamily("pc2_jobs", "Jobs by status", labels=["status"])
            counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            for status in ("queued", "running", "succeeded", "failed", "cancelled"):
                jobs.add_metric([status], counts.get(status, 0))
            yield jobs
            hist = HistogramMetricFamily("pc2_task_duration_seconds", "Duration of finished tasks", labels=["task"])
            for task, table in (("ingest.run", Dataset), ("curate.run", Job), ("export.run", Export)):
                rows = session.execute(
                    select(table.started_at, table.finished_at)
                    .where(table.started_at.is_not(None), table.finished_at.is_not(None))
                    .order_by(table.finished_at.desc()).limit(RECENT_TASKS)
                ).all()
                durations = [max(0.0, (f - s).total_seconds()) for s, f in rows]
                buckets = [(str(b), sum(d <= b for d in durations)) for b in TASK_BUCKETS]
                buckets.append(("+Inf", len(durations)))
                hist.add_metric([task], buckets, sum(durations))
            yield hist
        finally:
            session.close()


class ServiceMetrics:
    """One registry per app, so several apps in one process (tests) do not collide."""

    def __init__(self, database_url: str):
        self.registry = CollectorRegistry()
        self.latency = Histogram("pc2_http_request_duration_seconds", "HTTP request latency",
                                 ["method", "route", "status"], registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
        self.registry.register(DatabaseCollector(database_url))

    def observe(self, method: str, route: str, status: int, started: float) -> None:
        self.latency.labels(method, route, str(status)).observe(time.perf_counter() - started)
