"""``ingest.run``: turn an uploaded manifest + features into a prepared corpus the engine trains on."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from typing import Any

import pyarrow.parquet as pq

from pc2.models.errors import InputError
from pc2.service import layout
from pc2.service.core.config import Settings
from pc2.service.core.db import session_scope
from pc2.service.models import Dataset, utcnow
from pc2.workers.celery_app import app
from pc2.workers.common import dataset_inputs, error_detail, settings, store

log = logging.getLogger("pc2.workers.ingest")


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    return json.loads(json.dumps(obj, default=str))


@app.task(name="ingest.run", bind=True, acks_late=True)
def ingest_run(self, dataset_id: str) -> str:  # type: ignore[no-untyped-def]
    """Prepare dataset ``dataset_id``; ready on success, failed with the column/rows on bad input."""
    return prepare_dataset(settings(), dataset_id)


def prepare_dataset(s: Settings, dataset_id: str) -> str:
    from pc2.models import ingest

    with session_scope(s.database_url) as session:
        ds = session.get(Dataset, dataset_id)
        if ds is None:
            return "gone"  # deleted while queued
        if ds.status != "validating":
            return ds.status  # already done: a redelivered message changes nothing
        ds.started_at = ds.started_at or utcnow()
        session.expunge(ds)
    out = layout.prepared_dir(s, store(s), dataset_id)
    try:
        manifest, features = dataset_inputs(s, ds)
        # prepare() builds in a sibling temp dir and renames it into place: a killed run leaves
        # nothing that looks whole, and a re-run replaces the directory as one unit.
        prepared = ingest.prepare(manifest, features, out)
        columns = pq.read_schema(out / "manifest.parquet").names
        n_pairs = len(prepared.corpus)
        report = _jsonable(prepared.report)
    except Exception as exc:  # noqa: BLE001 - recorded on the row; the client reads it there
        if not isinstance(exc, InputError):
            log.exception("ingest of dataset %s failed", dataset_id)
        _finish(s.database_url, dataset_id, status="failed", error=error_detail(exc))
        return "failed"
    if not _finish(s.database_url, dataset_id, status="ready", n_pairs=n_pairs, columns=columns, report=report):
        shutil.rmtree(out, ignore_errors=True)  # deleted while we worked: leave no orphan files
        return "gone"
    return "ready"


def _finish(url: str, dataset_id: str, **values: Any) -> bool:
    with session_scope(url) as session:
        ds = session.get(Dataset, dataset_id)
        if ds is None:
            return False
        for k, v in values.items():
            setattr(ds, k, v)
        ds.finished_at = utcnow()
        return True
