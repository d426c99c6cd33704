import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pc2.models import synth
from pc2.models.synth import describes

N_PAIRS, N_TEST, R, D = 3000, 300, 12, 32


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    seen = []
    info = synth.generate(out, n_pairs=N_PAIRS, noise_rate=0.5, regions=R, dim=D, n_test=N_TEST, seed=3,
                          progress=lambda done, total: seen.append((done, total)))
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    truth = synth.load_truth(out).to_pylist()
    return info, manifest, truth, seen


def _files(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(tmp_path):
    kw = dict(n_pairs=400, regions=6, dim=16, n_test=50, n_concepts=60, n_scenes=12)
    synth.generate(tmp_path / "a", seed=7, **kw)
    synth.generate(tmp_path / "b", seed=7, **kw)
    synth.generate(tmp_path / "c", seed=8, **kw)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert set(a) == {"manifest.parquet", "features.npy", "truth.parquet", "synth.json",
                      "test/manifest.parquet", "test/features.npy", "test/truth.parquet"}
    assert a == b
    assert a["features.npy"] != c["features.npy"] and a["manifest.parquet"] != c["manifest.parquet"]


def test_manifest_and_truth_columns(corpus):
    info, manifest, truth, seen = corpus
    m = pq.read_table(info.manifest_path)
    assert m.column_names == ["pair_id", "caption", "image_uri", "feature_row", "source_site", "crawl_rank"]
    assert str(m.schema.field("feature_row").type) == "int64" and str(m.schema.field("crawl_rank").type) == "int64"
    t = pq.read_table(info.truth_path)
    for col in ("pair_id", "noisy", "noise_type", "image_concepts", "caption_concepts", "language"):
        assert col in t.column_names
    for col in ("image_concepts", "caption_concepts"):
        typ = t.schema.field(col).type
        assert pa.types.is_list(typ) and typ.value_type == pa.int32()
    ids = [r["pair_id"] for r in manifest]
    assert ids == [r["pair_id"] for r in truth] and len(set(ids)) == N_PAIRS
    assert ids[0] == "p000001" and manifest[0]["image_uri"].startswith("synth://img/")
    params = json.loads((info.out_dir / "synth.json").read_text())["params"]
    assert params["n_pairs"] == N_PAIRS and params["seed"] == 3
    assert seen[-1] == (N_PAIRS + N_TEST, N_PAIRS + N_TEST)  # progress reaches its total


def test_noise_rate_and_mix(corpus):
    info, _, truth, _ = corpus
    noisy = np.array([r["noisy"] for r in truth])
    assert abs(noisy.mean() - 0.5) <= 0.02
    kinds = [r["noise_type"] for r in truth if r["noisy"]]
    assert all(r["noise_type"] == "clean" for r in truth if not r["noisy"])
    for kind, share in synth.NOISE_MIX.items():
        assert abs(kinds.count(kind) / len(kinds) - share) <= 0.03, kind
    assert info.noise_counts["clean"] == int((~noisy).sum())


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.8])
def test_other_noise_rates(tmp_path, rate):
    synth.generate(tmp_path, n_pairs=500, noise_rate=rate, regions=4, dim=8, n_test=0, n_concepts=40, n_scenes=8)
    noisy = np.array(synth.load_truth(tmp_path).column("noisy").to_pylist())
    assert abs(noisy.mean() - rate) <= 0.02
    assert not (tmp_path / "test").exists()


def test_captions_match_truth(corpus):
    _, manifest, truth, _ = corpus
    for m, t in zip(manifest, truth):
        fits = describes(t["image_concepts"], t["caption_concepts"])
        kind = t["noise_type"]
        assert fits == (kind == "clean"), (kind, m["caption"], t)
        if kind == "clean":
            # "most" of the concepts: never fewer than all but one
            assert len(t["caption_concepts"]) >= len(t["image_concepts"]) - 1
        if kind == "shuffled":
            assert len(t["caption_concepts"]) >= 1
        if kind == "partial":
            inside = set(t["caption_concepts"]) & set(t["image_concepts"])
            assert len(inside) <= 1 and len(t["caption_concepts"]) - len(inside) >= 2
        if kind in ("boilerplate", "empty"):
            assert t["caption_concepts"] == []
        assert (m["caption"].strip() == "") == (kind == "empty")


def test_concept_words_are_not_boilerplate_words(corpus):
    _, manifest, truth, _ = corpus
    words = {"clean": set(), "boilerplate": set()}
    for m, t in zip(manifest, truth):
        if t["language"] == "en" and t["noise_type"] in words:
            words[t["noise_type"]] |= set(m["caption"].lower().strip(".").replace("|", " ").split())
    assert words["clean"] and words["boilerplate"]
    assert not words["clean"] & words["boilerplate"]
    # Each concept has a surface form (one of at most two) that shows up when it is mentioned and
    # hardly ever otherwise; filler words show no such preference.
    en = [(set(m["caption"].lower().strip(".").split()), set(t["caption_concepts"]))
          for m, t in zip(manifest, truth) if t["language"] == "en" and t["noise_type"] == "clean"]
    vocab = sorted(set().union(*(ws for ws, _ in en)))
    col = {w: k for k, w in enumerate(vocab)}
    has_word = np.zeros((len(en), len(vocab)), dtype=bool)
    for r, (ws, _) in enumerate(en):
        has_word[r, [col[w] for w in ws]] = True
    counts = {}
    for _, cs in en:
        for c in cs:
            counts[c] = counts.get(c, 0) + 1
    top = {}
    for c in [c for c, n in counts.items() if n >= 6]:
        mentions = np.array([c in cs for _, cs in en])
        lift = has_word[mentions].mean(axis=0) - has_word[~mentions].mean(axis=0)
        assert lift.max() >= 0.4, c
        top[c] = vocab[int(lift.argmax())]
    assert len(top) >= 10
    assert len(set(top.values())) == len(top)


