"""Exports: the three modes, streaming download with Content-Length / ETag / X-Content-SHA256."""

from __future__ import annotations

import hashlib
import io

import pyarrow.parquet as pq

from pc2.service import layout
from pc2.service.core.db import session_scope
from pc2.service.models import Export
from pc2.service.storage import Storage
from pc2.workers.export import build_export

from .test_jobs import _succeeded_job, annotated

RESULT_COLUMNS = ["confidence", "label", "pseudo_class", "pseudo_caption", "pseudo_caption_source",
                  "pseudo_caption_score"]


def _job_with_annotated(api, n: int) -> str:
    job = _succeeded_job(api, n)
    store = Storage(api.settings.artifact_url)
    path = store.local_path(layout.annotated_key(job))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(annotated(n), path)
    return job


def _export(api, job: str, body: dict) -> dict:
    r = api.post(f"/v1/jobs/{job}/exports", json=body)
    assert r.status_code == 202, r.text
    exp = r.json()
    assert exp["status"] == "queued"
    # The worker's task body, called in this process on the same database and store.
    assert build_export(api.settings, exp["id"]) == "succeeded"
    assert build_export(api.settings, exp["id"]) == "succeeded"  # a re-run is a no-op
    return api.get(f"/v1/exports/{exp['id']}").json()


def test_annotated_export_downloads_with_integrity_headers(api):
    job = _job_with_annotated(api, 300)
    exp = _export(api, job, {"mode": "annotated"})
    assert exp["status"] == "succeeded" and exp["n_rows"] == 300
    r = api.get(f"/v1/exports/{exp['id']}/download")
    assert r.status_code == 200
    assert int(r.headers["content-length"]) == len(r.content) == exp["size_bytes"]
    digest = hashlib.sha256(r.content).hexdigest()
    assert r.headers["x-content-sha256"] == digest == exp["sha256"]
    assert r.headers["etag"] == f'"{digest}"'
    table = pq.read_table(io.BytesIO(r.content))
    assert table.column_names == ["pair_id", "caption", "feature_row", *RESULT_COLUMNS]
    assert table.num_rows == 300
    assert table.column("pair_id").to_pylist() == annotated(300).column("pair_id").to_pylist()
    # Conditional GET with the ETag: nothing to send again.
    r2 = api.client.get(f"/v1/exports/{exp['id']}/download",
                        headers={**api.headers(), "If-None-Match": r.headers["etag"]})
    assert r2.status_code == 304 and r2.content == b""


def test_filtered_and_recaptioned_modes(api):
    job = _job_with_annotated(api, 120)
    src = annotated(120).to_pylist()

    filtered = _export(api, job, {"mode": "filtered"})
    assert filtered["n_rows"] == sum(r["label"] == "clean" for r in src)

    thresh = _export(api, job, {"mode": "filtered", "min_confidence": 0.6})
    assert thresh["n_rows"] == sum(r["confidence"] >= 0.6 for r in src)

    rec = _export(api, job, {"mode": "recaptioned", "min_pseudo_caption_score": 0.55})
    body = api.get(f"/v1/exports/{rec['id']}/download").content
    table = pq.read_table(io.BytesIO(body))
    keep = [r for r in src if r["label"] == "clean" or (r["pseudo_caption_score"] or 0) >= 0.55 - 1e-6]
    assert table.num_rows == rec["n_rows"] == len(keep)
    assert table.column_names[-1] == "final_caption"
    for row in table.to_pylist():
        want = row["caption"] if row["label"] == "clean" else row["pseudo_caption"]
        assert row["final_caption"] == want


def test_export_rules(api):
    job = _job_with_annotated(api, 10)
    assert api.post(f"/v1/jobs/{job}/exports", json={"mode": "everything"}).status_code == 422
    assert api.post(f"/v1/jobs/{job}/exports", json={"mode": "filtered", "min_confidence": 2}).status_code == 422
    r = api.post(f"/v1/jobs/{job}/exports", json={"mode": "annotated"})
    exp = r.json()["id"]
    assert api.get(f"/v1/exports/{exp}/download").status_code == 409  # not built yet
    other = api.new_key("team-b")
    assert api.get(f"/v1/exports/{exp}", key=other).status_code == 404
    assert api.post(f"/v1/jobs/{job}/exports", key=other, json={"mode": "annotated"}).status_code == 404
    with session_scope(api.settings.database_url) as s:
        assert s.get(Export, exp).status == "queued"
