"""Turn a user's manifest and feature files into a prepared corpus directory, or say exactly what is wrong.

One implementation for the CLI (``pc2 curate``) and the service's ingest task. The manifest is streamed
in record batches (never loaded whole), validated with vectorised pyarrow compute, its captions are
tokenized in batches, and everything lands in ``out_dir`` atomically: files are written into a temporary
sibling directory that is renamed into place at the end, so an error leaves nothing behind.

Prepared layout (``out_dir``)::

    manifest.parquet     the manifest's own columns, original order and types (long captions truncated)
    feature_row.npy, token_offsets.npy, token_ids.npy, corpus.json, text.json   (``Corpus.save``)
    tokenizer.json       what turned captions into ids
    features_inline.npy  only when embeddings came inline (``image_embedding``) or were extracted
    report.json          counts, feature shape, warnings, seconds
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from pc2.models import tokenizer as tk
from pc2.models.data import Corpus, FeatureStore, NpyShard
from pc2.models.errors import MAX_LISTED_ROWS, FeatureError, InputError, ManifestError, SourceError
from pc2.models.extract import ImageDecodeError, SourcePolicy, check_uri, open_uri

MAX_PAIR_ID_CHARS = 256
MAX_CAPTION_CHARS = 10_000
CORE_TYPES = {  # how JSON/CSV readers must type the columns the engine reads
    "pair_id": pa.string(),
    "caption": pa.string(),
    "image_uri": pa.string(),
    "feature_row": pa.int64(),
    "image_embedding": pa.list_(pa.float64()),
}
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "json", ".ndjson": "json", ".json": "json", ".csv": "csv"}
READ_BLOCK_BYTES = 8 << 20
BPE_TRAIN_SAMPLE = 50_000  # captions a BPE vocabulary is learned from (a seeded sample beyond this)
FEATURE_BLOCK_BYTES = 64 << 20


# ---------------------------------------------------------------------------------------------------
# results and progress


@dataclass
class IngestProgress:
    phase: str  # "features" | "manifest" | "tokenize" | "extract" | "write" | "done"
    done: int  # rows (or images, for "extract") handled so far in this phase
    total: int | None  # None when unknown (CSV/JSON row counts are only known at the end)


@dataclass
class PreparedCorpus:
    dir: Path
    corpus: Corpus
    report: dict[str, Any]


ProgressFn = Callable[[IngestProgress], None]


def _tell(progress: ProgressFn | None, phase: str, done: int, total: int | None) -> None:
    if progress is not None:
        progress(IngestProgress(phase, int(done), None if total is None else int(total)))


# ---------------------------------------------------------------------------------------------------
# reading manifests


def manifest_format(path: str | os.PathLike) -> tuple[str, bool]:
    """``("parquet"|"json"|"csv", gzipped)`` from the file name."""
    name = Path(path).name.lower()
    gz = name.endswith(".gz")
    stem = name[:-3] if gz else name
    fmt = FORMATS.get(Path(stem).suffix)
    if fmt is None:
        raise ManifestError(
            f"cannot tell the format of '{Path(path).name}'",
            expected="a name ending in .parquet/.pq, .jsonl/.ndjson/.json or .csv, optionally + .gz",
        )
    return fmt, gz


class _SchemaDrift(ManifestError):
    """A carried-through column changed type after the reader fixed it from the first block."""

    def __init__(self, column: str | None, detail: str):
        self.drift_column = column
        super().__init__(f"column types change part-way through the file ({detail})", column=column)


class _Utf8Checked(io.RawIOBase):
    """A byte stream that fails on the first invalid UTF-8 sequence (pyarrow's JSON reader would
    silently replace it with U+FFFD, and its CSV reader would type the column as binary)."""

    def __init__(self, raw):
        self.raw = raw
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.pos = 0
        self.bad_offset: int | None = None

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        try:
            self.decoder.decode(data, final=not data)
        except UnicodeDecodeError as e:
            self.bad_offset = self.pos + e.start
            raise
        self.pos += len(data)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.raw.close()
        super().close()


def _open_bytes(path: Path, gz: bool):
    return gzip.open(path, "rb") if gz else open(path, "rb")


def _read_options(fmt: str):
    return (pajson.ReadOptions if fmt == "json" else pacsv.ReadOptions)(block_size=READ_BLOCK_BYTES)


def read_manifest(
    path: str | os.PathLike, *, chunk_rows: int = 65536, column_types: dict[str, pa.DataType] | None = None
) -> Iterator[pa.RecordBatch]:
    """Stream a Parquet/JSONL/CSV (optionally ``.gz``) manifest as record batches, columns in file order.

    Parquet batches hold ``chunk_rows`` rows; JSON/CSV batches follow the reader's 8 MiB blocks.
    ``column_types`` pins carried-through columns whose type the first block would guess wrongly.
    Unreadable input raises ``ManifestError`` naming the rows when they can be located.
    """
    path = Path(path)
    fmt, gz = manifest_format(path)
    if not path.is_file():
        raise ManifestError(f"file '{path.name}' not found", expected="an existing manifest file")
    if path.stat().st_size == 0:
        raise ManifestError(f"file '{path.name}' is empty", expected=f"a {fmt} manifest with a row per pair")
    total = 0
    reader = {"parquet": _iter_parquet, "json": _iter_json, "csv": _iter_csv}[fmt]
    for batch in reader(path, gz, chunk_rows, dict(column_types or {})):
        if batch.num_rows:
            total += batch.num_rows
            yield batch
    if total == 0:
        raise ManifestError(f"file '{path.name}' has no rows", expected="at least one pair")


def _iter_parquet(path: Path, gz: bool, chunk_rows: int, _types) -> Iterator[pa.RecordBatch]:
    tmp = None
    try:
        if gz:  # Parquet needs random access: inflate to a temporary file, never into memory
            fd, tmp = tempfile.mkstemp(suffix=".parquet")
            with os.fdopen(fd, "wb") as out, gzip.open(path, "rb") as src:
                try:
                    shutil.copyfileobj(src, out, 1 << 20)
                except (OSError, EOFError) as e:
                    raise ManifestError(f"'{path.name}' is not a complete gzip file ({e})", expected="a whole .gz file") from None
        try:
            f = pq.ParquetFile(tmp or path)
            yield from f.iter_batches(batch_size=chunk_rows)
        except (pa.ArrowInvalid, pa.ArrowException, OSError) as e:
            raise ManifestError(
                f"'{path.name}' is not a complete Parquet file ({e})", expected="a Parquet file written to the end (re-export or re-upload it)"
            ) from None
    finally:
        if tmp:
            os.unlink(tmp)


def _first_json_keys(path: Path, gz: bool) -> list[str]:
    with _open_bytes(path, gz) as f:
        for line in f:
            if line.strip():
                try:
                    obj = json.loads(line)
                except (ValueError, UnicodeDecodeError):
                    return []  # the reader reports it with a row number
                return list(obj) if isinstance(obj, dict) else []
    return []


def _iter_json(path: Path, gz: bool, _chunk_rows: int, types: dict) -> Iterator[pa.RecordBatch]:
    order = list(types) if types else _first_json_keys(path, gz)
    pinned = {**{k: CORE_TYPES[k] for k in order if k in CORE_TYPES}, **types}
    schema = pa.schema([(k, pinned[k]) for k in order if k in pinned]) if pinned else None
    opts = pajson.ParseOptions(explicit_schema=schema) if schema is not None else pajson.ParseOptions()
    stream = _Utf8Checked(_open_bytes(path, gz))
    try:
        reader = pajson.open_json(pa.PythonFile(stream, mode="r"), read_options=_read_options("json"), parse_options=opts)
        for batch in reader:
            names = batch.schema.names
            # Explicitly typed columns come first out of the reader; restore the file's order.
            want = [k for k in order if k in names] + [k for k in names if k not in order]
            yield batch.select(want) if want != names else batch
    except UnicodeDecodeError:
        raise _utf8_error(path, gz, "json", stream.bad_offset) from None
    except pa.ArrowInvalid as e:
        raise _json_error(path, gz, str(e)) from None
    finally:
        stream.close()


def _iter_csv(path: Path, gz: bool, _chunk_rows: int, types: dict) -> Iterator[pa.RecordBatch]:
    # Ids and captions stay strings even when they look like numbers ("007" must not become 7);
    # CSV cannot carry lists, so an embedding arrives as text and is parsed during validation.
    col_types = {k: pa.string() for k in CORE_TYPES if k != "feature_row"}
    col_types.update(types)
    conv = pacsv.ConvertOptions(column_types=col_types, strings_can_be_null=False)
    stream = _Utf8Checked(_open_bytes(path, gz))
    try:
        reader = pacsv.open_csv(pa.PythonFile(stream, mode="r"), read_options=_read_options("csv"), convert_options=conv)
        names = reader.schema.names
        yield from reader
    except UnicodeDecodeError:
        raise _utf8_error(path, gz, "csv", stream.bad_offset) from None
    except pa.ArrowInvalid as e:
        msg = str(e)
        if "Empty CSV file" in msg:
            raise ManifestError(f"file '{path.name}' is empty", expected="a CSV header line and a row per pair") from None
        m = re.search(r"CSV column #(\d+): CSV conversion error to (\w+)", msg)
        if m and "names" in locals():
            col = names[int(m.group(1))]
            if col not in CORE_TYPES:
                raise _SchemaDrift(col, msg) from None
            rows, n = _csv_bad_rows(path, gz, col, _int_text_ok)
            raise ManifestError("value is not an integer", column=col, rows=rows, n_rows=n, expected="integers") from None
        raise ManifestError(f"cannot parse '{path.name}' as CSV ({msg})", expected="RFC 4180 CSV with a header line") from None
    finally:
        stream.close()


def _int_text_ok(v: str) -> bool:
    return v.strip() == "" or re.fullmatch(r"\s*[+-]?\d+\s*", v) is not None


def _csv_bad_rows(path: Path, gz: bool, column: str | None, ok: Callable[[str], bool]) -> tuple[list[int], int]:
    """Slow path, run only after a failure: rows whose ``column`` (or any field) fails ``ok``."""
    rows, n = [], 0
    with _open_bytes(path, gz) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")
        reader = csv.reader(text)
        header = next(reader, [])
        idx = header.index(column) if column in header else None
        for i, rec in enumerate(reader):
            vals = rec if idx is None else rec[idx : idx + 1]
            if not all(ok(v) for v in vals):
                n += 1
                if len(rows) < MAX_LISTED_ROWS:
                    rows.append(i)
    return rows, n


def _is_utf8(v: str) -> bool:
    return not any("\udc80" <= ch <= "\udcff" for ch in v)


def _utf8_error(path: Path, gz: bool, fmt: str, offset: int | None) -> ManifestError:
    if fmt == "csv":
        rows, n = _csv_bad_rows(path, gz, None, _is_utf8)
    else:
        rows, n = [], 0
        for i, line in enumerate(_json_lines(path, gz)):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                n += 1
                if len(rows) < MAX_LISTED_ROWS:
                    rows.append(i)
    where = f" (first at byte {offset})" if offset is not None else ""
    return ManifestError(f"non-UTF-8 bytes{where}", rows=rows, n_rows=n, expected="UTF-8 encoded text (re-save the file as UTF-8)")


def _json_lines(path: Path, gz: bool) -> Iterator[bytes]:
    with _open_bytes(path, gz) as f:
        for line in f:
            if line.strip():
                yield line


_JSON_OK: dict[str, Callable[[Any], bool]] = {
    "pair_id": lambda v: v is None or isinstance(v, str),
    "caption": lambda v: v is None or isinstance(v, str),
    "image_uri": lambda v: v is None or isinstance(v, str),
    "feature_row": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
    "image_embedding": lambda v: v is None
    or (isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)),
}
_JSON_EXPECT = {"feature_row": "integers", "image_embedding": "lists of numbers"}


def _json_error(path: Path, gz: bool, msg: str) -> ManifestError:
    m = re.search(r"Column\(/([^/)]+)", msg)
    col = m.group(1) if m else None
    if "unexpected field" in msg or (col is not None and col not in CORE_TYPES):
        return _SchemaDrift(col, msg)
    rows, n, bad_json, seen = [], 0, col is None, 0
    for i, line in enumerate(_json_lines(path, gz)):
        seen += 1
        try:
            obj = json.loads(line)
            ok = isinstance(obj, dict) and (bad_json or _JSON_OK[col](obj.get(col)))
        except ValueError:
            ok = False
        if not ok:
            n += 1
            if len(rows) < MAX_LISTED_ROWS:
                rows.append(i)
    if col is None and seen == 0:
        return ManifestError(f"file '{path.name}' has no rows", expected="at least one pair")
    if col is None and n == 0:
        return ManifestError(f"cannot parse '{path.name}' as JSON Lines ({msg})", expected="JSON Lines: one {...} object per line")
    if col is None:
        return ManifestError("not a JSON object per line", rows=rows, n_rows=n, expected="JSON Lines: one {...} object per line")
    return ManifestError("wrong value type", column=col, rows=rows, n_rows=n, expected=_JSON_EXPECT.get(col, "strings"))


def _json_schema_by_scan(path: Path, gz: bool) -> dict[str, pa.DataType]:
    """Fallback after drift: infer every column over the whole file (slow, Python), in first-seen order."""
    schemas, buf, keys = [], [], {}

    def flush():
        if buf:
            chunk_keys = {k: None for r in buf for k in r}
            keys.update(chunk_keys)
            schemas.append(pa.table({k: pa.array([r.get(k) for r in buf]) for k in chunk_keys}).schema)
            buf.clear()

    for i, line in enumerate(_json_lines(path, gz)):
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise ManifestError(f"not valid JSON ({e})", rows=[i], expected="JSON Lines: one {...} object per line") from None
        buf.append(obj if isinstance(obj, dict) else {})
        if len(buf) >= 65536:
            flush()
    flush()
    try:
        merged = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        m = re.search(r"field[^']*'([^']+)'", str(e)) or re.search(r"Unable to merge: Field (\S+)", str(e))
        col = m.group(1) if m else None
        raise ManifestError("values of more than one JSON type", column=col, expected="one type per column") from None
    types = {f.name: CORE_TYPES.get(f.name, f.type) for f in merged}
    return {k: (pa.string() if types[k] == pa.null() else types[k]) for k in keys}


# ---------------------------------------------------------------------------------------------------
# feature files


@dataclass
class FeatureInfo:
    paths: list[str]
    sizes: list[int]
    regions: int
    dim: int
    dtype: str

    @property
    def n(self) -> int:
        return int(sum(self.sizes))


def _open_npy(path: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise FeatureError("file not found", file=p.name, expected="an existing .npy file")
    try:
        return np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise FeatureError(f"not a readable .npy array ({e})", file=p.name, expected="an array written by numpy.save, complete") from None


def check_features(paths: Sequence[str | os.PathLike], *, progress: ProgressFn | None = None) -> FeatureInfo:
    """Validate feature shards without loading them: dtype, rank, agreeing R and D, and no NaN/Inf
    anywhere (scanned in ~64 MiB blocks of the memory map)."""
    if not paths:
        raise FeatureError("no feature files given", file="", expected="one or more .npy files")
    arrays = [(str(p), _open_npy(str(p))) for p in paths]
    first = None
    for p, a in arrays:
        name = Path(p).name
        if a.dtype not in (np.float16, np.float32):
            raise FeatureError(f"dtype {a.dtype}", file=name, expected="float16 or float32")
        if a.ndim not in (2, 3):
            raise FeatureError(f"shape {a.shape}", file=name, expected="[N, R, D] region features or [N, D] embeddings")
        rd = (a.shape[1], a.shape[2]) if a.ndim == 3 else (1, a.shape[1])
        if first is None:
            first = (name, rd)
        elif rd != first[1]:
            raise FeatureError(
                f"shape {a.shape} (R={rd[0]}, D={rd[1]}) disagrees with '{first[0]}' (R={first[1][0]}, D={first[1][1]})",
                file=name,
                expected="the same R and D in every shard",
            )
        if rd[1] == 0 or rd[0] == 0:
            raise FeatureError(f"shape {a.shape} has an empty dimension", file=name, expected="R >= 1 and D >= 1")
    total = sum(a.shape[0] for _, a in arrays)
    if total == 0:
        raise FeatureError("no rows", file=Path(arrays[0][0]).name, expected="at least one image")
    done = 0
    for p, a in arrays:
        per_row = max(1, a[0].nbytes) if len(a) else 1
        block = max(1, FEATURE_BLOCK_BYTES // per_row)
        bad, n_bad = [], 0
        shard = NpyShard(p)  # explicit reads: scanning a memory map would leave the whole file resident
        for s in range(0, len(a), block):
            ok = np.isfinite(shard.rows(s, s + block)).reshape(min(block, len(a) - s), -1).all(axis=1)
            if not ok.all():
                idx = np.flatnonzero(~ok) + s
                n_bad += len(idx)
                bad.extend(idx[: MAX_LISTED_ROWS - len(bad)].tolist())
            done += min(block, len(a) - s)
            _tell(progress, "features", done, total)
        if n_bad:
            raise FeatureError("NaN or Inf values", file=Path(p).name, rows=bad, n_rows=n_bad, expected="finite numbers in every row")
    a0 = arrays[0][1]
    return FeatureInfo(
        paths=[str(Path(p).resolve()) for p, _ in arrays],
        sizes=[int(a.shape[0]) for _, a in arrays],
        regions=first[1][0],
        dim=first[1][1],
        dtype=str(a0.dtype),
    )


class _NpyAppender:
    """Write a float32 ``.npy`` whose row count is only known at the end: a fixed 128-byte header is
    rewritten on close, so rows stream to disk instead of piling up in memory."""

    HEADER = 128

    def __init__(self, path: Path, row_shape: tuple[int, ...]):
        self.path, self.row_shape, self.n = path, tuple(row_shape), 0
        self.f = open(path, "wb")
        self.f.write(b"\0" * self.HEADER)

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype="<f4")
        assert rows.shape[1:] == self.row_shape, (rows.shape, self.row_shape)
        self.f.write(rows.tobytes())
        self.n += len(rows)

    def close(self) -> None:
        shape = (self.n, *self.row_shape)
        text = "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }" % repr(shape)
        body = text.encode("latin1")
        pad = self.HEADER - 10 - len(body) - 1
        assert pad >= 0, "shape too long for the reserved header"
        header = b"\x93NUMPY\x01\x00" + (self.HEADER - 10).to_bytes(2, "little") + body + b" " * pad + b"\n"
        self.f.seek(0)
        self.f.write(header)
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


# ---------------------------------------------------------------------------------------------------
# validation


class _Rows:
    """Row numbers of one problem across the whole file: the first 20 and a count."""

    def __init__(self):
        self.rows: list[int] = []
        self.n = 0

    def add(self, mask_or_idx, offset: int) -> None:
        idx = np.flatnonzero(mask_or_idx) if getattr(mask_or_idx, "dtype", None) == bool else np.asarray(mask_or_idx, dtype=np.int64)
        if len(idx):
            self.n += len(idx)
            self.rows.extend((idx[: MAX_LISTED_ROWS - len(self.rows)] + offset).tolist())


def _np_mask(arr) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):  # pandas categoricals arrive as dictionary<string>
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _wrong_type(col: str, t: pa.DataType, expected: str) -> ManifestError:
    return ManifestError(f"has type {t}", column=col, expected=expected)


class _ManifestCheck:
    """Validates batch after batch, collecting bad rows per rule so one error lists them all."""

    def __init__(self, *, source: str, n_features: int | None, caps_from: str | None):
        self.source = source  # "feature_row" | "image_embedding" | "image_uri"
        self.n_features = n_features
        self.caps_from = caps_from  # ids column for precomputed layouts, else None
        self.problems: dict[tuple[str, str, str], _Rows] = {}
        self.truncated = _Rows()
        self.offset = 0
        self.pair_ids: list[pa.Array] = []
        self.captions: list[pa.Array] = []
        self.ids_text: list[pa.Array] = []
        self.feature_rows: list[np.ndarray] = []
        self.uris: list[pa.Array] = []
        self.emb_dim: int | None = None
        self.emb_writer: _NpyAppender | None = None

    def problem(self, col: str, what: str, expected: str) -> _Rows:
        return self.problems.setdefault((col, what, expected), _Rows())

    def raise_first(self) -> None:
        for (col, what, expected), rows in self.problems.items():
            if rows.n:
                raise ManifestError(what, column=col, rows=rows.rows, n_rows=rows.n, expected=expected)

    @staticmethod
    def check_schema(schema: pa.Schema) -> None:
        for col in ("pair_id", "caption"):
            if col not in schema.names:
                raise ManifestError(f"missing required column '{col}'", column=col, expected=f"a column named '{col}' (found {schema.names})")
            if not _is_string(schema.field(col).type) and schema.field(col).type != pa.null():
                raise _wrong_type(col, schema.field(col).type, "strings")

    def add(self, batch: pa.RecordBatch, emb_path: Path | None) -> pa.RecordBatch:
        off, n = self.offset, batch.num_rows
        pid = batch.column("pair_id")
        if pid.type == pa.null():
            pid = pa.nulls(n, pa.string())
        pid = pid.cast(pa.string())
        self.problem("pair_id", "missing values", "a non-empty string in every row").add(_np_mask(pc.is_null(pid)), off)
        self.problem("pair_id", "empty values", "a non-empty string in every row").add(_np_mask(pc.equal(pid, "")), off)
        self.problem("pair_id", f"values longer than {MAX_PAIR_ID_CHARS} characters", f"at most {MAX_PAIR_ID_CHARS} characters").add(
            _np_mask(pc.greater(pc.utf8_length(pid), MAX_PAIR_ID_CHARS)), off
        )
        self.pair_ids.append(pid)

        cap_i = batch.schema.get_field_index("caption")
        cap = batch.column(cap_i)
        cap = pa.nulls(n, pa.string()) if cap.type == pa.null() else cap.cast(pa.string())
        self.problem("caption", "missing values (null)", "a string in every row; use \"\" for no text").add(_np_mask(pc.is_null(cap)), off)
        too_long = _np_mask(pc.greater(pc.utf8_length(cap), MAX_CAPTION_CHARS))
        if too_long.any():
            self.truncated.add(too_long, off)
            cap = pc.if_else(pa.array(too_long), pc.utf8_slice_codeunits(cap, 0, MAX_CAPTION_CHARS), cap)
            field = batch.schema.field(cap_i)
            batch = batch.set_column(cap_i, field, cap.cast(field.type))  # keep the user's column type
        self.captions.append(pc.fill_null(cap, ""))
        if self.caps_from:
            self.ids_text.append(pc.fill_null(batch.column(self.caps_from).cast(pa.string()), ""))

        if self.source == "feature_row":
            self._feature_row(batch.column("feature_row"), off)
        elif self.source == "image_embedding":
            self._embedding(batch.column("image_embedding"), off, emb_path)
        else:
            uri = batch.column("image_uri").cast(pa.string())
            self.problem("image_uri", "missing values", "an image URI in every row").add(_np_mask(pc.is_null(uri)), off)
            self.uris.append(uri)
        self.offset += n
        return batch

    def _feature_row(self, col: pa.Array, off: int) -> None:
        t = col.type
        nulls = _np_mask(pc.is_null(col))
        if pa.types.is_floating(t):  # pandas writes int columns with nulls as float; accept whole numbers
            v = np.asarray(pc.fill_null(col, 0).to_numpy(zero_copy_only=False), dtype=np.float64)
            bad = ~nulls & (np.floor(v) != v)
            v = np.where(bad, 0, v).astype(np.int64)
        elif _is_string(t):  # a CSV column with a stray word in its first block is read as text
            text = pc.utf8_trim_whitespace(pc.fill_null(col, ""))
            nulls |= _np_mask(pc.equal(text, ""))
            bad = ~nulls & ~_np_mask(pc.match_substring_regex(text, r"^[+-]?[0-9]{1,18}$"))
            v = np.asarray(pc.cast(pc.if_else(pa.array(bad | nulls), "0", text), pa.int64()).to_numpy(), dtype=np.int64)
        elif pa.types.is_integer(t) or t == pa.null():
            v = np.asarray(pc.fill_null(col.cast(pa.int64()), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
            bad = np.zeros(len(col), dtype=bool)
        else:
            raise _wrong_type("feature_row", t, "integers")
        self.problem("feature_row", "values are not integers", "integers").add(bad, off)
        self.problem("feature_row", "missing values", "a feature row in every row").add(nulls, off)
        ok = ~nulls & ~bad
        self.problem("feature_row", "negative values", "integers >= 0").add((v < 0) & ok, off)
        n = self.n_features
        self.problem(
            "feature_row", f"values out of range (the feature files have {n} rows)", f"integers in [0, {n})"
        ).add((v >= n) & ok, off)
        self.feature_rows.append(v)

    def _embedding(self, col: pa.Array, off: int, emb_path: Path | None) -> None:
        t = col.type
        if _is_string(t):  # CSV: "[0.1, 0.2]" or "0.1 0.2"
            col = self._parse_embedding_text(col, off)
            t = col.type
        if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) or not (
            pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type) or t.value_type == pa.null()
        ):
            raise _wrong_type("image_embedding", t, "lists of floats")
        nulls = _np_mask(pc.is_null(col))
        self.problem("image_embedding", "missing values", "an embedding in every row").add(nulls, off)
        lens = np.asarray(pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
        if self.emb_dim is None and (~nulls).any():
            self.emb_dim = int(lens[~nulls][0])
        d = self.emb_dim
        ragged = ~nulls & (lens != d)
        self.problem("image_embedding", f"lengths differ from {d} (the first row's length)", f"lists of exactly {d} floats").add(ragged, off)
        self.problem("image_embedding", "zero-length embeddings", "lists of at least one float").add(~nulls & (lens == 0), off)
        flat = pc.list_flatten(col)
        values = np.asarray(pc.fill_null(flat.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False), dtype=np.float64)
        bad_vals = ~np.isfinite(values)
        if bad_vals.any():
            parents = pc.list_parent_indices(col).to_numpy(zero_copy_only=False)
            self.problem("image_embedding", "NaN, Inf or null values", "finite numbers").add(np.unique(parents[bad_vals]), off)
        self.feature_rows.append(np.arange(off, off + len(col), dtype=np.int64))
        if emb_path is None or not d or any(r.n for (c, _, _), r in self.problems.items() if c == "image_embedding"):
            return  # a failing manifest writes no features; keep scanning to list every bad row
        if self.emb_writer is None:
            self.emb_writer = _NpyAppender(emb_path, (1, d))
        self.emb_writer.append(values.astype(np.float32).reshape(len(col), 1, d))

    def _parse_embedding_text(self, col: pa.Array, off: int) -> pa.Array:
        body = pc.utf8_trim(pc.fill_null(col, ""), characters="[] \t")
        parts = pc.split_pattern_regex(body, r"[\s,]+")
        flat = pc.list_flatten(parts)
        number = _np_mask(pc.match_substring_regex(flat, r"^[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|nan|NaN|inf|Inf|-inf|-Inf)$"))
        parents = pc.list_parent_indices(parts).to_numpy(zero_copy_only=False)
        empty_rows = _np_mask(pc.equal(body, ""))
        bad = np.unique(parents[~number])
        bad = bad[~empty_rows[bad]]
        self.problem("image_embedding", "text is not a list of numbers", "\"[f1, f2, ...]\" or space-separated floats").add(bad, off)
        vals = pc.cast(pc.if_else(pa.array(number), flat, pa.scalar("nan")), pa.float64())
        lists = pa.ListArray.from_arrays(parts.offsets, vals)
        return pc.if_else(pa.array(pc.is_null(col).to_numpy(zero_copy_only=False) | empty_rows), pa.scalar(None, lists.type), lists)


# ---------------------------------------------------------------------------------------------------
# prepare


def _image_source(names: list[str], *, has_features: bool, extractor) -> str:
    have = [c for c in ("feature_row", "image_embedding") if c in names]
    if extractor is not None:
        if "image_uri" not in names:
            raise ManifestError("an extractor was given but there is no 'image_uri' column", column="image_uri", expected="image URIs to extract from")
        have.append("image_uri")
    if len(have) != 1:
        found = " and ".join(have) if have else "none"
        raise ManifestError(
            f"exactly one image source is needed, found {found}",
            column=have[0] if have else None,
            expected="one of: feature_row (+ feature files), image_embedding, or image_uri + an extractor",
        )
    src = have[0]
    if src == "feature_row" and not has_features:
        raise ManifestError("feature_row is given but no feature files", column="feature_row", expected="the .npy feature files it indexes")
    if src != "feature_row" and has_features:
        raise ManifestError(
            f"feature files were given but the manifest's image source is {src}", column="feature_row", expected="a feature_row column"
        )
    return src


@dataclass
class _TokenizerSpec:
    mode: str  # "bpe" | "file" | "ids" | "fixed"
    path: Path | None = None
    fixed: Any = None  # a ready Tokenizer for "fixed"


def _tokenizer_spec(tokenizer) -> _TokenizerSpec:
    if tokenizer in ("bpe", "ids"):
        return _TokenizerSpec(tokenizer)
    if not isinstance(tokenizer, (str, os.PathLike)):
        return _TokenizerSpec("fixed", fixed=tokenizer)
    p = Path(tokenizer)
    if not p.is_file():
        raise InputError(f"tokenizer '{tokenizer}' is neither 'bpe', 'ids' nor an existing tokenizer.json", expected="'bpe', 'ids' or a path")
    return _TokenizerSpec("file", path=p)


def _rows_of(offsets: np.ndarray, token_mask: np.ndarray) -> np.ndarray:
    """Captions holding at least one flagged token."""
    return np.unique(np.searchsorted(offsets, np.flatnonzero(token_mask), side="right") - 1)


def _tokenize(spec: _TokenizerSpec, captions: pa.Array, ids_text: pa.Array | None, vocab_size: int):
    """-> (tokenizer, offsets, ids, vocab_size)."""
    if spec.mode == "ids" or ids_text is not None:
        col = "caption" if ids_text is None else "caption ids"
        offsets, ids, bad = tk.parse_ids(captions if ids_text is None else ids_text)
        if len(bad):
            raise ManifestError("not a list of token ids", column=col, rows=bad[:MAX_LISTED_ROWS], n_rows=len(bad), expected="comma- or space-separated integers >= 1")
        zero = _rows_of(offsets, ids == 0)
        if len(zero):
            raise ManifestError("token id 0 is reserved for padding", column=col, rows=zero[:MAX_LISTED_ROWS], n_rows=len(zero), expected="ids >= 1")
        v = int(ids.max()) + 1 if len(ids) else 2
        tok = spec.fixed if spec.mode == "fixed" else tk.ids_tokenizer(v)
        if spec.mode == "fixed":
            if v > tk.vocab_size(tok):
                rows = _rows_of(offsets, ids >= tk.vocab_size(tok))
                raise ManifestError("token ids beyond the vocabulary", column=col, rows=rows[:MAX_LISTED_ROWS], n_rows=len(rows), expected=f"ids < {tk.vocab_size(tok)}")
            v = tk.vocab_size(tok)
        return tok, offsets, ids, v
    if spec.mode == "bpe":
        train = captions
        if len(captions) > BPE_TRAIN_SAMPLE:  # merges settle long before this; training time grows linearly
            pick = np.sort(np.random.default_rng(0).choice(len(captions), BPE_TRAIN_SAMPLE, replace=False))
            train = captions.take(pa.array(pick))
        tok = tk.train_bpe(train, vocab_size)
    elif spec.mode == "file":
        try:
            tok = tk.load(spec.path)
        except Exception as e:
            raise InputError(f"cannot load tokenizer '{spec.path}': {e}", expected="a Hugging Face tokenizer.json") from None
    else:
        tok = spec.fixed
    offsets, ids = tk.encode(tok, captions)
    if (ids == 0).any():
        raise InputError("the tokenizer maps text to id 0, which the engine reserves for padding", expected="a tokenizer whose id 0 is a padding token")
    return tok, offsets, ids, tk.vocab_size(tok)


def _fsync_dir(d: Path) -> None:
    for p in d.iterdir():
        if p.is_file():
            with open(p, "rb+") as f:
                os.fsync(f.fileno())
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, out_dir: Path) -> None:
    """Rename ``tmp`` onto ``out_dir``; an existing ``out_dir`` is swapped out only after ``tmp`` is whole."""
    _fsync_dir(tmp)
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out_dir)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False, default=str), encoding="utf-8")


def prepare(
    manifest_path: str | os.PathLike,
    feature_paths: Sequence[str | os.PathLike] | None,
    out_dir: str | os.PathLike,
    *,
    tokenizer: Any = "bpe",
    vocab_size: int = 10_000,
    extractor=None,
    sources: SourcePolicy | None = None,
    progress: ProgressFn | None = None,
) -> PreparedCorpus:
    """Validate a manifest (+ feature shards), tokenize its captions and write a prepared corpus.

    ``tokenizer``: ``"bpe"`` trains a byte-level BPE of ``vocab_size`` on the captions; a path loads a
    ``tokenizer.json``; ``"ids"`` reads captions as comma/space-separated ids. ``extractor`` (e.g.
    ``GridExtractor()``) computes features from ``image_uri`` under ``sources`` (default: files under the
    manifest's folder only). Raises ``InputError`` subclasses naming column, rows and what was expected;
    on any error ``out_dir`` is left as it was.
    """
    return _prepare(
        Path(manifest_path),
        list(feature_paths or []),
        Path(out_dir),
        spec=_tokenizer_spec(tokenizer),
        vocab_size=vocab_size,
        extractor=extractor,
        sources=sources,
        progress=progress,
    )


def _prepare(
    manifest_path: Path,
    feature_paths: list,
    out_dir: Path,
    *,
    spec: _TokenizerSpec,
    vocab_size: int,
    extractor,
    sources: SourcePolicy | None,
    progress: ProgressFn | None,
    ids_column: str | None = None,
    drop_columns: Sequence[str] = (),
    report_extra: dict[str, Any] | None = None,
) -> PreparedCorpus:
    t0 = time.perf_counter()
    out_dir = out_dir.absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if sources is None:
        sources = SourcePolicy(allowed_roots=[str(manifest_path.parent.resolve())])
    if sources.base_dir is None:
        sources = SourcePolicy(**{**sources.__dict__, "base_dir": str(manifest_path.parent.resolve())})
    fmt, _ = manifest_format(manifest_path)
    info = check_features(feature_paths, progress=progress) if feature_paths else None
    column_types: dict[str, pa.DataType] = {}
    for _attempt in range(8):
        tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            result = _prepare_into(
                tmp, manifest_path, fmt, info, out_dir, spec=spec, vocab_size=vocab_size, extractor=extractor,
                sources=sources, progress=progress, ids_column=ids_column, column_types=column_types,
                drop_columns=drop_columns, report_extra=report_extra or {}, t0=t0,
            )
            _publish(tmp, out_dir)
        except _SchemaDrift as e:
            shutil.rmtree(tmp, ignore_errors=True)
            # A carried column's type was guessed from the first block; re-read with it pinned.
            if fmt == "csv" and e.drift_column and e.drift_column not in column_types:
                column_types[e.drift_column] = pa.string()
            elif fmt == "json" and not column_types:
                column_types = _json_schema_by_scan(manifest_path, manifest_format(manifest_path)[1])
            else:
                raise ManifestError(e.message, column=e.column, expected="one type per column") from None
            continue
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        report = result
        corpus = _load_corpus(out_dir)
        _tell(progress, "done", report["n_pairs"], report["n_pairs"])
        return PreparedCorpus(out_dir, corpus, report)
    raise ManifestError("column types keep changing through the file", expected="one type per column")


def _prepare_into(
    tmp: Path, manifest_path: Path, fmt: str, info: FeatureInfo | None, out_dir: Path, *, spec, vocab_size, extractor,
    sources, progress, ids_column, column_types, drop_columns, report_extra, t0,
):
    total_rows = None
    if fmt == "parquet" and not manifest_path.name.lower().endswith(".gz"):
        try:
            total_rows = pq.ParquetFile(manifest_path).metadata.num_rows
        except Exception:
            total_rows = None  # read_manifest raises the precise error
    check: _ManifestCheck | None = None
    writer: pq.ParquetWriter | None = None
    emb_path = tmp / "features_inline.npy"
    schema = None
    try:
        for batch in read_manifest(manifest_path, column_types=column_types):
            if check is None:
                _ManifestCheck.check_schema(batch.schema)
                src = _image_source(batch.schema.names, has_features=info is not None, extractor=extractor)
                check = _ManifestCheck(source=src, n_features=info.n if info else None, caps_from=ids_column)
                schema = pa.schema([f for f in batch.schema if f.name not in drop_columns])
                writer = pq.ParquetWriter(tmp / "manifest.parquet", schema)
            batch = check.add(batch, emb_path)
            if batch.schema != schema:
                batch = pa.RecordBatch.from_arrays([batch.column(f.name).cast(f.type) for f in schema], schema=schema)
            elif drop_columns:
                batch = batch.select(schema.names)
            writer.write_batch(batch)
            _tell(progress, "manifest", check.offset, total_rows)
    finally:
        if writer is not None:
            writer.close()
        if check is not None and check.emb_writer is not None:
            check.emb_writer.close()
    check.raise_first()
    n = check.offset

    pair_ids = pa.chunked_array(check.pair_ids, type=pa.string()).combine_chunks()
    if len(pc.unique(pair_ids)) != n:
        counts = pc.value_counts(pair_ids)
        dup = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
        rows = np.flatnonzero(_np_mask(pc.is_in(pair_ids, value_set=dup)))
        raise ManifestError("duplicate values", column="pair_id", rows=rows[:MAX_LISTED_ROWS], n_rows=len(rows), expected="unique strings")

    warnings: list[dict[str, Any]] = []
    if check.truncated.n:
        warnings.append({
            "column": "caption", "rows": check.truncated.rows, "n_rows": check.truncated.n,
            "message": f"{check.truncated.n} caption(s) longer than {MAX_CAPTION_CHARS} characters were truncated",
        })

    if check.source == "feature_row":
        feature_row = np.concatenate(check.feature_rows)
        feature_files = list(info.paths)
        regions, dim, dtype = info.regions, info.dim, info.dtype
    elif check.source == "image_embedding":
        feature_row = np.concatenate(check.feature_rows)
        feature_files = [str(out_dir / emb_path.name)]
        regions, dim, dtype = 1, int(check.emb_dim), "float32"
    else:
        uris = pa.chunked_array(check.uris, type=pa.string()).combine_chunks()
        feature_row = _extract(uris, extractor, sources, emb_path, progress)
        feature_files = [str(out_dir / emb_path.name)]
        regions, dim, dtype = int(extractor.regions), int(extractor.dim), "float32"

    captions = pa.chunked_array(check.captions, type=pa.string()).combine_chunks()
    ids_text = pa.chunked_array(check.ids_text, type=pa.string()).combine_chunks() if ids_column else None
    _tell(progress, "tokenize", 0, n)
    tok, offsets, ids, v = _tokenize(spec, captions, ids_text, vocab_size)
    _tell(progress, "tokenize", n, n)
    caption_list = captions.to_pylist()
    blank = int(np.sum(_np_mask(pc.equal(pc.utf8_trim_whitespace(captions), ""))))

    # Corpus.save records feature paths; inline features are recorded where they will live after rename.
    local_features = feature_files if check.source == "feature_row" else [str(emb_path)]
    store = FeatureStore.open(local_features)
    corpus = Corpus(store, feature_row, offsets, ids, v, pair_ids=pair_ids.to_pylist(), captions=caption_list)
    _tell(progress, "write", 0, n)
    corpus.save(tmp, feature_files)
    tk.save(tok, tmp / "tokenizer.json")
    report = {
        "n_pairs": n,
        "n_images": int(len(np.unique(feature_row))),
        "n_feature_rows": int(store.n),
        "regions": int(regions),
        "dim": int(dim),
        "dtype": dtype,
        "vocab_size": int(v),
        "tokenizer": spec.mode,
        "n_tokens": int(len(ids)),
        "n_blank_captions": blank,
        "image_source": check.source,
        "manifest": manifest_path.name,
        "format": fmt,
        "feature_files": feature_files,
        "warnings": warnings,
        **report_extra,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    _write_json(tmp / "report.json", report)
    del store, corpus
    return report


def _extract(uris: pa.Array, extractor, sources: SourcePolicy, emb_path: Path, progress) -> np.ndarray:
    """One feature row per distinct URI (pairs sharing an image share its row); every URI is checked
    against the policy before any is read, so a bad one fails the ingest before slow fetching starts."""
    enc = pc.dictionary_encode(uris)
    uniq = enc.dictionary.to_pylist()
    feature_row = np.asarray(enc.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    refused: dict[str, _Rows] = {}
    first_msg: dict[str, SourceError] = {}
    for k, u in enumerate(uniq):
        try:
            check_uri(u, sources)
        except SourceError as e:
            key = e.message.split("'")[0] + (e.expected or "")
            first_msg.setdefault(key, e)
            refused.setdefault(key, _Rows()).add(feature_row == k, 0)
    for key, rows in refused.items():
        e = first_msg[key]
        raise SourceError(e.message, column="image_uri", rows=sorted(rows.rows)[:MAX_LISTED_ROWS], n_rows=rows.n, expected=e.expected)
    writer = _NpyAppender(emb_path, (int(extractor.regions), int(extractor.dim)))
    try:
        for k, u in enumerate(uniq):
            try:
                data = open_uri(u, sources)
                feats = extractor(data)
            except SourceError as e:
                rows = np.flatnonzero(feature_row == k)
                raise SourceError(e.message, column="image_uri", rows=rows[:MAX_LISTED_ROWS], n_rows=len(rows), expected=e.expected) from None
            except ImageDecodeError as e:
                rows = np.flatnonzero(feature_row == k)
                raise ManifestError(f"'{u}' is not a readable image ({e})", column="image_uri", rows=rows[:MAX_LISTED_ROWS], n_rows=len(rows), expected="PNG/JPEG/WebP/... image files") from None
            writer.append(np.asarray(feats, dtype=np.float32)[None])
            _tell(progress, "extract", k + 1, len(uniq))
    finally:
        writer.close()
    return feature_row


def _load_corpus(d: Path) -> Corpus:
    meta = json.loads((d / "corpus.json").read_text())
    paths = []
    for p in meta["feature_paths"]:
        # Inline features travel with the directory; if it was moved, find them beside the metadata.
        if not Path(p).exists() and (d / Path(p).name).exists():
            p = str(d / Path(p).name)
        paths.append(p)
    return Corpus.load(d, feature_paths=paths)


def load_prepared(directory: str | os.PathLike) -> PreparedCorpus:
    """Open a directory written by ``prepare``/``prepare_precomp`` (features stay memory-mapped)."""
    d = Path(directory)
    if not (d / "report.json").is_file() or not (d / "corpus.json").is_file():
        raise InputError(f"'{d}' is not a prepared corpus directory", expected="a directory written by prepare()")
    report = json.loads((d / "report.json").read_text(encoding="utf-8"))
    return PreparedCorpus(d, _load_corpus(d), report)


# ---------------------------------------------------------------------------------------------------
# NCR / Noise-of-Web precomputed layout


def _find_vocab(directory: Path, name: str) -> Path | None:
    cands: list[Path] = []
    for d in (directory, directory / "vocab", directory.parent / "vocab"):
        if d.is_dir():
            cands += sorted(d.glob("*.json"))
    cands = [c for c in cands if "vocab" in c.name.lower()]
    named = [c for c in cands if name.lower() in c.name.lower()]
    return (named or cands or [None])[0]


def _read_vocab(path: Path) -> dict[str, int]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read vocabulary '{path.name}': {e}", expected='JSON {"word2idx": {...}, "idx2word": {...}, "idx": n}') from None
    if not isinstance(obj, dict) or not isinstance(obj.get("word2idx"), dict):
        raise InputError(f"vocabulary '{path.name}' has no word2idx mapping", expected='JSON {"word2idx": {...}, "idx2word": {...}, "idx": n}')
    return {str(w): int(i) for w, i in obj["word2idx"].items()}


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n")
        raise ManifestError(f"non-UTF-8 bytes in '{path.name}'", rows=[line], expected="UTF-8 text") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln.rstrip("\r") for ln in lines]


def prepare_precomp(
    directory: str | os.PathLike,
    split: str,
    out_dir: str | os.PathLike,
    *,
    tokenizer: Any = "bpe",
    vocab_size: int = 10_000,
    captions: str | None = None,
    vocab: str | os.PathLike | None = None,
    progress: ProgressFn | None = None,
) -> PreparedCorpus:
    """Import the NCR / Noise-of-Web layout: ``{split}_ims.npy`` plus ``{split}_caps.txt`` (raw text,
    tokenized like ``prepare``) or ``{split}_caps_{name}.txt`` (comma-separated ids; ``vocab`` JSON with
    ``word2idx``, found beside the files or in a ``vocab/`` folder when not given).

    With k times more caption lines than images, caption i belongs to image i // k; pair ids are
    ``f"{split}_{i}"``. ``captions`` picks a caption file by name when several exist.
    """
    d = Path(directory)
    ims = d / f"{split}_ims.npy"
    if not ims.is_file():
        raise FeatureError("file not found", file=ims.name, expected=f"{split}_ims.npy in '{d}'")
    if captions is not None:
        caps = d / captions
    elif (d / f"{split}_caps.txt").is_file():
        caps = d / f"{split}_caps.txt"
    else:
        found = sorted(d.glob(f"{split}_caps_*.txt"))
        if not found:
            raise ManifestError(f"no caption file for split '{split}'", expected=f"{split}_caps.txt or {split}_caps_<name>.txt in '{d}'")
        caps = found[0]
    if not caps.is_file():
        raise ManifestError(f"caption file '{caps.name}' not found", expected="an existing caption file")
    is_ids = caps.stem != f"{split}_caps"
    lines = _read_lines(caps)
    n_img = int(np.load(ims, mmap_mode="r").shape[0])
    if not lines:
        raise ManifestError(f"'{caps.name}' has no lines", expected="one caption per line")
    if n_img == 0 or len(lines) % n_img:
        raise ManifestError(
            f"'{caps.name}' has {len(lines)} lines for {n_img} images",
            expected="a whole number k of captions per image (caption i belongs to image i // k)",
        )
    k = len(lines) // n_img
    idx = np.arange(len(lines), dtype=np.int64)
    cols: dict[str, pa.Array] = {
        "pair_id": pc.binary_join_element_wise(pa.scalar(split), pa.array(idx.astype(str)), "_"),
        "caption": pa.array(lines, pa.string()),
        "feature_row": pa.array(idx // k),
    }
    spec = _tokenizer_spec(tokenizer)
    ids_column = None
    if is_ids:
        vocab_path = Path(vocab) if vocab is not None else _find_vocab(d, caps.stem[len(f"{split}_caps_") :])
        if vocab_path is None or not vocab_path.is_file():
            raise InputError(f"'{caps.name}' holds token ids but no vocabulary JSON was found", expected="vocab=path/to/vocab.json")
        word2idx = _read_vocab(vocab_path)
        idx2word = np.empty(max(word2idx.values()) + 1, dtype=object)
        idx2word[:] = "<unk>"
        for w, i in word2idx.items():
            idx2word[i] = w
        offsets, ids, bad = tk.parse_ids(cols["caption"])
        if len(bad):
            raise ManifestError("not a list of token ids", column="caption", rows=bad[:MAX_LISTED_ROWS], n_rows=len(bad), expected="comma-separated integers")
        beyond = ids >= len(idx2word)
        if beyond.any():
            rows = _rows_of(offsets, beyond)
            raise ManifestError("token ids beyond the vocabulary", column="caption", rows=rows[:MAX_LISTED_ROWS], n_rows=len(rows), expected=f"ids < {len(idx2word)}")
        # Readable text for pseudo-caption output; the engine trains on the ids themselves.
        words = idx2word[ids]
        text = [" ".join(words[offsets[i] : offsets[i + 1]]) for i in range(len(lines))]
        cols["caption_ids"] = cols["caption"]
        cols["caption"] = pa.array(text, pa.string())
        spec = _TokenizerSpec("fixed", fixed=tk.vocab_tokenizer(word2idx))
        ids_column = "caption_ids"
    out_dir = Path(out_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.src-", dir=out_dir.parent) as work:
        manifest = Path(work) / f"{split}.parquet"
        pq.write_table(pa.table(cols), manifest)
        result = _prepare(
            manifest, [ims], out_dir, spec=spec, vocab_size=vocab_size, extractor=None, sources=None, progress=progress,
            ids_column=ids_column, drop_columns=("caption_ids",),
            report_extra={"source_layout": "precomp", "split": split, "captions_file": caps.name, "captions_per_image": k},
        )
    return result