def _in(ch, *ranges):
    return any(lo <= ord(ch) <= hi for lo, hi in ranges)


CJK = (0x4E00, 0x9FFF)
CJK_PUNCT = (0x3000, 0x303F)
FULLWIDTH = (0xFF00, 0xFFEF)
HIRAGANA = (0x3040, 0x309F)
KATAKANA = (0x30A0, 0x30FF)


def test_scripts(corpus):
    _, manifest, truth, _ = corpus
    by_lang = {}
    for m, t in zip(manifest, truth):
        if t["noise_type"] != "empty":
            by_lang.setdefault(t["language"], []).append(m["caption"])
    assert set(by_lang) == set(synth.LANGUAGES)
    for cap in by_lang["zh"]:
        assert " " not in cap
        assert all(_in(ch, CJK, CJK_PUNCT, FULLWIDTH) for ch in cap), cap
    ja_chars = set()
    for cap in by_lang["ja"]:
        assert " " not in cap
        assert all(_in(ch, CJK, CJK_PUNCT, FULLWIDTH, HIRAGANA, KATAKANA) for ch in cap), cap
        ja_chars |= set(cap)
    assert any(_in(c, HIRAGANA) for c in ja_chars)
    assert any(_in(c, KATAKANA) for c in ja_chars)
    assert any(_in(c, CJK) for c in ja_chars)
    for cap in by_lang["ru"]:
        letters = [ch for ch in cap if ch.isalpha()]
        assert letters and all(_in(ch, (0x0400, 0x04FF)) for ch in letters), cap
    for lang in ("en", "de", "es"):
        for cap in by_lang[lang]:
            letters = [ch for ch in cap if ch.isalpha()]
            assert letters and all(_in(ch, (0x41, 0x7A), (0xC0, 0x17F)) for ch in letters), cap
    # German and Spanish use letters English does not.
    assert any(ch in "äöüß" for cap in by_lang["de"] for ch in cap)
    assert any(ch in "ñáéíóú" for cap in by_lang["es"] for ch in cap)


def test_features(corpus):
    info, manifest, truth, _ = corpus
    f = np.load(info.features_path, mmap_mode="r")
    assert f.shape == (N_PAIRS, R, D) and f.dtype == np.float16
    x = np.asarray(f, dtype=np.float32)
    assert np.isfinite(x).all() and x.min() >= 0 and 0.05 < x.mean() < 5
    assert [r["feature_row"] for r in manifest] == list(range(N_PAIRS))
    # Images that share concepts look alike: mean-pooled cosine is higher than for unrelated images.
    pooled = x.mean(axis=1)
    pooled -= pooled.mean(axis=0)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    incidence = np.zeros((N_PAIRS, 300), dtype=np.float32)
    for i, r in enumerate(truth):
        incidence[i, r["image_concepts"]] = 1
    shared = incidence @ incidence.T
    cos = pooled @ pooled.T
    off_diag = ~np.eye(N_PAIRS, dtype=bool)
    same, other = cos[(shared >= 2) & off_diag], cos[shared == 0]
    assert len(same) >= 100
    assert same.mean() > other.mean() + 0.08


def test_float32_and_global_embeddings(tmp_path):
    info = synth.generate(tmp_path, n_pairs=200, regions=1, dim=24, n_test=10, dtype="float32",
                          n_concepts=40, n_scenes=8)
    f = np.load(info.features_path)
    assert f.shape == (200, 1, 24) and f.dtype == np.float32 and f.max() > 0


def test_captions_per_image_share_rows(tmp_path):
    info = synth.generate(tmp_path, n_pairs=101, captions_per_image=2, regions=6, dim=16, n_test=20,
                          n_concepts=40, n_scenes=8)
    assert info.n_images == 51
    m = pq.read_table(info.manifest_path).to_pylist()
    t = synth.load_truth(tmp_path).to_pylist()
    rows = [r["feature_row"] for r in m]
    assert rows == [p // 2 for p in range(101)]
    assert np.load(info.features_path, mmap_mode="r").shape == (51, 6, 16)
    for p in range(0, 100, 2):
        assert t[p]["image_concepts"] == t[p + 1]["image_concepts"]
        assert m[p]["image_uri"] == m[p + 1]["image_uri"]


def test_test_split_is_clean(corpus):
    info, manifest, _, _ = corpus
    tm = pq.read_table(info.test_dir / "manifest.parquet").to_pylist()
    tt = synth.load_truth(info.out_dir, split="test").to_pylist()
    assert len(tm) == N_TEST and [r["feature_row"] for r in tm] == list(range(N_TEST))
    assert not any(r["noisy"] for r in tt)
    assert all(describes(r["image_concepts"], r["caption_concepts"]) for r in tt)
    assert np.load(info.test_dir / "features.npy", mmap_mode="r").shape == (N_TEST, R, D)
    assert not {r["pair_id"] for r in tm} & {r["pair_id"] for r in manifest}


def test_bad_parameters_name_themselves(tmp_path):
    with pytest.raises(synth.SynthError, match="noise_rate"):
        synth.generate(tmp_path, n_pairs=10, noise_rate=1.5)
    with pytest.raises(synth.SynthError, match="languages"):
        synth.generate(tmp_path, n_pairs=10, languages=("en", "fr"))
    with pytest.raises(synth.SynthError, match="dtype"):
        synth.generate(tmp_path, n_pairs=10, dtype="int8")
    assert list(tmp_path.iterdir()) == []  # nothing written
    with pytest.raises(FileNotFoundError, match="generate"):
        synth.load_truth(tmp_path)
