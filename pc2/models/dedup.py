"""Near-duplicate images: group vectors whose cosine similarity clears a threshold.

Web corpora repeat the same picture under many captions (several pairs sharing one feature row, or
re-encoded copies). ``near_duplicates`` maps every row to the smallest row index of its group, so
callers can count, drop or merge repeats.

Method: bit-identical rows are collapsed first (hashing, exact and linear), so a picture repeated
thousands of times does not fill every k-nearest-neighbour list with copies of itself. The distinct
rows are then searched for their ``k`` nearest neighbours (exact up to ``exact_max`` rows, IVF above,
see :mod:`pc2.models.index`); candidate edges are re-scored with the exact cosine so the threshold is
exact even when the search was approximate; groups are the connected components of those edges.
"""

from __future__ import annotations

import numpy as np

from pc2.models import index as fx


def connected_components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Union-find over edges ``a[i] — b[i]`` of nodes 0..n-1 -> int64 ``[n]`` smallest node of each component.

    Vectorised hook-and-compress: every parent pointer goes to a smaller index, so the forest stays
    acyclic and each root is the minimum of its tree; rounds repeat until no edge spans two trees.
    """
    parent = np.arange(n, dtype=np.int64)
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    while True:
        ra, rb = parent[a], parent[b]  # roots: parent is fully compressed at this point
        live = ra != rb
        if not live.any():
            return parent
        ra, rb = ra[live], rb[live]
        a, b = a[live], b[live]  # edges inside one tree stay inside it; drop them
        lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
        np.minimum.at(parent, hi, lo)  # hook the larger root under the smallest root it touches
        while True:  # pointer jumping until every node points at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def _collapse_identical(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (first, inverse): ``first[u]`` smallest row of distinct row u (ascending), ``x[i] == x[first[inverse[i]]]``."""
    rows = np.ascontiguousarray(x, dtype=np.float32)
    rows = rows + np.float32(0.0)  # -0.0 -> +0.0 so equal values hash equal
    keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    # renumber distinct rows by first occurrence so "smallest distinct id" = "smallest row index"
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return first[order].astype(np.int64), rank[inverse.ravel()].astype(np.int64)


def near_duplicates(
    x: np.ndarray,
    threshold: float = 0.95,
    *,
    k: int = 16,
    block: int = 65536,
    exact_max: int = 50_000,
    nprobe: int = 16,
    seed: int = 0,
) -> np.ndarray:
    """Group rows of ``x`` (float ``[n, d]``) with cosine ≥ ``threshold`` -> int64 ``[n]`` representatives.

    ``rep[i]`` is the smallest row index in i's group (``rep[i] == i`` for a row with no duplicate).
    Groups are transitive: a ~ b and b ~ c put a, b, c together. Each distinct row links to at most
    its ``k`` nearest neighbours; queries run ``block`` rows at a time. Above ``exact_max`` distinct
    rows the search is IVF visiting ``nprobe`` lists: near duplicates sit in the same or a
    neighbouring list, so few lists find them, and all-pairs exact search is quadratic.
    """
    x = fx._as_matrix(x, "x")
    if not -1.0 <= threshold <= 1.0:
        raise fx.IndexInputError("threshold", "a cosine similarity in [-1, 1]", str(threshold))
    if k < 1:
        raise fx.IndexInputError("k", "an integer ≥ 1", str(k))
    n = len(x)
    for start, xblock in fx.iter_blocks(x, block):
        fx._check_finite(xblock, start, "x")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    first, inverse = _collapse_identical(x)
    m = len(first)
    if m == 1:
        return np.zeros(n, dtype=np.int64)

    xn = fx.normalize(np.asarray(x)[first])  # (m, d) distinct rows, unit length
    index = fx.build(xn, metric="ip", exact_max=exact_max, seed=seed, use_gpu="auto")
    kk = min(k + 1, m)  # +1: a row usually finds itself first
    src, dst = [], []
    for start in range(0, m, block):
        q = xn[start : start + block]
        _, I = fx.search(index, q, kk, nprobe=nprobe)
        qi = np.repeat(np.arange(start, start + len(q), dtype=np.int64), kk)
        nb = I.ravel()
        ok = (nb >= 0) & (nb != qi)
        qi, nb = qi[ok], nb[ok]
        # exact cosine of the candidates: the index's scores may be quantised
        cos = np.einsum("ij,ij->i", xn[qi], xn[nb])
        ok = cos >= threshold
        src.append(qi[ok])
        dst.append(nb[ok])
    comp = connected_components(m, np.concatenate(src), np.concatenate(dst))
    return first[comp][inverse]
