"""Job claims: one owner at a time; stale or dead owners can be replaced; the watchdog re-queues."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import select

from pc2.service.core.db import session_scope
from pc2.service.models import Dataset, Job, Team, utcnow
from pc2.workers import lease
from pc2.workers.common import worker_id
from pc2.workers.recovery import requeue_stale_jobs


@pytest.fixture
def job(api) -> str:
    url = api.settings.database_url
    with session_scope(url) as s:
        team = s.scalar(select(Team).where(Team.name == "team-a"))
        ds = Dataset(team_id=team.id, name="d", status="ready", source="upload", manifest_uri="m",
                     feature_uris=[], artifact_prefix="p")
        s.add(ds)
        s.flush()
        j = Job(team_id=team.id, dataset_id=ds.id, config={})
        s.add(j)
        s.flush()
        return j.id


def _job(api, job_id) -> Job:
    with session_scope(api.settings.database_url) as s:
        j = s.get(Job, job_id)
        s.expunge(j)
        return j


def test_only_one_claim_wins(api, job):
    url = api.settings.database_url
    assert lease.claim(url, job, "host-a:1", lease_s=60)
    assert not lease.claim(url, job, "host-b:2", lease_s=60)
    j = _job(api, job)
    assert j.status == "running" and j.worker == "host-a:1" and j.attempts == 1
    assert lease.touch(url, job, "host-a:1")
    assert not lease.touch(url, job, "host-b:2")  # a non-owner cannot write


def test_stale_heartbeat_can_be_taken_over(api, job):
    url = api.settings.database_url
    assert lease.claim(url, job, "host-a:1", lease_s=60)
    with session_scope(url) as s:
        s.get(Job, job).heartbeat_at = utcnow() - timedelta(seconds=120)
    assert lease.claim(url, job, "host-b:2", lease_s=60)
    assert _job(api, job).worker == "host-b:2" and _job(api, job).attempts == 2
    assert lease.owned(url, job, "host-a:1") == (False, False)


def test_dead_local_owner_is_replaced_at_once(api, job):
    url = api.settings.database_url
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    host = worker_id().rsplit(":", 1)[0]
    assert lease.claim(url, job, f"{host}:{proc.pid}", lease_s=3600)
    assert lease.claim(url, job, worker_id(), lease_s=3600)  # heartbeat fresh, but its pid is gone


def test_cancelled_or_finished_jobs_are_not_claimed(api, job):
    url = api.settings.database_url
    with session_scope(url) as s:
        s.get(Job, job).cancel_requested = True
    assert not lease.claim(url, job, "host-a:1", lease_s=60)
    with session_scope(url) as s:
        j = s.get(Job, job)
        j.cancel_requested, j.status = False, "succeeded"
    assert not lease.claim(url, job, "host-a:1", lease_s=60)


def test_watchdog_requeues_only_stale_running_jobs(api, job):
    url = api.settings.database_url
    assert lease.claim(url, job, "host-a:1", lease_s=60)
    assert requeue_stale_jobs(api.settings.model_copy(update={"JOB_LEASE_S": 60.0})) == []
    with session_scope(url) as s:
        s.get(Job, job).heartbeat_at = utcnow() - timedelta(seconds=120)
    assert requeue_stale_jobs(api.settings.model_copy(update={"JOB_LEASE_S": 60.0})) == [job]
    j = _job(api, job)
    assert j.status == "queued" and j.worker is None
    assert requeue_stale_jobs(api.settings.model_copy(update={"JOB_LEASE_S": 60.0})) == []  # once
    queued = list((api.settings.broker_dir / "queue").glob("*.gpu.msg"))
    assert len(queued) == 1
