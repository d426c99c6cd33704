"""Ingest throughput: pairs/s of ``prepare`` (read + validate + BPE train + tokenize + write) per format.

    python benchmarks/bench_ingest.py [--rows 200000] [--dir /tmp/pc2_bench_ingest]

Generates a manifest with web-like multilingual captions and a few carried columns, writes it as
Parquet, JSONL, CSV and gzipped JSONL/CSV, and times ``prepare`` on each (features: one float16 .npy).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pc2.models.ingest import prepare

WORDS = {
    "en": "a dog cat red blue sofa park street woman man child reads book runs near the old house car".split(),
    "ru": "собака кошка красный синий диван парк улица женщина мужчина ребёнок читает книгу бежит".split(),
    "zh": list("一只猫狗坐在红色蓝色的沙发上公园里女人男人孩子读书跑步旧房子汽车"),
    "ja": list("猫犬が赤い青いソファの上で公園を女性男性子供本読む走る古い家車"),
}


def make_table(n: int, n_images: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    langs = list(WORDS)
    caps = []
    for i in range(n):
        lang = langs[i % 4]
        w = WORDS[lang]
        k = int(rng.integers(5, 14))
        pick = [w[j] for j in rng.integers(0, len(w), k)]
        caps.append(("" if lang in ("zh", "ja") else " ").join(pick))
    return pa.table({
        "pair_id": pa.array([f"img{i // 5}_cap{i % 5}" for i in range(n)]),
        "caption": pa.array(caps),
        "feature_row": pa.array(rng.integers(0, n_images, n)),
        "url": pa.array([f"https://example.com/{i}.jpg" for i in range(n)]),
        "width": pa.array(rng.integers(64, 2048, n)),
    })


def write_all(t: pa.Table, d: Path) -> dict[str, Path]:
    import gzip
    import json

    out = {"parquet": d / "m.parquet", "jsonl": d / "m.jsonl", "csv": d / "m.csv", "jsonl.gz": d / "m.jsonl.gz", "csv.gz": d / "m.csv.gz"}
    pq.write_table(t, out["parquet"])
    rows = t.to_pylist()
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    out["jsonl"].write_bytes(text)
    out["jsonl.gz"].write_bytes(gzip.compress(text, 1))
    pacsv.write_csv(t, out["csv"])
    out["csv.gz"].write_bytes(gzip.compress(out["csv"].read_bytes(), 1))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dir", default="/tmp/pc2_bench_ingest")
    ap.add_argument("--vocab", type=int, default=10_000)
    args = ap.parse_args(argv)
    d = Path(args.dir)
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    n_images = max(1, args.rows // 5)
    feats = d / "feats.npy"
    np.save(feats, np.random.default_rng(0).standard_normal((n_images, 512), dtype=np.float32).astype(np.float16))
    files = write_all(make_table(args.rows, n_images), d)
    print(f"rows={args.rows} images={n_images} vocab={args.vocab}")
    # CPU seconds too: on a shared machine wall time moves with the neighbours, CPU time much less.
    print(f"{'format':<10} {'MB':>7} {'wall s':>8} {'pairs/s':>10} {'cpu s':>8} {'pairs/cpu-s':>12}")
    for name, path in files.items():
        out = d / f"out_{name.replace('.', '_')}"
        t0, c0 = time.perf_counter(), time.process_time()
        r = prepare(path, [feats], out, vocab_size=args.vocab)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        assert r.report["n_pairs"] == args.rows
        print(f"{name:<10} {path.stat().st_size / 1e6:7.1f} {dt:8.2f} {args.rows / dt:10.0f} {dc:8.2f} {args.rows / dc:12.0f}")
        shutil.rmtree(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
