"""`pc2 bench`: PC², baselines and ablations side by side on a synthetic corpus with ground truth.

Methods (each a config of the same engine, trained on the same prepared corpus):
- ``pc2``: the full method (default config: K-fold cross-fitted co-divide).
- ``two_nets``: the full method with the paper's two co-trained networks (``cross_fit_folds=0``, trusted
  above a 0.95 posterior): the default before cross-fitting.
- ``plain``: no noise handling: one network, hardest-negative triplet on every pair.
- ``ncr``: loss-GMM co-divide only (two co-trained networks as in NCR, soft margins from w_loss; no P-Cls, P-Cap, CR or
  grounding loss; final labels from the loss alone).
- ``cosine``: CLIP-score-like filtering: the ``plain`` model's image-caption cosine, keeping the
  highest-cosine pairs, then a plain model retrained on the kept pairs for retrieval. It keeps as
  many pairs as PC² labels clean in the same run (same budget, so the comparison is about *which*
  pairs), or ``--cosine-keep``; with neither, a GMM on the cosine decides.
- ``no_pcls`` / ``no_pcap`` / ``no_cr`` / ``no_ground_loss``: PC² with one component switched off.
Speed (``--speed``): training and scoring pairs/s per network for the default config and for SGRAF
(embed 1024, batch 128) measured in the same run, with peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

TWO_NETS = {"cross_fit_folds": 0, "clean_threshold": 0.95}  # the paper's co-training, the default before cross-fitting

METHODS = {
    "pc2": {},
    "plain": {"noise_handling": False, "use_cotrain": False, "use_pcls": False, "use_pcap": False, "use_cr": False,
              "grounding_loss_weight": 0.0, "label_grounding_weight": 0.0},
    "two_nets": TWO_NETS,
    "ncr": {**TWO_NETS, "use_pcls": False, "use_pcap": False, "use_cr": False, "grounding_loss_weight": 0.0, "label_grounding_weight": 0.0},
    "cosine": None,  # built from plain, see run_cosine
    "no_pcls": {"use_pcls": False},
    "no_pcap": {"use_pcap": False},
    "no_cr": {"use_cr": False},
    "no_ground_loss": {"grounding_loss_weight": 0.0},
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="a `pc2 synth` directory (default: generate one under --out)")
    p.add_argument("--pairs", type=int, default=10000)
    p.add_argument("--noise", type=float, nargs="+", default=[0.5], help="noise rate(s) to generate")
    p.add_argument("--regions", type=int, default=36)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default="pc2,plain,ncr,cosine,no_pcls,no_pcap,no_cr,no_ground_loss", help="comma-separated: " + ",".join(METHODS))
    p.add_argument("--epochs", type=int, help="override epochs for every method")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override for every method")
    p.add_argument("--strategies", action="store_true", help="also compare pseudo-caption strategies (pred/embed/combo/grounded) and final-label evidence (loss vs. loss + grounding) on the pc2 model")
    p.add_argument("--cosine-keep", type=float, metavar="FRACTION", help="share of pairs the cosine baseline keeps (default: as many as pc2 labels clean)")
    p.add_argument("--speed", action="store_true", help="measure training/scoring speed instead of quality")
    p.add_argument("--speed-batches", type=int, default=30, help="training batches timed per config in --speed")
    p.add_argument("--out", default="bench_out", help="directory for results.json, table.md and plots")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def prepare_train(data_dir: Path, work: Path):
    """Tokenize the training split (BPE on its own captions) into ``work/prepared_train`` once."""
    from . import ingest

    train_dir = work / "prepared_train"
    if not (train_dir / "corpus.json").exists():
        ingest.prepare(data_dir / "manifest.parquet", [data_dir / "features.npy"], train_dir)
    return ingest.load_prepared(train_dir).corpus


def prepare_dataset(data_dir: Path, work: Path):
    """Tokenize train (BPE on its own captions) and test (same tokenizer) once for all methods."""
    from . import ingest

    train = prepare_train(data_dir, work)
    test_dir = work / "prepared_test"
    if not (test_dir / "corpus.json").exists():
        ingest.prepare(data_dir / "test" / "manifest.parquet", [data_dir / "test" / "features.npy"], test_dir,
                       tokenizer=str(work / "prepared_train" / "tokenizer.json"))
    return train, ingest.load_prepared(test_dir).corpus


def evaluate(name, result, nets, cfg, train, test, truth, test_truth, out: Path) -> dict:
    from . import metrics
    from .engine import similarity
    from .synth import describes

    noisy_true = np.asarray(truth["noisy"].to_pylist(), dtype=bool)
    row = {"method": name}
    row.update({k: float(v) for k, v in metrics.detection(noisy_true, result.confidence, result.noisy).items()})
    sims, cap_to_img = similarity(nets, test, cfg)
    row.update({k: float(v) for k, v in metrics.retrieval(sims, cap_to_img).items()})
    row.update(pcap_quality(result, truth, describes))
    metrics.confidence_histogram_png(result.confidence, noisy_true, out / f"hist_{name}.png", f"{name}: confidence")
    row["seconds"] = float(result.metrics.get("seconds", 0.0))
    return row


def pcap_quality(result, truth, describes) -> dict:
    """Share of truly noisy pairs whose pseudo-caption describes their image (no pseudo-caption = miss)."""
    noisy_true = np.asarray(truth["noisy"].to_pylist(), dtype=bool)
    img_c = truth["image_concepts"].to_pylist()
    cap_c = truth["caption_concepts"].to_pylist()
    idx = np.nonzero(noisy_true)[0]
    src = result.pcap_source
    hits = [src[i] >= 0 and result.noisy[i] and describes(img_c[i], cap_c[src[i]]) for i in idx]
    assigned = [i for i in np.nonzero(src >= 0)[0]]
    right = [describes(img_c[i], cap_c[src[i]]) for i in assigned]
    return {
        "pcap_acc": float(np.mean(hits)) if len(idx) else float("nan"),
        "pcap_precision": float(np.mean(right)) if right else float("nan"),
    }


def train_method(name, overrides, base, train, work, seed):
    from .config import PC2Config
    from .engine import Trainer

    cfg = PC2Config.from_dict({**base, **overrides, "seed": seed})
    trainer = Trainer(train, cfg, work / name)
    result = trainer.run()
    return cfg, trainer.nets, result, trainer


def run_cosine(plain, base, train, work, seed, keep_fraction: float | None = None):
    """Filter by the plain model's cosine, retrain a plain model on the kept pairs.

    ``keep_fraction`` keeps that share of pairs (highest cosine first); without it a GMM on the
    cosine splits (on a model that has memorised its noise that keeps nearly everything).
    """
    from .codivide import low_component_posterior
    from .config import PC2Config
    from .data import subset
    from .engine import CurationResult, Trainer

    cfg_p, nets_p, res_p = plain[:3]
    cos = np.sum(res_p.img_emb * res_p.cap_emb, axis=1) / (
        np.linalg.norm(res_p.img_emb, axis=1) * np.linalg.norm(res_p.cap_emb, axis=1) + 1e-8
    )
    empty = train.lengths == 0
    if keep_fraction is None:
        conf = low_component_posterior(1.0 - cos).astype(np.float32)  # posterior of the high-cosine component
    else:
        if not 0 < keep_fraction <= 1:
            raise SystemExit(f"--cosine-keep must be in (0, 1], got {keep_fraction}")
        n = len(cos)
        rank = np.empty(n, dtype=np.float64)  # 0 = highest cosine
        rank[np.argsort(-np.where(empty, -np.inf, cos), kind="stable")] = np.arange(n)
        n_keep = max(1, int(round(keep_fraction * n)))
        # falls with the rank: (1/2, 1] for the kept pairs, (0, 1/2) for the rest
        conf = np.where(rank < n_keep, 0.5 + 0.5 * (n_keep - rank) / n_keep, 0.5 * (n - rank) / (n - n_keep + 1)).astype(np.float32)
    conf[empty] = 0.0
    keep = np.nonzero(conf >= 0.5)[0]
    cfg = PC2Config.from_dict({**base, **METHODS["plain"], "seed": seed})
    t0 = time.time()
    trainer = Trainer(subset(train, keep), cfg, work / "cosine")
    trainer.run()
    n = len(train)
    result = CurationResult(
        confidence=conf, noisy=conf < 0.5, pseudo_class=res_p.pseudo_class, pcap_source=np.full(n, -1),
        pcap_score=np.zeros(n, np.float32), metrics={"seconds": res_p.metrics["seconds"] + time.time() - t0}, pred=res_p.pred,
    )
    return cfg, trainer.nets, result, trainer


def strategy_rows(result, truth, trainer=None) -> list[dict]:
    """Pseudo-caption strategies compared on one trained model's vectors (``grounded`` needs its trainer)."""
    from .pseudo_caption import assign
    from .synth import describes

    noisy = np.nonzero(result.noisy)[0]
    trusted = np.nonzero(~result.noisy)[0]
    rows = []
    for strategy in ("pred", "embed", "combo", "grounded"):
        extra = {}
        if strategy == "grounded":
            if trainer is None:
                continue
            trainer.cfg = trainer.cfg.replace(pseudo_caption_strategy="grounded")  # scorers are offered for it only
            extra = {"grounding": trainer.grounding_scorers(), "fit_weight": trainer.cfg.grounding_fit_weight}
        t0 = time.time()
        pc = assign(noisy, trusted, pred=result.pred, img_emb=result.img_emb, cap_emb=result.cap_emb, strategy=strategy, views=result.views, **extra)
        dt = time.time() - t0

        q = pcap_quality(SimpleNamespace(pcap_source=pc.source, noisy=result.noisy), truth, describes)
        rows.append({"strategy": strategy, **q, "seconds": round(dt, 3)})
    return rows


