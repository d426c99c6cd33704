import numpy as np

from pc2.models.codivide import fused_clean_evidence, kl_rows, log_scale, low_component_posterior, rectify, standardize


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


def test_fused_evidence_adds_word_grounding_to_the_loss():
    loss, noisy = _lognormal_losses()
    rng = np.random.default_rng(3)
    # a third of the noisy pairs fit as well as clean ones by the loss (partial matches), but their
    # absent words do not ground
    partial = np.nonzero(noisy)[0][:1500]
    loss = loss.copy()
    loss[partial] = np.exp(rng.normal(np.log(0.011), 0.8, len(partial)))
    ground = np.where(noisy, rng.normal(0.2, 0.1, len(loss)), rng.normal(0.6, 0.1, len(loss)))
    alone = -standardize(log_scale(loss))
    assert np.allclose(fused_clean_evidence(loss, ground, 0.0), alone)
    fused = fused_clean_evidence(loss, ground, 0.5)
    split_alone = low_component_posterior(-alone) < 0.5
    split_fused = low_component_posterior(-fused) < 0.5
    assert split_fused[partial].mean() > split_alone[partial].mean() + 0.15
    assert (split_fused == noisy).mean() > (split_alone == noisy).mean() + 0.05
    # a caption with no words grounds worst; a constant grounding changes nothing but a shift
    ground[0] = -np.inf
    assert np.isfinite(fused_clean_evidence(loss, ground, 0.5)).all()
    assert np.argmin(fused_clean_evidence(np.full(len(loss), 0.05), ground, 1.0)) == 0
    assert np.allclose(fused_clean_evidence(loss, np.full(len(loss), 0.3), 1.0), alone)
