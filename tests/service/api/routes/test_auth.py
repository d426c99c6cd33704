"""API keys: 401 without or with a wrong key; another team's ids look missing (404)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import select

from pc2.service.core.db import session_scope
from pc2.service.core.security import hash_key
from pc2.service.models import ApiKey


def _upload(api, key=None) -> str:
    buf = io.BytesIO()
    pq.write_table(pa.table({"pair_id": ["a"], "caption": ["x"], "feature_row": [0]}), buf)
    npy = io.BytesIO()
    np.save(npy, np.zeros((1, 2), np.float32))
    r = api.post("/v1/datasets", key=key, data={"name": "t"},
                 files=[("manifest", ("m.parquet", buf.getvalue())), ("features", ("f.npy", npy.getvalue()))])
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_missing_and_wrong_key_are_401(api):
    for path in ("/v1/datasets", "/v1/jobs", "/v1/exports/x"):
        r = api.client.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = api.client.get(path, headers={"Authorization": "Bearer pc2_not-a-key"})
        assert r.status_code == 401
    r = api.client.get("/v1/datasets", headers={"Authorization": f"Basic {api.key}"})
    assert r.status_code == 401


def test_keys_are_stored_hashed(api):
    with session_scope(api.settings.database_url) as s:
        hashes = s.scalars(select(ApiKey.key_hash)).all()
    assert hash_key(api.key) in hashes
    assert api.key not in hashes


def test_other_teams_ids_are_404(api):
    ds = _upload(api)
    other = api.new_key("team-b")
    assert api.get(f"/v1/datasets/{ds}").status_code == 200
    assert api.get(f"/v1/datasets/{ds}", key=other).status_code == 404
    assert api.client.delete(f"/v1/datasets/{ds}", headers=api.headers(other)).status_code == 404
    assert api.get("/v1/datasets", key=other).json()["count"] == 0
    r = api.post("/v1/jobs", key=other, json={"dataset_id": ds, "config": {}})
    assert r.status_code == 404


def test_health_needs_no_key(api):
    assert api.client.get("/healthz").json() == {"status": "ok"}
    assert api.client.get("/docs").status_code == 200
    assert "/v1/jobs/{job_id}/pairs" in api.client.get("/openapi.json").json()["paths"]
