"""Pairs over memory-mapped image features and ragged token ids.

A ``Corpus`` is what the engine trains on. Image features stay on disk (read row runs with ``os.pread``)
and are gathered one batch at a time, so a 5 GB feature file never sits in RAM. Several pairs may
point at the same feature row (one image, many captions).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np


class NpyShard:
    """A ``.npy`` array read with ``os.pread``: rows go through the page cache, never into this
    process's resident memory as a memory map's touched pages would (a 5 GB file read once through
    ``mmap`` shows up as 5 GB of RSS)."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            self.offset = f.tell()
        if fortran and len(shape) > 1:
            raise ValueError(f"{self.path}: Fortran-ordered arrays are not supported")
        if dtype.hasobject:
            raise ValueError(f"{self.path}: object arrays are not supported")
        self.shape, self.dtype = tuple(int(x) for x in shape), np.dtype(dtype)
        self.ndim = len(self.shape)
        self.row_items = int(np.prod(self.shape[1:], dtype=np.int64)) if self.ndim > 1 else 1
        self.row_bytes = self.row_items * self.dtype.itemsize
        need = self.offset + self.shape[0] * self.row_bytes
        if os.path.getsize(self.path) < need:
            raise ValueError(f"{self.path}: truncated ({os.path.getsize(self.path)} bytes, header promises {need})")
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def _fileno(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_fd"} | {"_fd": None}

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a fresh array of shape (stop - start, *row shape)."""
        n = max(0, min(stop, self.shape[0]) - start)
        buf = os.pread(self._fileno(), n * self.row_bytes, self.offset + start * self.row_bytes)
        return np.frombuffer(buf, dtype=self.dtype).reshape((n, *self.shape[1:]))

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows in the given order; sorted runs of consecutive rows are read in one call."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        if len(rows) == 0:
            return out
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        breaks = np.flatnonzero(np.diff(srt) != 1) + 1
        for run_idx in np.split(np.arange(len(srt)), breaks):
            lo, hi = int(srt[run_idx[0]]), int(srt[run_idx[-1]]) + 1
            out[order[run_idx]] = self.rows(lo, hi)
        return out

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass


class FeatureStore:
    """Image features split over one or more ``.npy`` shards, addressed by a global row index.

    Every shard is ``[n_i, R, D]`` (regions) or ``[n_i, D]`` (global embeddings, seen as R=1),
    float16 or float32; all shards share R and D.
    """

    def __init__(self, shards: Sequence[np.ndarray]):
        assert len(shards) > 0, "at least one feature shard"
        self.shards = list(shards)
        self.shape3 = [tuple(s.shape) if s.ndim == 3 else (s.shape[0], 1, s.shape[1]) for s in self.shards]
        r, d = self.shape3[0][1:]
        for shape in self.shape3:
            assert shape[1:] == (r, d), f"shard shape {shape} disagrees with (R={r}, D={d})"
        self.regions, self.dim = int(r), int(d)
        sizes = np.array([shape[0] for shape in self.shape3], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)])
        self.n = int(self.starts[-1])

    @classmethod
    def open(cls, paths: Sequence[str | os.PathLike]) -> "FeatureStore":
        return cls([NpyShard(p) for p in paths])

    def _take(self, s: int, local: np.ndarray) -> np.ndarray:
        shard = self.shards[s]
        x = shard.take(local) if isinstance(shard, NpyShard) else np.asarray(shard[np.sort(local)])[np.argsort(np.argsort(local, kind="stable"), kind="stable")]
        return x.reshape(len(local), self.regions, self.dim)

    def get(self, rows: np.ndarray) -> np.ndarray:
        """Gather rows -> float32 ``(B, R, D)``; reads only those rows from disk."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.regions, self.dim), dtype=np.float32)
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        for s in np.unique(shard):
            m = np.nonzero(shard == s)[0]
            out[m] = self._take(int(s), rows[m] - self.starts[s])
        return out

    def iter_blocks(self, block: int = 4096) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, self.n, block):
            rows = np.arange(start, min(start + block, self.n))
            yield start, self.get(rows)


