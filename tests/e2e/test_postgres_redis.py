"""The production shape on this machine: Postgres + Redis + real Celery worker processes."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest
from sqlalchemy import func, select

from pc2.service.core.db import session_scope
from pc2.service.models import PairResult

from .helpers import WebhookReceiver, check_export, decode

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dataset(pg_stack, small_corpus):
    return pg_stack.ready_dataset(small_corpus)


def test_upload_train_export_download(pg_stack, synth_corpus, quality_config):
    hook = WebhookReceiver(fail_first=1)
    try:
        dataset = pg_stack.ready_dataset(synth_corpus)
        r = pg_stack.post("/v1/jobs", json={"dataset_id": dataset, "config": quality_config,
                                            "callback_url": hook.url})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        seen = []
        deadline = time.monotonic() + 300
        while (job := pg_stack.get(f"/v1/jobs/{job_id}").json())["status"] not in ("succeeded", "failed"):
            seen.append((job["status"], job["phase"], job["progress"]))
            assert time.monotonic() < deadline, pg_stack.worker_logs()
            time.sleep(0.2)
        assert job["status"] == "succeeded", job["error"]
        assert job["progress"] == 1.0 and job["phase"] == "done" and job["epoch"] == quality_config["epochs"]
        assert job["metrics"]["n_pairs"] == 2000
        running = [p for s, ph, p in seen if s == "running"]
        assert running and running == sorted(running)  # progress only moves forward
        assert any(ph in ("warmup", "train") for _, ph, _ in seen)

        page = pg_stack.get(f"/v1/jobs/{job_id}/pairs", params={"limit": 50}).json()
        assert [p["idx"] for p in page["data"]] == list(range(50)) and page["next_after"] == 49
        noisy = pg_stack.get(f"/v1/jobs/{job_id}/pairs", params={"label": "noisy", "limit": 5000}).json()["data"]
        assert len(noisy) == job["metrics"]["n_noisy"]

        tables, aucs = {}, {}
        for mode in ("annotated", "recaptioned"):
            exp = pg_stack.post(f"/v1/jobs/{job_id}/exports", json={"mode": mode}).json()
            exp = pg_stack.wait(f"/v1/exports/{exp['id']}", ("succeeded", "failed"))
            assert exp["status"] == "succeeded", exp["error"]
            dl = pg_stack.get(f"/v1/exports/{exp['id']}/download")
            assert dl.status_code == 200
            assert int(dl.headers["content-length"]) == len(dl.content)
            assert dl.headers["x-content-sha256"] == hashlib.sha256(dl.content).hexdigest()
            tables[mode], aucs[mode] = check_export(dl.content, synth_corpus, mode=mode)
        assert tables["recaptioned"].num_rows <= 2000

        # Webhook: first attempt answered 500, the retry is accepted; both carry a valid signature.
        deadline = time.monotonic() + 30
        while len(hook.calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(hook.calls) == 2
        secret = pg_stack.settings.WEBHOOK_SECRET.encode()
        for call in hook.calls:
            want = "sha256=" + hmac.new(secret, call["body"], hashlib.sha256).hexdigest()
            assert call["signature"] == want
        assert decode(hook.calls[0]) == decode(hook.calls[1])
        assert decode(hook.calls[0])["event"] == "job.succeeded"
        assert decode(hook.calls[0])["job"]["id"] == job_id
        assert _eventually(lambda: _webhook_status(pg_stack, job_id) == "delivered")

        # Re-running finished tasks (a redelivered message) changes nothing and duplicates nothing.
        from pc2.workers.curate import run_job
        from pc2.workers.ingest import prepare_dataset

        assert prepare_dataset(pg_stack.settings, dataset) == "ready"
        assert run_job(pg_stack.settings, job_id) == "succeeded"
        again = pg_stack.get(f"/v1/jobs/{job_id}").json()
        assert again["attempts"] == job["attempts"] and again["finished_at"] == job["finished_at"]
        with session_scope(pg_stack.settings.database_url) as s:
            n = s.scalar(select(func.count()).select_from(PairResult).where(PairResult.job_id == job_id))
        assert n == 2000
        assert aucs["annotated"] >= 0.8, f"detection ROC-AUC {aucs['annotated']:.3f} below 0.8"
    finally:
        hook.close()


def test_cancel_stops_a_running_job(pg_stack, dataset, tiny_config):
    config = {**tiny_config, "epochs": 40}
    job_id = pg_stack.post("/v1/jobs", json={"dataset_id": dataset, "config": config}).json()["id"]
    deadline = time.monotonic() + 120
    while not ((job := pg_stack.get(f"/v1/jobs/{job_id}").json())["status"] == "running" and job["progress"] > 0):
        assert time.monotonic() < deadline and job["status"] in ("queued", "running"), job
        time.sleep(0.1)
    r = pg_stack.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["cancel_requested"] is True
    job = pg_stack.wait(f"/v1/jobs/{job_id}", ("cancelled", "succeeded", "failed"), timeout=60)
    assert job["status"] == "cancelled"
    assert job["epoch"] < 40
    with session_scope(pg_stack.settings.database_url) as s:
        assert s.scalar(select(func.count()).select_from(PairResult).where(PairResult.job_id == job_id)) == 0


def test_sigkilled_worker_job_is_finished_by_another_from_checkpoint(pg_stack, dataset, tiny_config):
    config = {**tiny_config, "epochs": 4}
    job_id = pg_stack.post("/v1/jobs", json={"dataset_id": dataset, "config": config}).json()["id"]
    deadline = time.monotonic() + 180
    # Wait until at least one epoch is checkpointed and the next one is under way.
    while not ((job := pg_stack.get(f"/v1/jobs/{job_id}").json())["epoch"] or 0) >= 1:
        assert time.monotonic() < deadline and job["status"] in ("queued", "running"), job
        time.sleep(0.1)
    victim = next(p for p in pg_stack.workers if p.poll() is None)
    pg_stack.kill_worker(victim)
    assert pg_stack.get(f"/v1/jobs/{job_id}").json()["status"] == "running"  # nobody said otherwise

    pg_stack.start_worker()
    job = pg_stack.wait(f"/v1/jobs/{job_id}", ("succeeded", "failed", "cancelled"), timeout=240)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] >= 2
    assert job["metrics"]["resumed"] is True
    assert job["metrics"]["epochs"] == 4
    with session_scope(pg_stack.settings.database_url) as s:
        n, distinct = s.execute(select(func.count(), func.count(func.distinct(PairResult.idx)))
                                .where(PairResult.job_id == job_id)).one()
    assert n == distinct == 600


def _webhook_status(stack, job_id: str) -> str | None:
    from pc2.service.models import Job

    with session_scope(stack.settings.database_url) as s:
        return s.get(Job, job_id).webhook_status


def _eventually(check, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
