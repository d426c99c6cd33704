"""Where the pseudo-caption share is lost on a synthetic corpus, and what a perfectly clean trusted split would give.

    pc2 synth data/synth70 --pairs 10000 --noise 0.7
    python benchmarks/noise_study.py --data data/synth70 --out bench_out/study70

Trains the default engine (``--set KEY=VALUE`` changes it), then a diagnostic run in which every
co-divide after warm-up is replaced by the truth (the trusted split is exactly the clean pairs; the final
labels still come from the model; ``--oracle-epochs`` / ``--oracle-share`` limit it to the first epochs
after warm-up / to a share of the clean pairs). The diagnostic is not a method: it bounds what a purer trusted split
could bring with the same networks and data. Prints, for both runs, detection, the pseudo-caption share
and precision, and for the default run where the misses come from: mismatched pairs labelled clean
(by noise type and caption language), whether they were already trusted right after warm-up, and how
often picks from truly clean and from mismatched source pairs describe the image. Both runs train one
after the other (never two at once: they would share the cores).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pc2.models import metrics
from pc2.models.bench import pcap_quality, prepare_train
from pc2.models.config import PC2Config, parse_overrides
from pc2.models.engine import Trainer
from pc2.models.synth import describes


class Recording(Trainer):
    """The engine, remembering each trusted split right after warm-up: one per network when co-training
    two, the one cross-fitted split otherwise."""

    after_warmup: list[np.ndarray] | None = None

    def divide(self, k, ev):
        super().divide(k, ev)
        if self.epoch == self.cfg.warmup_epochs - 1 and (self.fold is None or k == 0):
            self.after_warmup = (self.after_warmup or []) + [self._split(k).copy()]


class OracleSplit(Trainer):
    """Diagnostic: the trusted split is the truly clean pairs (``clean_truth``) for the first
    ``pure_epochs`` epochs after warm-up, the co-divide's own split after that."""

    clean_truth: np.ndarray
    pure_epochs: int | None = None  # None: every epoch

    def _split(self, j):
        if self.pure_epochs is None or self.epoch < self.cfg.warmup_epochs + self.pure_epochs:
            return self.clean_truth & ~self.empty
        return super()._split(j)


def summary(name: str, result, truth) -> dict:
    noisy_true = np.asarray(truth["noisy"].to_pylist(), dtype=bool)
    d = metrics.detection(noisy_true, result.confidence, result.noisy)
    return {"run": name, "roc_auc": d["roc_auc"], "f1": d["f1"], "noisy_recall": d["recall"],
            "clean_labelled": int((~result.noisy).sum()), **pcap_quality(result, truth, describes)}


def breakdown(result, truth, after_warmup: list[np.ndarray]) -> dict:
    noisy_true = np.asarray(truth["noisy"].to_pylist(), dtype=bool)
    kind = np.asarray(truth["noise_type"].to_pylist())
    lang = np.asarray(truth["language"].to_pylist())
    img_c, cap_c = truth["image_concepts"].to_pylist(), truth["caption_concepts"].to_pylist()
    missed = noisy_true & ~result.noisy  # mismatched pairs labelled clean: no pseudo-caption
    warm = np.any(after_warmup, axis=0)
    out = {
        "labelled_clean_by_type": {t: f"{int((missed & (kind == t)).sum())} of {int((kind == t).sum())}" for t in sorted(set(kind[noisy_true]))},
        "shuffled_labelled_clean_by_language": {g: round(float(np.mean(missed[(kind == "shuffled") & (lang == g)])), 3) for g in sorted(set(lang))},
        "missed_trusted_right_after_warmup": round(float(np.mean(warm[missed])), 3) if missed.any() else None,
        "trusted_after_warmup_mismatched": [round(float(np.mean(noisy_true[s])), 3) for s in after_warmup],
        "pool_mismatched": round(float(np.mean(noisy_true[~result.noisy])), 3),
    }
    src = result.pcap_source
    picked = np.nonzero(noisy_true & (src >= 0))[0]
    right = np.array([describes(img_c[i], cap_c[src[i]]) for i in picked])
    clean_src = ~noisy_true[src[picked]]
    out["picks_from_clean_sources"] = round(float(np.mean(clean_src)), 3)
    out["describing_if_clean_source"] = round(float(np.mean(right[clean_src])), 3)
    out["describing_if_mismatched_source"] = round(float(np.mean(right[~clean_src])), 3) if (~clean_src).any() else None
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a pc2 synth directory (manifest, features, truth)")
    p.add_argument("--out", required=True, help="work directory (tokenized corpus, checkpoints, study.json)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="engine config override")
    p.add_argument("--skip-oracle", action="store_true", help="only the default run and its breakdown")
    p.add_argument("--oracle-epochs", type=int, default=None, metavar="N",
                   help="the truth replaces the split for the first N epochs after warm-up only (default: all)")
    p.add_argument("--oracle-share", type=float, default=1.0, metavar="F",
                   help="the truth split holds this random share of the clean pairs (default 1)")
    args = p.parse_args()
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = prepare_train(data, out)
    truth = pq.read_table(data / "truth.parquet")
    cfg = PC2Config.from_dict(parse_overrides(args.set))

    default = Recording(train, cfg, out / "default")
    result = default.run()
    report = {"default": summary("default", result, truth)}
    if default.after_warmup:  # None when resumed past warm-up
        report["breakdown"] = breakdown(result, truth, default.after_warmup)
    print(json.dumps(report, indent=1), flush=True)
    name = "oracle_split"
    if args.oracle_epochs is not None:
        name += f"_e{args.oracle_epochs}"
    if args.oracle_share < 1:
        name += f"_share{args.oracle_share:g}"
    if not args.skip_oracle:
        oracle = OracleSplit(train, cfg, out / name)
        clean = ~np.asarray(truth["noisy"].to_pylist(), dtype=bool)
        oracle.clean_truth = clean & (np.random.default_rng(5).random(len(clean)) < args.oracle_share)
        oracle.pure_epochs = args.oracle_epochs
        report[name] = summary(name, oracle.run(), truth)
        print(json.dumps(report[name], indent=1), flush=True)
    (out / ("study.json" if name == "oracle_split" else f"study_{name}.json")).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
