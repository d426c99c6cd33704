"""Pieces the end-to-end tests share: a webhook receiver and checks on a downloaded export."""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow.parquet as pq
from sklearn.metrics import roc_auc_score

RESULT_COLUMNS = ["confidence", "label", "pseudo_class", "pseudo_caption", "pseudo_caption_source",
                  "pseudo_caption_score", "duplicate_of"]


class WebhookReceiver:
    """A local HTTP endpoint that answers 500 to the first ``fail_first`` calls, then 200."""

    def __init__(self, fail_first: int = 0):
        self.calls: list[dict] = []
        self.fail_first = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.calls.append({"body": body, "signature": self.headers.get("X-PC2-Signature")})
                self.send_response(500 if len(outer.calls) <= outer.fail_first else 200)
                self.end_headers()

            def log_message(self, *args):  # keep test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def check_export(content: bytes, corpus, *, mode: str) -> tuple[object, float]:
    """Every manifest column + result columns, one row per pair; returns (table, ROC-AUC)."""
    table = pq.read_table(io.BytesIO(content))
    manifest = pq.read_table(corpus.manifest_path)
    extra = ["final_caption"] if mode == "recaptioned" else []
    assert table.column_names == manifest.column_names + RESULT_COLUMNS + extra
    truth = pq.read_table(corpus.truth_path)
    noisy_by_id = dict(zip(truth["pair_id"].to_pylist(), truth["noisy"].to_pylist()))
    if mode == "annotated":
        assert table.num_rows == manifest.num_rows
        assert table["pair_id"].to_pylist() == manifest["pair_id"].to_pylist()
        for name in manifest.column_names:  # carried through unchanged
            assert table[name].to_pylist() == manifest[name].to_pylist(), name
    noisy = np.array([noisy_by_id[p] for p in table["pair_id"].to_pylist()])
    conf = table["confidence"].to_numpy()
    assert np.all((conf >= 0) & (conf <= 1))
    auc = roc_auc_score(~noisy, conf) if 0 < noisy.sum() < len(noisy) else float("nan")
    return table, float(auc)


def decode(call: dict) -> dict:
    return json.loads(call["body"])