def label_rows(result, truth, trainer) -> list[dict]:
    """Final labels on one trained model: the co-divide's loss-only soft labels against the default
    loss + own-caption word grounding (``Trainer.grounded_soft_labels``), each with its pseudo-captions."""
    from . import metrics
    from .pseudo_caption import assign
    from .synth import describes

    noisy_true = np.asarray(truth["noisy"].to_pylist(), dtype=bool)
    conf, noisy = trainer.confidence()
    pc = assign(np.nonzero(noisy)[0], np.nonzero(~noisy)[0], pred=result.pred, img_emb=result.img_emb, cap_emb=result.cap_emb,
                strategy=trainer.cfg.pseudo_caption_strategy, views=result.views, grounding=trainer.grounding_scorers(),
                fit_weight=trainer.cfg.grounding_fit_weight)

    loss_only = SimpleNamespace(pcap_source=pc.source, noisy=noisy)  # the fields pcap_quality reads
    rows = []
    for name, c, r in (("loss", conf, loss_only), (f"loss + grounding (weight {trainer.cfg.label_grounding_weight:g})", result.confidence, result)):
        d = metrics.detection(noisy_true, c, r.noisy)
        rows.append({"labels": name, "roc_auc": d["roc_auc"], "f1": d["f1"], "precision": d["precision"], "recall": d["recall"],
                     **pcap_quality(r, truth, describes)})
    return rows


