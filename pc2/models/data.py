"""Pairs over memory-mapped image features and ragged token ids.

A ``Corpus`` is what the engine trains on. Image features stay on disk (``np.load(mmap_mode="r")``)
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


class FeatureStore:
    """Image features split over one or more ``.npy`` shards, addressed by a global row index.

    Every shard is ``[n_i, R, D]`` (regions) or ``[n_i, D]`` (global embeddings, seen as R=1),
    float16 or float32; all shards share R and D.
    """

    def __init__(self, shards: Sequence[np.ndarray]):
        assert len(shards) > 0, "at least one feature shard"
        self.shards = [s if s.ndim == 3 else s.reshape(s.shape[0], 1, s.shape[1]) for s in shards]
        r, d = self.shards[0].shape[1:]
        for s in self.shards:
            assert s.shape[1:] == (r, d), f"shard shape {s.shape} disagrees with (R={r}, D={d})"
        self.regions, self.dim = int(r), int(d)
        sizes = np.array([s.shape[0] for s in self.shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)])
        self.n = int(self.starts[-1])

    @classmethod
    def open(cls, paths: Sequence[str | os.PathLike]) -> "FeatureStore":
        return cls([np.load(p, mmap_mode="r") for p in paths])

    def get(self, rows: np.ndarray) -> np.ndarray:
        """Gather rows -> float32 ``(B, R, D)``; reads only those rows from disk."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.regions, self.dim), dtype=np.float32)
        if len(self.shards) == 1:
            order = np.argsort(rows, kind="stable")  # sequential reads are faster on a memmap
            out[order] = self.shards[0][rows[order]]
            return out
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        for s in np.unique(shard):
            m = shard == s
            local = rows[m] - self.starts[s]
            order = np.argsort(local, kind="stable")
            idx = np.nonzero(m)[0][order]
            out[idx] = self.shards[s][local[order]]
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
