"""Ingest: every bad input gets its precise error and leaves nothing behind; good input round-trips."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pc2.models import tokenizer as tk
from pc2.models.errors import FeatureError, InputError, ManifestError, SourceError
from pc2.models.extract import GridExtractor, SourcePolicy
from pc2.models.ingest import (
    MAX_CAPTION_CHARS,
    check_features,
    load_prepared,
    prepare,
    prepare_precomp,
    read_manifest,
)

N_IMG = 6


def feats(path: Path, n: int = N_IMG, r: int = 3, d: int = 4, dtype=np.float32) -> Path:
    np.save(path, np.random.default_rng(0).standard_normal((n, r, d)).astype(dtype))
    return path


def base_table(n: int = 8) -> pa.Table:
    return pa.table({
        "pair_id": [f"p{i}" for i in range(n)],
        "caption": [f"a photo of object {i % 3} on a table" for i in range(n)],
        "feature_row": pa.array([i % N_IMG for i in range(n)], pa.int64()),
    })


def write_jsonl(path: Path, rows: list[dict], gz: bool = False) -> Path:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(text) if gz else text)
    return path


def fails(tmp_path: Path, manifest: Path, features, exc=ManifestError, **kw) -> InputError:
    out = tmp_path / "out"
    with pytest.raises(exc) as ei:
        prepare(manifest, features, out, vocab_size=300, **kw)
    assert not out.exists(), "a failed ingest must leave no output"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "no temporary leftovers"
    return ei.value


# --- validation matrix --------------------------------------------------------------------------


def test_duplicate_pair_id(tmp_path):
    t = base_table().set_column(0, "pair_id", pa.array(["a", "b", "c", "b", "e", "a", "g", "h"]))
    pq.write_table(t, tmp_path / "m.parquet")
    e = fails(tmp_path, tmp_path / "m.parquet", [feats(tmp_path / "f.npy")])
    assert (e.column, e.rows, e.expected) == ("pair_id", [0, 1, 3, 5], "unique strings")
    assert str(e) == "manifest column 'pair_id': duplicate values at rows [0, 1, 3, 5] (expected unique strings)"
    assert e.to_dict()["n_rows"] == 4


def test_missing_required_column(tmp_path):
    pq.write_table(base_table().drop(["caption"]), tmp_path / "m.parquet")
    e = fails(tmp_path, tmp_path / "m.parquet", [feats(tmp_path / "f.npy")])
    assert e.column == "caption" and e.rows == [] and "a column named 'caption'" in e.expected


def test_wrong_column_type_parquet(tmp_path):
    t = base_table().set_column(1, "caption", pa.array(range(8), pa.int64()))
    pq.write_table(t, tmp_path / "m.parquet")
    e = fails(tmp_path, tmp_path / "m.parquet", [feats(tmp_path / "f.npy")])
    assert (e.column, e.expected) == ("caption", "strings") and "int64" in str(e)


def test_wrong_value_type_jsonl_names_rows(tmp_path):
    rows = base_table().to_pylist()
    rows[2]["caption"] = 17
    rows[5]["caption"] = 3.5
    e = fails(tmp_path, write_jsonl(tmp_path / "m.jsonl", rows), [feats(tmp_path / "f.npy")])
    assert (e.column, e.rows, e.expected) == ("caption", [2, 5], "strings")


def test_feature_row_text_in_csv_names_rows(tmp_path):
    t = base_table().set_column(2, "feature_row", pa.array(["0", "1", "two", "3", "4", "x5", "0", "1"]))
    pacsv.write_csv(t, tmp_path / "m.csv")
    e = fails(tmp_path, tmp_path / "m.csv", [feats(tmp_path / "f.npy")])
    assert (e.column, e.rows, e.expected) == ("feature_row", [2, 5], "integers")


@pytest.mark.parametrize("name", ["m.csv", "m.jsonl", "m.parquet", "m.csv.gz"])
def test_empty_file(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(gzip.compress(b"") if name.endswith(".gz") else b"")
    e = fails(tmp_path, p, [feats(tmp_path / "f.npy")])
    assert "is empty" in str(e) and e.rows == []


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_zero_rows(tmp_path, fmt):
    p = tmp_path / f"m.{fmt}"
    if fmt == "parquet":
        pq.write_table(base_table().slice(0, 0), p)
    elif fmt == "csv":
        p.write_text("pair_id,caption,feature_row\n")
    else:
        p.write_text("\n\n")
    e = fails(tmp_path, p, [feats(tmp_path / "f.npy")])
    assert "no rows" in str(e) or "is empty" in str(e)
    assert e.expected


def test_non_utf8_csv(tmp_path):
    p = tmp_path / "m.csv"
    p.write_bytes(b"pair_id,caption,feature_row\na,ok,0\nb,caf\xe9 latin-1,1\nc,fine,2\nd,\xff\xfe,3\n")
    e = fails(tmp_path, p, [feats(tmp_path / "f.npy")])
    assert e.rows == [1, 3] and "non-UTF-8" in str(e) and "UTF-8" in e.expected


def test_non_utf8_jsonl(tmp_path):
    p = tmp_path / "m.jsonl"
    lines = [json.dumps(r).encode() for r in base_table(4).to_pylist()]
    lines[2] = lines[2].replace(b"photo", b"ph\xc3\x28to")  # invalid 2-byte sequence
    p.write_bytes(b"\n".join(lines) + b"\n")
    e = fails(tmp_path, p, [feats(tmp_path / "f.npy")])
    assert e.rows == [2] and "non-UTF-8" in str(e)


def test_truncated_parquet(tmp_path):
    pq.write_table(base_table(2000), tmp_path / "full.parquet")
    data = (tmp_path / "full.parquet").read_bytes()
    (tmp_path / "m.parquet").write_bytes(data[: len(data) // 2])
    e = fails(tmp_path, tmp_path / "m.parquet", [feats(tmp_path / "f.npy")])
    assert "not a complete Parquet file" in str(e)


def test_ragged_image_embedding(tmp_path):
    emb = [[0.1, 0.2, 0.3]] * 8
    emb[2] = [0.1, 0.2]
    emb[6] = [0.1, 0.2, 0.3, 0.4]
    t = base_table().drop(["feature_row"]).append_column("image_embedding", pa.array(emb, pa.list_(pa.float32())))
    pq.write_table(t, tmp_path / "m.parquet")
    e = fails(tmp_path, tmp_path / "m.parquet", None)
    assert (e.column, e.rows, e.expected) == ("image_embedding", [2, 6], "lists of exactly 3 floats")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_image_embedding(tmp_path, bad):
    emb = [[0.1, 0.2, 0.3] for _ in range(8)]
    emb[4][1] = bad
    rows = base_table().drop(["feature_row"]).to_pylist()
    for r, v in zip(rows, emb):
        r["image_embedding"] = v
    t = pa.Table.from_pylist(rows)
    pq.write_table(t, tmp_path / "m.parquet")
    e = fails(tmp_path, tmp_path / "m.parquet", None)
    assert (e.column, e.rows, e.expected) == ("image_embedding", [4], "finite numbers")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features(tmp_path, bad):
    pq.write_table(base_table(), tmp_path / "m.parquet")
    f1 = feats(tmp_path / "a.npy")
    x = np.load(feats(tmp_path / "b.npy"))
    x[1, 2, 3] = bad
    x[4, 0, 0] = bad
    np.save(tmp_path / "b.npy", x)
    e = fails(tmp_path, tmp_path / "m.parquet", [f1, tmp_path / "b.npy"], exc=FeatureError)
    assert (e.file, e.rows, e.expected) == ("b.npy", [1, 4], "finite numbers in every row")


def test_nan_scan_in_blocks_finds_rows_across_blocks(tmp_path, monkeypatch):
    import pc2.models.ingest as ing

    monkeypatch.setattr(ing, "FEATURE_BLOCK_BYTES", 3 * 3 * 4 * 4)  # 4 rows per block
    x = np.ones((10, 3, 4), np.float16)
    x[[0, 5, 9]] = np.nan
    np.save(tmp_path / "f.npy", x)
    with pytest.raises(FeatureError) as ei:
        check_features([tmp_path / "f.npy"])
    assert ei.value.rows == [0, 5, 9]


def test_feature_row_out_of_range(tmp_path):
    t = base_table().set_column(2, "feature_row", pa.array([0, 1, 6, 2, -1, 9, 3, None]))
    pq.write_table(t, tmp_path / "m.parquet")
    e = fails(tmp_path, tmp_path / "m.parquet", [feats(tmp_path / "f.npy")])
    assert (e.column, e.rows) == ("feature_row", [7])  # missing value reported first (column order of rules)
    t = t.set_column(2, "feature_row", pa.array([0, 1, 6, 2, 4, 9, 3, 5]))
    pq.write_table(t, tmp_path / "m.parquet")
    e = fails(tmp_path, tmp_path / "m.parquet", [tmp_path / "f.npy"])
    assert (e.column, e.rows, e.expected) == ("feature_row", [2, 5], f"integers in [0, {N_IMG})")


def test_fewer_feature_rows_than_referenced_across_shards(tmp_path):
    pq.write_table(base_table().set_column(2, "feature_row", pa.array(range(8))), tmp_path / "m.parquet")
    shards = [feats(tmp_path / "a.npy", n=3), feats(tmp_path / "b.npy", n=4)]  # 7 rows, row 7 referenced
    e = fails(tmp_path, tmp_path / "m.parquet", shards)
    assert (e.column, e.rows, e.expected) == ("feature_row", [7], "integers in [0, 7)")


@pytest.mark.parametrize("r, d", [(3, 5), (2, 4)])
def test_shards_disagree_on_shape(tmp_path, r, d):
    pq.write_table(base_table(), tmp_path / "m.parquet")
    shards = [feats(tmp_path / "a.npy"), feats(tmp_path / "b.npy", r=r, d=d)]
    e = fails(tmp_path, tmp_path / "m.parquet", shards, exc=FeatureError)
    assert e.file == "b.npy" and e.expected == "the same R and D in every shard" and "R=3, D=4" in str(e)


def test_bad_feature_dtype_and_rank(tmp_path):
    pq.write_table(base_table(), tmp_path / "m.parquet")
    np.save(tmp_path / "i.npy", np.zeros((6, 4), np.int32))
    assert fails(tmp_path, tmp_path / "m.parquet", [tmp_path / "i.npy"], exc=FeatureError).expected == "float16 or float32"
    np.save(tmp_path / "r.npy", np.zeros((6,), np.float32))
    assert "[N, R, D]" in fails(tmp_path, tmp_path / "m.parquet", [tmp_path / "r.npy"], exc=FeatureError).expected


def test_long_caption_truncated_with_warning(tmp_path):
    t = base_table()
    caps = t.column("caption").to_pylist()
    caps[3] = "x" * (MAX_CAPTION_CHARS + 500)
    pq.write_table(t.set_column(1, "caption", pa.array(caps)), tmp_path / "m.parquet")
    r = prepare(tmp_path / "m.parquet", [feats(tmp_path / "f.npy")], tmp_path / "out", vocab_size=300)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["warnings"][0]["column"] == "caption" and report["warnings"][0]["rows"] == [3]
    back = pq.read_table(tmp_path / "out" / "manifest.parquet").column("caption").to_pylist()
    assert len(back[3]) == MAX_CAPTION_CHARS and back[4] == caps[4]
    assert len(r.corpus.captions[3]) == MAX_CAPTION_CHARS


def _png(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)
    return path


def test_image_uri_outside_allowed_roots(tmp_path):
    (tmp_path / "imgs").mkdir()
    secret = tmp_path / "secret"
    secret.mkdir()
    _png(tmp_path / "imgs" / "a.png")
    _png(secret / "s.png")
    (tmp_path / "imgs" / "link.png").symlink_to(secret / "s.png")
    uris = ["imgs/a.png", "imgs/../secret/s.png", "imgs/a.png", str(secret / "s.png"), "imgs/link.png"]
    t = pa.table({"pair_id": list("abcde"), "caption": ["x"] * 5, "image_uri": uris})
    pq.write_table(t, tmp_path / "m.parquet")
    policy = SourcePolicy(allowed_roots=[str(tmp_path / "imgs")])
    e = fails(tmp_path, tmp_path / "m.parquet", None, exc=SourceError, extractor=GridExtractor(grid=2), sources=policy)
    assert (e.column, e.rows) == ("image_uri", [1, 3, 4]) and "outside the allowed roots" in str(e)


def test_http_uri_when_fetching_is_off(tmp_path):
    t = pa.table({"pair_id": ["a", "b"], "caption": ["x", "y"], "image_uri": ["https://example.com/a.jpg", "http://example.com/b.jpg"]})
    pq.write_table(t, tmp_path / "m.parquet")
    e = fails(tmp_path, tmp_path / "m.parquet", None, exc=SourceError, extractor=GridExtractor(grid=2))
    assert (e.column, e.rows) == ("image_uri", [0, 1]) and "http" in str(e) and "disabled" in str(e)


def test_exactly_one_image_source(tmp_path):
    t = base_table().append_column("image_embedding", pa.array([[0.0, 1.0]] * 8))
    pq.write_table(t, tmp_path / "m.parquet")
    e = fails(tmp_path, tmp_path / "m.parquet", [feats(tmp_path / "f.npy")])
    assert "exactly one image source" in str(e)
    pq.write_table(base_table().drop(["feature_row"]), tmp_path / "m.parquet")
    assert "found none" in str(fails(tmp_path, tmp_path / "m.parquet", None))


def test_failed_ingest_keeps_previous_output(tmp_path):
    pq.write_table(base_table(), tmp_path / "m.parquet")
    f = feats(tmp_path / "f.npy")
    prepare(tmp_path / "m.parquet", [f], tmp_path / "out", vocab_size=300)
    before = (tmp_path / "out" / "manifest.parquet").read_bytes()
    pq.write_table(base_table().set_column(0, "pair_id", pa.array(["a"] * 8)), tmp_path / "bad.parquet")
    with pytest.raises(ManifestError):
        prepare(tmp_path / "bad.parquet", [f], tmp_path / "out", vocab_size=300)
    assert (tmp_path / "out" / "manifest.parquet").read_bytes() == before


# --- round trips --------------------------------------------------------------------------------


def rich_table(n: int = 7) -> pa.Table:
    t0 = dt.datetime(2024, 5, 1, 12, 0, 0)
    return pa.table({
        "source": pa.array([f"site{i % 2}" for i in range(n)]),
        "pair_id": pa.array([f"{i:03d}" for i in range(n)]),  # looks numeric: must stay a string
        "caption": pa.array(["a cat", "", "   ", "собака", "电车里的女人", "x, y", "last one"][:n]),
        "feature_row": pa.array([i % N_IMG for i in range(n)], pa.int64()),
        "width": pa.array([640 + i for i in range(n)], pa.int64()),
        "tags": pa.array([[i, i + 1] for i in range(n)], pa.list_(pa.int64())),
        "seen": pa.array([t0 + dt.timedelta(hours=i) for i in range(n)], pa.timestamp("s")),
        "score": pa.array([0.5 * i for i in range(n)], pa.float64()),
    })


def through_parquet(t: pa.Table) -> pa.Table:
    buf = pa.BufferOutputStream()
    pq.write_table(t, buf)
    return pq.read_table(pa.BufferReader(buf.getvalue()))


def _write(t: pa.Table, path: Path) -> Path:
    name = path.name.removesuffix(".gz")
    if name.endswith(".parquet"):
        pq.write_table(t, path.with_name(name))
    elif name.endswith(".jsonl"):
        rows = [{k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in r.items()} for r in t.to_pylist()]
        write_jsonl(path.with_name(name), rows)
    else:
        pacsv.write_csv(t, path.with_name(name))
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(path.with_name(name).read_bytes()))
    return path


@pytest.mark.parametrize("name", ["m.parquet", "m.jsonl", "m.csv", "m.jsonl.gz", "m.csv.gz", "m.parquet.gz"])
def test_round_trip_keeps_values_and_types(tmp_path, name):
    t = rich_table()
    if ".csv" in name:
        t = t.drop(["tags"])  # CSV cannot carry lists
    p = _write(t, tmp_path / name)
    r = prepare(p, [feats(tmp_path / "f.npy")], tmp_path / "out", vocab_size=300)
    back = pq.read_table(tmp_path / "out" / "manifest.parquet")
    assert back.schema.names == t.schema.names
    want = through_parquet(t)  # Parquet's own spelling of the types (timestamp[s] is stored as ms)
    assert back.equals(want), (back.schema, want.schema)
    assert r.report["n_pairs"] == len(t) and r.report["n_blank_captions"] == 2
    assert r.corpus.lengths[1] == 0 and r.corpus.lengths[2] == 0 and (r.corpus.lengths[[0, 3, 4]] > 0).all()
    assert r.corpus.pair_ids == t.column("pair_id").to_pylist()
    np.testing.assert_array_equal(r.corpus.feature_row, t.column("feature_row").to_numpy())


def test_prepared_dir_loads_and_tokens_decode(tmp_path):
    t = rich_table()
    pq.write_table(t, tmp_path / "m.parquet")
    r = prepare(tmp_path / "m.parquet", [feats(tmp_path / "f.npy", dtype=np.float16)], tmp_path / "out", vocab_size=300)
    again = load_prepared(tmp_path / "out")
    assert again.report == r.report and again.report["dtype"] == "float16"
    tok = tk.load(tmp_path / "out" / "tokenizer.json")
    c = again.corpus
    assert all(tk.decode(tok, c.token_ids[c.token_offsets[i] : c.token_offsets[i + 1]]) == cap for i, cap in enumerate(c.captions) if cap.strip())
    assert 0 not in set(np.asarray(c.token_ids).tolist())
    assert c.images(np.arange(3)).shape == (3, 3, 4)


def test_inline_embeddings_become_features(tmp_path):
    emb = np.random.default_rng(1).standard_normal((8, 5)).astype(np.float32)
    t = base_table().drop(["feature_row"]).append_column("image_embedding", pa.array(emb.tolist(), pa.list_(pa.float32())))
    pq.write_table(t, tmp_path / "m.parquet")
    r = prepare(tmp_path / "m.parquet", None, tmp_path / "out", vocab_size=300)
    assert (tmp_path / "out" / "features_inline.npy").is_file()
    np.testing.assert_allclose(r.corpus.images(np.arange(8))[:, 0], emb)
    assert (r.report["regions"], r.report["dim"]) == (1, 5)
    moved = tmp_path / "moved"
    (tmp_path / "out").rename(moved)  # inline features travel with the directory
    np.testing.assert_allclose(load_prepared(moved).corpus.images(np.arange(2))[:, 0], emb[:2])


def test_csv_embedding_text_is_parsed(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text('pair_id,caption,image_embedding\na,x,"[1.0, 2.5]"\nb,y,"3 4e-1"\n')
    r = prepare(p, None, tmp_path / "out", vocab_size=300)
    np.testing.assert_allclose(r.corpus.images(np.arange(2))[:, 0], [[1.0, 2.5], [3.0, 0.4]])


def test_csv_extra_column_changing_type_after_first_block(tmp_path, monkeypatch):
    import pc2.models.ingest as ing

    monkeypatch.setattr(ing, "READ_BLOCK_BYTES", 256)
    rows = ["pair_id,caption,feature_row,code"] + [f"p{i},cap {i},{i % N_IMG},{i}" for i in range(60)] + ["last,cap,0,A7"]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    r = prepare(tmp_path / "m.csv", [feats(tmp_path / "f.npy")], tmp_path / "out", vocab_size=300)
    code = pq.read_table(tmp_path / "out" / "manifest.parquet").column("code")
    assert code.type == pa.string() and code.to_pylist()[-1] == "A7" and r.report["n_pairs"] == 61


def test_jsonl_field_first_seen_late(tmp_path, monkeypatch):
    import pc2.models.ingest as ing

    monkeypatch.setattr(ing, "READ_BLOCK_BYTES", 256)
    rows = base_table(40).to_pylist()
    rows[-1]["note"] = "only here"
    write_jsonl(tmp_path / "m.jsonl", rows)
    prepare(tmp_path / "m.jsonl", [feats(tmp_path / "f.npy")], tmp_path / "out", vocab_size=300)
    back = pq.read_table(tmp_path / "out" / "manifest.parquet")
    assert back.column("note").to_pylist() == [None] * 39 + ["only here"]


def test_read_manifest_streams_batches(tmp_path):
    pq.write_table(base_table(1000), tmp_path / "m.parquet")
    sizes = [b.num_rows for b in read_manifest(tmp_path / "m.parquet", chunk_rows=300)]
    assert sizes == [300, 300, 300, 100]


def test_ids_tokenizer_mode(tmp_path):
    t = base_table(4).set_column(1, "caption", pa.array(["5,3,9", "7 2", "", "4, 4"]))
    pq.write_table(t, tmp_path / "m.parquet")
    r = prepare(tmp_path / "m.parquet", [feats(tmp_path / "f.npy")], tmp_path / "out", tokenizer="ids")
    c = r.corpus
    assert [c.token_ids[c.token_offsets[i] : c.token_offsets[i + 1]].tolist() for i in range(4)] == [[5, 3, 9], [7, 2], [], [4, 4]]
    assert c.vocab_size == 10
    sub = tmp_path / "bad"
    sub.mkdir()
    bad = base_table(3).set_column(1, "caption", pa.array(["1,2", "3,x", "0,4"]))
    pq.write_table(bad, sub / "m.parquet")
    e = fails(sub, sub / "m.parquet", [tmp_path / "f.npy"], tokenizer="ids")
    assert (e.column, e.rows, e.expected) == ("caption", [1], "comma- or space-separated integers >= 1")
    pq.write_table(bad.set_column(1, "caption", pa.array(["1,2", "3", "0,4"])), sub / "m.parquet")
    e = fails(sub, sub / "m.parquet", [tmp_path / "f.npy"], tokenizer="ids")
    assert (e.column, e.rows, e.expected) == ("caption", [2], "ids >= 1")


def test_progress_is_reported(tmp_path):
    pq.write_table(base_table(), tmp_path / "m.parquet")
    seen = []
    prepare(tmp_path / "m.parquet", [feats(tmp_path / "f.npy")], tmp_path / "out", vocab_size=300, progress=seen.append)
    phases = [p.phase for p in seen]
    assert phases[0] == "features" and phases[-1] == "done" and "manifest" in phases and "tokenize" in phases
    assert seen[-1].done == seen[-1].total == 8


# --- extracted features -------------------------------------------------------------------------


def test_extractor_features_shared_per_image(tmp_path):
    (tmp_path / "imgs").mkdir()
    for k in range(3):
        _png(tmp_path / "imgs" / f"{k}.png", seed=k)
    t = pa.table({"pair_id": list("abcd"), "caption": ["w", "x", "y", "z"], "image_uri": ["imgs/0.png", "imgs/1.png", "imgs/0.png", "imgs/2.png"]})
    pq.write_table(t, tmp_path / "m.parquet")
    ex = GridExtractor(grid=3)
    r = prepare(tmp_path / "m.parquet", None, tmp_path / "out", vocab_size=300, extractor=ex)
    assert r.corpus.feature_row.tolist() == [0, 1, 0, 2] and r.report["n_images"] == 3
    np.testing.assert_allclose(r.corpus.images(np.array([3]))[0], ex((tmp_path / "imgs" / "2.png").read_bytes()))


def test_unreadable_image_names_rows(tmp_path):
    (tmp_path / "imgs").mkdir()
    _png(tmp_path / "imgs" / "ok.png")
    (tmp_path / "imgs" / "bad.png").write_bytes(b"not an image")
    t = pa.table({"pair_id": list("abc"), "caption": ["x"] * 3, "image_uri": ["imgs/ok.png", "imgs/bad.png", "imgs/bad.png"]})
    pq.write_table(t, tmp_path / "m.parquet")
    e = fails(tmp_path, tmp_path / "m.parquet", None, extractor=GridExtractor(grid=2))
    assert (e.column, e.rows) == ("image_uri", [1, 2])


# --- precomputed NCR / Noise-of-Web layout ------------------------------------------------------


def test_precomp_raw_text(tmp_path):
    np.save(tmp_path / "train_ims.npy", np.random.default_rng(0).standard_normal((4, 3, 8)).astype(np.float32))
    lines = [f"caption {i} of image {i // 5}" for i in range(20)]
    (tmp_path / "train_caps.txt").write_text("\n".join(lines) + "\n")
    r = prepare_precomp(tmp_path, "train", tmp_path / "out", vocab_size=300)
    assert r.corpus.feature_row.tolist() == [i // 5 for i in range(20)]
    assert r.corpus.pair_ids[:2] == ["train_0", "train_1"] and r.corpus.captions == lines
    assert r.report["captions_per_image"] == 5 and r.report["n_images"] == 4
    assert load_prepared(tmp_path / "out").report["split"] == "train"


def test_precomp_ids_with_vocab(tmp_path):
    words = ["<pad>", "<start>", "<end>", "<unk>", "a", "dog", "cat", "runs", ","]
    w2i = {w: i for i, w in enumerate(words)}
    (tmp_path / "vocab").mkdir()
    vocab = {"word2idx": w2i, "idx2word": {str(i): w for w, i in w2i.items()}, "idx": len(words)}
    (tmp_path / "vocab" / "now_bpe_vocab.json").write_text(json.dumps(vocab))
    np.save(tmp_path / "dev_ims.npy", np.ones((2, 4), np.float16))
    caps = [[1, 4, 5, 7, 2], [1, 4, 6, 2], [4, 8, 6], [5], [6, 6], [4], [5, 7], [6], [1, 2], [8]]
    (tmp_path / "dev_caps_bpe.txt").write_text("\n".join(",".join(map(str, c)) for c in caps) + "\n")
    r = prepare_precomp(tmp_path, "dev", tmp_path / "out")
    c = r.corpus
    assert [c.token_ids[c.token_offsets[i] : c.token_offsets[i + 1]].tolist() for i in range(10)] == caps
    assert c.feature_row.tolist() == [0] * 5 + [1] * 5
    assert c.captions[0] == "<start> a dog runs <end>" and c.captions[2] == "a , cat"
    assert c.vocab_size >= len(words)
    tok = tk.load(tmp_path / "out" / "tokenizer.json")
    assert tok.token_to_id("dog") == 5
    assert "caption_ids" not in pq.read_table(tmp_path / "out" / "manifest.parquet").column_names


def test_precomp_lines_not_multiple_of_images(tmp_path):
    np.save(tmp_path / "test_ims.npy", np.ones((3, 4), np.float32))
    (tmp_path / "test_caps.txt").write_text("a\nb\nc\nd\n")
    with pytest.raises(ManifestError, match="4 lines for 3 images"):
        prepare_precomp(tmp_path, "test", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_malformed_jsonl_line_names_row(tmp_path):
    lines = [json.dumps(r) for r in base_table(4).to_pylist()]
    lines[1] = '{"pair_id": "p1", "caption": "unterminated'
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    e = fails(tmp_path, tmp_path / "m.jsonl", [feats(tmp_path / "f.npy")])
    assert e.rows == [1] and "JSON" in e.expected


def test_categorical_columns_keep_their_type(tmp_path):
    t = base_table(4)
    t = t.set_column(1, "caption", t.column("caption").dictionary_encode())
    pq.write_table(t, tmp_path / "m.parquet")
    r = prepare(tmp_path / "m.parquet", [feats(tmp_path / "f.npy")], tmp_path / "out", vocab_size=300)
    assert pa.types.is_dictionary(pq.read_table(tmp_path / "out" / "manifest.parquet").schema.field("caption").type)
    assert r.corpus.captions == t.column("caption").cast(pa.string()).to_pylist()
