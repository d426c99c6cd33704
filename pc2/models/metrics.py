"""Quality metrics over plain numpy arrays: noisy-pair detection, retrieval recall, pseudo-captions.

Detection rates are fractions in [0, 1]; retrieval recalls are percentages, as papers report them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from pc2.models.synth import describes


def _vector(name: str, x, n: int | None = None, dtype=None) -> np.ndarray:
    a = np.asarray(x, dtype=dtype).reshape(-1) if np.ndim(x) <= 1 else None
    if a is None:
        raise ValueError(f"{name}: expected a 1-D array, got shape {np.shape(x)}")
    if n is not None and len(a) != n:
        raise ValueError(f"{name}: expected {n} values (one per pair), got {len(a)}")
    return a


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def detection(noisy_true, confidence, noisy_pred) -> dict[str, float]:
    """How well predicted labels and confidences find the truly noisy pairs (noisy = positive class).

    ``roc_auc`` ranks pairs by ``1 - confidence``; it is NaN when the truth holds only one class.
    """
    y = _vector("noisy_true", noisy_true, dtype=bool)
    conf = _vector("confidence", confidence, len(y), dtype=np.float64)
    pred = _vector("noisy_pred", noisy_pred, len(y), dtype=bool)
    n = len(y)
    if n == 0:
        raise ValueError("noisy_true: no pairs to score")
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    tn = n - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    # The same counts seen with clean as the positive class.
    p_clean = tn / (tn + fn) if tn + fn else 0.0
    r_clean = tn / (tn + fp) if tn + fp else 0.0
    auc = float(roc_auc_score(y, 1.0 - conf)) if 0 < y.sum() < n else float("nan")
    return {
        "roc_auc": auc,
        "f1": _f1(precision, recall),
        "f1_clean": _f1(p_clean, r_clean),
        "precision": precision,
        "recall": recall,
        "accuracy": (tp + tn) / n,
        "est_noise_rate": float(pred.mean()),
        "true_noise_rate": float(y.mean()),
    }


def _ranks_t2i(sims: np.ndarray, cap_to_img: np.ndarray, block: int) -> np.ndarray:
    """For each caption, how many images score at least as high as its own (ties count against)."""
    n_img, n_cap = sims.shape
    ranks = np.empty(n_cap, dtype=np.int64)
    for c0 in range(0, n_cap, block):
        c1 = min(c0 + block, n_cap)
        s = sims[:, c0:c1]  # (n_img, b)
        own = s[cap_to_img[c0:c1], np.arange(c1 - c0)]  # (b,)
        ranks[c0:c1] = (s >= own[None, :]).sum(axis=0) - 1
    return ranks


def _ranks_i2t(sims: np.ndarray, cap_to_img: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """For each image, how many non-matching captions score at least as high as its best caption.

    Returns (ranks, has_caption); images without any caption have no rank.
    """
    n_img, n_cap = sims.shape
    own = sims[cap_to_img, np.arange(n_cap)]  # (n_cap,)
    best = np.full(n_img, -np.inf)
    np.maximum.at(best, cap_to_img, own)
    # Its own captions tied with the best one are not competitors.
    own_ties = np.zeros(n_img, dtype=np.int64)
    np.add.at(own_ties, cap_to_img, own >= best[cap_to_img])
    ranks = np.empty(n_img, dtype=np.int64)
    for i0 in range(0, n_img, block):
        i1 = min(i0 + block, n_img)
        ranks[i0:i1] = (sims[i0:i1] >= best[i0:i1, None]).sum(axis=1) - own_ties[i0:i1]
    return ranks, np.isfinite(best)


def retrieval(sims, cap_to_img, ks: Sequence[int] = (1, 5, 10), block: int = 1024) -> dict[str, float]:
    """Recall@K in percent for image→text (i2t) and text→image (t2i), plus their sum ``rsum``.

    ``sims[i, c]`` scores image i against caption c; ``cap_to_img[c]`` is caption c's image. An image
    is an i2t hit at K when any of its captions is within the top K; a caption is a t2i hit when its
    image is. Ties are counted against the model, so constant scores earn no credit. Images with no
    caption are left out of i2t.
    """
    sims = np.asarray(sims)
    if sims.ndim != 2:
        raise ValueError(f"sims: expected a 2-D (n_images, n_captions) array, got shape {sims.shape}")
    n_img, n_cap = sims.shape
    c2i = _vector("cap_to_img", cap_to_img, n_cap).astype(np.int64)
    if n_cap == 0 or n_img == 0:
        raise ValueError("sims: need at least one image and one caption")
    if c2i.min() < 0 or c2i.max() >= n_img:
        raise ValueError(f"cap_to_img: values must index images 0..{n_img - 1}, got {c2i.min()}..{c2i.max()}")
    r_t2i = _ranks_t2i(sims, c2i, block)
    r_i2t, has = _ranks_i2t(sims, c2i, block)
    r_i2t = r_i2t[has]
    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_r{k}"] = 100.0 * float((r_i2t < k).mean())
    for k in ks:
        out[f"t2i_r{k}"] = 100.0 * float((r_t2i < k).mean())
    out["rsum"] = sum(out.values())
    return out


def pseudo_caption_accuracy(image_concepts: Sequence[Sequence[int]],
                            source_caption_concepts: Sequence[Sequence[int]]) -> float:
    """Fraction (0..1) of pairs whose pseudo-caption describes the image (``synth.describes``).

    Pass an empty concept list for a pair that got no pseudo-caption: it counts as a miss.
    NaN when there are no pairs.
    """
    if len(image_concepts) != len(source_caption_concepts):
        raise ValueError(f"image_concepts has {len(image_concepts)} entries but source_caption_concepts "
                         f"has {len(source_caption_concepts)}; they must align pair by pair")
    if len(image_concepts) == 0:
        return float("nan")
    hits = sum(describes(img, cap) for img, cap in zip(image_concepts, source_caption_concepts))
    return hits / len(image_concepts)


def confidence_histogram_png(confidence, noisy_true, path: str | os.PathLike, title: str = "",
                             threshold: float | None = 0.5, bins: int = 50) -> Path:
    """Overlaid histograms of confidence for truly clean vs. truly noisy pairs, written atomically."""
    # The object API (no pyplot) keeps no global figure state, so worker threads can call this.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    y = _vector("noisy_true", noisy_true, dtype=bool)
    conf = _vector("confidence", confidence, len(y), dtype=np.float64)
    path = Path(path)
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ax.hist(conf[~y], bins=edges, alpha=0.6, color="tab:blue", label=f"clean (n={int((~y).sum())})")
    ax.hist(conf[y], bins=edges, alpha=0.6, color="tab:red", label=f"noisy (n={int(y.sum())})")
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    ax.set_xlabel("confidence")
    ax.set_ylabel("pairs")
    ax.set_xlim(0, 1)
    if title:
        ax.set_title(title)
    ax.legend(loc="upper center")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
