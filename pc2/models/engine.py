"""The PC² training loop: warm-up, co-divide, correspondence rectification, P-Cls, P-Cap, scoring.

The co-divide is cross-fitted by default (``cross_fit_folds=8``): every pair belongs to one of K
folds, network k never trains on fold k (neither in warm-up nor after), and a pair's loss and
pseudo-prediction for the co-divide come only from the network of its fold. The paper's two
co-trained networks let each vouch for the other's training pairs, but after a warm-up on 70 %-noisy
data both have memorised many mismatched captions with rare words, so their first trusted split is a
third mismatched and stays so; a network that never saw a pair cannot have memorised it. All networks
train on the one split so judged, and the final labels and pseudo-captions use all of them
(measured in BENCHMARKS.md; ``cross_fit_folds=0`` gives the paper's two networks).

P-Cap departs from the paper's in-batch rule by default: after each co-divide, every untrusted pair
gets the best trusted caption of the whole corpus (``pseudo_caption.assign``), and its image trains
against that caption (``pcap_search="corpus"``; measured in BENCHMARKS.md). ``pcap_search="batch"``
keeps the paper's form: the trusted caption in the batch with the most similar pseudo-prediction.

Two further departures, each measured in BENCHMARKS.md and switchable: trusted pairs also train a
word-grounding triplet (``grounding_loss_weight``): every word of a trusted caption must find a region
of its own image, better than the hardest negative caption's words do and better than in the hardest
negative image. And the final labels refit each network's clean posterior on its loss together with
that grounding of the pair's own caption (``label_grounding_weight``).

``curate(corpus, config, workdir=...)`` is the whole job. State is checkpointed atomically after every
epoch, so an interrupted run started again with the same workdir resumes and finishes.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import codivide
from .config import PC2Config
from .data import Corpus
from .losses import pcls_loss, pseudo_caption_triplet, soft_margin, triplet_avg, triplet_hardest
from .networks import PC2Net, l2norm, token_mask, word_grounding
from .pseudo_caption import assign as assign_pseudo_captions

CHECKPOINT = "checkpoint.pt"
TIE_BREAK = 0.02  # share of the loss rank in the final confidence


class Cancelled(Exception):
    """Raised when ``should_stop`` asks the run to stop; the last checkpoint is kept."""


@dataclass
class Progress:
    phase: str  # warmup | train | score | pseudo_caption | done
    epoch: int
    epochs: int
    batch: int = 0
    batches: int = 0
    fraction: float = 0.0  # of the whole job, 0..1
    eta_s: float | None = None
    losses: dict[str, float] = field(default_factory=dict)
    split: dict[str, int] = field(default_factory=dict)


@dataclass
class CurationResult:
    confidence: np.ndarray  # (N,) float32 in [0, 1]
    noisy: np.ndarray  # (N,) bool
    pseudo_class: np.ndarray  # (N,) int64
    pcap_source: np.ndarray  # (N,) int64, -1 = none
    pcap_score: np.ndarray  # (N,) float32
    metrics: dict
    pred: np.ndarray  # (N, K) float32 image pseudo-class probabilities (mean of both networks)
    img_emb: np.ndarray | None = None  # (N, E) float32, joint space (mean of both networks)
    cap_emb: np.ndarray | None = None  # (N, E)
    views: list[tuple[np.ndarray, np.ndarray]] | None = None  # each network's own (img_emb, cap_emb)


@dataclass
class EvalOut:
    loss: np.ndarray  # (N,) fixed-margin hinge averaged over negatives
    pred: np.ndarray  # (N, K) softmax of the head on the image
    img_emb: np.ndarray | None = None
    cap_emb: np.ndarray | None = None


def pick_device(cfg: PC2Config) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def feature_stats(corpus: Corpus, sample: int = 4096, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean/std of image features over a seeded sample of rows."""
    rng = np.random.default_rng(seed)
    n_img = corpus.features.n
    rows = np.sort(rng.choice(n_img, size=min(sample, n_img), replace=False))
    x = corpus.features.get(rows).reshape(-1, corpus.features.dim).astype(np.float64)
    mean, std = x.mean(0), x.std(0)
    std = np.where(std < 1e-6, 1.0, std)
    return torch.from_numpy(mean).float(), torch.from_numpy(std).float()


