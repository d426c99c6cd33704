"""Job search: indexes from a real short training run, text/pair/vector queries, filters, errors;
near-duplicate groups and the ``duplicate_of`` export column."""

from __future__ import annotations

import collections
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pc2.cli import main
from pc2.models import index as fx
from pc2.models import ingest, synth
from pc2.models.config import PC2Config
from pc2.models.data import Corpus, FeatureStore
from pc2.models.engine import curate
from pc2.models.results import annotate
from pc2.models.search import (
    CAPTION_INDEX, IMAGE_INDEX, INDEX_DIR, LABELS, TRUSTED_PRED_INDEX, JobSearcher, NotSearchable, SearchError,
    build_job_indexes, duplicate_groups, search_job_dir,
)

# Enough training for the joint space to tie concept words to concept regions (~4 s on 2 cores).
CONFIG = dict(epochs=8, warmup_epochs=2, embed_dim=64, word_dim=64, num_classes=16, batch_size=32, lr=3e-3,
              threads=1)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A finished job in the ``pc2 curate`` layout: OUT.pc2/prepared and OUT.pc2/train."""
    d = tmp_path_factory.mktemp("search")
    src = d / "synth"
    synth.generate(src, n_pairs=600, noise_rate=0.3, regions=8, dim=32, n_test=0, seed=0, n_concepts=20,
                   n_scenes=8, languages=("en",))
    job_dir = d / "out.pc2"
    prepared = ingest.prepare(src / "manifest.parquet", [src / "features.npy"], job_dir / "prepared", vocab_size=1000)
    result = curate(prepared.corpus, PC2Config(**CONFIG), workdir=job_dir / "train")
    build_job_indexes(job_dir / "train", noisy=result.noisy)
    truth = pq.read_table(src / "truth.parquet").to_pylist()
    return {"dir": job_dir, "src": src, "corpus": prepared.corpus, "result": result, "truth": truth,
            "searcher": JobSearcher(job_dir / "train", job_dir / "prepared")}


def _concept_words(truth: list[dict], captions: list[str]) -> dict[int, str]:
    """For each concept, the caption word most specific to clean captions that mention it."""
    with_concept: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    total: collections.Counter = collections.Counter()
    for row, cap in zip(truth, captions):
        words = {w.strip(".").lower() for w in cap.split()}
        total.update(words)
        if not row["noisy"]:
            for c in row["caption_concepts"]:
                with_concept[c].update(words)
    return {c: max(cnt, key=lambda w: cnt[w] / total[w] * min(cnt[w], 20)) for c, cnt in with_concept.items()}


def test_text_query_finds_images_of_the_concept(job):
    truth, searcher = job["truth"], job["searcher"]
    words = _concept_words(truth, job["corpus"].captions)
    precision, base = [], []
    for concept, word in sorted(words.items()):
        hits = searcher.search(text=word, direction="text2image", k=10)
        assert len(hits) == 10
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
        precision.append(np.mean([concept in truth[h["index"]]["image_concepts"] for h in hits]))
        base.append(np.mean([concept in r["image_concepts"] for r in truth]))
    # Each concept is in ~15 % of images; the top 10 for its word should be mostly images showing it.
    assert np.mean(precision) >= 0.5, (np.mean(precision), np.mean(base))
    assert np.mean(precision) >= 3 * np.mean(base)


def test_hits_match_exact_cosine_search_and_carry_pair_fields(job):
    searcher, corpus = job["searcher"], job["corpus"]
    img = fx.normalize(np.load(job["dir"] / "train" / "img_emb.npy"))
    cap = fx.normalize(np.load(job["dir"] / "train" / "cap_emb.npy"))
    i = 7
    hits = searcher.search(pair_id=corpus.pair_ids[i], direction="image2text", k=5)
    want = np.argsort(-(cap @ img[i]), kind="stable")[:5]
    assert [h["index"] for h in hits] == want.tolist()
    assert np.allclose([h["score"] for h in hits], (cap @ img[i])[want], atol=1e-5)
    for h in hits:
        assert h["pair_id"] == corpus.pair_ids[h["index"]] and h["caption"] == corpus.captions[h["index"]]
        assert h["label"] == ("noisy" if job["result"].noisy[h["index"]] else "clean")
    # Within one modality the query pair itself is left out.
    same = searcher.search(pair_id=corpus.pair_ids[i], direction="image2image", k=5)
    assert i not in [h["index"] for h in same] and len(same) == 5
    # A raw vector query equals the pair query it was taken from.
    by_vec = searcher.search(vector=img[i].tolist(), direction="image2text", k=5)
    assert [h["index"] for h in by_vec] == [h["index"] for h in hits]


def test_indexes_round_trip_and_rebuild(job):
    workdir = job["dir"] / "train"
    n = len(job["corpus"])
    for name in (IMAGE_INDEX, CAPTION_INDEX):
        index = fx.load(workdir / INDEX_DIR / name)
        assert index.ntotal == n and index.d == CONFIG["embed_dim"]
    trusted = fx.load(workdir / INDEX_DIR / TRUSTED_PRED_INDEX)
    assert trusted.ntotal == int((~job["result"].noisy).sum())
    assert np.array_equal(np.load(workdir / INDEX_DIR / LABELS), job["result"].noisy)
    before = job["searcher"].search(text="grolkam", k=10)
    build_job_indexes(workdir, noisy=job["result"].noisy)  # rebuilding gives the same answers
    again = JobSearcher(workdir, job["dir"] / "prepared").search(text="grolkam", k=10)
    assert [h["index"] for h in again] == [h["index"] for h in before]


@pytest.mark.parametrize("label", ["clean", "noisy"])
def test_label_filter_returns_top_k_of_that_label(job, label):
    searcher, noisy = job["searcher"], job["result"].noisy
    img = fx.normalize(np.load(job["dir"] / "train" / "img_emb.npy"))
    cap = fx.normalize(np.load(job["dir"] / "train" / "cap_emb.npy"))
    k = 40  # more than the first fetch of a rare label can hold, so the search must widen
    hits = searcher.search(pair_id=job["corpus"].pair_ids[3], direction="image2text", k=k, label=label)
    keep = noisy if label == "noisy" else ~noisy
    scores = cap @ img[3]
    want = [int(j) for j in np.argsort(-scores, kind="stable") if keep[j]][:k]
    assert [h["index"] for h in hits] == want
    assert all(h["label"] == label for h in hits)
    # Caller-supplied labels replace the stored ones.
    flipped = searcher.search(pair_id=job["corpus"].pair_ids[3], direction="image2text", k=5, label=label,
                              labels=~noisy)
    assert all(noisy[h["index"]] == (label == "clean") for h in flipped) and len(flipped) == 5


def test_k_larger_than_matches_returns_all_of_them(job):
    noisy = job["result"].noisy
    hits = job["searcher"].search(text="grolkam", k=1000, label="noisy")
    assert len(hits) == int(noisy.sum())


@pytest.mark.parametrize("query, field", [
    (dict(pair_id="no-such-pair"), "pair_id"),
    (dict(text="   "), "text"),
    (dict(text="x", direction="sideways"), "direction"),
    (dict(text="x", direction="image2text"), "direction"),
    (dict(text="x", k=0), "k"),
    (dict(text="x", k=1001), "k"),
    (dict(text="x", k=True), "k"),
    (dict(vector=[0.1] * 5), "vector"),
    (dict(vector=[0.0] * CONFIG["embed_dim"]), "vector"),
    (dict(text="x", pair_id="p000001"), "query"),
    (dict(), "query"),
    (dict(text="x", label="dirty"), "label"),
])
def test_bad_queries_raise_typed_errors(job, query, field):
    with pytest.raises(SearchError) as e:
        job["searcher"].search(**query)
    assert e.value.field == field


def test_vector_error_names_the_expected_length(job):
    with pytest.raises(SearchError, match=f"expected {CONFIG['embed_dim']} numbers"):
        job["searcher"].search(vector=[1.0, 2.0, 3.0])


def test_job_without_joint_vectors_is_not_searchable(tmp_path, job):
    # What an sgraf job leaves: predictions, no per-item vectors.
    workdir = tmp_path / "train"
    workdir.mkdir()
    pred = np.random.default_rng(0).random((len(job["corpus"]), 16), dtype=np.float32)
    np.save(workdir / "pred.npy", pred)
    written = build_job_indexes(workdir, noisy=job["result"].noisy)
    assert TRUSTED_PRED_INDEX in written and IMAGE_INDEX not in written
    with pytest.raises(NotSearchable) as e:
        JobSearcher(workdir, job["dir"] / "prepared").search(text="x")
    assert e.value.field == "job" and "sgraf" in str(e.value)


def test_search_job_dir_and_cli(job, capsys):
    hits = search_job_dir(job["dir"], text="grolkam", direction="text2image", k=3, label="clean")
    assert len(hits) == 3 and all(h["label"] == "clean" for h in hits)
    # The OUT.parquet path names the same job.
    same = search_job_dir(job["dir"].with_name("out.parquet"), text="grolkam", k=3, label="clean")
    assert same == hits
    assert main(["search", str(job["dir"]), "--text", "grolkam", "-k", "3", "--label", "clean"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [h["pair_id"] for h in printed] == [h["pair_id"] for h in hits]
    assert main(["search", str(job["dir"]), "--pair-id", "nope"]) == 2
    assert "pair_id" in capsys.readouterr().err
    assert main(["search", str(job["dir"].parent / "missing.pc2"), "--text", "x"]) == 2


# --- near-duplicates -----------------------------------------------------------------------------
def _corpus(features: np.ndarray, feature_row: list[int]) -> Corpus:
    n = len(feature_row)
    return Corpus(FeatureStore([features]), np.asarray(feature_row, dtype=np.int64), np.zeros(n + 1, np.int64),
                  np.zeros(0, np.int32), 10, [f"p{i}" for i in range(n)], [""] * n)


def test_duplicate_groups_shared_rows_and_near_copies():
    rng = np.random.default_rng(0)
    feats = np.maximum(rng.standard_normal((12, 6, 32)), 0).astype(np.float32)  # non-negative, like detectors
    feats[10] = feats[3] + 0.01 * rng.standard_normal((6, 32)).astype(np.float32)  # a re-encoded copy of image 3
    feats[11] = feats[3] * 0.5 + feats[4] * 0.5  # looks like 3 in places, but is another picture
    rows = [0, 1, 1, 2, 3, 10, 5, 1, 11, 4, 3]
    dup = duplicate_groups(_corpus(feats, rows), 0.97)
    want = [-1, -1, 1, -1, -1, 4, -1, 1, -1, -1, 4]
    assert dup.tolist() == want
    # At threshold 1.0 only pairs sharing a feature row remain duplicates.
    assert duplicate_groups(_corpus(feats, rows), 1.0).tolist() == [-1, -1, 1, -1, -1, -1, -1, 1, -1, -1, 4]


def test_no_false_duplicates_among_distinct_synthetic_images(tmp_path):
    # Two captions per image: duplicates are exactly the pairs that share an image.
    synth.generate(tmp_path, n_pairs=400, noise_rate=0.3, regions=8, dim=32, n_test=0, seed=2, n_concepts=20,
                   n_scenes=8, languages=("en",), captions_per_image=2)
    m = pq.read_table(tmp_path / "manifest.parquet")
    rows = m["feature_row"].to_numpy()
    corpus = _corpus(np.load(tmp_path / "features.npy"), rows.tolist())
    dup = duplicate_groups(corpus)
    first: dict[int, int] = {}
    want = []
    for i, r in enumerate(rows.tolist()):
        want.append(first[r] if r in first else -1)
        first.setdefault(r, i)
    assert dup.tolist() == want
    assert int((dup >= 0).sum()) == len(rows) - len(np.unique(rows))


def test_annotate_adds_duplicate_of_pair_ids(job):
    manifest = pq.read_table(job["src"] / "manifest.parquet")
    corpus, result = job["corpus"], job["result"]
    dup = np.full(len(corpus), -1, dtype=np.int64)
    dup[[5, 9]] = 2
    table = annotate(manifest, corpus, result, duplicate_of=dup)
    assert table.column_names[-1] == "duplicate_of"
    col = table["duplicate_of"].to_pylist()
    assert col[5] == col[9] == corpus.pair_ids[2] and col[2] is None and sum(c is not None for c in col) == 2
    assert "duplicate_of" not in annotate(manifest, corpus, result).column_names
