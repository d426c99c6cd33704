"""``export.run``: write a job's annotated / filtered / recaptioned Parquet in record batches."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pc2.service import layout
from pc2.service.core.config import Settings
from pc2.service.core.db import session_scope
from pc2.service.models import Export, utcnow
from pc2.service.storage import atomic_local_target
from pc2.workers.celery_app import app
from pc2.workers.common import error_detail, settings, store

log = logging.getLogger("pc2.workers.export")
BATCH_ROWS = 65_536


def write_export(src: Path, dst: Path, mode: str, params: dict[str, Any]) -> tuple[int, int, str]:
    """Stream ``src`` (annotated Parquet) through the export mode into ``dst``.

    Returns (rows, bytes, sha256). Memory stays at one record batch whatever the corpus size.
    """
    from pc2.models.results import select

    kwargs: dict[str, Any] = {}
    if mode == "filtered" and params.get("min_confidence") is not None:
        kwargs["min_confidence"] = params["min_confidence"]
    if mode == "recaptioned" and params.get("min_pseudo_caption_score") is not None:
        kwargs["min_pseudo_caption_score"] = params["min_pseudo_caption_score"]
    source = pq.ParquetFile(src)
    empty = source.schema_arrow.empty_table()
    schema = select(empty, mode, **kwargs).schema
    rows = 0
    with open(dst, "wb") as fh:
        with pq.ParquetWriter(fh, schema, compression="zstd") as writer:
            for batch in source.iter_batches(batch_size=BATCH_ROWS):
                part = select(pa.Table.from_batches([batch]), mode, **kwargs)
                if part.num_rows:
                    writer.write_table(part.cast(schema))
                    rows += part.num_rows
        fh.flush()
        os.fsync(fh.fileno())
    digest = hashlib.sha256()
    with open(dst, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return rows, dst.stat().st_size, digest.hexdigest()


@app.task(name="export.run", bind=True, acks_late=True)
def export_run(self, export_id: str) -> str:  # type: ignore[no-untyped-def]
    """Build export ``export_id``; a re-run of a finished export does nothing."""
    return build_export(settings(), export_id)


def build_export(s: Settings, export_id: str) -> str:
    with session_scope(s.database_url) as session:
        exp = session.get(Export, export_id)
        if exp is None:
            return "gone"
        if exp.status in ("succeeded", "failed"):
            return exp.status
        exp.status, exp.started_at = "running", exp.started_at or utcnow()
        job_id, mode, params = exp.job_id, exp.mode, dict(exp.params or {})
    st = store(s)
    key = layout.export_key(export_id)
    tmp = atomic_local_target(s.work_dir / "exports" / f"{export_id}.parquet")
    try:
        src = st.fetch(layout.annotated_key(job_id), s.work_dir / "cache")
        n_rows, size, sha = write_export(src, tmp, mode, params)
        st.move_in(tmp, key)
    except Exception as exc:  # noqa: BLE001 - recorded on the export row
        log.exception("export %s failed", export_id)
        tmp.unlink(missing_ok=True)
        _finish(s.database_url, export_id, status="failed", error=error_detail(exc))
        return "failed"
    _finish(s.database_url, export_id, status="succeeded", uri=key, n_rows=n_rows, size_bytes=size, sha256=sha)
    return "succeeded"


def _finish(url: str, export_id: str, **values: Any) -> None:
    with session_scope(url) as session:
        exp = session.get(Export, export_id)
        if exp is None:
            return
        for k, v in values.items():
            setattr(exp, k, v)
        exp.finished_at = utcnow()