class Trainer:
    def __init__(
        self,
        corpus: Corpus,
        cfg: PC2Config,
        workdir: str | os.PathLike,
        progress: Callable[[Progress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ):
        self.corpus, self.cfg = corpus, cfg
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.progress_cb = progress
        self.should_stop = should_stop
        self.device = pick_device(cfg)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.n = len(corpus)
        self.empty = corpus.lengths == 0  # no usable text: always noisy, never trusted
        # cross-fitting (a form of co-training, so off without it or without noise handling): pair i
        # belongs to fold[i]; net k never trains on fold k, and only net fold[i] judges pair i, so no
        # pair's trust comes from a network that has memorised its caption
        cross_fit = cfg.cross_fit_folds >= 2 and cfg.use_cotrain and cfg.noise_handling
        self.n_nets = cfg.cross_fit_folds if cross_fit else (2 if cfg.use_cotrain else 1)
        self.fold = np.random.default_rng([cfg.seed, 4099]).integers(0, self.n_nets, self.n) if cross_fit else None
        torch.manual_seed(cfg.seed)
        self.nets = [PC2Net(cfg, corpus.features.dim, corpus.vocab_size).to(self.device) for _ in range(self.n_nets)]
        mean, std = feature_stats(corpus, seed=cfg.seed)
        for net in self.nets:
            net.set_feature_stats(mean.to(self.device), std.to(self.device))
        self.opts = [torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay) for net in self.nets]
        self.bank: list[np.ndarray | None] = [None] * self.n_nets  # previous epoch's image predictions
        self.po: list[np.ndarray | None] = [None] * self.n_nets  # last prediction oscillation per pair
        self.y: list[np.ndarray | None] = [None] * self.n_nets  # rectified soft labels from each net's last eval
        self.w_loss: list[np.ndarray | None] = [None] * self.n_nets
        self.w_po: list[np.ndarray | None] = [None] * self.n_nets  # stable-component posterior of the last PO
        self.loss_rank: list[np.ndarray | None] = [None] * self.n_nets  # normalised rank of each pair's loss
        # pcap_search="corpus": each untrusted pair's pseudo-caption source pair and soft label, per split
        self.pcap_src: list[np.ndarray | None] = [None] * self.n_nets
        self.pcap_lab: list[np.ndarray | None] = [None] * self.n_nets
        self.n_clean: int | None = None  # size of net A's trusted split, for progress reports
        self.epoch = 0
        self.t_start = time.time()
        self.units_done = 0.0
        self.history: list[dict] = []

    # --- bookkeeping ------------------------------------------------------------------------------
    def _total_units(self) -> float:
        return self.cfg.epochs * self._epoch_units() + self.n_nets * (1.0 + self._grounds_labels())

    def _epoch_units(self) -> float:
        # one unit = one pass over the corpus by one network (training ~3x an eval pass, on the train share)
        return self.n_nets * (3.0 * self._train_share() + 1.0)

    def _report(self, phase: str, batch: int, batches: int, unit_fraction: float, losses=None) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled()
        if self.progress_cb is None:
            return
        frac = min(1.0, (self.units_done + unit_fraction) / self._total_units())
        elapsed = time.time() - self.t_start
        eta = elapsed * (1 - frac) / frac if frac > 0.01 else None
        split = {}
        if self.n_clean is not None:  # counted once per split, not on every batch
            split = {"n_clean": self.n_clean, "n_noisy": self.n - self.n_clean}
        self.progress_cb(
            Progress(phase, self.epoch, self.cfg.epochs, batch, batches, frac, eta, dict(losses or {}), split)
        )

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def _batch(self, idx: np.ndarray):
        x = torch.from_numpy(self.corpus.images(idx)).to(self.device, non_blocking=True)
        ids, lens = self.corpus.tokens(idx, self.cfg.max_tokens)
        return x, torch.from_numpy(ids).to(self.device), torch.from_numpy(lens)

    def _split(self, j: int) -> np.ndarray:
        """Pairs net j's co-divide trusts: clean posterior above the threshold, never an empty caption."""
        return (self.w_loss[j] > self.cfg.clean_threshold) & ~self.empty

    def _judge(self, k: int) -> int:
        """Whose co-divide net k trains on: the other net when co-training two; its own slot when
        cross-fitting (where every slot holds the split judged fold by fold) or training one."""
        return 1 - k if self.n_nets == 2 and self.fold is None else k

    def _trusted(self, k: int) -> np.ndarray:
        """Trusted split for training net k: made by the other net when co-training."""
        return self._split(self._judge(k))

    def _train_share(self) -> float:
        """Share of the corpus each network trains on: (K-1)/K when cross-fitting K folds."""
        return 1.0 if self.fold is None else (self.n_nets - 1) / self.n_nets

    def held_out(self, evals: list[EvalOut]) -> list[EvalOut]:
        """What each network's co-divide sees. Cross-fitting: every pair's loss and prediction from the
        net of its fold (which never trained on it), with each net's own joint vectors for its
        pseudo-captions; otherwise each net's own pass."""
        if self.fold is None:
            return evals
        rows = np.arange(self.n)
        loss = np.stack([e.loss for e in evals])[self.fold, rows]
        pred = np.empty_like(evals[0].pred)
        for k, e in enumerate(evals):
            pred[self.fold == k] = e.pred[self.fold == k]
        return [EvalOut(loss, pred, e.img_emb, e.cap_emb) for e in evals]

    # --- passes -----------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, k: int, *, embeddings: bool = False, phase: str = "train", epoch: int | None = None) -> EvalOut:
        """Per-pair co-divide loss and image pseudo-predictions for net k (eval mode, fixed order).

        A pair's loss depends on its batch (its negatives), so the batch order is drawn from the seed
        and ``epoch`` (default: the current one): the same epoch's pass always gives the same losses."""
        net, cfg = self.nets[k], self.cfg
        net.eval()
        bs = cfg.eval_batch_size if net.indexable else cfg.batch_size
        order = np.random.default_rng([cfg.seed, 7919, self.epoch if epoch is None else epoch]).permutation(self.n)
        loss = np.zeros(self.n, dtype=np.float32)
        pred = np.zeros((self.n, cfg.num_classes), dtype=np.float32)
        img_emb = np.zeros((self.n, cfg.embed_dim), dtype=np.float32) if embeddings and net.indexable else None
        cap_emb = np.zeros((self.n, cfg.embed_dim), dtype=np.float32) if embeddings and net.indexable else None
        batches = (self.n + bs - 1) // bs
        for b in range(batches):
            idx = order[b * bs : (b + 1) * bs]
            x, ids, lens = self._batch(idx)
            with self._autocast():
                sims, img_logits, _, img, cap = net(x, ids, lens)
            loss[idx] = triplet_avg(sims.float(), cfg.codivide_margin).cpu().numpy()
            pred[idx] = img_logits.float().softmax(1).cpu().numpy()
            if img_emb is not None:
                img_emb[idx] = img.float().cpu().numpy()
                cap_emb[idx] = cap.float().cpu().numpy()
            self._report(phase, b + 1, batches, (b + 1) / batches)
        self.units_done += 1.0
        return EvalOut(loss, pred, img_emb, cap_emb)

    def divide(self, k: int, ev: EvalOut) -> None:
        """Fit the loss GMM and (after the first eval) the PO GMM; update net k's bank and soft labels."""
        cfg = self.cfg
        usable = ~self.empty
        w_loss = np.zeros(self.n)
        loss = ev.loss[usable]
        if cfg.codivide_scale == "log":
            loss = codivide.log_scale(loss)
        w_loss[usable] = codivide.low_component_posterior(loss, max_iter=cfg.gmm_max_iter, seed=cfg.seed)
        w_po = None
        if cfg.use_cr and self.bank[k] is not None:
            po = codivide.kl_rows(ev.pred, self.bank[k])
            self.po[k] = po
            w_po = np.zeros(self.n)
            w_po[usable] = codivide.low_component_posterior(po[usable], max_iter=cfg.gmm_max_iter, seed=cfg.seed)
        self.bank[k] = ev.pred  # every pair, every epoch
        self.w_po[k] = w_po
        self.w_loss[k] = w_loss
        self.loss_rank[k] = (np.argsort(np.argsort(ev.loss, kind="stable"), kind="stable") / max(self.n - 1, 1)).astype(np.float32)
        y = np.where(w_loss > cfg.clean_threshold, codivide.rectify(w_loss, w_po), w_loss)
        self.y[k] = np.where(self.empty, 0.0, y).astype(np.float32)
        if cfg.pcap_search == "corpus" and cfg.use_pcap:
            # Net k's split: untrusted pairs borrow the best trusted caption from the whole corpus,
            # chosen in net k's joint space (the networks it trains on this split use it next epoch).
            trusted = self._split(k)
            pc = assign_pseudo_captions(
                np.nonzero(~trusted)[0], np.nonzero(trusted)[0], pred=ev.pred, img_emb=ev.img_emb, cap_emb=ev.cap_emb,
                strategy=cfg.pseudo_caption_strategy, threshold=cfg.min_pcap_similarity,
            )
            self.pcap_src[k], self.pcap_lab[k] = pc.source, pc.label
        if all(w is not None for w in self.w_loss):
            self.n_clean = int(np.sum(self._trusted(0)))

    def train_epoch(self, k: int) -> dict[str, float]:
        cfg, net, opt = self.cfg, self.nets[k], self.opts[k]
        net.train()
        warm = self.epoch < cfg.warmup_epochs or not cfg.noise_handling or self.w_loss[0] is None
        rng = np.random.default_rng([cfg.seed, self.epoch, k])
        pool = np.nonzero(~self.empty if self.fold is None else ~self.empty & (self.fold != k))[0]
        order = pool[rng.permutation(len(pool))]
        if not warm:
            trusted = self._trusted(k)
            src = self._judge(k)
            y_all = self.y[src]
            if not cfg.use_pcap:  # without P-Cap, untrusted pairs have nothing to train on
                order = order[trusted[order]]
        bs = cfg.batch_size
        batches = max(1, len(order) // bs)  # drop the ragged tail: a 3-pair batch has no useful negatives
        sums: dict[str, float] = {}
        phase = "warmup" if self.epoch < cfg.warmup_epochs else "train"
        for b in range(batches):
            idx = order[b * bs : (b + 1) * bs]
            x, ids, lens = self._batch(idx)
            with self._autocast():
                sims, img_logits, cap_logits, img, _ = net(x, ids, lens)
            sims, img_logits, cap_logits = sims.float(), img_logits.float(), cap_logits.float()
            parts: dict[str, torch.Tensor] = {}
            if warm:
                if cfg.noise_handling or self.epoch < cfg.warmup_epochs:
                    parts["triplet"] = triplet_avg(sims, cfg.warmup_margin).mean()
                else:  # plain hardest-negative triplet on every pair: the no-noise-handling baseline
                    m = torch.full((len(idx),), cfg.margin, device=sims.device)
                    parts["triplet"] = triplet_hardest(sims, m).mean()
                if cfg.use_pcls:
                    parts["pcls"] = cfg.pcls_weight * pcls_loss(img_logits, cap_logits, cfg.entropy_weight, cfg.entropy_form, cfg.pcls_symmetric)
            else:
                t = torch.from_numpy(trusted[idx]).to(sims.device)
                y = torch.from_numpy(y_all[idx]).to(sims.device)
                if int(t.sum()) >= 2:
                    st = sims[t][:, t]
                    loss_fn = triplet_hardest if cfg.trusted_negatives == "hardest" else triplet_avg
                    parts["triplet"] = loss_fn(st, soft_margin(y[t], cfg.margin)).mean()
                    if cfg.use_pcls:
                        parts["pcls"] = cfg.pcls_weight * pcls_loss(img_logits[t], cap_logits[t], cfg.entropy_weight, cfg.entropy_form, cfg.pcls_symmetric)
                    if cfg.grounding_loss_weight > 0 and self._has_regions():
                        sel = torch.nonzero(t).squeeze(1)
                        with self._autocast():
                            g = self._grounding_triplet(net, x[sel], ids[sel], lens[sel.cpu()], st.detach(), soft_margin(y[t], cfg.margin))
                        parts["ground"] = cfg.grounding_loss_weight * g.float().mean()
                u = ~t
                if cfg.use_pcap and cfg.pcap_search == "corpus":
                    pcap = self._corpus_pcap(net, idx, img, trusted[idx], src)
                    if pcap is not None:
                        parts["pcap"] = cfg.pcap_weight * pcap
                elif cfg.use_pcap and int(u.sum()) > 0 and int(t.sum()) >= 2:
                    p = img_logits.detach().softmax(1)
                    if cfg.pcap_center:  # flat predictions are all alike: compare what sets them apart
                        p = p - p.mean(0, keepdim=True)
                    p = l2norm(p)
                    cos = p[u] @ p[t].t()  # (U, T) pseudo-prediction similarity
                    s, target = cos.max(1)
                    keep = s >= cfg.min_pcap_similarity  # soft label 0 below the threshold: no pair
                    if int(keep.sum()) > 0:
                        su = sims[u][:, t][keep]
                        lab = s[keep]
                        parts["pcap"] = cfg.pcap_weight * pseudo_caption_triplet(su, target[keep], soft_margin(lab, cfg.margin)).mean()
            if not parts:
                continue
            loss = sum(parts.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            for name, v in parts.items():
                sums[name] = sums.get(name, 0.0) + float(v.detach())
            self._report(phase, b + 1, batches, 3.0 * self._train_share() * (b + 1) / batches, {n: s / (b + 1) for n, s in sums.items()})
        self.units_done += 3.0 * self._train_share()
        return {n: s / batches for n, s in sums.items()}

    def _grounding_triplet(self, net: PC2Net, x, ids, lens, sims, margins) -> torch.Tensor:
        """Per-anchor hinge on word grounding: each trusted caption must ground better in its own image
        than the hardest negative caption (by pooled similarity) does, and better than in the hardest
        negative image. -> (T,)"""
        bb = net.backbone
        n = sims.shape[0]
        regions = bb.region_vectors(x)  # (T, R, E)
        words = bb.word_vectors(ids, lens)  # (T, L, E)
        mask = token_mask(lens, ids.shape[1]).to(self.device)  # trusted captions are never empty
        off = sims.masked_fill(torch.eye(n, dtype=torch.bool, device=sims.device), -torch.inf)
        neg_cap, neg_img = off.argmax(1), off.argmax(0)  # hardest caption per image, image per caption
        tau = self.cfg.grounding_tau
        own = torch.arange(n, device=sims.device)
        g = word_grounding(regions, words[torch.stack([own, neg_cap], 1)], mask[torch.stack([own, neg_cap], 1)], tau)  # (T, 2)
        g_img = word_grounding(regions[neg_img], words[:, None], mask[:, None], tau)[:, 0]  # caption i in image neg_img[i]
        return (margins + g[:, 1] - g[:, 0]).clamp(min=0) + (margins + g_img - g[:, 0]).clamp(min=0)

    def _corpus_pcap(self, net: PC2Net, idx: np.ndarray, img, trusted_b: np.ndarray, src: int) -> torch.Tensor | None:
        """Triplet of the batch's untrusted images against their corpus-wide pseudo-captions.

        Image u's positive is the caption of its pseudo-caption source pair, its negatives the other
        pseudo-captions in the batch (one image per source pair, so no negative is its own positive);
        the soft margin follows the pseudo-caption's similarity, and pairs without one (similarity
        under ``min_pcap_similarity``) sit out.
        """
        cfg = self.cfg
        if self.pcap_src[src] is None:
            return None
        source, label = self.pcap_src[src][idx], self.pcap_lab[src][idx]
        rows = np.nonzero(~trusted_b & (source >= 0) & (label > 0))[0]
        _, first = np.unique(source[rows], return_index=True)
        rows = rows[np.sort(first)]
        if len(rows) < 2:
            return None
        ids, lens = self.corpus.tokens(source[rows], cfg.max_tokens)
        sel = torch.from_numpy(rows).to(self.device)
        img_u = tuple(t[sel] for t in img) if isinstance(img, tuple) else img[sel]
        with self._autocast():
            cap = net.backbone.encode_captions(torch.from_numpy(ids).to(self.device), torch.from_numpy(lens))
            sims = net.backbone.sim(img_u, cap).float()
        margins = soft_margin(torch.from_numpy(label[rows]).to(self.device), cfg.margin)
        return triplet_hardest(sims, margins).mean()

    # --- checkpoints ------------------------------------------------------------------------------
    def save(self) -> None:
        state = {
            "fingerprint": self.cfg.training_fingerprint(),
            "epoch": self.epoch,
            "nets": [n.state_dict() for n in self.nets],
            "opts": [o.state_dict() for o in self.opts],
            "bank": self.bank,
            "y": self.y,
            "w_loss": self.w_loss,
            "w_po": self.w_po,
            "loss_rank": self.loss_rank,
            "pcap_src": self.pcap_src,
            "pcap_lab": self.pcap_lab,
            "history": self.history,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        }
        atomic_torch_save(state, self.workdir / CHECKPOINT)

    def try_resume(self) -> bool:
        path = self.workdir / CHECKPOINT
        if not path.exists():
            return False
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state["fingerprint"] != self.cfg.training_fingerprint():
            return False  # another config: start over rather than mix runs
        for net, sd in zip(self.nets, state["nets"]):
            net.load_state_dict(sd)
        for opt, sd in zip(self.opts, state["opts"]):
            opt.load_state_dict(sd)
        self.bank, self.y, self.w_loss = state["bank"], state["y"], state["w_loss"]
        self.loss_rank = state["loss_rank"]
        self.w_po = state.get("w_po", [None] * self.n_nets)
        self.pcap_src = state.get("pcap_src", [None] * self.n_nets)
        self.pcap_lab = state.get("pcap_lab", [None] * self.n_nets)
        if all(w is not None for w in self.w_loss):
            self.n_clean = int(np.sum(self._trusted(0)))
        self.epoch, self.history = state["epoch"], state["history"]
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        return True

    def set_lr(self) -> None:
        cfg = self.cfg
        lr = cfg.lr * (0.1 if cfg.lr_decay_epoch and self.epoch >= cfg.lr_decay_epoch else 1.0)
        for opt in self.opts:
            for g in opt.param_groups:
                g["lr"] = lr

    # --- the job ----------------------------------------------------------------------------------
    def run(self) -> CurationResult:
        cfg = self.cfg
        resumed = self.try_resume()
        self.units_done = self.epoch * self._epoch_units()
        scored = None  # the last epoch's eval pass, which is also the final scoring pass
        while self.epoch < cfg.epochs:
            self.set_lr()
            t0 = time.time()
            losses = [self.train_epoch(k) for k in range(self.n_nets)]
            t_train = time.time() - t0
            last = self.epoch == cfg.epochs - 1
            t0 = time.time()
            evals = [self.evaluate(k, embeddings=last or cfg.pcap_search == "corpus") for k in range(self.n_nets)]
            scored = (evals, time.time() - t0) if last else None
            for k, ev in enumerate(self.held_out(evals)):
                self.divide(k, ev)
            self.epoch += 1
            n_clean = self.n_clean
            self.history.append(
                {"epoch": self.epoch, "losses": losses, "n_clean": n_clean, "train_seconds": round(t_train, 3),
                 "pairs_per_s_per_net": round(len(self) * self.n_nets * self._train_share() / max(t_train, 1e-9), 1)}
            )
            self.save()
        return self.finish(resumed, scored)

    def __len__(self) -> int:
        return int(np.sum(~self.empty))

    def confidence(self, soft: tuple[list[np.ndarray], list[np.ndarray]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean rectified soft label of the networks; the label comes from it alone.

        ``soft`` is (soft labels, badness ranks) per network, as ``grounded_soft_labels`` gives; without
        it, the last epoch's co-divide soft labels and loss ranks.
        GMM posteriors saturate (and the monotone fix makes plateaus), so many pairs would tie at 0 or
        1; a small share of the loss rank orders pairs within those plateaus without moving any pair
        across the label threshold by more than ``TIE_BREAK``.
        """
        ys, ranks = soft if soft is not None else (self.y, self.loss_rank)
        y = np.mean([ys[k] for k in range(self.n_nets)], axis=0)
        noisy = (y < self.cfg.label_threshold) | self.empty
        rank = np.mean([ranks[k] for k in range(self.n_nets)], axis=0)
        conf = (1 - TIE_BREAK) * y + TIE_BREAK * (1.0 - rank)
        conf = np.where(self.empty, 0.0, conf)
        # keep the label and the number consistent at the threshold
        conf = np.where(noisy, np.minimum(conf, np.nextafter(np.float32(self.cfg.label_threshold), np.float32(0))), np.maximum(conf, self.cfg.label_threshold))
        return np.clip(conf, 0.0, 1.0).astype(np.float32), noisy

    def _has_regions(self) -> bool:
        """Backbones with region and word vectors (vse), which word grounding needs."""
        return all(hasattr(n.backbone, "region_vectors") for n in self.nets)

    def _grounds_labels(self) -> bool:
        return self.cfg.label_grounding_weight > 0 and self._has_regions()

    def grounded_soft_labels(self, outs: list[EvalOut]) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
        """Final soft labels with word-level evidence: each network's clean posterior refitted on its loss
        and the word grounding of each pair's own caption (``codivide.fused_clean_evidence``), then
        rectified as in training. A caption that names one true object and two absent ones fits the
        image as a whole well enough to pass the loss GMM; its absent words do not ground.
        None when ``label_grounding_weight`` is 0 or the backbone has no region vectors (sgraf).
        """
        cfg = self.cfg
        usable = np.nonzero(~self.empty)[0]
        if not self._grounds_labels() or len(usable) < 4:
            return None
        ys, ranks = [], []
        for k, (net, ev) in enumerate(zip(self.nets, outs)):
            own = self.ground(net, usable, usable[:, None], phase="ground")[:, 0]
            self.units_done += 1.0
            evidence = codivide.fused_clean_evidence(ev.loss[usable], own, cfg.label_grounding_weight, cfg.codivide_scale)
            w = np.zeros(self.n)
            w[usable] = codivide.low_component_posterior(-evidence, max_iter=cfg.gmm_max_iter, seed=cfg.seed)
            y = np.where(w > cfg.clean_threshold, codivide.rectify(w, self.w_po[k]), w)
            ys.append(np.where(self.empty, 0.0, y).astype(np.float32))
            bad = np.full(self.n, np.inf)
            bad[usable] = -evidence
            ranks.append((np.argsort(np.argsort(bad, kind="stable"), kind="stable") / max(self.n - 1, 1)).astype(np.float32))
        return ys, ranks

    def grounding_scorers(self) -> list[Callable[[np.ndarray, np.ndarray], np.ndarray]] | None:
        """One word-grounding scorer per network for ``grounded`` pseudo-captions (backbones with region vectors)."""
        if self.cfg.pseudo_caption_strategy != "grounded" or not self._has_regions():
            return None
        tau = self.cfg.pcap_grounding_tau
        return [lambda t, c, net=net: self.ground(net, t, c, tau=tau) for net in self.nets]

    @torch.no_grad()
    def ground(self, net: PC2Net, targets: np.ndarray, cand: np.ndarray, block: int = 1024, chunk: int | None = None,
               phase: str | None = None, tau: float | None = None) -> np.ndarray:
        """``networks.word_grounding`` of candidate pairs' captions (B, C) in the target pairs' images (B,).

        Images go through the network ``chunk`` at a time (default: about 2,048 image-caption pairs per
        step, so 1 candidate each runs in steps of 2,048 images and 40 in steps of 51). With ``phase``,
        progress is reported per block as a fraction of one pass. ``tau``: the soft minimum's temperature
        (default ``grounding_tau``)."""
        net.eval()
        bb, cfg = net.backbone, self.cfg
        chunk = chunk or max(1, 2048 // max(cand.shape[1], 1))
        out = np.empty(cand.shape, dtype=np.float32)
        blocks = (len(targets) + block - 1) // block
        for s in range(0, len(targets), block):  # a block's distinct captions are encoded once
            if phase is not None:
                self._report(phase, s // block + 1, blocks, s / max(len(targets), 1))
            t, c = targets[s : s + block], cand[s : s + block]
            uniq, inv = np.unique(c, return_inverse=True)
            inv = torch.from_numpy(inv.reshape(c.shape)).to(self.device)
            ids, lens = self.corpus.tokens(uniq, cfg.max_tokens)
            words = torch.zeros((len(uniq), ids.shape[1], cfg.embed_dim), device=self.device)
            # captions of one length at a time: no padding, so a caption's word states do not
            # depend on which other captions share its block
            for n in np.unique(lens):
                rows = np.nonzero(lens == n)[0]
                for u in range(0, len(rows), cfg.eval_batch_size):
                    r = rows[u : u + cfg.eval_batch_size]
                    with self._autocast():
                        w = bb.word_vectors(torch.from_numpy(ids[r, : max(int(n), 1)]).to(self.device), torch.from_numpy(lens[r]))
                    words[torch.from_numpy(r).to(self.device), : w.shape[1]] = w.float()
            masks = torch.from_numpy(np.arange(ids.shape[1])[None, :] < lens[:, None]).to(self.device)
            for q in range(0, len(c), chunk):
                x = torch.from_numpy(self.corpus.images(t[q : q + chunk])).to(self.device)
                pick = inv[q : q + chunk]
                with self._autocast():
                    regions = bb.region_vectors(x).float()
                g = word_grounding(regions, words[pick], masks[pick], cfg.grounding_tau if tau is None else tau)
                out[s + q : s + q + len(pick)] = g.cpu().numpy()
        return out

    def finish(self, resumed: bool, scored: tuple[list[EvalOut], float] | None = None) -> CurationResult:
        """Score every pair; ``scored`` is an eval pass (with embeddings) of the final networks, if one was made."""
        cfg = self.cfg
        if scored is None:  # resumed after the last epoch: the networks have not been evaluated here
            t0 = time.time()  # the pass the last epoch made, batch for batch
            scored = ([self.evaluate(k, embeddings=True, phase="score", epoch=self.epoch - 1) for k in range(self.n_nets)], time.time() - t0)
        outs, score_s = scored
        confidence, noisy = self.confidence(self.grounded_soft_labels(outs))
        pred = np.mean([o.pred for o in outs], axis=0).astype(np.float32)
        img_emb = cap_emb = None
        if outs[0].img_emb is not None:
            img_emb = np.mean([o.img_emb for o in outs], axis=0).astype(np.float32)
            cap_emb = np.mean([o.cap_emb for o in outs], axis=0).astype(np.float32)
        views = [(o.img_emb, o.cap_emb) for o in outs] if img_emb is not None else None
        self._report("pseudo_caption", 0, 1, 0.0)
        pc = assign_pseudo_captions(
            np.nonzero(noisy)[0], np.nonzero(~noisy)[0], pred=pred, img_emb=img_emb, cap_emb=cap_emb,
            strategy=cfg.pseudo_caption_strategy, threshold=cfg.min_pcap_similarity, views=views,
            grounding=self.grounding_scorers(), fit_weight=cfg.grounding_fit_weight,
        )
        n_noisy = int(noisy.sum())
        metrics = {
            "n_pairs": self.n,
            "n_clean": self.n - n_noisy,
            "n_noisy": n_noisy,
            "noise_rate": n_noisy / max(self.n, 1),
            "n_empty_captions": int(self.empty.sum()),
            "n_pseudo_captioned": int((pc.source >= 0).sum()),
            "epochs": self.epoch,
            "resumed": resumed,
            "device": str(self.device),
            "seconds": round(time.time() - self.t_start, 3),
            "score_pairs_per_s": round(self.n_nets * self.n / max(score_s, 1e-9), 1),
            "history": self.history,
        }
        save_model(self)
        save_vectors(self.workdir, pred=pred, img_emb=img_emb, cap_emb=cap_emb)
        self.units_done = self._total_units()
        self._report("done", 1, 1, 0.0)
        return CurationResult(
            confidence=confidence, noisy=noisy, pseudo_class=pred.argmax(1).astype(np.int64),
            pcap_source=pc.source, pcap_score=pc.score, metrics=metrics, pred=pred, img_emb=img_emb, cap_emb=cap_emb,
            views=views,
        )


def curate(
    corpus: Corpus,
    config: PC2Config | None = None,
    *,
    workdir: str | os.PathLike,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> CurationResult:
    """Train PC² on ``corpus`` (resuming from ``workdir`` if a checkpoint is there) and score every pair."""
    trainer = Trainer(corpus, config or PC2Config(), workdir, progress, should_stop)
    return trainer.run()


# --- trained model: save, load, encode ------------------------------------------------------------
MODEL = "model.pt"


def save_model(trainer: Trainer) -> Path:
    path = trainer.workdir / MODEL
    atomic_torch_save(
        {
            "config": trainer.cfg.to_dict(),
            "in_dim": trainer.corpus.features.dim,
            "vocab_size": trainer.corpus.vocab_size,
            "nets": [n.state_dict() for n in trainer.nets],
        },
        path,
    )
    return path


def save_vectors(workdir: Path, **arrays: np.ndarray | None) -> None:
    """``pred.npy``, ``img_emb.npy``, ``cap_emb.npy`` beside the model, for indexes and search."""
    for name, arr in arrays.items():
        if arr is None:
            continue
        tmp = workdir / f".{name}.tmp.npy"
        with open(tmp, "wb") as f:
            np.save(f, arr)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, workdir / f"{name}.npy")


def load_model(path: str | os.PathLike, device: str = "cpu") -> tuple[PC2Config, list[PC2Net]]:
    state = torch.load(Path(path), map_location=device, weights_only=False)
    cfg = PC2Config.from_dict(state["config"])
    nets = []
    for sd in state["nets"]:
        net = PC2Net(cfg, state["in_dim"], state["vocab_size"]).to(device)
        net.load_state_dict(sd)
        net.eval()
        nets.append(net)
    return cfg, nets


@torch.no_grad()
def encode_images(nets: list[PC2Net], x: np.ndarray) -> np.ndarray:
    """Features (B, R, D) -> joint-space vectors (B, E), mean of the networks, L2-normalised."""
    dev = next(nets[0].parameters()).device
    xt = torch.from_numpy(np.asarray(x, dtype=np.float32)).to(dev)
    if xt.ndim == 2:
        xt = xt[:, None, :]
    vecs = [n.backbone.img_vec(n.backbone.encode_images(xt)) for n in nets]
    return l2norm(torch.stack(vecs).mean(0)).cpu().numpy()


@torch.no_grad()
def encode_captions(nets: list[PC2Net], ids: np.ndarray, lens: np.ndarray) -> np.ndarray:
    dev = next(nets[0].parameters()).device
    it, lt = torch.from_numpy(ids).to(dev), torch.from_numpy(np.asarray(lens))
    vecs = [n.backbone.cap_vec(n.backbone.encode_captions(it, lt)) for n in nets]
    return l2norm(torch.stack(vecs).mean(0)).cpu().numpy()


@torch.no_grad()
def similarity(nets: list[PC2Net], corpus: Corpus, cfg: PC2Config, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Image-caption similarity over a (test) corpus -> (sims [n_img, n_cap], cap_to_img [n_cap]).

    Images are the distinct feature rows; with ``vse`` this is a product of vectors, with ``sgraf``
    every pair is scored by the networks (mean of both).
    """
    for n in nets:
        n.eval()
    rows, cap_to_img = np.unique(corpus.feature_row, return_inverse=True)
    idx = np.arange(len(corpus))
    if nets[0].indexable:
        img = np.concatenate([encode_images(nets, corpus.features.get(rows[s : s + block])) for s in range(0, len(rows), block)])
        cap = []
        for s in range(0, len(idx), block):
            ids, lens = corpus.tokens(idx[s : s + block], cfg.max_tokens)
            cap.append(encode_captions(nets, ids, lens))
        return img @ np.concatenate(cap).T, cap_to_img
    dev = next(nets[0].parameters()).device
    sims = np.zeros((len(rows), len(idx)), dtype=np.float32)
    for i in range(0, len(rows), block):
        x = torch.from_numpy(corpus.features.get(rows[i : i + block])).to(dev)
        imgs = [n.backbone.encode_images(x) for n in nets]
        for j in range(0, len(idx), block):
            ids, lens = corpus.tokens(idx[j : j + block], cfg.max_tokens)
            it, lt = torch.from_numpy(ids).to(dev), torch.from_numpy(lens)
            s = [n.backbone.sim(im, n.backbone.encode_captions(it, lt)) for n, im in zip(nets, imgs)]
            sims[i : i + block, j : j + block] = torch.stack(s).mean(0).float().cpu().numpy()
    return sims, cap_to_img
