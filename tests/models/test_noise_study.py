"""benchmarks/noise_study.py: the truth-split diagnostic and the breakdown of missed pseudo-captions."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("noise_study", ROOT / "benchmarks" / "noise_study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_study_trains_on_the_true_clean_pairs_and_accounts_for_every_miss(study, small_corpus, quality_config, tmp_path, monkeypatch):
    out = tmp_path / "study"
    sets = [a for k, v in quality_config.items() for a in ("--set", f"{k}={v}")]
    monkeypatch.setattr(sys, "argv", ["noise_study", "--data", str(small_corpus.out_dir), "--out", str(out), *sets])
    trusted_seen = []
    real_train_epoch = study.OracleSplit.train_epoch

    def spy(self, k):
        if self.epoch >= self.cfg.warmup_epochs:
            trusted_seen.append(self._trusted(k).copy())
        return real_train_epoch(self, k)

    monkeypatch.setattr(study.OracleSplit, "train_epoch", spy)
    assert study.main() == 0

    truth = pq.read_table(small_corpus.truth_path)
    clean = ~np.asarray(truth["noisy"].to_pylist(), dtype=bool)
    # every trained epoch after warm-up of the diagnostic trusts exactly the clean pairs
    assert trusted_seen and all(np.array_equal(t, clean) for t in trusted_seen)

    report = json.loads((out / "study.json").read_text())
    default, oracle, b = report["default"], report["oracle_split"], report["breakdown"]
    # the misses by type add up to the mismatched pairs the default run labels clean
    n_noisy = int((~clean).sum())
    missed = sum(int(v.split(" of ")[0]) for v in b["labelled_clean_by_type"].values())
    assert missed == round(n_noisy * (1 - default["noisy_recall"]))
    assert sum(int(v.split(" of ")[1]) for v in b["labelled_clean_by_type"].values()) == n_noisy
    assert len(b["trusted_after_warmup_mismatched"]) == 1  # the one cross-fitted split (quality_config: 3 folds)
    assert 0 <= b["picks_from_clean_sources"] <= 1
    # a trusted split free of mismatches teaches the networks to tell the pairs apart
    assert oracle["roc_auc"] >= 0.9


def test_truth_split_can_be_limited_to_the_first_epochs_after_warm_up(study):
    from pc2.models.config import PC2Config

    t = study.OracleSplit.__new__(study.OracleSplit)
    t.cfg = PC2Config(warmup_epochs=2, clean_threshold=0.95)
    t.clean_truth = np.array([True, True, False, False])
    t.empty = np.array([False, True, False, False])
    t.w_loss = [np.array([0.99, 0.99, 0.99, 0.1])]
    t.pure_epochs = 1
    t.epoch = 2  # the first epoch after warm-up: the truth, never an empty caption
    assert t._split(0).tolist() == [True, False, False, False]
    t.epoch = 3  # then the co-divide's own split
    assert t._split(0).tolist() == [True, False, True, False]
    t.pure_epochs = None
    assert t._split(0).tolist() == [True, False, False, False]
