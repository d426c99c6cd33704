"""Dataset upload/registration: validation before storage, size limits, allowed roots, auth."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import func, select

from pc2.service.core.db import session_scope
from pc2.service.models import Dataset


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _npy(n: int, r: int = 2, d: int = 4) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).standard_normal((n, r, d)).astype(np.float32))
    return buf.getvalue()


def _count_datasets(api) -> int:
    with session_scope(api.settings.database_url) as s:
        return s.scalar(select(func.count()).select_from(Dataset))


def _stored_files(api) -> list[str]:
    roots = [api.settings.data_dir / "artifacts", api.settings.staging_dir]
    return [str(p) for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def test_bad_manifest_is_422_naming_column_and_rows_and_stores_nothing(api):
    manifest = pa.table({"pair_id": ["a", "b", "c", "d"], "caption": ["x", None, "z", None],
                         "feature_row": [0, 1, 2, 3]})
    r = api.post("/v1/datasets", data={"name": "bad"},
                 files=[("manifest", ("m.parquet", _parquet(manifest))), ("features", ("f.npy", _npy(4)))])
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail["column"] == "caption"
    assert detail["rows"] == [1, 3]
    assert "caption" in detail["message"]
    assert _count_datasets(api) == 0
    assert _stored_files(api) == []


def test_feature_row_out_of_range_is_422(api):
    manifest = pa.table({"pair_id": ["a", "b", "c"], "caption": ["x", "y", "z"], "feature_row": [0, 7, 1]})
    r = api.post("/v1/datasets", data={"name": "bad"},
                 files=[("manifest", ("m.parquet", _parquet(manifest))), ("features", ("f.npy", _npy(2)))])
    assert r.status_code == 422
    assert r.json()["detail"]["column"] == "feature_row"
    assert r.json()["detail"]["rows"] == [1]
    assert _count_datasets(api) == 0


def test_duplicate_pair_ids_are_422(api):
    manifest = pa.table({"pair_id": ["a", "b", "a"], "caption": ["x", "y", "z"], "feature_row": [0, 1, 1]})
    r = api.post("/v1/datasets", data={"name": "dup"},
                 files=[("manifest", ("m.parquet", _parquet(manifest))), ("features", ("f.npy", _npy(2)))])
    assert r.status_code == 422
    assert r.json()["detail"]["column"] == "pair_id" and r.json()["detail"]["rows"] == [0, 2]


def test_upload_over_limit_is_413_and_stores_nothing(api):
    manifest = pa.table({"pair_id": ["a"], "caption": ["x"], "feature_row": [0]})
    big = _npy(3000)  # ~96 KB > the fixture's 64 KiB limit
    r = api.post("/v1/datasets", data={"name": "big"},
                 files=[("manifest", ("m.parquet", _parquet(manifest))), ("features", ("f.npy", big))])
    assert r.status_code == 413, r.text
    assert r.json()["detail"]["limit_bytes"] == 64 * 1024
    assert _count_datasets(api) == 0
    assert _stored_files(api) == []


def test_good_upload_is_accepted_and_stored(api):
    manifest = pa.table({"pair_id": ["a", "b"], "caption": ["x", ""], "feature_row": [0, 1], "extra": [1, 2]})
    r = api.post("/v1/datasets", data={"name": "ok"},
                 files=[("manifest", ("m.parquet", _parquet(manifest))), ("features", ("f.npy", _npy(2)))])
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "validating" and body["name"] == "ok"
    assert _count_datasets(api) == 1
    files = _stored_files(api)
    assert any(f.endswith("manifest.parquet") for f in files) and any(f.endswith(".npy") for f in files)
    assert not any("staging" in f for f in files)
    listed = api.get("/v1/datasets").json()
    assert listed["count"] == 1 and listed["data"][0]["id"] == body["id"]


def test_missing_manifest_or_name_is_422(api):
    r = api.post("/v1/datasets", data={"name": "x"}, files=[("features", ("f.npy", _npy(2)))])
    assert r.status_code == 422 and r.json()["detail"]["field"] == "manifest"
    manifest = pa.table({"pair_id": ["a"], "caption": ["x"], "feature_row": [0]})
    r = api.post("/v1/datasets", files=[("manifest", ("m.parquet", _parquet(manifest)))])
    assert r.status_code == 422 and r.json()["detail"]["field"] == "name"


def test_json_uris_must_be_inside_allowed_roots(api, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    manifest = pa.table({"pair_id": ["a", "b"], "caption": ["x", "y"], "feature_row": [0, 1]})
    pq.write_table(manifest, shared / "m.parquet")
    (shared / "f.npy").write_bytes(_npy(2))
    outside = tmp_path / "elsewhere.parquet"
    pq.write_table(manifest, outside)

    r = api.post("/v1/datasets", json={"name": "out", "manifest_uri": str(outside), "features_uris": []})
    assert r.status_code == 403
    sneaky = str(shared / ".." / "elsewhere.parquet")  # resolves outside the root
    r = api.post("/v1/datasets", json={"name": "out", "manifest_uri": sneaky, "features_uris": []})
    assert r.status_code == 403
    assert _count_datasets(api) == 0

    r = api.post("/v1/datasets", json={"name": "in", "manifest_uri": str(shared / "m.parquet"),
                                       "features_uris": [str(shared / "f.npy")]})
    assert r.status_code == 202, r.text
    assert r.json()["source"] == "uri"

    r = api.post("/v1/datasets", json={"name": "in", "manifest_uri": str(shared / "m.parquet"), "bogus": 1})
    assert r.status_code == 422


def test_delete_dataset_removes_row_and_files(api):
    manifest = pa.table({"pair_id": ["a"], "caption": ["x"], "feature_row": [0]})
    r = api.post("/v1/datasets", data={"name": "del"},
                 files=[("manifest", ("m.parquet", _parquet(manifest))), ("features", ("f.npy", _npy(1)))])
    ds = r.json()["id"]
    # No worker in this fixture: the dataset stays validating, and deleting it then is refused.
    assert api.client.delete(f"/v1/datasets/{ds}", headers=api.headers()).status_code == 409
    with session_scope(api.settings.database_url) as s:
        s.get(Dataset, ds).status = "failed"
    assert api.client.delete(f"/v1/datasets/{ds}", headers=api.headers()).status_code == 204
    assert api.get(f"/v1/datasets/{ds}").status_code == 404
    assert _stored_files(api) == []


def test_malformed_multipart_is_400(api):
    r = api.client.post("/v1/datasets", headers={**api.headers(), "Content-Type": "multipart/form-data; boundary=xyz"},
                        content=b"--xyz\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nabc\r\n--xyz\r\ngarbage")
    assert r.status_code in (400, 422)
    assert _count_datasets(api) == 0
    r = api.client.post("/v1/datasets", headers={**api.headers(), "Content-Type": "text/plain"}, content=b"hi")
    assert r.status_code == 400
