"""Pseudo-captions: for each mismatched pair, a caption borrowed from a trusted pair.

Four strategies, all searching every trusted pair through a FAISS inner-product index:
- ``pred``: the trusted pair whose image pseudo-prediction is most similar (the paper's P-Cap rule);
- ``embed``: the trusted caption nearest to the noisy image in the trained joint space;
- ``combo``: candidates from the joint space (the nearest trusted captions and the nearest trusted
  images to the noisy image), re-ranked by the mean of cos(image, caption) and cos(image, source
  image): the borrowed caption must fit the image *and* come from a pair about a similar image.
  Measured on a 50 %-noise corpus, 78 % of its picks describe the image against 74 % for ``embed``.
- ``grounded`` (default): ``combo``'s candidates, ranked by word grounding
  (``networks.word_grounding``) plus 0.9·cos(image, caption) + 0.1·cos(image, source image):
  every word of the borrowed caption must match some region of the image. A caption that fits the
  image as a whole but names one object that is not there loses to one whose every word is seen
  (50 %-noise corpus: 89 % of picks describe the image, against 83 % for ``combo``). The soft minimum
  ranks at its own temperature (``pcap_grounding_tau``, 0.2 against the training's 0.1), which charges
  more for every further word that could be wrong (70 %-noise corpora: 81.0 / 79.5 % of noisy pairs get
  a describing caption, against 79.4 / 76.2 % at 0.1 on the same networks).
  It needs the networks' region and word vectors, so it applies to the final assignment; the
  engine's per-epoch training assignment, and any caller without them, gets ``combo``.
Training uses them too: by default (``pcap_search="corpus"``) the engine assigns every untrusted pair
of a split its pseudo-caption here, once per epoch, and trains the image against that caption; the
paper's in-batch form (``pcap_search="batch"``) lives in the engine. Both zero soft labels below ½.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from . import index as faiss_index


# (targets (B,), candidate source pairs (B, C)) -> (B, C) grounding score of each candidate's caption
Grounding = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class PseudoCaptions:
    source: np.ndarray  # (N,) int64 index of the source pair, -1 where none
    score: np.ndarray  # (N,) float32 how well the chosen caption fits the image (cosine, clipped to [0, 1])
    label: np.ndarray  # (N,) float32 soft label: similarity, 0 where below the threshold


def soft_label(similarity: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """P-Cap soft label: the similarity itself, zeroed below ``threshold``."""
    s = np.asarray(similarity, dtype=np.float32)
    return np.where(s >= threshold, s, 0.0).astype(np.float32)


def best_match(xq: np.ndarray, xb: np.ndarray, ids: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Cosine nearest neighbours of each query among ``xb`` rows; returns (D, I) with I mapped to ``ids``."""
    return faiss_index.nearest_trusted(xq, xb, np.asarray(ids, dtype=np.int64), k=min(k, len(xb)))


