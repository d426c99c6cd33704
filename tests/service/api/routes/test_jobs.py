"""Jobs: config validation, state rules, cancel, and keyset pages over per-pair results."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pc2.service.core.db import session_scope
from pc2.service.models import Dataset, Job, Team
from pc2.service.results_db import replace_pair_results
from sqlalchemy import select


def _team_id(api, name="team-a") -> str:
    with session_scope(api.settings.database_url) as s:
        return s.scalar(select(Team.id).where(Team.name == name))


def _ready_dataset(api) -> str:
    with session_scope(api.settings.database_url) as s:
        ds = Dataset(team_id=_team_id(api), name="d", status="ready", source="upload", manifest_uri="m",
                     feature_uris=[], artifact_prefix="datasets/x", n_pairs=5)
        s.add(ds)
        s.flush()
        return ds.id


def annotated(n: int) -> pa.Table:
    """A table shaped like results.annotate output: manifest columns + result columns."""
    noisy = [i % 3 == 0 for i in range(n)]
    return pa.table({
        "pair_id": [f"p{i:05d}" for i in range(n)],
        "caption": ["" if i == 3 else f"caption {i}" for i in range(n)],
        "feature_row": list(range(n)),
        "confidence": pa.array([(i % 10) / 10 + 0.05 for i in range(n)], pa.float32()),
        "label": ["noisy" if x else "clean" for x in noisy],
        "pseudo_class": pa.array([i % 4 for i in range(n)], pa.int64()),
        "pseudo_caption": [f"caption {i + 1}" if x else None for i, x in enumerate(noisy)],
        "pseudo_caption_source": [f"p{i + 1:05d}" if x else None for i, x in enumerate(noisy)],
        "pseudo_caption_score": pa.array([0.3 + 0.1 * (i % 7) if x else None for i, x in enumerate(noisy)], pa.float32()),
    })


def _succeeded_job(api, n: int) -> str:
    ds = _ready_dataset(api)
    with session_scope(api.settings.database_url) as s:
        job = Job(team_id=_team_id(api), dataset_id=ds, status="succeeded", config={})
        s.add(job)
        s.flush()
        replace_pair_results(s, job.id, annotated(n))
        return job.id


def test_unknown_config_key_is_422(api):
    ds = _ready_dataset(api)
    r = api.post("/v1/jobs", json={"dataset_id": ds, "config": {"epochs": 2, "learning_rate": 0.1}})
    assert r.status_code == 422
    assert r.json()["detail"]["key"] == "learning_rate"
    r = api.post("/v1/jobs", json={"dataset_id": ds, "config": {"epochs": "many"}})
    assert r.status_code == 422 and r.json()["detail"]["key"] == "epochs"
    r = api.post("/v1/jobs", json={"dataset_id": ds, "config": {"warmup_epochs": 9, "epochs": 2}})
    assert r.status_code == 422
    assert api.get("/v1/jobs").json()["count"] == 0


def test_job_needs_a_ready_dataset(api):
    ds = _ready_dataset(api)
    with session_scope(api.settings.database_url) as s:
        s.get(Dataset, ds).status = "validating"
    r = api.post("/v1/jobs", json={"dataset_id": ds, "config": {}})
    assert r.status_code == 409
    assert api.post("/v1/jobs", json={"dataset_id": "nope", "config": {}}).status_code == 404


def test_create_then_cancel_a_queued_job(api):
    ds = _ready_dataset(api)
    r = api.post("/v1/jobs", json={"dataset_id": ds, "config": {"epochs": 3, "warmup_epochs": 1},
                                   "callback_url": "http://127.0.0.1:9/hook"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["epochs"] == 3 and job["progress"] == 0
    r = api.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert api.post(f"/v1/jobs/{job['id']}/cancel").status_code == 409  # already final
    assert api.get("/v1/jobs", params={"status": "cancelled"}).json()["count"] == 1


def test_pairs_keyset_pagination_visits_every_pair_once(api):
    job = _succeeded_job(api, 250)
    seen, after = [], None
    while True:
        params = {"limit": 64} | ({"after": after} if after is not None else {})
        page = api.get(f"/v1/jobs/{job}/pairs", params=params).json()
        seen += [p["idx"] for p in page["data"]]
        after = page["next_after"]
        if after is None:
            break
    assert seen == list(range(250))


@pytest.mark.parametrize("params, check", [
    ({"label": "noisy"}, lambda p: p["label"] == "noisy"),
    ({"min_confidence": 0.5}, lambda p: p["confidence"] >= 0.5),
    ({"max_confidence": 0.3}, lambda p: p["confidence"] <= 0.3),
    ({"has_pseudo_caption": True}, lambda p: p["pseudo_caption"] is not None),
    ({"has_pseudo_caption": False}, lambda p: p["pseudo_caption"] is None),
])
def test_pairs_filters(api, params, check):
    job = _succeeded_job(api, 90)
    page = api.get(f"/v1/jobs/{job}/pairs", params={"limit": 1000, **params}).json()
    table = annotated(90).to_pylist()
    expected = [i for i, row in enumerate(table) if check({**row, "confidence": float(pa.scalar(row["confidence"], pa.float32()).as_py())})]
    assert [p["idx"] for p in page["data"]] == expected
    assert page["next_after"] is None


def test_pairs_of_unfinished_job_are_409(api):
    ds = _ready_dataset(api)
    job = api.post("/v1/jobs", json={"dataset_id": ds, "config": {}}).json()["id"]
    assert api.get(f"/v1/jobs/{job}/pairs").status_code == 409
