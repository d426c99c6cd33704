import numpy as np
import pytest
from PIL import Image

from pc2.models import metrics


def test_detection_auc_perfect_and_random():
    rng = np.random.default_rng(0)
    y = rng.random(20_000) < 0.4
    perfect = metrics.detection(y, np.where(y, 0.1, 0.9), y)
    assert perfect["roc_auc"] == pytest.approx(1.0)
    assert perfect["f1"] == pytest.approx(1.0) and perfect["f1_clean"] == pytest.approx(1.0)
    # Confidence is for "clean": high confidence on noisy pairs must give AUC 0, not 1.
    inverted = metrics.detection(y, np.where(y, 0.9, 0.1), ~y)
    assert inverted["roc_auc"] == pytest.approx(0.0)
    random = metrics.detection(y, rng.random(len(y)), rng.random(len(y)) < 0.5)
    assert abs(random["roc_auc"] - 0.5) < 0.03
    assert random["true_noise_rate"] == pytest.approx(y.mean())


def test_detection_counts_by_hand():
    truth = np.array([1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    pred = np.array([1, 1, 0, 1, 0, 0, 0, 0], dtype=bool)
    conf = np.linspace(0, 1, 8)
    m = metrics.detection(truth, conf, pred)
    # tp=2 fp=1 fn=1 tn=4
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["f1_clean"] == pytest.approx(0.8)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["est_noise_rate"] == pytest.approx(3 / 8)
    assert m["true_noise_rate"] == pytest.approx(3 / 8)
    # Noisy pairs hold the three lowest confidences: a perfect ranking.
    assert m["roc_auc"] == pytest.approx(1.0)


def test_detection_single_class_and_bad_shapes():
    m = metrics.detection(np.zeros(5, bool), np.ones(5), np.zeros(5, bool))
    assert np.isnan(m["roc_auc"]) and m["accuracy"] == 1.0 and m["f1"] == 0.0
    with pytest.raises(ValueError, match="confidence"):
        metrics.detection(np.zeros(5, bool), np.ones(4), np.zeros(5, bool))


def test_retrieval_identity_is_perfect():
    n = 1000
    m = metrics.retrieval(np.eye(n, dtype=np.float32), np.arange(n))
    assert all(m[k] == 100.0 for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"))
    assert m["rsum"] == 600.0
    # Same with captions stored in another order than images.
    perm = np.random.default_rng(1).permutation(n)
    assert metrics.retrieval(np.eye(n)[:, perm], perm, block=128)["rsum"] == 600.0


def test_retrieval_hand_case():
    sims = np.array([
        [0.9, 0.1, 0.2, 0.3],
        [0.8, 0.5, 0.9, 0.1],
        [0.1, 0.2, 0.6, 0.7],
        [0.3, 0.95, 0.9, 0.2],
    ])
    # i2t ranks by hand: [0, 2, 1, 3]; t2i ranks: [0, 1, 2, 2]
    m = metrics.retrieval(sims, np.arange(4), ks=(1, 2, 3))
    assert (m["i2t_r1"], m["i2t_r2"], m["i2t_r3"]) == (25.0, 50.0, 75.0)
    assert (m["t2i_r1"], m["t2i_r2"], m["t2i_r3"]) == (25.0, 50.0, 100.0)
    assert m["rsum"] == 325.0


def test_retrieval_several_captions_per_image():
    sims = np.array([[0.1, 0.8, 0.9, 0.2], [0.5, 0.4, 0.3, 0.6]])
    m = metrics.retrieval(sims, np.array([0, 0, 1, 1]), ks=(1, 2))
    # image 0: best own caption 0.8 is beaten by 0.9 -> miss at 1; image 1: own 0.6 is top -> hit.
    assert m["i2t_r1"] == 50.0 and m["i2t_r2"] == 100.0
    # captions 1 and 3 rank their image first, 0 and 2 second.
    assert m["t2i_r1"] == 50.0 and m["t2i_r2"] == 100.0


def test_retrieval_ties_earn_nothing():
    m = metrics.retrieval(np.ones((10, 10)), np.arange(10))
    assert m["i2t_r1"] == 0.0 and m["t2i_r1"] == 0.0 and m["t2i_r10"] == 100.0
    with pytest.raises(ValueError, match="cap_to_img"):
        metrics.retrieval(np.ones((3, 3)), np.array([0, 1, 3]))


def test_pseudo_caption_accuracy():
    imgs = [[1, 2, 3], [4, 5], [6], [7, 8]]
    caps = [[1, 9], [9, 10, 4], [], [7, 8]]
    # [1,9]: half in image -> yes; [9,10,4]: 1/3 -> no; []: no caption -> no; [7,8] -> yes
    assert metrics.pseudo_caption_accuracy(imgs, caps) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="align"):
        metrics.pseudo_caption_accuracy(imgs, caps[:2])


def test_confidence_histogram_png(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.random(500) < 0.3
    conf = np.clip(np.where(y, rng.normal(0.2, 0.1, 500), rng.normal(0.8, 0.1, 500)), 0, 1)
    out = metrics.confidence_histogram_png(conf, y, tmp_path / "plots" / "hist.png", title="confidence")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as im:
        im.verify()
    with Image.open(out) as im:
        assert im.size == (600, 400)
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["hist.png"]  # no temp file left
