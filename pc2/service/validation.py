"""The fast, synchronous part of ingest, run inside the upload request.

It reads the manifest once with the engine's own reader and row checks (the same rules the
``ingest.run`` task applies) and the feature files' headers only, so a bad manifest is refused with
column and rows before anything is stored. Tokenizing, the NaN scan of the features and writing
the prepared corpus stay in the background task.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pc2.models import ingest
from pc2.models.errors import MAX_LISTED_ROWS, FeatureError, ManifestError


def feature_rows(paths: list[Path]) -> int:
    """Total rows of the feature shards, from their headers (shape/dtype checks included)."""
    total, first = 0, None
    for p in paths:
        try:
            a = np.load(p, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise FeatureError(f"not a readable .npy array ({exc})", file=p.name,
                               expected="an array written by numpy.save, complete") from None
        if a.dtype not in (np.float16, np.float32):
            raise FeatureError(f"dtype {a.dtype}", file=p.name, expected="float16 or float32")
        if a.ndim not in (2, 3):
            raise FeatureError(f"shape {a.shape}", file=p.name, expected="[N, R, D] region features or [N, D] embeddings")
        rd = a.shape[1:] if a.ndim == 3 else (1, a.shape[1])
        if first is not None and rd != first:
            raise FeatureError(f"shape {a.shape} disagrees with the first shard (R, D) = {first}", file=p.name,
                               expected="the same R and D in every shard")
        first = rd
        total += int(a.shape[0])
    return total


def validate_inputs(manifest: Path, features: list[Path]) -> None:
    """Raise ``InputError`` (column, rows, expected) for a manifest the ingest task would refuse."""
    public = getattr(ingest, "validate", None)
    if callable(public):
        public(manifest, features)
        return
    n_features = feature_rows(features) if features else None
    scratch = Path(tempfile.mkdtemp(prefix="pc2-validate-"))
    try:
        check = None
        for batch in ingest.read_manifest(manifest):
            if check is None:
                source = ingest._image_source(batch.schema.names, has_features=bool(features), extractor=None)
                check = ingest._ManifestCheck(source=source, n_features=n_features, caps_from=None)
                check.check_schema(batch.schema)
            check.add(batch, scratch / "inline.npy")
        if check.emb_writer is not None:
            check.emb_writer.close()
        check.raise_first()
        _unique_pair_ids(pa.chunked_array(check.pair_ids, type=pa.string()).combine_chunks())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _unique_pair_ids(pair_ids: pa.Array) -> None:
    if len(pc.unique(pair_ids)) == len(pair_ids):
        return
    counts = pc.value_counts(pair_ids)
    dup = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    rows = np.flatnonzero(np.asarray(pc.is_in(pair_ids, value_set=dup).to_numpy(zero_copy_only=False)))
    raise ManifestError("duplicate values", column="pair_id", rows=rows[:MAX_LISTED_ROWS], n_rows=len(rows),
                        expected="unique strings")
