"""Search a finished job: FAISS indexes over its joint-space vectors, queries by text, pair or vector.

A job's engine workdir holds ``model.pt``, ``pred.npy`` and (``vse`` backbone) ``img_emb.npy`` /
``cap_emb.npy``. :func:`build_job_indexes` turns them into ``workdir/index/``:

| file | vectors | ids |
|---|---|---|
| ``image.faiss`` | image vectors, L2-normalised | pair index |
| ``caption.faiss`` | caption vectors, L2-normalised | pair index |
| ``trusted_pred.faiss`` | pseudo-class predictions of trusted (clean) pairs, L2-normalised | pair index |
| ``labels.npy`` | bool noisy per pair (written when the labels are known) | |
| ``meta.json`` | pair count, vector width, whether the backbone is indexable | |

:class:`JobSearcher` answers queries from those files plus the prepared corpus (captions, pair ids,
tokenizer); everything is loaded on first use and shared between calls. Scores are cosine
similarities in the joint space.

Also here: :func:`duplicate_groups`, near-duplicate images of a corpus from its raw features.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import index as fx
from .data import Corpus
from .dedup import near_duplicates

INDEX_DIR = "index"
IMAGE_INDEX = "image.faiss"
CAPTION_INDEX = "caption.faiss"
TRUSTED_PRED_INDEX = "trusted_pred.faiss"
LABELS = "labels.npy"
META = "meta.json"
DIRECTIONS = ("text2image", "image2text", "image2image", "text2text")
MAX_K = 1000
OVERFETCH = 4  # a filtered search asks the index for k*4 hits first, then widens by 4x each round
DEFAULT_DUPLICATE_THRESHOLD = 0.97
# Chinese characters, kana and CJK punctuation: text in these scripts is written without spaces.
SPACELESS_RANGES = ((0x2E80, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0xFF00, 0xFFEF))


class SearchError(ValueError):
    """A query the job cannot answer as given; ``field`` names the part of the query to fix."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotSearchable(SearchError):
    """The job itself has no usable indexes (sgraf backbone, or indexes never built)."""


# ---------------------------------------------------------------------------------------------
# building


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.npy")
    with open(tmp, "wb") as f:
        np.save(f, arr)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def build_job_indexes(workdir: str | os.PathLike, *, noisy: np.ndarray | None = None) -> dict[str, Path]:
    """Write ``workdir/index/`` from the vectors ``curate`` left in ``workdir``; returns name -> path.

    ``noisy`` (bool ``[N]``, e.g. ``CurationResult.noisy``) decides which pairs are trusted for
    ``trusted_pred.faiss`` and is stored as ``labels.npy`` for label filters; without it every pair
    counts as trusted and no labels are stored. A job without joint-space vectors (``sgraf``) gets
    only the prediction index and is marked not indexable. Re-running replaces every file.
    """
    workdir = Path(workdir)
    pred_path = workdir / "pred.npy"
    if not pred_path.is_file():
        raise FileNotFoundError(f"no pred.npy in {workdir}: run curate with this workdir first")
    pred = np.load(pred_path, mmap_mode="r")
    n = len(pred)
    out = workdir / INDEX_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / META).unlink(missing_ok=True)  # readers see "no indexes" rather than a half-replaced set
    if noisy is not None:
        noisy = np.asarray(noisy, dtype=bool)
        if noisy.shape != (n,):
            raise fx.IndexInputError("noisy", f"{n} booleans, one per pair", f"shape {noisy.shape}")

    written: dict[str, Path] = {}
    dim = None
    for vec_name, file in (("img_emb", IMAGE_INDEX), ("cap_emb", CAPTION_INDEX)):
        src = workdir / f"{vec_name}.npy"
        if not src.is_file():
            (out / file).unlink(missing_ok=True)  # a stale index from an earlier run must not answer
            continue
        xb = np.load(src, mmap_mode="r")
        if len(xb) != n:
            raise fx.IndexInputError(vec_name, f"{n} rows like pred.npy", f"{len(xb)} rows")
        dim = int(xb.shape[1])
        # The stored vectors are a mean of two unit vectors; renormalise so inner product is cosine.
        fx.save(fx.build(fx.normalize(xb), metric="ip"), out / file)
        written[file] = out / file

    trusted = np.arange(n, dtype=np.int64) if noisy is None else np.nonzero(~noisy)[0].astype(np.int64)
    if len(trusted):
        fx.save(fx.build(fx.normalize(np.asarray(pred)[trusted]), ids=trusted, metric="ip"), out / TRUSTED_PRED_INDEX)
        written[TRUSTED_PRED_INDEX] = out / TRUSTED_PRED_INDEX
    else:
        (out / TRUSTED_PRED_INDEX).unlink(missing_ok=True)

    if noisy is not None:
        _atomic_npy(out / LABELS, noisy)
        written[LABELS] = out / LABELS
    else:
        (out / LABELS).unlink(missing_ok=True)
    meta = {"n_pairs": n, "dim": dim, "indexable": IMAGE_INDEX in written and CAPTION_INDEX in written,
            "labels": noisy is not None, "n_trusted": int(len(trusted))}
    # meta.json last: its presence says every other file of this build is in place
    _atomic_write(out / META, json.dumps(meta).encode())
    written[META] = out / META
    return written