@dataclass
class Corpus:
    """Everything the engine needs about N pairs.

    ``token_ids[token_offsets[i]:token_offsets[i+1]]`` are pair i's caption ids (0 is padding and
    never a real token; an empty caption has no ids).
    """

    features: FeatureStore
    feature_row: np.ndarray  # (N,) int64, row of each pair's image in ``features``
    token_offsets: np.ndarray  # (N+1,) int64
    token_ids: np.ndarray  # (T,) int32
    vocab_size: int
    pair_ids: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)  # raw text, used for pseudo-caption output

    def __post_init__(self) -> None:
        n = len(self.feature_row)
        assert self.token_offsets.shape == (n + 1,), "token_offsets must have N+1 entries"
        assert not self.pair_ids or len(self.pair_ids) == n
        assert not self.captions or len(self.captions) == n

    def __len__(self) -> int:
        return len(self.feature_row)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.token_offsets)

    def tokens(self, idx: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Padded ids ``(B, L)`` int64 and lengths ``(B,)``; L = min(longest, max_len), at least 1."""
        starts, ends = self.token_offsets[idx], self.token_offsets[idx + 1]
        lens = np.minimum(ends - starts, max_len)
        width = max(1, int(lens.max()) if len(lens) else 1)
        out = np.zeros((len(idx), width), dtype=np.int64)
        for k, (s, n) in enumerate(zip(starts, lens)):
            out[k, :n] = self.token_ids[s : s + n]
        return out, lens

    def images(self, idx: np.ndarray) -> np.ndarray:
        return self.features.get(self.feature_row[idx])

    # -- on-disk form of a prepared corpus (what ingest writes and training reads) ------------------

    def save(self, directory: str | os.PathLike, feature_paths: Sequence[str | os.PathLike]) -> None:
        """Write ids and metadata beside references to the feature shards (not copied)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / "feature_row.npy", self.feature_row.astype(np.int64))
        np.save(d / "token_offsets.npy", self.token_offsets.astype(np.int64))
        np.save(d / "token_ids.npy", self.token_ids.astype(np.int32))
        meta = {
            "vocab_size": int(self.vocab_size),
            "feature_paths": [str(Path(p).resolve()) for p in feature_paths],
        }
        (d / "corpus.json").write_text(json.dumps(meta, indent=1))
        (d / "text.json").write_text(json.dumps({"pair_ids": self.pair_ids, "captions": self.captions}, ensure_ascii=False))

    @classmethod
    def load(cls, directory: str | os.PathLike, feature_paths: Sequence[str] | None = None) -> "Corpus":
        """Read a prepared corpus; ``feature_paths`` overrides the shard paths it recorded."""
        d = Path(directory)
        meta = json.loads((d / "corpus.json").read_text())
        text = json.loads((d / "text.json").read_text(encoding="utf-8"))
        return cls(
            features=FeatureStore.open(feature_paths if feature_paths is not None else meta["feature_paths"]),
            feature_row=np.load(d / "feature_row.npy"),
            token_offsets=np.load(d / "token_offsets.npy"),
            token_ids=np.load(d / "token_ids.npy", mmap_mode="r"),
            vocab_size=int(meta["vocab_size"]),
            pair_ids=text["pair_ids"],
            captions=text["captions"],
        )


def ragged(seqs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """List of id lists -> (offsets (N+1,), flat ids (T,))."""
    lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    flat = np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=int(offsets[-1]))
    return offsets, flat


def subset(corpus: Corpus, idx: np.ndarray) -> Corpus:
    """The pairs ``idx`` of ``corpus`` (features shared, ids copied)."""
    idx = np.asarray(idx, dtype=np.int64)
    seqs = [corpus.token_ids[corpus.token_offsets[i] : corpus.token_offsets[i + 1]] for i in idx]
    offsets, flat = ragged(seqs)
    return Corpus(
        features=corpus.features,
        feature_row=corpus.feature_row[idx],
        token_offsets=offsets,
        token_ids=flat,
        vocab_size=corpus.vocab_size,
        pair_ids=[corpus.pair_ids[i] for i in idx] if corpus.pair_ids else [],
        captions=[corpus.captions[i] for i in idx] if corpus.captions else [],
    )
