"""``webhook.deliver``: POST a job's final state to its ``callback_url``, signed, with backoff."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random

import httpx

from pc2.service.core.db import session_scope
from pc2.service.models import Job
from pc2.service.schemas import JobPublic
from pc2.workers.celery_app import app
from pc2.workers.common import settings

log = logging.getLogger("pc2.workers.webhook")


def sign(secret: str, body: bytes) -> str:
    """Value of ``X-PC2-Signature``: ``sha256=`` + hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def payload(job: Job) -> bytes:
    # Same bytes on every attempt, so a receiver can deduplicate on delivery_id.
    doc = {"event": f"job.{job.status}", "delivery_id": f"{job.id}:{job.status}",
           "job": JobPublic.model_validate(job).model_dump(mode="json")}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


class DeliveryFailed(Exception):
    """The receiver did not answer 2xx (or could not be reached)."""


@app.task(name="webhook.deliver", bind=True, acks_late=True)
def webhook_deliver(self, job_id: str) -> str:  # type: ignore[no-untyped-def]
    """Deliver one job's result notification; retried with exponential backoff and jitter."""
    s = settings()
    with session_scope(s.database_url) as session:
        job = session.get(Job, job_id)
        if job is None or not job.callback_url:
            return "gone"
        if job.webhook_status == "delivered":
            return "delivered"  # a redelivered message must not notify twice
        body, url = payload(job), job.callback_url
        job.webhook_attempts += 1
    try:
        resp = httpx.post(url, content=body, timeout=s.WEBHOOK_TIMEOUT_S, follow_redirects=False,
                          headers={"Content-Type": "application/json", "X-PC2-Signature": sign(s.WEBHOOK_SECRET, body),
                                   "User-Agent": "pc2-curate-webhook/1"})
        if not 200 <= resp.status_code < 300:
            raise DeliveryFailed(f"{url} answered {resp.status_code}")
    except (httpx.HTTPError, DeliveryFailed) as exc:
        if self.request.retries >= s.WEBHOOK_MAX_RETRIES:
            _mark(s.database_url, job_id, "failed")
            log.warning("webhook for job %s gave up after %d attempts: %s", job_id, self.request.retries + 1, exc)
            return "failed"
        delay = s.WEBHOOK_BACKOFF_S * (2 ** self.request.retries)
        raise self.retry(exc=exc, countdown=delay * random.uniform(1.0, 1.25), max_retries=s.WEBHOOK_MAX_RETRIES)
    _mark(s.database_url, job_id, "delivered")
    return "delivered"


def _mark(url: str, job_id: str, status: str) -> None:
    with session_scope(url) as session:
        job = session.get(Job, job_id)
        if job is not None:
            job.webhook_status = status
