"""Weight-free grid features, and the source policy that decides which image URIs may be read."""

from __future__ import annotations

import http.server
import io
import threading

import fsspec
import numpy as np
import pytest
from PIL import Image

from pc2.models.errors import SourceError
from pc2.models.extract import ClipExtractor, GridExtractor, ImageDecodeError, SourcePolicy, check_uri, open_uri


def png_bytes(w: int = 61, h: int = 47, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    x = np.zeros((h, w, 3), np.uint8)
    x[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]  # horizontal red ramp
    x[..., 2] = rng.integers(0, 255, (h, w), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="PNG")
    return buf.getvalue()


def test_grid_extractor_shape_and_determinism():
    ex = GridExtractor(grid=6, bins=8, orient_bins=8)
    a, b = ex(png_bytes()), ex(png_bytes())
    assert a.shape == (36, 32) == (ex.regions, ex.dim) and a.dtype == np.float32
    assert np.array_equal(a, b)
    np.testing.assert_allclose(a[:, :24].sum(1), 3.0, rtol=1e-5)  # three L1-normalised colour histograms
    np.testing.assert_allclose(np.linalg.norm(a[:, 24:], axis=1), 1.0, rtol=1e-5)
    assert not np.array_equal(a, ex(png_bytes(seed=1)))


def test_grid_extractor_sees_layout():
    ex = GridExtractor(grid=2, bins=4, orient_bins=4)
    x = np.zeros((40, 40, 3), np.uint8)
    x[:, 20:, 0] = 255  # right half red
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="PNG")
    f = ex(buf.getvalue())
    red_top_bin = f[:, 3]  # red channel, highest bin
    assert red_top_bin[[1, 3]].min() > 0.9 and red_top_bin[[0, 2]].max() < 0.1


def test_grid_extractor_rejects_non_images():
    with pytest.raises(ImageDecodeError):
        GridExtractor()(b"definitely not an image")


def test_local_paths_confined_to_roots(tmp_path):
    root, outside = tmp_path / "imgs", tmp_path / "private"
    root.mkdir()
    outside.mkdir()
    (root / "a.png").write_bytes(png_bytes())
    (outside / "s.png").write_bytes(b"secret")
    (root / "link.png").symlink_to(outside / "s.png")
    policy = SourcePolicy(allowed_roots=[str(root)], base_dir=str(tmp_path))
    assert open_uri("imgs/a.png", policy) == png_bytes()
    assert open_uri(f"file://{root / 'a.png'}", policy) == png_bytes()
    for uri in ("imgs/../private/s.png", str(outside / "s.png"), "imgs/link.png", "/etc/passwd", f"file://{outside / 's.png'}"):
        with pytest.raises(SourceError, match="outside the allowed roots"):
            open_uri(uri, policy)
    with pytest.raises(SourceError, match="no local roots"):
        check_uri("imgs/a.png", SourcePolicy(base_dir=str(tmp_path)))


def test_size_cap(tmp_path):
    (tmp_path / "big.bin").write_bytes(b"x" * 1000)
    with pytest.raises(SourceError, match="at most 999 bytes"):
        open_uri(str(tmp_path / "big.bin"), SourcePolicy(allowed_roots=[str(tmp_path)], max_bytes=999))


def test_fsspec_schemes_only_when_listed():
    fs = fsspec.filesystem("memory")
    fs.pipe("/imgs/a.png", png_bytes())
    fs.pipe("/other/b.png", b"no")
    policy = SourcePolicy(allowed_roots=["memory://imgs"])
    assert open_uri("memory://imgs/a.png", policy) == png_bytes()
    for uri in ("memory://other/b.png", "memory://imgs/../other/b.png", "memory://imgsX/a.png", "s3://bucket/a.png"):
        with pytest.raises(SourceError, match="outside the allowed roots"):
            open_uri(uri, policy)


def test_http_rules():
    with pytest.raises(SourceError, match="disabled"):
        check_uri("https://example.com/a.jpg", SourcePolicy())
    on = SourcePolicy(allow_http=True, http_hosts=["*.example.com", "localhost"])
    with pytest.raises(SourceError, match="not in the http allowlist"):
        check_uri("https://evil.test/a.jpg", on)
    with pytest.raises(SourceError, match="private/loopback"):
        check_uri("http://localhost:9/a.jpg", on)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest")
            self.end_headers()
            return
        body = png_bytes() if self.path == "/a.png" else b"y" * 60_000
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_http_fetch_with_private_allowed(server):
    policy = SourcePolicy(allow_http=True, http_hosts=["127.0.0.1"], allow_private=True, max_bytes=50_000, timeout_s=5)
    assert open_uri(f"{server}/a.png", policy) == png_bytes()
    with pytest.raises(SourceError, match="larger than the cap"):
        open_uri(f"{server}/big", policy)
    with pytest.raises(SourceError, match="redirects"):
        open_uri(f"{server}/redirect", policy)
    with pytest.raises(SourceError, match="private/loopback"):
        open_uri(f"{server}/a.png", SourcePolicy(allow_http=True, http_hosts=["127.0.0.1"]))


def test_clip_extractor_is_an_explicit_extension_point(tmp_path):
    try:
        import open_clip  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="open_clip_torch"):
            ClipExtractor(tmp_path / "weights.bin")
    else:
        with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
            ClipExtractor(tmp_path / "weights.bin")