# ---------------------------------------------------------------------------------------------
# searching


def _as_noisy(labels: Any, n: int) -> np.ndarray:
    """Caller-supplied labels (bool noisy, or "clean"/"noisy" strings) -> bool noisy ``[n]``."""
    arr = np.asarray(labels)
    if arr.shape != (n,):
        raise SearchError("labels", f"expected {n} labels, one per pair, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind in "US" or arr.dtype == object:
        text = arr.astype(str)
        bad = ~np.isin(text, ["clean", "noisy"])
        if bad.any():
            raise SearchError("labels", f"labels must be 'clean' or 'noisy', got {text[bad][0]!r}")
        return text == "noisy"
    raise SearchError("labels", f"expected booleans (True = noisy) or 'clean'/'noisy', got dtype {arr.dtype}")


class JobSearcher:
    """Queries over one finished job. ``workdir`` is the engine workdir, ``prepared_dir`` the corpus.

    Safe to share between threads: lazy loads happen under a lock and the indexes are only searched.
    """

    def __init__(self, workdir: str | os.PathLike, prepared_dir: str | os.PathLike, *, device: str = "cpu"):
        self.workdir = Path(workdir)
        self.prepared_dir = Path(prepared_dir)
        self.device = device
        self._lock = threading.RLock()
        self._meta: dict | None = None
        self._text: tuple[list[str], list[str]] | None = None
        self._pair_index: dict[str, int] | None = None
        self._labels: np.ndarray | None = None
        self._model = None
        self._tok = None
        self._vecs: dict[str, np.ndarray] = {}

    @property
    def index_dir(self) -> Path:
        return self.workdir / INDEX_DIR

    # -- lazy state ---------------------------------------------------------------------------
    @property
    def meta(self) -> dict:
        with self._lock:
            if self._meta is None:
                path = self.index_dir / META
                if not path.is_file():
                    raise NotSearchable("job", f"no search indexes in {self.index_dir}; build them with build_job_indexes")
                self._meta = json.loads(path.read_text())
            return self._meta

    def _index(self, name: str):
        return fx.cached(self.index_dir / name)

    def _texts(self) -> tuple[list[str], list[str]]:
        with self._lock:
            if self._text is None:
                # Only the text side is needed; the features stay unopened.
                text = json.loads((self.prepared_dir / "text.json").read_text(encoding="utf-8"))
                self._text = (text["pair_ids"], text["captions"])
            return self._text

    def pair_index(self, pair_id: str) -> int:
        with self._lock:
            if self._pair_index is None:
                self._pair_index = {p: i for i, p in enumerate(self._texts()[0])}
        i = self._pair_index.get(pair_id)
        if i is None:
            raise SearchError("pair_id", f"no pair {pair_id!r} in this job")
        return i

    def labels(self) -> np.ndarray | None:
        """Bool noisy per pair as stored by :func:`build_job_indexes`, or None."""
        with self._lock:
            if self._labels is None and self.meta.get("labels"):
                self._labels = np.load(self.index_dir / LABELS)
            return self._labels

    def _vectors(self, name: str) -> np.ndarray:
        with self._lock:
            if name not in self._vecs:
                self._vecs[name] = np.load(self.workdir / f"{name}.npy", mmap_mode="r")
            return self._vecs[name]

    def _encoder(self):
        with self._lock:
            if self._model is None:
                from .engine import load_model
                from . import tokenizer

                self._model = load_model(self.workdir / "model.pt", device=self.device)
                self._tok = tokenizer.load(self.prepared_dir / "tokenizer.json")
            return self._model, self._tok

    # -- queries ------------------------------------------------------------------------------
    def encode_text(self, text: str) -> np.ndarray:
        """A caption -> its unit joint-space vector ``(E,)`` with the job's tokenizer and text encoder."""
        from . import tokenizer
        from .engine import encode_captions

        if not isinstance(text, str) or not text.strip():
            raise SearchError("text", "the query text is empty; give some words to search for")
        (cfg, nets), tok = self._encoder()
        if not text[0].isspace() and not any(lo <= ord(text[0]) <= hi for lo, hi in SPACELESS_RANGES):
            # Space-split BPE learns " word" (space in front) for every word but a caption's first, so a
            # bare query word would become tokens training rarely saw (top-10 precision on a synthetic
            # concept query: 0.2 without the space, 0.8 with it). Scripts written without spaces keep
            # the text as it is; word-level tokenizers ignore the space.
            text = " " + text
        offsets, ids = tokenizer.encode(tok, [text])
        n_tok = int(min(offsets[1] - offsets[0], cfg.max_tokens))
        if n_tok == 0:
            raise SearchError("text", "the query text has no tokens the job's tokenizer knows")
        padded = np.zeros((1, n_tok), dtype=np.int64)
        padded[0] = ids[:n_tok]
        return encode_captions(nets, padded, np.array([n_tok], dtype=np.int64))[0]

    def search(
        self,
        *,
        text: str | None = None,
        pair_id: str | None = None,
        vector: Sequence[float] | np.ndarray | None = None,
        direction: str = "text2image",
        k: int = 10,
        label: str | None = None,
        labels: Any = None,
    ) -> list[dict[str, Any]]:
        """Nearest pairs to one query -> ``[{pair_id, index, score, caption, label}]``, best first.

        Exactly one of ``text`` (encoded by the job's text encoder), ``pair_id`` (that pair's image
        vector for ``image2*`` directions, its caption vector for ``text2*``) or ``vector`` (length E,
        already in the joint space). ``direction`` picks the side searched: ``*2image`` the images,
        ``*2text`` the captions; a pair query within one modality leaves the pair itself out.
        ``label`` ("clean"/"noisy") keeps only pairs with that label, from ``labels`` (bool noisy or
        strings, one per pair) when given, else from the labels stored with the indexes.
        """
        if direction not in DIRECTIONS:
            raise SearchError("direction", f"must be one of {list(DIRECTIONS)}, got {direction!r}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
            raise SearchError("k", f"must be an integer from 1 to {MAX_K}, got {k!r}")
        given = [name for name, v in (("text", text), ("pair_id", pair_id), ("vector", vector)) if v is not None]
        if len(given) != 1:
            raise SearchError("query", f"give exactly one of text, pair_id or vector (got {given or 'none'})")
        if label not in (None, "clean", "noisy"):
            raise SearchError("label", f"must be 'clean' or 'noisy', got {label!r}")
        meta = self.meta
        if not meta.get("indexable"):
            raise NotSearchable("job", "this job's backbone (sgraf) scores pairs jointly and has no vectors to "
                                       "search; train with backbone='vse' to search it")
        n, dim = int(meta["n_pairs"]), int(meta["dim"])
        source, target = direction.split("2")
        exclude = -1
        if text is not None:
            if source != "text":
                raise SearchError("direction", f"a text query searches with text2image or text2text, not {direction}")
            xq = self.encode_text(text)
        elif pair_id is not None:
            i = self.pair_index(pair_id)
            xq = fx.normalize(np.asarray(self._vectors("img_emb" if source == "image" else "cap_emb")[i]))
            if source == target:  # the pair itself would always come first
                exclude = i
        else:
            xq = np.asarray(vector, dtype=np.float64)
            if xq.ndim != 1 or len(xq) != dim:
                raise SearchError("vector", f"expected {dim} numbers (this job's embedding width), got shape {xq.shape}")
            if not np.isfinite(xq).all() or not np.any(xq):
                raise SearchError("vector", "must be finite and not all zero")
            xq = fx.normalize(xq.astype(np.float32))

        noisy = _as_noisy(labels, n) if labels is not None else self.labels()
        keep = None
        if label is not None:
            if noisy is None:
                raise SearchError("label", "this job has no stored labels to filter on")
            keep = noisy if label == "noisy" else ~noisy
        index = self._index(IMAGE_INDEX if target == "image" else CAPTION_INDEX)
        hits = _filtered_search(index, xq, k, keep=keep, exclude=exclude)
        pair_ids, captions = self._texts()
        return [
            {"pair_id": pair_ids[i], "index": int(i), "score": float(s), "caption": captions[i],
             "label": None if noisy is None else ("noisy" if noisy[i] else "clean")}
            for i, s in hits
        ]


def _filtered_search(index, xq: np.ndarray, k: int, *, keep: np.ndarray | None, exclude: int) -> list[tuple[int, float]]:
    """Top ``k`` (id, score) passing ``keep`` and not ``exclude``; widens the fetch until enough pass."""
    ntotal = int(index.ntotal)
    if ntotal == 0:
        return []
    extra = 1 if exclude >= 0 else 0
    fetch = min(ntotal, k * OVERFETCH if keep is not None else k + extra)
    while True:
        D, I = fx.search(index, xq, fetch)
        ids, scores = I[0], D[0]
        ok = (ids >= 0) & (ids != exclude)
        if keep is not None:
            ok &= keep[np.where(ids >= 0, ids, 0)]
        hits = [(int(i), float(s)) for i, s in zip(ids[ok], scores[ok])]
        if len(hits) >= k or fetch >= ntotal:
            return hits[:k]
        fetch = min(ntotal, fetch * OVERFETCH)


_searchers: dict[tuple[str, str], tuple[tuple[int, int], JobSearcher]] = {}
_searchers_lock = threading.Lock()


def open_searcher(workdir: str | os.PathLike, prepared_dir: str | os.PathLike) -> JobSearcher:
    """A process-wide :class:`JobSearcher` per job, rebuilt when its indexes are rebuilt.

    Keeps the loaded model, tokenizer and labels between requests (a server answers many queries per job).
    """
    key = (str(Path(workdir).resolve()), str(Path(prepared_dir).resolve()))
    meta = Path(key[0]) / INDEX_DIR / META
    try:
        st = meta.stat()
        stamp = (st.st_mtime_ns, st.st_size)
    except FileNotFoundError:
        raise NotSearchable("job", "this job has no search indexes") from None
    with _searchers_lock:
        hit = _searchers.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        searcher = JobSearcher(*key)
        _searchers[key] = (stamp, searcher)
        return searcher


def job_dir_paths(job_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``pc2 curate`` job directory (``OUT.pc2``, or the ``OUT.parquet`` beside it) -> (workdir, prepared_dir)."""
    d = Path(job_dir)
    if d.suffix == ".parquet" and not d.is_dir():
        d = d.with_name(d.stem + ".pc2")
    workdir, prepared = d / "train", d / "prepared"
    if not (workdir / "model.pt").is_file() or not (prepared / "text.json").is_file():
        raise SearchError("job_dir", f"{job_dir} is not a finished 'pc2 curate' job directory "
                                     f"(expected {workdir}/model.pt and {prepared}/); run pc2 curate first")
    return workdir, prepared


def search_job_dir(
    job_dir: str | os.PathLike,
    *,
    text: str | None = None,
    pair_id: str | None = None,
    vector: Sequence[float] | None = None,
    direction: str = "text2image",
    k: int = 10,
    label: str | None = None,
) -> list[dict[str, Any]]:
    """Search a local ``pc2 curate`` job; builds its indexes first if an older run left none."""
    workdir, prepared = job_dir_paths(job_dir)
    if not (workdir / INDEX_DIR / META).is_file():
        build_job_indexes(workdir)
    return JobSearcher(workdir, prepared).search(text=text, pair_id=pair_id, vector=vector, direction=direction,
                                                 k=k, label=label)


# ---------------------------------------------------------------------------------------------
# near-duplicate images


def pooled_features(corpus: Corpus, rows: np.ndarray, *, block: int = 4096) -> np.ndarray:
    """Raw region features of image ``rows`` mean-pooled over regions -> float32 ``[len(rows), D]``."""
    out = np.empty((len(rows), corpus.features.dim), dtype=np.float32)
    for s in range(0, len(rows), block):
        out[s : s + block] = corpus.features.get(rows[s : s + block]).mean(axis=1)
    return out


def duplicate_groups(corpus: Corpus, threshold: float = DEFAULT_DUPLICATE_THRESHOLD) -> np.ndarray:
    """Near-duplicate images of ``corpus`` -> int64 ``[N]``: the pair each pair duplicates, or -1.

    A group's representative is its first pair (smallest index); it and pairs without a duplicate get
    -1, every other member the representative's index. Pairs sharing a ``feature_row`` are one image
    and always one group; distinct rows join when the cosine of their region-pooled raw features,
    centred on the corpus mean, is at least ``threshold``. Centring matters: detector features are
    non-negative, so uncentred pooled vectors of unrelated images already sit at cosine ~0.9+, while
    centred ones stay far below 0.97 and copies stay near 1.
    """
    n = len(corpus)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rows, inverse = np.unique(np.asarray(corpus.feature_row, dtype=np.int64), return_inverse=True)
    pooled = pooled_features(corpus, rows)
    pooled -= pooled.mean(axis=0, dtype=np.float64).astype(np.float32)
    rep_row = near_duplicates(pooled, threshold)  # (n_rows,) smallest distinct row of each group
    group = rep_row[inverse.ravel()]
    first = np.full(len(rows), n, dtype=np.int64)
    np.minimum.at(first, group, np.arange(n, dtype=np.int64))
    rep = first[group]
    return np.where(rep == np.arange(n), -1, rep).astype(np.int64)
