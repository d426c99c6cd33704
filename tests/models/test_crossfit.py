"""Cross-fitted co-divide (``cross_fit_folds``): no network judges a pair it has trained on."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pc2.models.config import ConfigError, PC2Config
from pc2.models.engine import EvalOut, Trainer, curate

TINY = dict(epochs=6, warmup_epochs=2, embed_dim=64, word_dim=64, num_classes=16, batch_size=32, lr=3e-3,
            eval_batch_size=256, cross_fit_folds=3)


class Spy(Trainer):
    """Records which pairs each network trains on and what each co-divide was fitted on."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.trained_on = [set() for _ in range(self.n_nets)]
        self.divided: list[tuple[int, np.ndarray]] = []
        self.last_evals: dict[int, np.ndarray] = {}
        self._k = None

    def train_epoch(self, k):
        self._k = k
        try:
            return super().train_epoch(k)
        finally:
            self._k = None

    def _batch(self, idx):
        if self._k is not None:
            self.trained_on[self._k].update(int(i) for i in idx)
        return super()._batch(idx)

    def evaluate(self, k, **kw):
        ev = super().evaluate(k, **kw)
        self.last_evals[k] = ev.loss.copy()
        return ev

    def divide(self, k, ev):
        self.divided.append((k, ev.loss.copy()))
        super().divide(k, ev)


def test_no_network_trains_on_its_own_fold_and_each_pair_is_judged_by_its_fold(tiny_corpus, tmp_path):
    corpus, noisy = tiny_corpus
    tr = Spy(corpus, PC2Config(**TINY), tmp_path)
    assert tr.n_nets == 3 and len(tr.nets) == 3
    res = tr.run()
    folds = tr.fold
    assert set(np.unique(folds)) == {0, 1, 2}
    for k in range(3):
        own = set(np.nonzero(folds == k)[0].tolist())
        assert tr.trained_on[k], "every network trains"
        assert not (tr.trained_on[k] & own), f"net {k} trained on a pair of its own fold"
        usable_other = set(np.nonzero((folds != k) & (corpus.lengths > 0))[0].tolist())
        assert len(tr.trained_on[k] & usable_other) >= 0.9 * len(usable_other)
    # the last epoch's co-divide saw, for every pair, the loss of the net of its fold
    last = {k: loss for k, loss in tr.divided[-3:]}
    expected = np.stack([tr.last_evals[k] for k in range(3)])[folds, np.arange(len(folds))]
    for k in range(3):
        np.testing.assert_array_equal(last[k], expected)
    # one split for all: every net trains on the same trusted pairs (outside its fold)
    assert all(np.array_equal(tr._trusted(0), tr._trusted(k)) for k in (1, 2))
    assert roc_auc_score(noisy, 1 - res.confidence) >= 0.8
    assert np.all(res.pcap_source[res.noisy] >= 0) and not np.any(res.noisy[res.pcap_source[res.noisy]])
    assert len(res.views) == 3


def test_held_out_takes_each_pair_from_its_fold(tiny_corpus, tmp_path):
    corpus, _ = tiny_corpus
    tr = Trainer(corpus, PC2Config(**{**TINY, "cross_fit_folds": 4}), tmp_path)
    n, rng = len(corpus), np.random.default_rng(0)
    evals = [EvalOut(rng.random(n).astype(np.float32), rng.random((n, 16)).astype(np.float32), None, None) for _ in range(4)]
    out = tr.held_out(evals)
    rows = np.arange(n)
    for k in range(4):
        np.testing.assert_array_equal(out[k].loss, np.stack([e.loss for e in evals])[tr.fold, rows])
        np.testing.assert_array_equal(out[k].pred, np.stack([e.pred for e in evals])[tr.fold, rows])
    # without cross-fitting each net's co-divide sees its own pass
    plain = Trainer(corpus, PC2Config(**{**TINY, "cross_fit_folds": 0}), tmp_path / "plain")
    assert plain.fold is None and plain.n_nets == 2
    assert plain.held_out(evals[:2])[0] is evals[0]


def test_cross_fit_folds_is_validated():
    with pytest.raises(ConfigError, match="cross_fit_folds"):
        PC2Config(cross_fit_folds=1)
    with pytest.raises(ConfigError, match="cross_fit_folds"):
        PC2Config(cross_fit_folds=-2)


def test_cross_fitted_run_resumes_to_the_same_result(tiny_corpus, tmp_path):
    import torch

    from pc2.models.engine import CHECKPOINT, Cancelled

    corpus, _ = tiny_corpus
    cfg = PC2Config(**{**TINY, "epochs": 4})
    full = curate(corpus, cfg, workdir=tmp_path / "full")
    seen = []
    with pytest.raises(Cancelled):
        curate(corpus, cfg, workdir=tmp_path / "cut", progress=lambda p: seen.append(p.epoch),
               should_stop=lambda: bool(seen) and seen[-1] >= 2)
    ckpt = torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=False)
    assert ckpt["epoch"] == 2 and len(ckpt["nets"]) == 3
    resumed = curate(corpus, cfg, workdir=tmp_path / "cut")
    assert resumed.metrics["resumed"] is True and resumed.metrics["epochs"] == 4
    np.testing.assert_allclose(resumed.confidence, full.confidence, atol=1e-6)
    np.testing.assert_array_equal(resumed.pcap_source, full.pcap_source)