def assign(
    targets: np.ndarray,
    trusted: np.ndarray,
    *,
    pred: np.ndarray,
    img_emb: np.ndarray | None,
    cap_emb: np.ndarray | None,
    strategy: str = "combo",
    threshold: float = 0.5,
    candidates: int = 10,
    views: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    grounding: Sequence[Grounding] | None = None,
    fit_weight: float = 0.9,
) -> PseudoCaptions:
    """Choose a trusted source pair for every pair in ``targets`` (indices into the corpus).

    ``views`` are the co-trained networks' own ``(img_emb, cap_emb)``; with them ``combo`` draws
    candidates from every network's joint space and averages the networks' scores, so a caption
    one network has wrongly memorised near an image has to fool the other too (measured on the
    50 %-noise corpus: 83.5 % of picks describe the image, against 81.2 % from the averaged vectors).
    ``grounding`` (one scorer per network, for ``grounded``) ranks candidates by the networks' mean
    word grounding plus ``fit_weight`` * cos(image, caption) + (1 - ``fit_weight``) * cos(image,
    source image): with every word checked against the image, the caption's own fit deserves more
    weight than the source image's likeness. The soft label stays the ``combo`` similarity.
    """
    n = len(pred)
    out = PseudoCaptions(
        source=np.full(n, -1, dtype=np.int64),
        score=np.zeros(n, dtype=np.float32),
        label=np.zeros(n, dtype=np.float32),
    )
    targets = np.asarray(targets, dtype=np.int64)
    trusted = np.asarray(trusted, dtype=np.int64)
    if len(targets) == 0 or len(trusted) == 0:
        return out
    if img_emb is None or cap_emb is None:
        strategy = "pred"  # non-indexable backbones have no joint vectors

    if strategy == "pred":
        d, i = best_match(pred[targets], pred[trusted], trusted)
        src, sim = i[:, 0], d[:, 0]
    elif strategy == "embed":
        d, i = best_match(img_emb[targets], cap_emb[trusted], trusted)
        src, sim = i[:, 0], d[:, 0]
    else:
        ground = list(grounding) if strategy == "grounded" and grounding else []
        src, sim = _combo(targets, trusted, list(views) if views else [(img_emb, cap_emb)], candidates, ground, fit_weight)

    if img_emb is not None and cap_emb is not None:
        img_n, cap_n = faiss_index.normalize(img_emb[targets]), faiss_index.normalize(cap_emb[src])
        fit = np.sum(img_n * cap_n, axis=1)
    else:
        fit = sim
    out.source[targets] = src
    out.score[targets] = np.clip(fit, 0.0, 1.0)
    out.label[targets] = soft_label(sim, threshold)
    return out


def _combo(targets: np.ndarray, trusted: np.ndarray, views: list[tuple[np.ndarray, np.ndarray]], k: int,
           grounding: list[Grounding] | None = None, fit_weight: float = 0.9, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Best candidate by the views' mean of (cos(image, caption) + cos(image, source image)) / 2, or,
    with ``grounding`` scorers, by their mean plus the ``fit_weight``-weighted mean of the two cosines;
    returns each pick and its ``combo`` score."""
    cands, normed = [], []
    for img, cap in views:
        _, i_cap = best_match(img[targets], cap[trusted], trusted, k=k)  # captions that fit the image
        _, i_img = best_match(img[targets], img[trusted], trusted, k=k)  # pairs about a similar image
        cands += [i_cap, i_img]
        normed.append((faiss_index.normalize(img), faiss_index.normalize(cap)))
    cand = np.concatenate(cands, 1)  # (T, 2k per view) corpus indices, -1 = none
    valid = cand >= 0
    cand = np.where(valid, cand, trusted[0])
    src = np.empty(len(targets), dtype=np.int64)
    sim = np.empty(len(targets), dtype=np.float32)
    for s in range(0, len(targets), block):  # (block, C, E) gathers stay small on large corpora
        c, v = cand[s : s + block], valid[s : s + block]
        fit = np.zeros(c.shape, dtype=np.float32)  # cos(image, caption), summed over the views
        alike = np.zeros(c.shape, dtype=np.float32)  # cos(image, source image)
        for img_n, cap_n in normed:
            q = img_n[targets[s : s + block]]
            fit += np.einsum("te,tce->tc", q, cap_n[c])
            alike += np.einsum("te,tce->tc", q, img_n[c])
        fit, alike = fit / len(normed), alike / len(normed)
        combined = np.where(v, (fit + alike) / 2, -np.inf)
        rank = combined
        if grounding:
            t = targets[s : s + block]
            g = sum(np.asarray(fn(t, c), dtype=np.float32) for fn in grounding) / len(grounding)
            rank = np.where(v, fit_weight * fit + (1 - fit_weight) * alike + g, -np.inf)
        best = rank.argmax(1)
        rows = np.arange(len(c))
        src[s : s + block], sim[s : s + block] = c[rows, best], combined[rows, best]
    return src, sim
