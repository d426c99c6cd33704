import os
import threading

import faiss
import numpy as np
import pytest

from pc2.models import index as fx


def clustered(n, d, *, clusters=200, spread=0.35, seed=0):
    """Unit vectors around random centres: the shape of real embedding sets, with near ties."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, d)).astype(np.float32)
    return fx.normalize(x)


@pytest.fixture(scope="module")
def data():
    xb = clustered(50_000, 64, seed=1)
    rng = np.random.default_rng(2)
    # queries from the same distribution: perturbed base vectors, not base vectors themselves
    xq = fx.normalize(xb[rng.choice(len(xb), 500, replace=False)] + 0.3 * rng.standard_normal((500, 64)))
    return xb, xq


@pytest.fixture(scope="module")
def ivf_index(data):
    xb, _ = data
    return fx.build(xb, exact_max=10_000, seed=0)


def test_normalize_rows_unit_and_zero_rows_stay_zero():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]], dtype=np.float64)
    y = fx.normalize(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]], rtol=1e-6)
    assert x[0, 0] == 3.0  # input untouched


def test_auto_picks_flat_below_threshold_and_ivf_above(data, ivf_index):
    xb, _ = data
    small = fx.build(xb[:1000])
    assert isinstance(faiss.downcast_index(small.index), faiss.IndexFlatIP)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(ivf_index))
    assert isinstance(ivf, faiss.IndexIVFScalarQuantizer)
    assert ivf.nlist == fx.default_nlist(len(xb))
    assert ivf.nprobe == fx.default_nprobe(ivf.nlist) >= 16
    assert ivf_index.ntotal == len(xb)


def test_flat_is_exact(data):
    xb, xq = data
    index = fx.build(xb[:5000])
    D, I = fx.search(index, xq, 10)
    sims = xq @ xb[:5000].T
    ref = np.argsort(-sims, axis=1)[:, :10]
    np.testing.assert_allclose(D, np.take_along_axis(sims, ref, 1), atol=1e-5)
    assert fx.recall_at_k(I, ref) > 0.999


def test_ivf_recall_at_10_vs_exact(data, ivf_index):
    xb, xq = data
    _, I_ref = fx.search(fx.build(xb, kind="flat"), xq, 10)
    _, I = fx.search(ivf_index, xq, 10)
    assert fx.recall_at_k(I, I_ref) >= 0.95


def test_nprobe_override_changes_work_done(data, ivf_index):
    xb, xq = data
    _, I_ref = fx.search(fx.build(xb, kind="flat"), xq, 10)
    _, I1 = fx.search(ivf_index, xq, 10, nprobe=1)
    _, Ia = fx.search(ivf_index, xq, 10, nprobe=faiss.extract_index_ivf(ivf_index).nlist)
    r1, ra = fx.recall_at_k(I1, I_ref), fx.recall_at_k(Ia, I_ref)
    assert r1 < 0.9 < ra  # one list misses neighbours; all lists is exact up to SQ8 rounding
    assert faiss.extract_index_ivf(ivf_index).nprobe == fx.default_nprobe(fx.default_nlist(len(xb)))


def test_pq_codec_builds_and_finds_neighbours(data):
    xb, xq = data
    index = fx.build(xb[:5000], kind="ivf", sq="PQ", seed=0)
    assert isinstance(faiss.downcast_index(faiss.extract_index_ivf(index)), faiss.IndexIVFPQ)
    _, I_ref = fx.search(fx.build(xb[:5000], kind="flat"), xq, 10)
    _, I = fx.search(index, xq, 10)
    assert fx.recall_at_k(I, I_ref) > 0.5  # lossy codes: coarser than SQ8, far above chance


def test_ids_preserved_through_id_map(data):
    xb, xq = data
    xb = xb[:20_000]
    rng = np.random.default_rng(5)
    ids = rng.choice(2**62, size=len(xb), replace=False).astype(np.int64)
    for kind in ("flat", "ivf"):
        index = fx.build(xb, ids=ids, kind=kind, seed=0)
        _, I_pos = fx.search(fx.build(xb, kind=kind, seed=0), xq, 5)
        _, I = fx.search(index, xq, 5)
        np.testing.assert_array_equal(I, ids[I_pos])
    # a base vector finds itself under its own id
    _, I = fx.search(fx.build(xb[:2000], ids=ids[:2000]), xb[123], 1)
    assert I[0, 0] == ids[123]


def test_save_load_round_trip_identical(tmp_path, data, ivf_index):
    xb, xq = data
    for name, index in (("flat", fx.build(xb[:3000], ids=np.arange(3000) * 7)), ("ivf", ivf_index)):
        path = tmp_path / "sub" / f"{name}.faiss"
        D0, I0 = fx.search(index, xq, 10)
        fx.save(index, path)
        loaded = fx.load(path)
        D1, I1 = fx.search(loaded, xq, 10)
        np.testing.assert_array_equal(I0, I1)
        np.testing.assert_array_equal(D0, D1)
    assert faiss.extract_index_ivf(fx.load(tmp_path / "sub" / "ivf.faiss")).nprobe == faiss.extract_index_ivf(
        ivf_index
    ).nprobe
    assert sorted(os.listdir(tmp_path / "sub")) == ["flat.faiss", "ivf.faiss"]  # no temp files left


def test_save_failure_leaves_old_file_and_no_temp(tmp_path, data):
    xb, _ = data
    path = tmp_path / "x.faiss"
    fx.save(fx.build(xb[:100]), path)
    before = path.read_bytes()
    with pytest.raises(Exception):
        fx.save(object(), path)  # not an index: the writer fails mid-way
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["x.faiss"]


def test_cached_same_object_until_file_changes(tmp_path, data):
    xb, xq = data
    path = tmp_path / "c.faiss"
    fx.save(fx.build(xb[:500]), path)
    a = fx.cached(path)
    assert fx.cached(str(path)) is a
    results = []
    threads = [threading.Thread(target=lambda: results.append(fx.cached(path))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r is a for r in results)
    fx.save(fx.build(xb[:800]), path)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # coarse-mtime filesystems
    b = fx.cached(path)
    assert b is not a and b.ntotal == 800
    assert fx.cached(path) is b


def test_nearest_trusted_returns_trusted_ids_and_excludes_self():
    rng = np.random.default_rng(3)
    xb = rng.standard_normal((300, 16)).astype(np.float32)
    ids = np.arange(300, dtype=np.int64) * 10 + 1
    xq = xb[:20] * 3.0 + 0.01 * rng.standard_normal((20, 16)).astype(np.float32)  # scale must not matter
    D, I = fx.nearest_trusted(xq, xb, ids)
    np.testing.assert_array_equal(I[:, 0], ids[:20])
    assert np.all(D[:, 0] > 0.99) and np.all(D <= 1.0001)
    # excluding each query's own pair yields the best other trusted pair
    D2, I2 = fx.nearest_trusted(xq, xb, ids, k=2, exclude=ids[:20])
    assert not np.any(I2 == ids[:20, None])
    sims = fx.normalize(xq) @ fx.normalize(xb).T
    sims[np.arange(20), np.arange(20)] = -np.inf
    np.testing.assert_array_equal(I2[:, 0], ids[np.argmax(sims, axis=1)])
    # IVF above the threshold gives the same best pair on well-separated data
    _, I3 = fx.nearest_trusted(xq, xb, ids, exact_max=100)
    np.testing.assert_array_equal(I3[:, 0], ids[:20])


def test_nearest_trusted_empty_and_short():
    xq = np.ones((3, 4), dtype=np.float32)
    D, I = fx.nearest_trusted(xq, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), k=2)
    assert np.all(I == -1) and np.all(np.isneginf(D))
    D, I = fx.nearest_trusted(xq, np.eye(4, dtype=np.float32)[:1], np.array([9]), k=2)
    assert np.all(I[:, 0] == 9) and np.all(I[:, 1] == -1)


def test_user_errors_name_the_argument(data):
    xb, _ = data
    with pytest.raises(fx.IndexInputError, match="metric"):
        fx.build(xb[:10], metric="cosine")
    with pytest.raises(fx.IndexInputError, match="ids"):
        fx.build(xb[:10], ids=np.arange(9))
    bad = xb[:10].copy()
    bad[4, 2] = np.nan
    with pytest.raises(fx.IndexInputError, match=r"rows \[4\]"):
        fx.build(bad)
    with pytest.raises(fx.IndexInputError, match="xq"):
        fx.search(fx.build(xb[:10]), np.zeros((2, 3), np.float32), 1)
    with pytest.raises(fx.IndexInputError, match="use_gpu"):
        fx.build(xb[:10], use_gpu="yes")


def test_build_reads_memmap_float16_in_blocks(tmp_path, data):
    xb, xq = data
    path = tmp_path / "f.npy"
    np.save(path, xb[:5000].astype(np.float16))
    mm = np.load(path, mmap_mode="r")
    index = fx.build(mm, block=777)
    assert index.ntotal == 5000
    _, I = fx.search(index, mm[:50].astype(np.float32), 1)
    np.testing.assert_array_equal(I[:, 0], np.arange(50))
