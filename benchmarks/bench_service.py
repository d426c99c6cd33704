"""Service benchmarks: result rows written to Postgres (COPY), Parquet export rows/s, and
GET /v1/jobs/{id} latency under concurrent clients.

    python benchmarks/bench_service.py                # 1,000,000 rows, 50 clients x 20 s
    python benchmarks/bench_service.py --rows 200000 --seconds 5 --clients 20

Needs PostgreSQL on 127.0.0.1:5432 (trust auth, user postgres); a throwaway database is created
and dropped. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def annotated_table(n: int, seed: int = 0) -> pa.Table:
    """Manifest + result columns shaped like a real job's output."""
    rng = np.random.default_rng(seed)
    conf = rng.random(n).astype(np.float32)
    noisy = conf < 0.3
    ids = pa.array([f"p{i:08d}" for i in range(n)])
    src = pa.array([f"p{j:08d}" if m else None for j, m in zip(rng.integers(0, n, n).tolist(), noisy.tolist())])
    return pa.table({
        "pair_id": ids,
        "caption": pa.array([f"a photo of thing {i % 977} on a table" for i in range(n)]),
        "image_uri": pa.array([f"s3://bucket/img/{i:08d}.jpg" for i in range(n)]),
        "feature_row": pa.array(np.arange(n, dtype=np.int64)),
        "confidence": pa.array(conf),
        "label": pa.array(np.where(noisy, "noisy", "clean")),
        "pseudo_class": pa.array(rng.integers(0, 128, n)),
        "pseudo_caption": pa.array([f"pseudo caption {i % 501}" if m else None for i, m in enumerate(noisy.tolist())]),
        "pseudo_caption_source": src,
        "pseudo_caption_score": pa.array(np.where(noisy, rng.random(n), np.nan).astype(np.float32), mask=~noisy),
    })


def _database() -> str:
    import psycopg

    name = f"pc2_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def _drop(name: str) -> None:
    import psycopg

    from pc2.service.core.db import reset_engines

    reset_engines()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _job_row(url: str) -> str:
    from pc2.service.core.db import session_scope
    from pc2.service.models import Dataset, Job, Team

    with session_scope(url) as s:
        team = Team(name=f"bench-{uuid.uuid4().hex[:6]}")
        s.add(team)
        s.flush()
        ds = Dataset(team_id=team.id, name="bench", status="ready", source="upload", manifest_uri="m",
                     feature_uris=[], artifact_prefix="p")
        s.add(ds)
        s.flush()
        job = Job(team_id=team.id, dataset_id=ds.id, config={}, status="succeeded", progress=1.0)
        s.add(job)
        s.flush()
        return job.id


def bench_db_writes(url: str, table: pa.Table, repeats: int) -> dict:
    from pc2.service.core.db import session_scope
    from pc2.service.results_db import replace_pair_results

    job = _job_row(url)
    times = []
    for _ in range(repeats):  # each repeat replaces the previous rows (delete + bulk insert)
        t0 = time.perf_counter()
        with session_scope(url) as s:
            replace_pair_results(s, job, table)
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"rows": table.num_rows, "seconds_best": round(best, 3), "rows_per_s": round(table.num_rows / best)}


def bench_export(table: pa.Table, tmp: Path) -> dict:
    from pc2.workers.export import write_export

    src = tmp / "source.parquet"
    pq.write_table(table, src, compression="zstd")
    out = {}
    for mode in ("annotated", "filtered", "recaptioned"):
        dst = tmp / f"export-{mode}.parquet"
        t0 = time.perf_counter()
        rows, size, _ = write_export(src, dst, mode, {})
        dt = time.perf_counter() - t0
        out[mode] = {"rows_in": table.num_rows, "rows_out": rows, "bytes": size, "seconds": round(dt, 3),
                     "rows_per_s": round(table.num_rows / dt)}
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _load(base: str, path: str, key: str, clients: int, seconds: float) -> list[float]:
    """``clients`` independent keep-alive clients, each looping GET ``path`` until time is up.

    One ``httpx.AsyncClient`` per simulated client: a single shared client's connection pool
    becomes the bottleneck at ~50 connections and would measure httpx instead of the server.
    """
    import httpx

    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def one() -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30,
                                     limits=httpx.Limits(max_connections=1)) as client:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                r = await client.get(path)
                if r.status_code != 200:
                    errors += 1
                latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(one() for _ in range(clients)))
    if errors:
        raise RuntimeError(f"{errors} requests failed")
    return latencies


async def _load_raw(port: int, path: str, key: str, clients: int, seconds: float) -> list[float]:
    """The same load from minimal asyncio HTTP/1.1 keep-alive clients: shows what the server does
    when the load generator (sharing these CPUs) costs almost nothing."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\r\n".encode()

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                writer.write(request)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(head[:100])
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(clients)))
    return latencies


def _summary(lat: list[float], clients: int, seconds: float) -> dict:
    q = np.percentile(np.array(lat) * 1000, [50, 90, 99])
    return {"clients": clients, "seconds": seconds, "requests": len(lat), "req_per_s": round(len(lat) / seconds, 1),
            "p50_ms": round(float(q[0]), 2), "p90_ms": round(float(q[1]), 2), "p99_ms": round(float(q[2]), 2),
            "mean_ms": round(statistics.fmean(lat) * 1000, 2)}


def bench_get_job(url: str, tmp: Path, clients: int, seconds: float) -> dict:
    from pc2.service.core.db import session_scope
    from pc2.service.core.security import create_key
    from pc2.service.models import Job

    job = _job_row(url)
    with session_scope(url) as s:
        team_id = s.get(Job, job).team_id
        from pc2.service.models import Team

        _, key = create_key(s, team_name=s.get(Team, team_id).name)
    port = _free_port()
    env = {**os.environ, "PC2_DATABASE_URL": url, "PC2_DATA_DIR": str(tmp / "api"), "PC2_EMBEDDED": "false",
           "PC2_BROKER_URL": "redis://127.0.0.1:6379/12"}
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "pc2.service.main:app_from_env",
                               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/healthz", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        out = {"httpx_async": _summary(asyncio.run(_load(base, f"/v1/jobs/{job}", key, clients, seconds)),
                                       clients, seconds),
               "raw_asyncio": _summary(asyncio.run(_load_raw(port, f"/v1/jobs/{job}", key, clients, seconds)),
                                       clients, seconds)}
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:  # graceful shutdown waits on idle keep-alive sockets
            server.kill()
            server.wait()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--skip-http", action="store_true")
    args = p.parse_args(argv)
    from pc2.service.core.migrate import upgrade

    table = annotated_table(args.rows)
    name = _database()
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    result: dict = {"rows": args.rows, "cpus": os.cpu_count()}
    try:
        upgrade(url)
        with tempfile.TemporaryDirectory() as tmp:
            sqlite_url = f"sqlite:///{Path(tmp) / 'bench.db'}"
            upgrade(sqlite_url)
            result["db_write_postgres_copy"] = bench_db_writes(url, table, args.repeats)
            result["db_write_sqlite_executemany"] = bench_db_writes(sqlite_url, table, 1)
            result["parquet_export"] = bench_export(table, Path(tmp))
            if not args.skip_http:
                result["get_job_latency"] = bench_get_job(url, Path(tmp), args.clients, args.seconds)
    finally:
        _drop(name)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
