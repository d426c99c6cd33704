"""Bulk result writes: COPY on Postgres, executemany on SQLite; replace, never duplicate."""

from __future__ import annotations

import pyarrow as pa
import pytest
from sqlalchemy import func, select

from pc2.service.core.db import session_scope
from pc2.service.core.migrate import upgrade
from pc2.service.models import Dataset, Job, PairResult, Team
from pc2.service.results_db import replace_pair_results


def _table(n: int) -> pa.Table:
    return pa.table({
        "pair_id": [f"id,with \"quotes\"\n{i}" for i in range(n)],  # CSV-hostile on purpose
        "caption": ["x"] * n,
        "confidence": pa.array([i / n for i in range(n)], pa.float32()),
        "label": ["noisy" if i % 2 else "clean" for i in range(n)],
        "pseudo_class": pa.array([i % 5 for i in range(n)], pa.int64()),
        "pseudo_caption": [("" if i % 4 == 1 else f"pc {i}") if i % 2 else None for i in range(n)],
        "pseudo_caption_source": [f"src{i}" if i % 2 else None for i in range(n)],
        "pseudo_caption_score": pa.array([0.5 if i % 2 else None for i in range(n)], pa.float32()),
    })


def _roundtrip(url: str) -> None:
    upgrade(url)
    with session_scope(url) as s:
        team = Team(name="t")
        s.add(team)
        s.flush()
        ds = Dataset(team_id=team.id, name="d", source="upload", manifest_uri="m", feature_uris=[], artifact_prefix="p")
        s.add(ds)
        s.flush()
        job = Job(team_id=team.id, dataset_id=ds.id, config={})
        s.add(job)
        s.flush()
        job_id = job.id
    for _ in range(2):  # the second write replaces the first
        with session_scope(url) as s:
            assert replace_pair_results(s, job_id, _table(1000)) == 1000
    with session_scope(url) as s:
        assert s.scalar(select(func.count()).select_from(PairResult).where(PairResult.job_id == job_id)) == 1000
        rows = {r.idx: r for r in s.scalars(select(PairResult).where(PairResult.job_id == job_id))}
    src = _table(1000).to_pylist()
    for i in (0, 1, 5, 998, 999):
        r = rows[i]
        assert r.pair_id == src[i]["pair_id"]
        assert r.pseudo_caption == src[i]["pseudo_caption"]  # None stays NULL, "" stays ""
        assert r.pseudo_caption_source == src[i]["pseudo_caption_source"]
        assert r.pseudo_caption_score == src[i]["pseudo_caption_score"]
        assert r.label == src[i]["label"] and r.pseudo_class == src[i]["pseudo_class"]
        assert abs(r.confidence - src[i]["confidence"]) < 1e-6


def test_sqlite_executemany(tmp_path):
    _roundtrip(f"sqlite:///{tmp_path / 'r.db'}")


@pytest.mark.integration
def test_postgres_copy(pg_databases):
    _roundtrip(pg_databases.create())
