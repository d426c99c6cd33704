import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from pc2.models import codivide
from pc2.models.config import PC2Config
from pc2.models.engine import CHECKPOINT, Cancelled, EvalOut, Trainer, curate

# The paper's two co-trained networks: these tests exercise co-training and the PC² components on them;
# tests/models/test_crossfit.py covers the cross-fitted default.
TINY = dict(epochs=8, warmup_epochs=2, embed_dim=64, word_dim=64, num_classes=16, batch_size=32, lr=3e-3, eval_batch_size=256,
            cross_fit_folds=0, clean_threshold=0.95)


def test_training_separates_noisy_from_clean(tiny_corpus, tmp_path):
    corpus, noisy = tiny_corpus
    res = curate(corpus, PC2Config(**TINY), workdir=tmp_path)
    assert res.confidence.shape == (len(corpus),)
    assert np.all((res.confidence >= 0) & (res.confidence <= 1))
    assert roc_auc_score(noisy, 1 - res.confidence) >= 0.8
    assert res.metrics["epochs"] == 8
    # every pair labelled noisy gets a pseudo-caption from a clean pair
    assert np.all(res.pcap_source[res.noisy] >= 0)
    assert np.all(res.pcap_source[~res.noisy] == -1)
    assert not np.any(res.noisy[res.pcap_source[res.noisy]])
    # empty captions are noisy
    empty = corpus.lengths == 0
    assert empty.any() and res.noisy[empty].all()


def test_same_seed_same_confidences(tiny_corpus, tmp_path):
    corpus, _ = tiny_corpus
    cfg = PC2Config(**{**TINY, "epochs": 2})
    a = curate(corpus, cfg, workdir=tmp_path / "a")
    b = curate(corpus, cfg, workdir=tmp_path / "b")
    np.testing.assert_array_equal(a.confidence, b.confidence)
    c = curate(corpus, cfg.replace(seed=1), workdir=tmp_path / "c")
    assert not np.array_equal(a.confidence, c.confidence)


def test_resume_after_interruption_finishes_with_the_same_result(tiny_corpus, tmp_path):
    corpus, _ = tiny_corpus
    cfg = PC2Config(**{**TINY, "epochs": 4})
    full = curate(corpus, cfg, workdir=tmp_path / "full")

    seen = []

    def stop():
        return len(seen) > 0 and seen[-1] >= 2  # interrupt in the third epoch, after two checkpoints

    def progress(p):
        seen.append(p.epoch)

    with pytest.raises(Cancelled):
        curate(corpus, cfg, workdir=tmp_path / "cut", progress=progress, should_stop=stop)
    ckpt = torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=False)
    assert ckpt["epoch"] == 2
    resumed = curate(corpus, cfg, workdir=tmp_path / "cut")
    assert resumed.metrics["resumed"] is True
    assert resumed.metrics["epochs"] == cfg.epochs == len(resumed.metrics["history"])
    np.testing.assert_allclose(resumed.confidence, full.confidence, atol=1e-6)
    # interrupted while scoring, after the last checkpoint: the rescoring repeats the last epoch's pass
    rescored = curate(corpus, cfg, workdir=tmp_path / "full")
    assert rescored.metrics["resumed"] is True
    np.testing.assert_array_equal(rescored.confidence, full.confidence)
    np.testing.assert_array_equal(rescored.pcap_source, full.pcap_source)


def test_checkpoint_of_another_config_is_not_resumed(tiny_corpus, tmp_path):
    corpus, _ = tiny_corpus
    curate(corpus, PC2Config(**{**TINY, "epochs": 1, "warmup_epochs": 1}), workdir=tmp_path)
    res = curate(corpus, PC2Config(**{**TINY, "epochs": 1, "warmup_epochs": 1, "lr": 1e-3}), workdir=tmp_path)
    assert res.metrics["resumed"] is False


