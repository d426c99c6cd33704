"""Webhook signature and body."""

from __future__ import annotations

import hashlib
import hmac
import json

from pc2.service.models import Job, utcnow
from pc2.workers.webhook import payload, sign


def test_signature_is_hmac_sha256_of_the_exact_body():
    body = b'{"a":1}'
    want = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert sign("s3cret", body) == f"sha256={want}"
    assert sign("other", body) != sign("s3cret", body)


def test_payload_is_stable_and_describes_the_job():
    job = Job(id="j1", dataset_id="d1", status="succeeded", phase="done", epoch=2, epochs=2, progress=1.0,
              eta_s=0.0, metrics={"n_pairs": 3}, error=None, config={}, callback_url="http://x",
              cancel_requested=False, attempts=1, created_at=utcnow(), started_at=None, finished_at=utcnow())
    a, b = payload(job), payload(job)
    assert a == b  # retries send identical bytes
    doc = json.loads(a)
    assert doc["event"] == "job.succeeded" and doc["delivery_id"] == "j1:succeeded"
    assert doc["job"]["metrics"] == {"n_pairs": 3}
