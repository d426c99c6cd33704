"""Search API: a real small job searched by text, pair and vector; team isolation; request validation."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq

from pc2.service import layout
from pc2.service.storage import Storage
from pc2.workers.curate import run_job
from pc2.workers.export import build_export
from pc2.workers.ingest import prepare_dataset

from .test_jobs import _ready_dataset, _succeeded_job


def _real_job(api, corpus, config) -> str:
    """Register, ingest and train through the worker task bodies, in this process, on the app's DB and store."""
    # Registered by path (the fixture's upload limit is tiny): files inside the server's allowed root.
    shared = Path(api.settings.ALLOWED_ROOTS[0])
    shared.mkdir(parents=True, exist_ok=True)
    for src in (corpus.manifest_path, corpus.features_path):
        shutil.copy(src, shared / src.name)
    r = api.post("/v1/datasets", json={"name": "synthetic", "manifest_uri": str(shared / "manifest.parquet"),
                                       "features_uris": [str(shared / "features.npy")]})
    assert r.status_code == 202, r.text
    ds = r.json()["id"]
    assert prepare_dataset(api.settings, ds) == "ready"
    r = api.post("/v1/jobs", json={"dataset_id": ds, "config": config})
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    assert run_job(api.settings, job) == "succeeded"
    return job


def test_search_a_finished_job(api, small_corpus, tiny_config):
    job = _real_job(api, small_corpus, tiny_config)
    manifest = pq.read_table(small_corpus.manifest_path)
    pair_ids, captions = manifest["pair_id"].to_pylist(), manifest["caption"].to_pylist()

    r = api.post(f"/v1/jobs/{job}/search", json={"text": captions[1], "direction": "text2image", "k": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(body["data"]) == 7
    scores = [h["score"] for h in body["data"]]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 + 1e-5 for s in scores)
    by_id = dict(zip(pair_ids, captions))
    assert all(by_id[h["pair_id"]] == h["caption"] for h in body["data"])

    # Labels in hits agree with the per-pair results; the filter keeps only the asked label.
    pairs = api.get(f"/v1/jobs/{job}/pairs", params={"limit": 5000}).json()["data"]
    label_of = {p["pair_id"]: p["label"] for p in pairs}
    r = api.post(f"/v1/jobs/{job}/search", json={"pair_id": pair_ids[0], "direction": "image2text", "k": 20,
                                                 "label": "noisy"})
    assert r.status_code == 200, r.text
    hits = r.json()["data"]
    assert len(hits) == min(20, sum(v == "noisy" for v in label_of.values()))
    assert all(h["label"] == "noisy" == label_of[h["pair_id"]] for h in hits)

    # image2image from a pair leaves the pair itself out.
    r = api.post(f"/v1/jobs/{job}/search", json={"pair_id": pair_ids[5], "direction": "image2image", "k": 5})
    assert r.status_code == 200 and pair_ids[5] not in [h["pair_id"] for h in r.json()["data"]]

    # Query content the schema accepts but the job cannot use: 422 naming the field.
    r = api.post(f"/v1/jobs/{job}/search", json={"pair_id": "no-such-pair"})
    assert r.status_code == 422 and r.json()["detail"]["field"] == "pair_id"
    r = api.post(f"/v1/jobs/{job}/search", json={"vector": [0.5, 0.5]})
    assert r.status_code == 422 and r.json()["detail"]["field"] == "vector"
    assert str(tiny_config["embed_dim"]) in r.json()["detail"]["message"]

    # Another team sees nothing.
    other = api.new_key("team-b")
    assert api.post(f"/v1/jobs/{job}/search", key=other, json={"text": "x"}).status_code == 404

    # The job reports its duplicate count, and exports carry duplicate_of.
    metrics = api.get(f"/v1/jobs/{job}").json()["metrics"]
    assert metrics["n_duplicates"] == 0  # every synthetic image is its own feature row and distinct
    exp = api.post(f"/v1/jobs/{job}/exports", json={"mode": "filtered"}).json()["id"]
    assert build_export(api.settings, exp) == "succeeded"
    path = Storage(api.settings.artifact_url).local_path(layout.export_key(exp))
    table = pq.read_table(path)
    assert "duplicate_of" in table.column_names and table["duplicate_of"].null_count == table.num_rows


def test_search_needs_a_succeeded_job_of_your_team(api):
    ds = _ready_dataset(api)
    queued = api.post("/v1/jobs", json={"dataset_id": ds, "config": {}}).json()["id"]
    assert api.post(f"/v1/jobs/{queued}/search", json={"text": "a dog"}).status_code == 409
    assert api.post("/v1/jobs/no-such-job/search", json={"text": "a dog"}).status_code == 404
    done = _succeeded_job(api, 5)
    other = api.new_key("team-b")
    assert api.post(f"/v1/jobs/{done}/search", key=other, json={"text": "a dog"}).status_code == 404
    assert api.client.post(f"/v1/jobs/{done}/search", json={"text": "a dog"}).status_code == 401
    # A succeeded job whose indexes are missing is a conflict, not a server error.
    assert api.post(f"/v1/jobs/{done}/search", json={"text": "a dog"}).status_code == 409


def test_malformed_queries_are_422(api):
    job = _succeeded_job(api, 5)
    for body in (
        {},  # no query
        {"text": "a", "pair_id": "p00001"},  # two kinds
        {"text": ""},
        {"text": "a", "k": 0},
        {"text": "a", "k": 1001},
        {"text": "a", "direction": "sideways"},
        {"text": "a", "label": "dirty"},
        {"vector": []},
        {"vector": ["x"]},
        {"text": "a", "colour": "red"},  # unknown field
    ):
        r = api.post(f"/v1/jobs/{job}/search", json=body)
        assert r.status_code == 422, (body, r.text)
