"""Networks: a `vse` dual encoder (default) or `sgraf` similarity reasoning, plus the shared P-Cls head.

Both backbones expose the same four calls the training loop needs:
``encode_images(x, mask) -> img``, ``encode_captions(ids, lens) -> cap``, ``sim(img, cap) -> (Bi, Bc)``
and ``img_vec / cap_vec`` (one vector per item, fed to the pseudo-classification head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import PC2Config


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    return x / (x.norm(dim=dim, keepdim=True) + eps)


class FeatureNorm(nn.Module):
    """Per-dimension standardisation with corpus statistics, so detector features of any scale train alike."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class RegionEncoder(nn.Module):
    """Regions (B, R, D) -> region embeddings (B, R, E): linear projection plus a residual MLP."""

    def __init__(self, in_dim: int, embed_dim: int):
        super().__init__()
        self.norm = FeatureNorm(in_dim)
        self.fc = nn.Linear(in_dim, embed_dim)
        self.mlp = nn.Sequential(nn.Linear(in_dim, embed_dim // 2), nn.ReLU(), nn.Linear(embed_dim // 2, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return self.fc(x) + self.mlp(x)  # (B, R, E)


class WordEncoder(nn.Module):
    """Token ids (B, L) -> word embeddings (B, L, E) with a bidirectional GRU (E/2 per direction, concatenated)."""

    def __init__(self, vocab_size: int, word_dim: int, embed_dim: int, skip: bool = True):
        super().__init__()
        # A linear path from each word straight to the joint space lets a rare word's meaning reach
        # the caption vector without first being learnt through the recurrent weights.
        self.skip = nn.Linear(word_dim, embed_dim, bias=False) if skip else None
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        # Small init: a rare word gets only a few updates per epoch, and from N(0, 1) those few steps
        # would leave it essentially random.
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        with torch.no_grad():
            self.embed.weight[0].zero_()
        assert embed_dim % 2 == 0, "embed_dim must be even (two GRU directions)"
        self.gru = nn.GRU(word_dim, embed_dim // 2, batch_first=True, bidirectional=True)

    def forward(self, ids: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)  # (B, L, W); padding rows are zero vectors
        # Run on the padded batch: packing costs ~2.5x on CPU, and the backward direction only sees
        # zero inputs before a caption's last token; readers mask padded positions out.
        out, _ = self.gru(x)  # (B, L, E)
        return out if self.skip is None else out + self.skip(x)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, L, E), mask (B, L) bool -> (B, E)."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def token_mask(lens: torch.Tensor, width: int) -> torch.Tensor:
    return torch.arange(width, device=lens.device)[None, :] < lens.clamp(min=1)[:, None]


def word_grounding(regions: torch.Tensor, words: torch.Tensor, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """How well every word of each candidate caption is grounded in an image region.

    ``regions`` (B, R, E) and ``words`` (B, C, L, E) are unit vectors, ``mask`` (B, C, L) marks real
    words. Each word's grounding is its best cosine to any region; the caption's score is the soft
    minimum ``-tau * log(sum_l exp(-g_l / tau))`` over its words, so one word that names nothing in the
    image sinks the caption, and every further word is one more claim that could be wrong (the soft
    minimum of n equal groundings is ``g - tau * log(n)``). Returns (B, C).
    """
    b, c, l, e = words.shape
    g = torch.bmm(words.reshape(b, c * l, e), regions.transpose(1, 2)).amax(2).view(b, c, l)
    g = torch.where(mask, -g / tau, torch.full_like(g, -torch.inf))
    out = -tau * torch.logsumexp(g, dim=2)
    return torch.where(mask.any(2), out, torch.full_like(out, -torch.inf))  # no words: nothing grounded


class VSE(nn.Module):
    """Dual encoder: pooled regions and pooled GRU states, cosine similarity. One vector per item."""

    indexable = True

    def __init__(self, cfg: PC2Config, in_dim: int, vocab_size: int):
        super().__init__()
        self.img = RegionEncoder(in_dim, cfg.embed_dim)
        self.txt = WordEncoder(vocab_size, cfg.word_dim, cfg.embed_dim, cfg.word_skip)

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        r = self.img(x)  # (B, R, E)
        return l2norm(r.mean(1) + r.amax(1))  # mean + max pooling, (B, E)

    def encode_captions(self, ids: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        w = self.txt(ids, lens)  # (B, L, E)
        mask = token_mask(lens, ids.shape[1])
        pooled = masked_mean(w, mask) + w.masked_fill(~mask.unsqueeze(-1), -1e4).amax(1)
        return l2norm(pooled)  # (B, E)

    def sim(self, img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        return img @ cap.t()  # (Bi, Bc)

    def region_vectors(self, x: torch.Tensor) -> torch.Tensor:
        """Regions (B, R, D) -> unit region embeddings (B, R, E) in the joint space."""
        return l2norm(self.img(x))

    def word_vectors(self, ids: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """Token ids (U, L) -> unit word states (U, L, E); padded positions are the caller's to mask."""
        return l2norm(self.txt(ids, lens))

    def img_vec(self, img: torch.Tensor) -> torch.Tensor:
        return img

    def cap_vec(self, cap: torch.Tensor) -> torch.Tensor:
        return cap


class SGRAF(nn.Module):
    """Similarity Graph Reasoning + Attention Filtration over region-word alignments.

    Every (image, caption) pair gets local similarity vectors (one per word, against its attended
    regions) and a global one; SGR reasons over them as a graph, SAF weighs them by attention; the score
    is the mean of both heads. Cost is quadratic in the batch, so it is not indexable.
    """

    indexable = False

    def __init__(self, cfg: PC2Config, in_dim: int, vocab_size: int):
        super().__init__()
        e, s = cfg.embed_dim, cfg.sgraf_sim_dim
        self.img = RegionEncoder(in_dim, e)
        self.txt = WordEncoder(vocab_size, cfg.word_dim, e, cfg.word_skip)
        self.local_w = nn.Linear(e, s)
        self.global_w = nn.Linear(e, s)
        self.graph_q = nn.ModuleList([nn.Linear(s, s) for _ in range(cfg.sgraf_steps)])
        self.graph_k = nn.ModuleList([nn.Linear(s, s) for _ in range(cfg.sgraf_steps)])
        self.graph_w = nn.ModuleList([nn.Linear(s, s) for _ in range(cfg.sgraf_steps)])
        self.sgr_out = nn.Linear(s, 1)
        self.saf_attn = nn.Linear(s, 1)
        self.saf_out = nn.Linear(s, 1)
        self.lambda_softmax = 9.0

    def encode_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = l2norm(self.img(x))  # (B, R, E)
        return r, l2norm(r.mean(1))

    def encode_captions(self, ids: torch.Tensor, lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w = l2norm(self.txt(ids, lens))  # (B, L, E)
        mask = token_mask(lens, ids.shape[1])
        return w, mask, l2norm(masked_mean(w, mask))

    def img_vec(self, img) -> torch.Tensor:
        return img[1]

    def cap_vec(self, cap) -> torch.Tensor:
        return cap[2]

    def _pair_scores(self, regions: torch.Tensor, glob_i: torch.Tensor, words: torch.Tensor, mask: torch.Tensor, glob_c: torch.Tensor) -> torch.Tensor:
        """All images against one caption: regions (Bi, R, E), words (L, E) -> scores (Bi,)."""
        attn = torch.einsum("ire,le->ilr", regions, words)  # (Bi, L, R)
        attn = F.softmax(self.lambda_softmax * F.leaky_relu(attn, 0.1), dim=-1)
        ctx = l2norm(torch.einsum("ilr,ire->ile", attn, regions))  # (Bi, L, E)
        local = l2norm(self.local_w((ctx - words[None]) ** 2))  # (Bi, L, S)
        glob = l2norm(self.global_w((glob_i - glob_c[None]) ** 2)).unsqueeze(1)  # (Bi, 1, S)
        local = local[:, mask]  # drop padding words
        nodes = torch.cat([glob, local], 1)  # (Bi, 1+L', S)
        # SAF: attention-filtered average of all similarity vectors
        a = torch.sigmoid(self.saf_attn(nodes))  # (Bi, N, 1)
        saf = (a * nodes).sum(1) / a.sum(1).clamp(min=1e-6)
        saf_score = torch.sigmoid(self.saf_out(l2norm(saf))).squeeze(-1)
        # SGR: graph reasoning, read the global node
        for q, k, w in zip(self.graph_q, self.graph_k, self.graph_w):
            edges = F.softmax(q(nodes) @ k(nodes).transpose(1, 2), dim=-1)  # (Bi, N, N)
            nodes = F.relu(w(edges @ nodes))
        sgr_score = torch.sigmoid(self.sgr_out(nodes[:, 0])).squeeze(-1)
        return (saf_score + sgr_score) / 2

    def sim(self, img, cap) -> torch.Tensor:
        regions, glob_i = img
        words, mask, glob_c = cap
        cols = [self._pair_scores(regions, glob_i, words[j], mask[j], glob_c[j]) for j in range(words.shape[0])]
        return torch.stack(cols, 1)  # (Bi, Bc)


class PC2Net(nn.Module):
    """One of the two co-trained networks: a backbone and the shared-modality P-Cls head."""

    def __init__(self, cfg: PC2Config, in_dim: int, vocab_size: int):
        super().__init__()
        backbone = {"vse": VSE, "sgraf": SGRAF}[cfg.backbone]
        self.backbone = backbone(cfg, in_dim, vocab_size)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)  # one head C for both modalities

    @property
    def indexable(self) -> bool:
        return self.backbone.indexable

    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.backbone.img.norm.mean.copy_(mean)
        self.backbone.img.norm.std.copy_(std)

    def forward(self, x: torch.Tensor, ids: torch.Tensor, lens: torch.Tensor):
        """Returns (sims (B, B), image logits (B, K), caption logits (B, K), img, cap)."""
        img = self.backbone.encode_images(x)
        cap = self.backbone.encode_captions(ids, lens)
        sims = self.backbone.sim(img, cap)
        return sims, self.head(self.backbone.img_vec(img)), self.head(self.backbone.cap_vec(cap)), img, cap