def test_po_is_the_kl_between_consecutive_epochs_for_every_pair(tiny_corpus, tmp_path):
    corpus, _ = tiny_corpus
    tr = Trainer(corpus, PC2Config(**TINY), tmp_path)
    n, k = len(corpus), tr.cfg.num_classes
    rng = np.random.default_rng(0)
    p1 = rng.dirichlet(np.ones(k), n).astype(np.float32)
    p2 = rng.dirichlet(np.ones(k), n).astype(np.float32)
    loss = rng.random(n).astype(np.float32)
    tr.divide(0, EvalOut(loss, p1))
    assert tr.po[0] is None and np.array_equal(tr.bank[0], p1)
    tr.divide(0, EvalOut(loss, p2))
    np.testing.assert_allclose(tr.po[0], codivide.kl_rows(p2, p1), rtol=1e-6)
    assert np.array_equal(tr.bank[0], p2)  # bank holds this epoch's predictions for every pair


def test_po_bank_tracks_real_predictions_each_epoch(tiny_corpus, tmp_path):
    corpus, _ = tiny_corpus
    tr = Trainer(corpus, PC2Config(**{**TINY, "epochs": 3}), tmp_path)
    banks = []
    orig = tr.divide

    def spy(k, ev):
        prev = None if tr.bank[k] is None else tr.bank[k].copy()
        orig(k, ev)
        if prev is not None:
            np.testing.assert_allclose(tr.po[k], codivide.kl_rows(ev.pred, prev), rtol=1e-5)
        banks.append(tr.bank[k].copy())

    tr.divide = spy
    tr.run()
    assert len(banks) == 3 * tr.n_nets
    assert not np.array_equal(banks[0], banks[-1])


@pytest.mark.parametrize("scale", ["log", "linear"])
def test_divide_fits_the_split_on_the_configured_loss_scale(tiny_corpus, tmp_path, scale):
    corpus, _ = tiny_corpus
    tr = Trainer(corpus, PC2Config(**{**TINY, "codivide_scale": scale}), tmp_path)
    n, k = len(corpus), tr.cfg.num_classes
    rng = np.random.default_rng(3)
    half = n // 2
    loss = np.exp(np.r_[rng.normal(np.log(0.011), 0.8, half), rng.normal(np.log(0.07), 1.0, n - half)]).astype(np.float32)
    tr.divide(0, EvalOut(loss, np.full((n, k), 1.0 / k, np.float32)))
    usable = ~tr.empty
    est = (tr.w_loss[0][usable] <= 0.5).mean()
    if scale == "log":
        assert abs(est - 0.5) < 0.12
    else:
        assert est < 0.35
    # the trusted split is the pairs above the (conservative) clean threshold, never empty captions
    tr.w_loss[1] = tr.w_loss[0]
    assert np.array_equal(tr._trusted(0), (tr.w_loss[0] > tr.cfg.clean_threshold) & usable)


def test_corpus_pseudo_captions_come_from_the_trusted_split_and_are_trained(tiny_corpus, tmp_path):
    corpus, noisy = tiny_corpus
    cfg = PC2Config(**{**TINY, "epochs": 4, "pcap_search": "corpus"})
    tr = Trainer(corpus, cfg, tmp_path)
    res = tr.run()
    for k in range(tr.n_nets):
        trusted = (tr.w_loss[k] > cfg.clean_threshold) & ~tr.empty
        src, lab = tr.pcap_src[k], tr.pcap_lab[k]
        assert np.all(src[trusted] == -1)  # trusted pairs keep their own caption
        has = src >= 0
        assert has[~trusted].mean() > 0.9  # (nearly) every untrusted pair gets one
        assert trusted[src[has]].all()  # always a caption of this split's trusted pairs
        assert np.all((lab[has] == 0) | (lab[has] >= cfg.min_pcap_similarity))
    after_warmup = [h["losses"][0] for h in res.metrics["history"][cfg.warmup_epochs :]]
    assert all(l.get("pcap", 0) > 0 for l in after_warmup)
    assert roc_auc_score(noisy, 1 - res.confidence) >= 0.8


