import numpy as np

from pc2.models.bench import run_cosine
from pc2.models.config import PC2Config
from pc2.models.engine import CurationResult

TINY = dict(epochs=1, warmup_epochs=1, embed_dim=32, word_dim=32, num_classes=8, batch_size=32)


def _plain_result(n, cos):
    """A stand-in for the plain model's output whose image-caption cosine is exactly ``cos``."""
    img = np.zeros((n, 2), np.float32)
    img[:, 0] = 1.0
    cap = np.stack([cos, np.sqrt(1 - cos**2)], axis=1).astype(np.float32)
    res = CurationResult(
        confidence=np.ones(n, np.float32), noisy=np.zeros(n, bool), pseudo_class=np.zeros(n, np.int64),
        pcap_source=np.full(n, -1), pcap_score=np.zeros(n, np.float32), metrics={"seconds": 0.0},
        pred=np.zeros((n, 2), np.float32), img_emb=img, cap_emb=cap,
    )
    return PC2Config(**TINY), [], res


def test_cosine_baseline_keeps_the_requested_share_of_highest_cosine_pairs(tiny_corpus, tmp_path):
    corpus, _ = tiny_corpus
    n = len(corpus)
    rng = np.random.default_rng(0)
    cos = rng.uniform(-0.9, 0.9, n)
    _, nets, res, _ = run_cosine(_plain_result(n, cos), TINY, corpus, tmp_path, seed=0, keep_fraction=0.4)
    usable = corpus.lengths > 0
    kept = ~res.noisy
    assert kept.sum() == round(0.4 * n) and not np.any(kept & ~usable)
    # every kept pair has a higher cosine than every dropped usable pair, and confidence follows cosine
    assert cos[kept].min() > cos[~kept & usable].max()
    order = np.argsort(cos[usable])
    assert np.all(np.diff(res.confidence[usable][order]) >= 0)
    assert np.all((res.confidence >= 0.5) == kept)
    assert len(nets) == 1  # a plain model retrained on the kept pairs
