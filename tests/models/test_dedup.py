import numpy as np
import pytest

from pc2.models import dedup
from pc2.models import index as fx


def unit(rng, n, d):
    return fx.normalize(rng.standard_normal((n, d)).astype(np.float32))


def noisy_copy(rng, v, cos):
    """A unit vector at cosine ``cos`` from unit vector ``v``."""
    r = rng.standard_normal(v.shape).astype(np.float32)
    r -= (r @ v) * v
    r /= np.linalg.norm(r)
    return (cos * v + np.sqrt(1 - cos**2) * r).astype(np.float32)


def test_connected_components_smallest_index_and_transitive():
    #  0-3, 3-7, 7-5 chain; 2-6; 1, 4 alone; edges in arbitrary direction and repeated
    a = np.array([3, 7, 5, 6, 3, 7])
    b = np.array([0, 3, 7, 2, 0, 5])
    rep = dedup.connected_components(8, a, b)
    np.testing.assert_array_equal(rep, [0, 1, 2, 0, 4, 0, 2, 0])


def test_connected_components_long_path_random_order():
    rng = np.random.default_rng(0)
    n = 10_000
    perm = rng.permutation(n)  # one long path through the nodes in random order
    a, b = perm[:-1], perm[1:]
    rep = dedup.connected_components(n, a, b)
    assert np.all(rep == 0)


def test_planted_noisy_duplicates_found_distinct_kept_apart():
    rng = np.random.default_rng(1)
    d = 64
    base = unit(rng, 2000, d)  # random unit vectors in 64-D: pairwise cosine ~ ±0.4 at most
    dup_of = rng.choice(2000, 300, replace=False)
    copies = np.stack([noisy_copy(rng, base[i], 0.99) for i in dup_of])
    x = np.concatenate([base, copies]) * rng.uniform(0.5, 3.0, (2300, 1)).astype(np.float32)  # scale-free
    rep = dedup.near_duplicates(x, threshold=0.95)
    expected = np.arange(2300)
    expected[2000:] = dup_of
    np.testing.assert_array_equal(rep, expected)


def test_threshold_is_respected():
    rng = np.random.default_rng(2)
    v = unit(rng, 1, 32)[0]
    x = np.stack([v, noisy_copy(rng, v, 0.97), noisy_copy(rng, v, 0.90)])
    # the two copies are at most cos ~0.95 from each other, so only 0-1 links at 0.95
    np.testing.assert_array_equal(dedup.near_duplicates(x, 0.95), [0, 0, 2])
    np.testing.assert_array_equal(dedup.near_duplicates(x, 0.85), [0, 0, 0])
    np.testing.assert_array_equal(dedup.near_duplicates(x, 0.99), [0, 1, 2])


def test_many_identical_rows_collapse_to_one_group():
    rng = np.random.default_rng(3)
    others = unit(rng, 500, 48)
    same = unit(rng, 1, 48)
    x = others.copy()
    where = rng.choice(500, 200, replace=False)  # 200 pairs share one image, far more than k
    x[where] = same
    x[7] = noisy_copy(rng, same[0], 0.99)  # a near copy of the shared image joins the same group
    rep = dedup.near_duplicates(x, 0.95, k=4)
    members = np.sort(np.append(where[where != 7], 7))
    assert np.all(rep[members] == members.min())
    outside = np.setdiff1d(np.arange(500), members)
    np.testing.assert_array_equal(rep[outside], outside)


def test_all_identical_and_tiny_inputs():
    x = np.ones((50, 8), dtype=np.float32)
    assert np.all(dedup.near_duplicates(x) == 0)
    assert dedup.near_duplicates(np.zeros((0, 8), np.float32)).shape == (0,)
    np.testing.assert_array_equal(dedup.near_duplicates(np.eye(3, dtype=np.float32)), [0, 1, 2])


def test_ivf_path_agrees_with_exact_path():
    rng = np.random.default_rng(4)
    base = unit(rng, 4000, 32)
    dup_of = rng.choice(4000, 400, replace=False)
    x = np.concatenate([base, np.stack([noisy_copy(rng, base[i], 0.99) for i in dup_of])])
    exact = dedup.near_duplicates(x, 0.95)
    approx = dedup.near_duplicates(x, 0.95, exact_max=1000)
    assert np.mean(exact == approx) > 0.99
    # approximate search can only miss edges; every group it reports is a real one
    assert np.all(exact[approx] == exact)


def test_bad_input_raises_typed_error():
    with pytest.raises(fx.IndexInputError, match="threshold"):
        dedup.near_duplicates(np.eye(3, dtype=np.float32), threshold=1.5)
    x = np.eye(3, dtype=np.float32)
    x[1, 1] = np.inf
    with pytest.raises(fx.IndexInputError, match=r"rows \[1\]"):
        dedup.near_duplicates(x)
