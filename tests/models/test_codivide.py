import numpy as np

from pc2.models.codivide import kl_rows, low_component_posterior, rectify


def test_gmm_split_recovers_a_known_two_component_mixture():
    rng = np.random.default_rng(0)
    clean = rng.normal(0.2, 0.05, 3000)
    noisy = rng.normal(0.8, 0.08, 2000)
    x = np.concatenate([clean, noisy])
    w = low_component_posterior(x)
    pred_clean = w > 0.5
    truth = np.r_[np.ones(3000, bool), np.zeros(2000, bool)]
    assert (pred_clean == truth).mean() > 0.99
    assert w[:3000].mean() > 0.95 and w[3000:].mean() < 0.05


def test_posterior_is_monotone_in_the_loss():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0.3, 0.01, 500), rng.normal(0.6, 0.3, 500)])
    w = low_component_posterior(x)
    order = np.argsort(x)
    assert np.all(np.diff(w[order]) <= 1e-12)


def test_kl_rows_is_per_row_kl():
    p = np.array([[0.5, 0.5], [0.9, 0.1]])
    q = np.array([[0.5, 0.5], [0.5, 0.5]])
    kl = kl_rows(p, q)
    assert abs(kl[0]) < 1e-12
    assert abs(kl[1] - (0.9 * np.log(0.9 / 0.5) + 0.1 * np.log(0.1 / 0.5))) < 1e-9


def test_rectify_lifts_only_stable_pairs():
    w_loss = np.array([0.6, 0.6, 0.9])
    w_po = np.array([0.8, 0.4, 1.0])
    y = rectify(w_loss, w_po)
    assert np.allclose(y, [0.6 + 0.4 * 0.8, 0.6, 0.9 + 0.1 * 1.0])
    assert np.allclose(rectify(w_loss, None), w_loss)
