"""Per-pair results as Arrow columns beside the manifest's own, and the three export modes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .data import Corpus

RESULT_COLUMNS = ("confidence", "label", "pseudo_class", "pseudo_caption", "pseudo_caption_source", "pseudo_caption_score")
MODES = ("annotated", "filtered", "recaptioned")


class ExportError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def result_columns(corpus: Corpus, result, start: int = 0, stop: int | None = None,
                   duplicate_of: np.ndarray | None = None) -> dict[str, pa.Array]:
    """Result columns for pairs ``start:stop`` (corpus order).

    ``duplicate_of`` (int ``[N]``, from ``search.duplicate_groups``: representative pair index or -1)
    adds a ``duplicate_of`` column holding the representative's ``pair_id`` (null for none).
    """
    stop = len(corpus) if stop is None else stop
    sl = slice(start, stop)
    noisy = result.noisy[sl]
    src = result.pcap_source[sl]
    has = noisy & (src >= 0)
    captions = corpus.captions
    pair_ids = corpus.pair_ids
    pcap = [captions[s] if h else None for s, h in zip(src.tolist(), has.tolist())]
    pcap_src = [pair_ids[s] if h else None for s, h in zip(src.tolist(), has.tolist())]
    score = np.where(has, result.pcap_score[sl], np.nan).astype(np.float32)
    cols = {
        "confidence": pa.array(result.confidence[sl].astype(np.float32)),
        "label": pa.array(np.where(noisy, "noisy", "clean")),
        "pseudo_class": pa.array(result.pseudo_class[sl].astype(np.int64)),
        "pseudo_caption": pa.array(pcap, type=pa.string()),
        "pseudo_caption_source": pa.array(pcap_src, type=pa.string()),
        "pseudo_caption_score": pa.array(score, mask=~has),
    }
    if duplicate_of is not None:
        dup = np.asarray(duplicate_of, dtype=np.int64)
        assert dup.shape == (len(corpus),), "duplicate_of must have one entry per pair"
        cols["duplicate_of"] = pa.array([pair_ids[d] if d >= 0 else None for d in dup[sl].tolist()], type=pa.string())
    return cols


def annotate(manifest: pa.Table, corpus: Corpus, result, duplicate_of: np.ndarray | None = None) -> pa.Table:
    """The manifest's own columns (unchanged, same order) followed by the result columns
    (and ``duplicate_of`` when near-duplicate groups are given)."""
    assert manifest.num_rows == len(corpus), "manifest and corpus must describe the same pairs"
    ours = RESULT_COLUMNS + ("final_caption",) + (("duplicate_of",) if duplicate_of is not None else ())
    table = manifest.drop_columns([c for c in ours if c in manifest.column_names])
    for name, arr in result_columns(corpus, result, duplicate_of=duplicate_of).items():
        table = table.append_column(name, arr)
    return table


def select(table: pa.Table, mode: str, *, min_confidence: float | None = None, min_pseudo_caption_score: float = 0.5) -> pa.Table:
    """Apply an export mode to an annotated table.

    ``filtered`` keeps clean rows (or rows with confidence >= ``min_confidence`` when given);
    ``recaptioned`` keeps clean rows with their caption and noisy rows whose pseudo-caption scores at
    least ``min_pseudo_caption_score`` (with it as ``final_caption``), dropping the rest.
    """
    if mode not in MODES:
        raise ExportError("mode", f"must be one of {list(MODES)}, got {mode!r}")
    if mode == "annotated":
        return table
    clean = pc.equal(table["label"], "clean")
    if mode == "filtered":
        keep = clean if min_confidence is None else pc.greater_equal(table["confidence"], float(min_confidence))
        return table.filter(keep)
    good_pcap = pc.fill_null(pc.greater_equal(table["pseudo_caption_score"], float(min_pseudo_caption_score)), False)
    keep = pc.or_(clean, good_pcap)
    out = table.filter(keep)
    final = pc.if_else(pc.equal(out["label"], "clean"), out["caption"], out["pseudo_caption"])
    return out.append_column("final_caption", final)


def write_parquet(table: pa.Table, path: str | os.PathLike) -> None:
    """Write atomically: a crash never leaves a half file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            pq.write_table(table, f, compression="zstd")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