def test_word_grounding_of_own_captions_separates_clean_pairs(tiny_corpus, tmp_path):
    corpus, noisy = tiny_corpus
    pairs = np.nonzero(corpus.lengths > 0)[0]
    cand = np.stack([pairs, pairs[::-1]], 1)  # own caption, and another pair's caption
    cfg = PC2Config(**{**TINY, "epochs": 4})

    def own_auc(tr):
        scorers = tr.grounding_scorers()
        assert scorers is not None and len(scorers) == tr.n_nets
        g = np.mean([s(pairs, cand) for s in scorers], axis=0)
        assert g.shape == cand.shape and np.isfinite(g).all()
        return roc_auc_score(~noisy[pairs], g[:, 0]), g

    untrained, _ = own_auc(Trainer(corpus, cfg, tmp_path / "untrained"))
    tr = Trainer(corpus, cfg, tmp_path / "trained")
    tr.run()
    trained, g = own_auc(tr)
    # training grounds clean pairs' own words in their image regions
    assert trained >= 0.6 and trained >= untrained + 0.1
    # blocks and chunks do not change a pair's score beyond float noise
    small = tr.ground(tr.nets[0], pairs, cand, block=7, chunk=3)
    assert np.allclose(small, tr.ground(tr.nets[0], pairs, cand), atol=1e-4)
    # pseudo-captions are ranked at their own temperature, not the training one
    ranked = tr.grounding_scorers()[0](pairs, cand)
    assert np.allclose(ranked, tr.ground(tr.nets[0], pairs, cand, tau=cfg.pcap_grounding_tau), atol=1e-5)
    assert not np.allclose(ranked, tr.ground(tr.nets[0], pairs, cand), atol=1e-3)
    # and only re-rank the final results: a checkpoint made at another value is resumed
    assert cfg.replace(pcap_grounding_tau=0.05).training_fingerprint() == cfg.training_fingerprint()
    tr.cfg = tr.cfg.replace(pseudo_caption_strategy="combo")
    assert tr.grounding_scorers() is None


def test_final_labels_weigh_the_word_grounding_of_own_captions(tiny_corpus, tmp_path):
    corpus, noisy = tiny_corpus
    tr = Trainer(corpus, PC2Config(**{**TINY, "epochs": 3}), tmp_path)
    tr.run()
    outs = [tr.evaluate(k) for k in range(tr.n_nets)]
    usable = np.nonzero(corpus.lengths > 0)[0]
    conf, labels = tr.confidence(tr.grounded_soft_labels(outs))
    real = tr.ground
    # the least sure clean label, made to ground its words no better than the worst pair
    kept = usable[~labels[usable]]
    target = kept[np.argmin(conf[kept])]
    floor = min(float(real(net, usable, usable[:, None]).min()) for net in tr.nets)

    def worse(net, t, c, **kw):
        g = real(net, t, c, **kw)
        g[t == target] = floor
        return g

    tr.ground = worse
    conf2, labels2 = tr.confidence(tr.grounded_soft_labels(outs))
    assert labels2[target] and conf2[target] < conf[target] - 0.01
    others = np.setdiff1d(usable, target)
    assert np.all(conf2[others] >= conf[others] - 0.02)
    # weight 0: the last epoch's co-divide soft labels, exactly
    tr.cfg = tr.cfg.replace(label_grounding_weight=0.0)
    assert tr.grounded_soft_labels(outs) is None
    base, base_labels = tr.confidence()
    np.testing.assert_array_equal(base_labels, (np.mean(tr.y, axis=0) < 0.5) | (corpus.lengths == 0))


def test_grounding_loss_teaches_trusted_captions_to_ground_in_their_own_image(tiny_corpus, tmp_path):
    corpus, noisy = tiny_corpus
    clean = np.nonzero(~noisy & (corpus.lengths > 0))[0]
    other = np.roll(clean, 1)  # another clean pair's caption for each clean image
    cand = np.stack([clean, other], 1)

    def gap(weight):
        tr = Trainer(corpus, PC2Config(**{**TINY, "epochs": 4, "grounding_loss_weight": weight}), tmp_path / str(weight))
        res = tr.run()
        g = np.mean([tr.ground(net, clean, cand) for net in tr.nets], axis=0)
        return float(np.mean(g[:, 0] - g[:, 1])), tr, res

    without, _, _ = gap(0.0)
    with_loss, tr, res = gap(1.0)
    assert with_loss > without + 0.02
    assert "ground" in tr.history[-1]["losses"][0] and "ground" not in tr.history[0]["losses"][0]  # trusted phase only
    assert roc_auc_score(noisy, 1 - res.confidence) >= 0.8
