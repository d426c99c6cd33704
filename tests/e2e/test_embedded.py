"""The embedded default: SQLite + file-system broker + a child worker, the same tasks as production."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from .helpers import check_export


def test_upload_train_export_download_embedded(embedded_stack, synth_corpus, quality_config):
    stack = embedded_stack
    assert stack.settings.database_url.startswith("sqlite:///")
    assert stack.settings.embedded_broker
    ds = stack.ready_dataset(synth_corpus)
    assert stack.get(f"/v1/datasets/{ds}").json()["n_pairs"] == 2000
    job_id = stack.post("/v1/jobs", json={"dataset_id": ds, "config": quality_config}).json()["id"]
    job = stack.wait(f"/v1/jobs/{job_id}", ("succeeded", "failed", "cancelled"), timeout=300)
    assert job["status"] == "succeeded", job["error"]
    pairs = stack.get(f"/v1/jobs/{job_id}/pairs", params={"limit": 5000}).json()
    assert [p["idx"] for p in pairs["data"]] == list(range(2000))
    exp = stack.post(f"/v1/jobs/{job_id}/exports", json={"mode": "annotated"}).json()
    exp = stack.wait(f"/v1/exports/{exp['id']}", ("succeeded", "failed"))
    assert exp["status"] == "succeeded", exp["error"]
    dl = stack.get(f"/v1/exports/{exp['id']}/download")
    table, auc = check_export(dl.content, synth_corpus, mode="annotated")
    assert table.num_rows == 2000
    # The per-pair rows in the database agree with the exported file.
    by_idx = {p["idx"]: p for p in pairs["data"]}
    assert [by_idx[i]["label"] for i in range(2000)] == table["label"].to_pylist()
    assert auc >= 0.8, f"detection ROC-AUC {auc:.3f} below 0.8"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pc2_serve_prints_url_and_a_working_local_key(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PC2_")}
    proc = subprocess.Popen([sys.executable, "-m", "pc2.cli", "serve", "--", "--port", str(port), "--data-dir",
                             str(tmp_path / "d")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            text=True, start_new_session=True)
    try:
        lines, key = [], None
        deadline = time.monotonic() + 60
        while not (key and any(x.startswith("worker:") for x in lines)) and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "serve exited early:\n" + "".join(lines)
            lines.append(line)
            if m := re.match(r"\s+(pc2_\S+)\s*$", line):
                key = m.group(1)
        assert key, "".join(lines)
        assert any(f"http://127.0.0.1:{port}" in line for line in lines)
        worker_pid = int(next(re.search(r"pid (\d+)", x).group(1) for x in lines if x.startswith("worker:")))
        base = f"http://127.0.0.1:{port}"
        while True:
            try:
                ready = httpx.get(f"{base}/readyz", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.2)
        assert ready.status_code == 200 and ready.json()["broker"] == "ok"
        assert httpx.get(f"{base}/v1/jobs", headers={"Authorization": f"Bearer {key}"}).json()["count"] == 0
        assert httpx.get(f"{base}/v1/jobs").status_code == 401
        assert (tmp_path / "d" / "local_api_key").read_text().strip() == key
        assert (tmp_path / "d" / "local_api_key").stat().st_mode & 0o077 == 0
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=40)
    # Stopping the server stops its worker child too.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(worker_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("worker child still running after serve stopped")


def test_pc2_worker_command_consumes_the_embedded_queue(tmp_path, small_corpus):
    """`pc2 worker` (not the fixture's direct Celery call) picks up an ingest task."""
    from conftest import Stack, _stack_settings

    stack = Stack(_stack_settings(tmp_path), tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PC2_")}
    log = open(tmp_path / "worker-cli.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "pc2.cli", "worker", "--", "-Q", "cpu", "--data-dir",
                             str(stack.settings.data_dir)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        ds = stack.upload(small_corpus)
        body = stack.wait(f"/v1/datasets/{ds}", ("ready", "failed"), timeout=90)
        assert body["status"] == "ready", body
        assert body["n_pairs"] == 600 and "caption" in body["columns"]
    finally:
        from pc2.service.embedded import stop_worker

        stop_worker(proc)
        assert proc.returncode is not None
        stack.stop()


def test_ingest_failure_is_recorded_with_detail(embedded_stack, tmp_path):
    """Problems only the full scan finds (NaN features) fail the dataset with file and rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    feats = np.ones((4, 2, 8), np.float32)
    feats[2, 1, 3] = np.nan
    np.save(tmp_path / "f.npy", feats)
    pq.write_table(pa.table({"pair_id": list("abcd"), "caption": ["w x", "y", "z z", "q"], "feature_row": [0, 1, 2, 3]}),
                   tmp_path / "m.parquet")
    with open(tmp_path / "m.parquet", "rb") as m, open(tmp_path / "f.npy", "rb") as f:
        r = embedded_stack.post("/v1/datasets", data={"name": "nan"},
                                files=[("manifest", ("m.parquet", m)), ("features", ("f.npy", f))])
    assert r.status_code == 202
    body = embedded_stack.wait(f"/v1/datasets/{r.json()['id']}", ("ready", "failed"), timeout=60)
    assert body["status"] == "failed"
    assert body["error"]["error"] == "features" and body["error"]["rows"] == [2]
    assert "NaN" in body["error"]["message"]
    r = embedded_stack.post("/v1/jobs", json={"dataset_id": body["id"], "config": {}})
    assert r.status_code == 409


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    from pc2.service.demo import run_demo

    assert run_demo(["--pairs", "400", "--epochs", "2", "--data-dir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "detection ROC-AUC" in out and "estimated noise rate" in out
    assert re.search(r"API key pc2_\S+", out)
    assert (tmp_path / "demo" / "synth" / "recaptioned.parquet").is_file()
