import numpy as np

from pc2.models.codivide import kl_rows, log_scale, low_component_posterior, rectify


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


def _lognormal_losses(seed: int = 0):
    """Per-pair losses shaped like the engine's: both modes log-normal, the noisy one higher and wider."""
    rng = np.random.default_rng(seed)
    clean = np.exp(rng.normal(np.log(0.011), 0.8, 5000))
    noisy = np.exp(rng.normal(np.log(0.07), 1.0, 5000))
    return np.concatenate([clean, noisy]), np.r_[np.zeros(5000, bool), np.ones(5000, bool)]


def test_log_scale_gmm_estimates_the_noise_rate_of_log_normal_losses():
    loss, noisy = _lognormal_losses()
    est_log = (low_component_posterior(log_scale(loss)) < 0.5).mean()
    assert abs(est_log - 0.5) < 0.1
    # on the raw scale the high component fits the long tail and most noisy pairs look clean
    est_linear = (low_component_posterior(loss) < 0.5).mean()
    assert est_linear < 0.3


def test_log_scale_keeps_the_order_and_handles_zero_losses():
    x = np.array([0.0, 0.0, 1e-4, 0.02, 0.5])
    y = log_scale(x)
    assert np.all(np.isfinite(y))
    assert np.all(np.diff(y) >= 0) and y[0] == y[1] and y[2] > y[1]
