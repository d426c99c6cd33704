"""Index build time, batch throughput, single-query latency and IVF recall on seeded clustered vectors.

    python benchmarks/bench_index.py                      # n = 100k and 1M, d = 256
    python benchmarks/bench_index.py --sizes 20000 --dim 64

For each n: exact flat search, the ``auto`` choice of :func:`pc2.models.index.build` and, where
``auto`` is still exact, a forced IVF build so its recall is measured at every size. Recall@10 is
against the flat index's results on the same queries. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import resource
import time

import faiss
import numpy as np

from pc2.models import index as fx


def clustered(n: int, d: int, *, clusters: int, spread: float, seed: int, block: int = 100_000) -> np.ndarray:
    """Unit vectors scattered around ``clusters`` random centres, generated block by block."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d), dtype=np.float32)
    x = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, block):
        m = min(block, n - start)
        x[start : start + m] = centres[rng.integers(0, clusters, m)]
        x[start : start + m] += spread * rng.standard_normal((m, d), dtype=np.float32)
    return fx.normalize(x)


def describe(index: faiss.Index) -> tuple[str, float]:
    """-> (short kind, MB of stored codes)."""
    try:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        codec = "SQ8" if isinstance(ivf, faiss.IndexIVFScalarQuantizer) else "PQ"
        return f"IVF{ivf.nlist},{codec} nprobe={ivf.nprobe}", index.ntotal * ivf.code_size / 1e6
    except RuntimeError:
        return "Flat", index.ntotal * index.d * 4 / 1e6


def measure(index: faiss.Index, xq: np.ndarray, k: int, n_single: int) -> tuple[float, float, np.ndarray]:
    """-> (batch queries/s, p99 single-query latency in ms, batch result ids)."""
    fx.search(index, xq[:8], k)  # warm caches and thread pool
    t = time.perf_counter()
    _, I = fx.search(index, xq, k)
    qps = len(xq) / (time.perf_counter() - t)
    lat = []
    for q in xq[:n_single]:
        t = time.perf_counter()
        fx.search(index, q, k)
        lat.append(time.perf_counter() - t)
    return qps, float(np.percentile(lat, 99)) * 1e3, I


def run(n: int, args: argparse.Namespace, sweep: list[dict]) -> list[dict]:
    x = clustered(n + args.queries, args.dim, clusters=args.clusters, spread=args.spread, seed=args.seed)
    xb, xq = x[:n], x[n:]  # queries: fresh draws from the same distribution
    rows = []
    I_ref = None
    configs = [("flat", {"kind": "flat"}), ("auto", {"kind": "auto"})]
    if n <= args.exact_max:
        configs.append(("ivf (forced)", {"kind": "ivf"}))
    for label, kw in configs:
        t = time.perf_counter()
        index = fx.build(xb, exact_max=args.exact_max, seed=args.seed, use_gpu=False, **kw)
        build_s = time.perf_counter() - t
        # single-query latency on a flat index is one full scan; fewer samples keep the run short
        n_single = args.single if "IVF" in describe(index)[0] else min(args.single, args.single_flat)
        qps, p99, I = measure(index, xq, args.k, n_single)
        if I_ref is None:
            I_ref = I
        kind, mb = describe(index)
        rows.append(
            dict(
                n=n, config=label, kind=kind, build_s=build_s, qps=qps, p99_ms=p99,
                n_single=n_single, recall=fx.recall_at_k(I, I_ref), mb=mb,
            )
        )
        print(f"  done n={n} {label}: {kind} build {build_s:.1f}s", flush=True)
        if "IVF" in kind and args.sweep:
            for nprobe in args.sweep:
                t = time.perf_counter()
                _, I = fx.search(index, xq, args.k, nprobe=nprobe)
                sweep.append(dict(n=n, nprobe=nprobe, qps=len(xq) / (time.perf_counter() - t),
                                  recall=fx.recall_at_k(I, I_ref)))
        del index
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--queries", type=int, default=1000, help="batch queries (throughput and recall)")
    p.add_argument("--single", type=int, default=300, help="single queries timed for p99 latency")
    p.add_argument("--single-flat", type=int, default=100, help="cap on single queries for flat indexes")
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--spread", type=float, default=0.6, help="noise std around each unit-variance centre")
    p.add_argument("--exact-max", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sweep", type=int, nargs="*", default=[16, 32, 64, 128, 256],
                   help="also time IVF batch search at these nprobe values")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    rows, sweep = [], []
    for n in args.sizes:
        rows += run(n, args, sweep)
    print()
    print(f"d={args.dim}, k={args.k}, {args.queries} batch queries, faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} threads")
    print()
    print("| n | config | index | build s | batch q/s | p99 single ms (of N) | recall@10 vs flat | codes MB |")
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['n']:,} | {r['config']} | {r['kind']} | {r['build_s']:.1f} | {r['qps']:,.0f} | "
            f"{r['p99_ms']:.2f} ({r['n_single']}) | {r['recall']:.3f} | {r['mb']:.0f} |"
        )
    if sweep:
        print("\n| n | IVF nprobe | batch q/s | recall@10 vs flat |\n|---:|---:|---:|---:|")
        for r in sweep:
            print(f"| {r['n']:,} | {r['nprobe']} | {r['qps']:,.0f} | {r['recall']:.3f} |")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\ntotal {time.perf_counter() - t0:.0f} s, peak RSS {peak:,.0f} MB")


if __name__ == "__main__":
    main()
