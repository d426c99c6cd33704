"""End-to-end demo on the embedded default, through the real HTTP API.

Generates a synthetic corpus with known noise, starts the server and a worker, uploads, trains,
exports ``recaptioned``, downloads and verifies the Parquet, and prints how well noise was found.
"""

from __future__ import annotations

import argparse
import hashlib
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# A small concept world and a short schedule: a couple of minutes on two CPU cores.
DEMO_CONFIG: dict[str, Any] = {"epochs": 4, "warmup_epochs": 2, "embed_dim": 128, "word_dim": 128,
                               "num_classes": 32, "batch_size": 32, "lr": 3e-3}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pc2 demo", description="Synthetic corpus -> API -> PC² job -> export, "
                                "on the embedded default (SQLite, embedded broker, child worker).")
    p.add_argument("--pairs", type=int, default=2000)
    p.add_argument("--noise", type=float, default=0.3, help="fraction of mismatched pairs")
    p.add_argument("--epochs", type=int, help=f"override epochs (default {DEMO_CONFIG['epochs']})")
    p.add_argument("--data-dir", help="where the server keeps its state (default: a new temp dir)")
    p.add_argument("--port", type=int, default=0, help="0 = any free port")
    p.add_argument("--keep", action="store_true", help="leave the server running until Ctrl-C")
    p.add_argument("--seed", type=int, default=0)
    return p


def run_demo(argv: list[str]) -> int:
    args = _parser().parse_args(argv[1:] if argv[:1] == ["--"] else argv)
    import httpx

    from pc2.models import synth
    from pc2.service.core.config import Settings
    from pc2.service.embedded import ServerThread, bootstrap, start_worker, stop_worker

    data_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="pc2-demo-"))
    settings = Settings(DATA_DIR=data_dir, EMBEDDED=True, PROGRESS_INTERVAL_S=0.5)
    print(f"1/6 synthetic corpus: {args.pairs} pairs, {args.noise:.0%} noise", flush=True)
    corpus = synth.generate(data_dir / "synth", n_pairs=args.pairs, noise_rate=args.noise, regions=8, dim=32,
                            n_test=0, seed=args.seed, n_concepts=20, n_scenes=8, languages=("en",))
    key = bootstrap(settings)[0]
    log = open(data_dir / "worker.log", "ab")
    worker = start_worker(settings, stdout=log, stderr=log)
    server = ServerThread(settings, port=args.port)
    url = server.start()
    print(f"2/6 server {url} (docs {url}/docs), worker pid {worker.pid}", flush=True)
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
            summary = _flow(client, corpus, args)
        _print_summary(summary, url, key, data_dir)
        if args.keep:
            print("server and worker keep running; Ctrl-C to stop", flush=True)
            stop = threading.Event()
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            stop.wait()
        return 0
    finally:
        server.stop()
        stop_worker(worker)


def _wait(client, path: str, done: tuple[str, ...], timeout: float = 3600) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while (body := client.get(path).raise_for_status().json())["status"] not in done:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} still {body['status']}")
        time.sleep(0.3)
    return body


def _flow(client, corpus, args) -> dict:  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    with open(corpus.manifest_path, "rb") as m, open(corpus.features_path, "rb") as f:
        ds = client.post("/v1/datasets", data={"name": "demo"},
                         files=[("manifest", ("manifest.parquet", m)), ("features", ("features.npy", f))])
    ds.raise_for_status()
    ds = _wait(client, f"/v1/datasets/{ds.json()['id']}", ("ready", "failed"))
    if ds["status"] != "ready":
        raise RuntimeError(f"ingest failed: {ds['error']}")
    print(f"3/6 dataset {ds['id']} ready: {ds['n_pairs']} pairs", flush=True)

    config = dict(DEMO_CONFIG, **({"epochs": args.epochs, "warmup_epochs": min(2, args.epochs)} if args.epochs else {}))
    job = client.post("/v1/jobs", json={"dataset_id": ds["id"], "config": config}).raise_for_status().json()
    with tqdm(total=1000, desc="4/6 training", unit="‰", bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}") as bar:
        while job["status"] in ("queued", "running"):
            time.sleep(0.5)
            job = client.get(f"/v1/jobs/{job['id']}").raise_for_status().json()
            bar.update(int(job["progress"] * 1000) - bar.n)
            bar.set_postfix_str(f"{job['phase'] or job['status']} epoch {job['epoch'] or 0}/{job['epochs']}")
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job['status']}: {job['error']}")

    exp = client.post(f"/v1/jobs/{job['id']}/exports", json={"mode": "recaptioned"}).raise_for_status().json()
    exp = _wait(client, f"/v1/exports/{exp['id']}", ("succeeded", "failed"))
    out = Path(corpus.out_dir) / "recaptioned.parquet"
    digest = hashlib.sha256()
    with client.stream("GET", f"/v1/exports/{exp['id']}/download") as resp, open(out, "wb") as fh:
        resp.raise_for_status()
        for chunk in resp.iter_bytes():
            fh.write(chunk)
            digest.update(chunk)
    if digest.hexdigest() != resp.headers["x-content-sha256"]:
        raise RuntimeError("downloaded export does not match its X-Content-SHA256")
    print(f"5/6 export {exp['id']} ({exp['n_rows']} rows, {exp['size_bytes']} bytes) -> {out}", flush=True)
    return {"job": job, "export": exp, "path": out, "confidence": _all_confidences(client, job["id"]),
            "corpus": corpus}


def _all_confidences(client, job_id: str) -> dict[str, float]:  # type: ignore[no-untyped-def]
    out: dict[str, float] = {}
    after = None
    while True:
        params = {"limit": 5000} | ({"after": after} if after is not None else {})
        page = client.get(f"/v1/jobs/{job_id}/pairs", params=params).raise_for_status().json()
        out.update({p["pair_id"]: p["confidence"] for p in page["data"]})
        if (after := page["next_after"]) is None:
            return out


def _print_summary(summary: dict, url: str, key: str | None, data_dir: Path) -> None:
    import numpy as np
    import pyarrow.parquet as pq
    from sklearn.metrics import roc_auc_score

    truth = pq.read_table(summary["corpus"].truth_path)
    ids, noisy = truth["pair_id"].to_pylist(), np.array(truth["noisy"].to_pylist())
    conf = np.array([summary["confidence"][i] for i in ids])
    table = pq.read_table(summary["path"])
    m = summary["job"]["metrics"]
    print("6/6 summary")
    print(f"  pairs                 {m['n_pairs']}")
    print(f"  true noise rate       {noisy.mean():.3f}")
    print(f"  estimated noise rate  {m['noise_rate']:.3f}")
    print(f"  detection ROC-AUC     {roc_auc_score(~noisy, conf):.3f}")
    print(f"  recaptioned rows      {table.num_rows} (noisy rows given a pseudo-caption: "
          f"{int(sum(1 for x in table['label'].to_pylist() if x == 'noisy'))})")
    print(f"  training time         {m.get('seconds', 0):.1f} s")
    print(f"server {url}   API key {key}   data dir {data_dir}")


if __name__ == "__main__":
    sys.exit(run_demo(sys.argv[1:]))
