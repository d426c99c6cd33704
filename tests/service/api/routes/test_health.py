"""/healthz, /readyz (database + broker), /metrics."""

from __future__ import annotations

from fastapi.testclient import TestClient

from pc2.service.main import create_app


def test_ready_when_database_and_broker_answer(api):
    r = api.client.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready", "database": "ok", "broker": "ok"}


def test_not_ready_when_broker_is_down(api):
    settings = api.settings.model_copy(update={"BROKER_URL": "redis://127.0.0.1:1/0"})
    r = TestClient(create_app(settings)).get("/readyz")
    assert r.status_code == 503
    assert r.json()["database"] == "ok" and r.json()["broker"].startswith("error")


def test_metrics_expose_jobs_tasks_and_latency(api):
    api.get("/v1/jobs")
    text = api.client.get("/metrics").text
    assert 'pc2_jobs{status="queued"} 0.0' in text
    assert "pc2_task_duration_seconds_count" in text
    assert 'pc2_http_request_duration_seconds_count{method="GET",route="/v1/jobs",status="200"} 1.0' in text
