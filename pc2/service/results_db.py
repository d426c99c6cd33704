"""Bulk writes of per-pair results: Postgres ``COPY`` through psycopg 3, ``executemany`` on SQLite.

The rows of one job are replaced, never appended: a re-run task deletes the old rows in the same
transaction, so a job has exactly one row per pair whatever happened before.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from sqlalchemy import delete
from sqlalchemy.orm import Session

from pc2.service.models import PairResult

COLUMNS = ("job_id", "idx", "pair_id", "confidence", "label", "pseudo_class", "pseudo_caption",
           "pseudo_caption_source", "pseudo_caption_score")
BATCH_ROWS = 100_000


def result_rows(job_id: str, annotated: pa.Table) -> pa.Table:
    """The ``pair_results`` columns of an annotated table (manifest + result columns)."""
    n = annotated.num_rows
    score = annotated["pseudo_caption_score"].cast(pa.float64())
    score = pc.if_else(pc.is_nan(score), pa.scalar(None, pa.float64()), score)  # NaN means "none"
    return pa.table({
        "job_id": pa.array([job_id] * n, pa.string()) if n else pa.array([], pa.string()),
        "idx": pa.array(range(n), pa.int64()),
        "pair_id": annotated["pair_id"].cast(pa.string()),
        "confidence": annotated["confidence"].cast(pa.float64()),
        "label": annotated["label"].cast(pa.string()),
        "pseudo_class": annotated["pseudo_class"].cast(pa.int64()),
        "pseudo_caption": annotated["pseudo_caption"].cast(pa.string()),
        "pseudo_caption_source": annotated["pseudo_caption_source"].cast(pa.string()),
        "pseudo_caption_score": score,
    })


def replace_pair_results(session: Session, job_id: str, annotated: pa.Table) -> int:
    """Delete then insert every pair's row for ``job_id`` inside the session's transaction."""
    session.execute(delete(PairResult).where(PairResult.job_id == job_id))
    rows = result_rows(job_id, annotated)
    if session.get_bind().dialect.name == "postgresql":
        _copy_postgres(session, rows)
    else:
        _executemany(session, rows)
    return rows.num_rows


def _copy_postgres(session: Session, rows: pa.Table) -> None:
    # Arrow renders CSV in C++; nulls come out as bare empty fields (NULL to COPY) and every
    # string is quoted, so an empty caption stays an empty string.
    raw = session.connection().connection.driver_connection
    opts = pacsv.WriteOptions(include_header=False, quoting_style="needed", batch_size=BATCH_ROWS)
    sql = f"COPY pair_results ({', '.join(COLUMNS)}) FROM STDIN WITH (FORMAT csv)"
    with raw.cursor() as cur, cur.copy(sql) as copy:
        for batch in rows.to_batches(max_chunksize=BATCH_ROWS):
            buf = io.BytesIO()
            pacsv.write_csv(pa.Table.from_batches([batch]), buf, opts)
            copy.write(buf.getbuffer())


def _executemany(session: Session, rows: pa.Table) -> None:
    raw = session.connection().connection.driver_connection
    sql = f"INSERT INTO pair_results ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    cur = raw.cursor()
    try:
        for batch in rows.to_batches(max_chunksize=BATCH_ROWS):
            cols = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
            cur.executemany(sql, list(zip(*cols)))
    finally:
        cur.close()
