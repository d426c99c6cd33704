import numpy as np
import pyarrow.parquet as pq
import pytest

from pc2.models import synth, tokenizer
from pc2.models.data import Corpus, FeatureStore


def load_synth_corpus(d, tok=None):
    m = pq.read_table(d / "manifest.parquet")
    caps = m["caption"].to_pylist()
    tok = tok or tokenizer.train_bpe(caps, 2000)
    off, ids = tokenizer.encode(tok, caps)
    corpus = Corpus(FeatureStore.open([d / "features.npy"]), np.asarray(m["feature_row"]), off, ids,
                    tokenizer.vocab_size(tok), m["pair_id"].to_pylist(), caps)
    return corpus, tok


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth600")
    synth.generate(d, n_pairs=600, noise_rate=0.5, regions=8, dim=32, n_test=100, n_concepts=20, n_scenes=5, languages=("en",), feature_noise=0.5, seed=3)
    return d


@pytest.fixture(scope="session")
def tiny_corpus(tiny_synth):
    corpus, _ = load_synth_corpus(tiny_synth)
    truth = pq.read_table(tiny_synth / "truth.parquet")
    return corpus, np.asarray(truth["noisy"].to_pylist(), dtype=bool)
