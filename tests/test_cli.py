"""`pc2` command line: the one-shot curate job and its input errors."""

import json
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from pc2.cli import main
from pc2.models import synth

FAST = ["--set", "embed_dim=64", "--set", "word_dim=64", "--set", "num_classes=16", "--set", "batch_size=32", "--set", "lr=0.003"]


@pytest.fixture(scope="module")
def corpus600(tmp_path_factory):
    d = tmp_path_factory.mktemp("c600")
    synth.generate(d, n_pairs=600, noise_rate=0.5, regions=8, dim=32, n_test=50, n_concepts=20, n_scenes=5, languages=("en",), feature_noise=0.5, seed=1)
    return d


def test_curate_end_to_end_separates_noisy_pairs(corpus600, tmp_path):
    out = tmp_path / "out.parquet"
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "pc2.cli", "curate", str(corpus600 / "manifest.parquet"), "--features", str(corpus600 / "features.npy"),
         "-o", str(out), "--epochs", "6", *FAST, "--json", "-q"],
        capture_output=True, text=True, timeout=120,
    )
    elapsed = time.time() - t0
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["pairs"] == 600 and summary["epochs"] == 6
    table = pq.read_table(out)
    manifest = pq.read_table(corpus600 / "manifest.parquet")
    for col in manifest.column_names:  # every manifest column carried through unchanged
        assert table[col].equals(manifest[col])
    for col in ("confidence", "label", "pseudo_class", "pseudo_caption", "pseudo_caption_source", "pseudo_caption_score"):
        assert col in table.column_names
    truth = pq.read_table(corpus600 / "truth.parquet")
    noisy = np.asarray(truth["noisy"].to_pylist())
    assert roc_auc_score(noisy, 1 - table["confidence"].to_numpy()) >= 0.8
    labels = np.asarray(table["label"].to_pylist())
    assert summary["noisy"] == int((labels == "noisy").sum())
    has = np.asarray([p is not None for p in table["pseudo_caption"].to_pylist()])
    assert np.array_equal(has, labels == "noisy")
    # Wall time is reported, not asserted: timed assertions flake on shared machines.
    print(f"pc2 curate on 600 pairs: {elapsed:.1f}s")


def _run(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_missing_file_is_exit_2_with_one_line(tmp_path, capsys):
    out = tmp_path / "o.parquet"
    code, err = _run(["curate", str(tmp_path / "nope.parquet"), "--features", str(tmp_path / "f.npy"), "-o", str(out)], capsys)
    assert code == 2 and len(err) == 1 and "nope.parquet" in err[0]
    assert not out.exists()


def _write(tmp_path, table, feats):
    pq.write_table(table, tmp_path / "m.parquet")
    np.save(tmp_path / "f.npy", feats)
    return ["curate", str(tmp_path / "m.parquet"), "--features", str(tmp_path / "f.npy"), "-o", str(tmp_path / "o.parquet")]


def test_wrong_columns_exit_2(tmp_path, capsys):
    argv = _write(tmp_path, pa.table({"id": ["a", "b"], "caption": ["x", "y"], "feature_row": [0, 1]}), np.zeros((2, 4, 8), np.float32))
    code, err = _run(argv, capsys)
    assert code == 2 and len(err) == 1 and "pair_id" in err[0]
    assert not (tmp_path / "o.parquet").exists()


def test_feature_row_out_of_range_exit_2(tmp_path, capsys):
    argv = _write(tmp_path, pa.table({"pair_id": ["a", "b", "c"], "caption": ["x", "y", "z"], "feature_row": [0, 1, 7]}), np.ones((2, 4, 8), np.float32))
    code, err = _run(argv, capsys)
    assert code == 2 and len(err) == 1 and "feature_row" in err[0] and "[2]" in err[0]
    assert not (tmp_path / "o.parquet").exists()


def test_nan_features_exit_2(tmp_path, capsys):
    feats = np.ones((3, 4, 8), np.float32)
    feats[1, 2, 3] = np.nan
    argv = _write(tmp_path, pa.table({"pair_id": ["a", "b", "c"], "caption": ["x", "y", "z"], "feature_row": [0, 1, 2]}), feats)
    code, err = _run(argv, capsys)
    assert code == 2 and len(err) == 1 and "nan" in err[0].lower()
    assert not (tmp_path / "o.parquet").exists()


def test_unknown_config_key_exit_2(corpus600, tmp_path, capsys):
    out = tmp_path / "o.parquet"
    code, err = _run(["curate", str(corpus600 / "manifest.parquet"), "--features", str(corpus600 / "features.npy"), "-o", str(out), "--set", "bogus=1"], capsys)
    assert code == 2 and "bogus" in err[0]
    assert not out.exists()


def test_malformed_set_exit_2(corpus600, tmp_path, capsys):
    out = tmp_path / "o.parquet"
    code, err = _run(["curate", str(corpus600 / "manifest.parquet"), "--features", str(corpus600 / "features.npy"), "-o", str(out), "--set", "lr"], capsys)
    assert code == 2 and len(err) == 1 and "KEY=VALUE" in err[0]
    assert not out.exists()


def test_every_command_has_help():
    for cmd in (["--help"], ["curate", "--help"], ["synth", "--help"], ["bench", "--help"], ["search", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(cmd)
        assert e.value.code == 0
