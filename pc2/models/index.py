"""FAISS index helpers: build, search, persist and cache vector indexes over numpy arrays.

Names follow faiss: ``xb`` base vectors, ``xq`` queries, ``k`` neighbours, results ``(D, I)`` with
``D`` float32 ``(nq, k)`` scores and ``I`` int64 ``(nq, k)`` ids (``-1`` where fewer than ``k``
vectors exist). Every index is wrapped in ``IndexIDMap2`` so ids are arbitrary int64 (pair indices),
not positions.

``metric="ip"`` is inner product; on L2-normalised vectors (see :func:`normalize`) that is cosine
similarity, which is what the engine's joint space uses.

GPU: when ``faiss.get_num_gpus() > 0`` (a faiss build with GPU support) and ``use_gpu`` allows, the
inner index is cloned to GPU 0 before training, so k-means, adds and searches run there; the
``IndexIDMap2`` wrapper stays on the host and only translates ids. :func:`save` copies a GPU index
back to the CPU first, so files are always CPU indexes and load anywhere. This path is exercised only
where a GPU faiss is installed; the test suite runs the CPU path.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import faiss
import numpy as np

METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
KINDS = ("auto", "flat", "ivf")
CODECS = ("SQ8", "PQ")
ADD_BLOCK = 65536  # rows converted to float32 and added at a time; bounds the extra memory of an add


class IndexInputError(ValueError):
    """Input the index helpers cannot use; says which argument and what was expected."""

    def __init__(self, arg: str, expected: str, got: str):
        super().__init__(f"{arg}: expected {expected}, got {got}")
        self.arg = arg
        self.expected = expected
        self.got = got


# ---------------------------------------------------------------------------------------------
# arrays


def normalize(x: np.ndarray) -> np.ndarray:
    """L2-normalise rows -> a new float32 array of the same shape; all-zero rows stay zero."""
    x = np.array(x, dtype=np.float32, copy=True)
    rows = x.reshape(1, -1) if x.ndim == 1 else x
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    np.divide(rows, norms, out=rows, where=norms > 0)
    return x


def iter_blocks(x: np.ndarray, block: int = ADD_BLOCK) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, rows)`` with ``rows`` a C-contiguous float32 copy of ``x[start:start+block]``.

    Works on memory-mapped float16/float32 arrays without loading them whole.
    """
    for start in range(0, len(x), block):
        yield start, np.ascontiguousarray(x[start : start + block], dtype=np.float32)


