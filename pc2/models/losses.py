"""PC² losses over a batch similarity matrix whose diagonal holds the positive pairs."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_margin(y: torch.Tensor, alpha: float = 0.2) -> torch.Tensor:
    """margin(y) = alpha * (10**y - 1) / 9: 0 for a mismatched pair, alpha for a certain match."""
    return alpha * (torch.pow(10.0, y) - 1.0) / 9.0


def _off_diagonal(n: int, device) -> torch.Tensor:
    return ~torch.eye(n, dtype=torch.bool, device=device)


def triplet_avg(sims: torch.Tensor, margin: float | torch.Tensor) -> torch.Tensor:
    """Per-anchor hinge averaged over all in-batch negatives, both directions. sims (B, B) -> (B,).

    ``margin`` is a number or one margin per anchor pair (B,).
    """
    n = sims.shape[0]
    if n < 2:
        return sims.new_zeros(n)
    pos = sims.diagonal()
    off = _off_diagonal(n, sims.device)
    m = margin if isinstance(margin, torch.Tensor) else torch.full((n,), float(margin), device=sims.device)
    i2t = (m[:, None] + sims - pos[:, None]).clamp(min=0) * off  # row i: image i against captions j
    t2i = (m[None, :] + sims - pos[None, :]).clamp(min=0) * off  # column j: caption j against images i
    return (i2t.sum(1) + t2i.sum(0)) / (n - 1)


def triplet_hardest(sims: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """Hardest-negative triplet with one margin per anchor pair, both directions. -> (B,).

    The margin is the anchor's: image i against its hardest caption uses margins[i], and caption j
    against its hardest image uses margins[j].
    """
    n = sims.shape[0]
    if n < 2:
        return sims.new_zeros(n)
    pos = sims.diagonal()
    off = _off_diagonal(n, sims.device)
    i2t = ((margins[:, None] + sims - pos[:, None]).clamp(min=0) * off).amax(1)
    t2i = ((margins[None, :] + sims - pos[None, :]).clamp(min=0) * off).amax(0)
    return i2t + t2i


def pseudo_caption_triplet(sims: torch.Tensor, target: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """Image u with pseudo-caption column target[u] against its hardest other caption column.

    sims (U, T): untrusted images against trusted captions; target (U,) column indices; margins (U,).
    """
    if sims.shape[1] < 2:
        return sims.new_zeros(sims.shape[0])
    pos = sims.gather(1, target[:, None])  # (U, 1)
    not_target = torch.ones_like(sims, dtype=torch.bool).scatter_(1, target[:, None], False)
    return ((margins[:, None] + sims - pos).clamp(min=0) * not_target).amax(1)


def entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return -(p * torch.log(p.clamp(min=1e-12))).sum(dim)


def balanced_argmax(logits: torch.Tensor) -> torch.Tensor:
    """Arg-max after dividing out the batch's mean class probability.

    Plain arg-max targets let one class win every sample early on (the head then predicts that class
    for everything and pseudo-predictions stop telling images apart); dividing by the class prior
    makes a class that is frequent in the batch a less likely target.
    """
    p = logits.softmax(1)
    return (p / p.mean(0, keepdim=True).clamp(min=1e-8)).argmax(1)


def pcls_loss(img_logits: torch.Tensor, cap_logits: torch.Tensor, lam: float, form: str = "batch_mean", symmetric: bool = False) -> torch.Tensor:
    """Cross-entropy of the image prediction p against arg-max of the caption prediction q, minus lam*H.

    ``batch_mean`` subtracts the entropy of the batch-mean p (keeps classes from collapsing into one);
    ``per_sample`` subtracts the mean per-sample entropy instead.
    """
    target = balanced_argmax(cap_logits.detach())
    ce = F.cross_entropy(img_logits, target)
    p = img_logits.softmax(1)
    h = entropy(p.mean(0)) if form == "batch_mean" else entropy(p).mean()
    if not symmetric:
        return ce - lam * h
    # Both modalities learn the class structure: q against arg-max p as well.
    q = cap_logits.softmax(1)
    ce_q = F.cross_entropy(cap_logits, balanced_argmax(img_logits.detach()))
    h_q = entropy(q.mean(0)) if form == "batch_mean" else entropy(q).mean()
    return (ce + ce_q) / 2 - lam * (h + h_q) / 2