def markdown(rows: list[dict], cols: list[str]) -> str:
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"

    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) and abs(v) < 10 else (f"{v:.1f}" if isinstance(v, float) else str(v))

    return head + "".join("| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |\n" for r in rows)


def quality(args, out: Path) -> int:
    import pyarrow.parquet as pq

    from .synth import generate

    from .config import parse_overrides

    base = parse_overrides(args.set)
    if args.epochs:
        base["epochs"] = args.epochs
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}; choose from {list(METHODS)}")
    datasets = [(Path(args.data), None)] if args.data else [(out / f"synth_noise{int(r * 100)}", r) for r in args.noise]
    report = []
    text = []
    for data_dir, rate in datasets:
        if rate is not None and not (data_dir / "manifest.parquet").exists():
            generate(data_dir, n_pairs=args.pairs, noise_rate=rate, regions=args.regions, dim=args.dim, seed=args.seed)
        work = out / (data_dir.name + "_runs")
        train, test = prepare_dataset(data_dir, work)
        truth, test_truth = pq.read_table(data_dir / "truth.parquet"), pq.read_table(data_dir / "test" / "truth.parquet")
        trained, rows, strategies, labels = {}, [], [], []
        for m in methods:
            print(f"[bench] {data_dir.name}: {m}", flush=True)
            if m == "cosine":
                if "plain" not in trained:
                    trained["plain"] = train_method("plain", METHODS["plain"], base, train, work, args.seed)
                keep = args.cosine_keep
                if keep is None and "pc2" in trained:
                    keep = float(np.mean(~trained["pc2"][2].noisy))
                trained[m] = run_cosine(trained["plain"], base, train, work, args.seed, keep)
            else:
                trained[m] = train_method(m, METHODS[m], base, train, work, args.seed)
            cfg, nets, result, _ = trained[m]
            row = evaluate(m, result, nets, cfg, train, test, truth, test_truth, out / data_dir.name)
            rows.append(row)
            print(json.dumps(row), flush=True)
        if args.strategies and "pc2" in trained:
            strategies = strategy_rows(trained["pc2"][2], truth, trained["pc2"][3])
            if trained["pc2"][3].cfg.label_grounding_weight > 0:
                labels = label_rows(trained["pc2"][2], truth, trained["pc2"][3])
        cols = ["method", "roc_auc", "f1", "est_noise_rate", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum", "pcap_acc", "pcap_precision", "seconds"]
        text.append(f"### {data_dir.name} ({len(train)} training pairs)\n\n" + markdown(rows, cols))
        if strategies:
            text.append("Pseudo-caption strategies (pc2 model):\n\n" + markdown(strategies, ["strategy", "pcap_acc", "pcap_precision", "seconds"]))
        if labels:
            text.append("Final labels (pc2 model):\n\n" + markdown(labels, ["labels", "roc_auc", "f1", "precision", "recall", "pcap_acc", "pcap_precision"]))
        report.append({"data": str(data_dir), "rows": rows, "strategies": strategies, "labels": labels})
    (out / "results.json").write_text(json.dumps(report, indent=1))
    (out / "table.md").write_text("\n".join(text))
    print("\n".join(text))
    return 0


def speed(args, out: Path) -> int:
    """Training and scoring pairs/s per network, default vse vs sgraf (embed 1024, batch 128), one run."""
    from .config import PC2Config
    from .engine import Trainer
    from .synth import generate

    data_dir = Path(args.data) if args.data else out / "synth_speed"
    if not (data_dir / "manifest.parquet").exists():
        generate(data_dir, n_pairs=args.pairs, noise_rate=args.noise[0], regions=args.regions, dim=args.dim, seed=args.seed, n_test=100)
    train, _ = prepare_dataset(data_dir, out / "speed_runs")
    rows = []
    configs = {"vse (default)": {}, "sgraf embed1024 b128": {"backbone": "sgraf", "embed_dim": 1024, "word_dim": 300, "batch_size": 128}}
    for name, over in configs.items():
        cfg = PC2Config.from_dict({**over, "epochs": 1, "warmup_epochs": 1})
        tr = Trainer(train, cfg, out / "speed_runs" / name.split()[0])
        nb = args.speed_batches if over else max(args.speed_batches, 60)
        net, opt = tr.nets[0], tr.opts[0]
        net.train()
        order = np.random.default_rng(0).permutation(len(train))
        bs = cfg.batch_size
        from .losses import pcls_loss, triplet_avg

        def step(idx):
            x, ids, lens = tr._batch(idx)
            sims, il, cl, _, _ = net(x, ids, lens)
            loss = triplet_avg(sims, cfg.warmup_margin).mean() + pcls_loss(il, cl, cfg.entropy_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()

        step(order[:bs])  # warm the allocator
        t0 = time.perf_counter()
        done = 0
        for b in range(1, nb + 1):
            idx = order[(b * bs) % (len(order) - bs) :][:bs]
            step(idx)
            done += len(idx)
        train_rate = done / (time.perf_counter() - t0)
        n_score = min(len(train), 8192 if not over else 512)
        t0 = time.perf_counter()
        tr.n = n_score  # score the first n_score pairs
        tr.evaluate(0)
        score_rate = n_score / (time.perf_counter() - t0)
        tr.n = len(train)
        rows.append({"config": name, "train_pairs_per_s_per_net": round(train_rate, 1), "score_pairs_per_s_per_net": round(score_rate, 1), "peak_rss_mb": round(peak_rss_mb(), 1)})
        print(json.dumps(rows[-1]), flush=True)
    if len(rows) == 2:
        rows.append({"config": "ratio vse/sgraf", "train_pairs_per_s_per_net": round(rows[0]["train_pairs_per_s_per_net"] / rows[1]["train_pairs_per_s_per_net"], 1),
                     "score_pairs_per_s_per_net": round(rows[0]["score_pairs_per_s_per_net"] / rows[1]["score_pairs_per_s_per_net"], 1)})
    text = markdown(rows, ["config", "train_pairs_per_s_per_net", "score_pairs_per_s_per_net", "peak_rss_mb"])
    (out / "speed.md").write_text(text)
    print(text)
    return 0


def main(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return speed(args, out) if args.speed else quality(args, out)