def _as_matrix(x: np.ndarray, arg: str, d: int | None = None) -> np.ndarray:
    if not hasattr(x, "ndim") or not hasattr(x, "dtype"):
        x = np.asarray(x)
    if x.ndim != 2:
        raise IndexInputError(arg, "a 2-D array [n, d]", f"shape {tuple(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating):
        raise IndexInputError(arg, "a float16/float32/float64 array", f"dtype {x.dtype}")
    if d is not None and x.shape[1] != d:
        raise IndexInputError(arg, f"{d} columns (the index dimension)", f"{x.shape[1]}")
    return x


def _check_finite(block: np.ndarray, start: int, arg: str) -> None:
    # NaN/inf rows poison k-means centroids and every distance that touches them.
    bad = ~np.isfinite(block).all(axis=1)
    if bad.any():
        rows = (np.nonzero(bad)[0][:10] + start).tolist()
        raise IndexInputError(arg, "finite values", f"NaN or inf in rows {rows}")


# ---------------------------------------------------------------------------------------------
# build


def default_nlist(n: int) -> int:
    """IVF list count ≈ 4·sqrt(n) (the usual faiss rule of thumb), at most n/39.

    k-means needs ~39 points per centroid to place them well; small sets get fewer lists.
    """
    return max(1, min(int(round(4 * math.sqrt(n))), n // 39))


def default_nprobe(nlist: int) -> int:
    """Lists visited per query: nlist/8, at least 16 (never more than nlist).

    Measured recall@10 against exact search is ≥ 0.95 on clustered data (tests and
    ``benchmarks/bench_index.py``).
    """
    return min(nlist, max(16, nlist // 8))


def _pq_m(d: int) -> int:
    # ~4 dimensions per 8-bit sub-quantiser; m must divide d.
    for m in range(max(1, d // 4), 0, -1):
        if d % m == 0:
            return m
    return 1


def _new_inner(d: int, metric: str, kind: str, nlist: int, sq: str) -> faiss.Index:
    mt = METRICS[metric]
    if kind == "flat":
        return faiss.IndexFlatIP(d) if metric == "ip" else faiss.IndexFlatL2(d)
    quantizer = faiss.IndexFlatIP(d) if metric == "ip" else faiss.IndexFlatL2(d)
    if sq == "SQ8":
        ivf = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, mt)
    else:
        ivf = faiss.IndexIVFPQ(quantizer, d, nlist, _pq_m(d), 8, mt)
    ivf.own_fields = True
    quantizer.this.disown()  # the IVF index frees its quantizer
    return ivf


def _want_gpu(use_gpu: bool | str) -> bool:
    if use_gpu not in (True, False, "auto"):
        raise IndexInputError("use_gpu", "True, False or 'auto'", repr(use_gpu))
    ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if use_gpu is True and ngpu == 0:
        raise IndexInputError("use_gpu", "a faiss build that sees a GPU (or use_gpu='auto')", "no GPU")
    return bool(use_gpu) and ngpu > 0


def _to_gpu(inner: faiss.Index) -> faiss.Index:
    res = faiss.StandardGpuResources()
    gpu = faiss.index_cpu_to_gpu(res, 0, inner)
    gpu._pc2_gpu_res = res  # the resources must outlive the index
    return gpu


def build(
    xb: np.ndarray,
    *,
    ids: np.ndarray | None = None,
    metric: str = "ip",
    kind: str = "auto",
    exact_max: int = 200_000,
    nlist: int | None = None,
    nprobe: int | None = None,
    sq: str = "SQ8",
    train_sample: int = 100_000,
    use_gpu: bool | str = "auto",
    seed: int = 0,
    block: int = ADD_BLOCK,
) -> faiss.Index:
    """Index ``xb`` (float ``[n, d]``, may be a memmap) under ``ids`` (int64 ``[n]``, default 0..n-1).

    ``kind="auto"``: exact ``IndexFlatIP``/``IndexFlatL2`` up to ``exact_max`` vectors, else IVF
    (``"flat"``/``"ivf"`` force one). IVF uses ``nlist`` lists (default ≈ 4·sqrt(n)), codes of
    ``sq`` ("SQ8" 8-bit scalar quantisation, or "PQ" ~d/4 bytes per vector), is trained on a seeded
    random sample of ``train_sample`` rows (raised to 39·nlist when possible, the fewest points per
    centroid k-means needs to place them well) and searches ``nprobe`` lists (default
    :func:`default_nprobe`). Vectors are added ``block`` rows at a time.
    """
    xb = _as_matrix(xb, "xb")
    n, d = xb.shape
    if metric not in METRICS:
        raise IndexInputError("metric", f"one of {list(METRICS)}", repr(metric))
    if kind not in KINDS:
        raise IndexInputError("kind", f"one of {list(KINDS)}", repr(kind))
    if sq not in CODECS:
        raise IndexInputError("sq", f"one of {list(CODECS)}", repr(sq))
    if ids is None:
        ids = np.arange(n, dtype=np.int64)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if ids.shape != (n,):
        raise IndexInputError("ids", f"{n} int64 ids, one per row of xb", f"shape {ids.shape}")
    if kind == "auto":
        kind = "flat" if n <= exact_max else "ivf"

    if kind == "ivf":
        if nlist is None:
            nlist = default_nlist(n)
        if not 1 <= nlist <= n:
            raise IndexInputError("nlist", f"between 1 and the number of vectors ({n})", str(nlist))
    inner = _new_inner(d, metric, kind, nlist or 0, sq)
    if _want_gpu(use_gpu):
        inner = _to_gpu(inner)

    if kind == "ivf":
        n_train = min(n, max(train_sample, 39 * nlist))
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(n, size=n_train, replace=False))  # sorted: sequential memmap reads
        xt = np.ascontiguousarray(xb[rows], dtype=np.float32)
        _check_finite(xt, 0, "xb")
        ivf = _ivf_of(inner)
        if ivf is None:  # a GpuIndexIVF carries cp and nprobe itself
            ivf = inner
        ivf.cp.seed = int(seed)  # k-means initialisation follows the caller's seed
        inner.train(xt)
        del xt
        ivf.nprobe = int(nprobe) if nprobe is not None else default_nprobe(nlist)

    index = faiss.IndexIDMap2(inner)
    for start, xblock in iter_blocks(xb, block):
        _check_finite(xblock, start, "xb")
        index.add_with_ids(xblock, ids[start : start + len(xblock)])
    return index


def add(index: faiss.Index, xb: np.ndarray, ids: np.ndarray, *, block: int = ADD_BLOCK) -> None:
    """Append vectors ``xb`` under ``ids`` to an index from :func:`build`, ``block`` rows at a time."""
    xb = _as_matrix(xb, "xb", index.d)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if ids.shape != (len(xb),):
        raise IndexInputError("ids", f"{len(xb)} int64 ids, one per row of xb", f"shape {ids.shape}")
    for start, xblock in iter_blocks(xb, block):
        _check_finite(xblock, start, "xb")
        index.add_with_ids(xblock, ids[start : start + len(xblock)])


# ---------------------------------------------------------------------------------------------
# search


def _ivf_of(index: faiss.Index):
    """The CPU IVF index inside ``index`` (through an id map), or None."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:  # not a CPU IVF index
        return None


def _is_ivf(index: faiss.Index) -> bool:
    if _ivf_of(index) is not None:
        return True
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    return type(inner).__name__.startswith("GpuIndexIVF")


def search(
    index: faiss.Index, xq: np.ndarray, k: int, *, nprobe: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """k nearest ids of each query -> ``(D, I)`` float32/int64 ``[nq, k]``; a 1-D ``xq`` is one query.

    ``nprobe`` overrides the index's own setting for this call only (passed as search parameters,
    so concurrent searches on one shared index do not interfere).
    """
    xq = np.asarray(xq)
    if xq.ndim == 1:
        xq = xq.reshape(1, -1)
    xq = np.ascontiguousarray(_as_matrix(xq, "xq", index.d), dtype=np.float32)
    if k < 1:
        raise IndexInputError("k", "an integer ≥ 1", str(k))
    params = None
    if nprobe is not None and _is_ivf(index):
        params = faiss.SearchParametersIVF(nprobe=int(nprobe))
    D, I = index.search(xq, int(k), params=params)
    return D, I


def recall_at_k(I: np.ndarray, I_ref: np.ndarray) -> float:
    """Mean fraction of each row's reference top-k ids (``I_ref``) found in ``I``'s row."""
    k = I_ref.shape[1]
    hits = sum(len(np.intersect1d(a[:k], b)) for a, b in zip(I, I_ref))
    return hits / (k * len(I_ref))


# ---------------------------------------------------------------------------------------------
# persistence


def _to_cpu(index: faiss.Index) -> faiss.Index:
    if hasattr(faiss, "index_gpu_to_cpu") and faiss.get_num_gpus() > 0:
        try:
            return faiss.index_gpu_to_cpu(index)
        except RuntimeError:  # already a CPU index
            return index
    return index


def save(index: faiss.Index, path: str | os.PathLike) -> None:
    """Write ``index`` to ``path`` atomically: temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        faiss.write_index(_to_cpu(index), tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    # the rename itself must reach the disk, or a crash could bring back the old name
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load(path: str | os.PathLike) -> faiss.Index:
    """Read an index written by :func:`save` (always a CPU index)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no index file at {path}")
    return faiss.read_index(str(path))


_cache: dict[str, tuple[tuple[int, int], faiss.Index]] = {}
_cache_lock = threading.Lock()
_cache_pid = os.getpid()


def cached(path: str | os.PathLike) -> faiss.Index:
    """:func:`load` once per process; the same object is returned until the file's mtime or size changes.

    Searches on the returned index are safe from several threads; do not mutate it.
    """
    global _cache_pid
    key = str(Path(path).resolve())
    with _cache_lock:
        if _cache_pid != os.getpid():  # a forked worker starts with its own, empty cache
            _cache.clear()
            _cache_pid = os.getpid()
        st = os.stat(key)
        stamp = (st.st_mtime_ns, st.st_size)
        hit = _cache.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        index = load(key)
        _cache[key] = (stamp, index)
        return index


def clear_cache() -> None:
    """Forget every cached index (e.g. after deleting index files)."""
    with _cache_lock:
        _cache.clear()


# ---------------------------------------------------------------------------------------------
# pseudo-caption lookup


def nearest_trusted(
    xq: np.ndarray,
    xb_trusted: np.ndarray,
    ids_trusted: np.ndarray,
    k: int = 1,
    *,
    exclude: np.ndarray | None = None,
    exact_max: int = 200_000,
    use_gpu: bool | str = "auto",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` trusted pairs for each query by cosine -> ``(D, I)`` ``[nq, k]``, ``I`` from ``ids_trusted``.

    Both sides are L2-normalised here, so ``D`` is cosine similarity. Search is exact up to
    ``exact_max`` trusted vectors and IVF-SQ8 above. ``exclude`` (int64 ``[nq]``) names an id each
    query must not get back, e.g. its own pair index when trusted pairs are also queried.
    Where no candidate exists ``I`` is -1 and ``D`` is -inf.
    """
    xq = _as_matrix(xq, "xq")
    xb_trusted = _as_matrix(xb_trusted, "xb_trusted", xq.shape[1])
    ids_trusted = np.asarray(ids_trusted, dtype=np.int64)
    nq = len(xq)
    D_out = np.full((nq, k), -np.inf, dtype=np.float32)
    I_out = np.full((nq, k), -1, dtype=np.int64)
    if len(xb_trusted) == 0 or nq == 0:
        return D_out, I_out
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=np.int64)
        if exclude.shape != (nq,):
            raise IndexInputError("exclude", f"{nq} ids, one per query", f"shape {exclude.shape}")
    index = build(
        normalize(xb_trusted), ids=ids_trusted, metric="ip", exact_max=exact_max, use_gpu=use_gpu, seed=seed
    )
    kk = k + 1 if exclude is not None else k
    D, I = search(index, normalize(xq), kk)
    valid = I >= 0
    if exclude is not None:
        valid &= I != exclude[:, None]
    # compact each row's valid hits to the front, keeping their score order
    order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
    rows = np.arange(nq)[:, None]
    keep = valid[rows, order]
    D_out[:, : order.shape[1]] = np.where(keep, D[rows, order], -np.inf)
    I_out[:, : order.shape[1]] = np.where(keep, I[rows, order], -1)
    return D_out, I_out
