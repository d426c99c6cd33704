"""Image features for manifests that bring images instead of features, and the rules for reading them.

``open_uri`` is the only way ingest reads an ``image_uri``: a manifest is user data, so a URI in it must
not reach files or hosts the operator did not allow (``/etc/passwd``, ``../../secrets``, a symlink out
of the upload dir, ``http://169.254.169.254/``). ``GridExtractor`` turns an image into ``[R, D]`` region
descriptors with Pillow and numpy alone, so a corpus without features can be curated with no model
weights; a CLIP-style extractor over local weights is an optional extra.
"""

from __future__ import annotations

import io
import ipaddress
import os
import socket
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from pc2.models.errors import SourceError

LOCAL_SCHEMES = ("", "file")
HTTP_SCHEMES = ("http", "https")


@dataclass
class SourcePolicy:
    """Where image URIs may be read from.

    ``allowed_roots`` holds local directories and fsspec URL prefixes (``s3://bucket/imgs/``,
    ``memory://imgs``); a URI is readable only under one of them. http(s) needs ``allow_http`` and a
    host in ``http_hosts`` (``"*.example.com"`` matches subdomains) whose DNS addresses are public unless
    ``allow_private``. ``base_dir`` anchors relative paths (ingest uses the manifest's folder).
    """

    allowed_roots: list[str] = field(default_factory=list)
    allow_http: bool = False
    http_hosts: list[str] = field(default_factory=list)
    timeout_s: float = 10.0
    max_bytes: int = 20_000_000
    allow_private: bool = False
    base_dir: str | None = None


def _scheme(uri: str) -> str:
    # "C:\\x" style drive letters are not schemes; neither is a plain relative path.
    head, sep, _ = uri.partition("://")
    return head.lower() if sep and head.isalnum() and len(head) > 1 else ""


def _local_path(uri: str, policy: SourcePolicy) -> str:
    path = urllib.parse.unquote(urllib.parse.urlparse(uri).path) if _scheme(uri) == "file" else uri
    if not os.path.isabs(path):
        path = os.path.join(policy.base_dir or os.getcwd(), path)
    # realpath follows symlinks, so a link inside a root that points outside it is judged by its target.
    return os.path.realpath(path)


def _under(path: str, root: str) -> bool:
    root = os.path.realpath(root)
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives
        return False


def _host_allowed(host: str, patterns: list[str]) -> bool:
    host = host.lower().rstrip(".")
    for p in patterns:
        p = p.lower().rstrip(".")
        if host == p or (p.startswith("*.") and host.endswith(p[1:])):
            return True
    return False


def _public_addresses(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as e:
        raise SourceError(f"host '{host}' does not resolve ({e})", expected="a resolvable host") from None
    return sorted({info[4][0] for info in infos})


def _is_private(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast or ip.is_unspecified


def check_uri(uri: str, policy: SourcePolicy) -> str:
    """Raise ``SourceError`` unless ``uri`` may be read under ``policy``; returns the resolved location.

    Cheap (no reads, but a DNS lookup for http), so ingest checks every URI before fetching any.
    """
    scheme = _scheme(uri)
    if scheme in LOCAL_SCHEMES:
        path = _local_path(uri, policy)
        local_roots = [r for r in policy.allowed_roots if _scheme(r) in LOCAL_SCHEMES]
        roots = [_local_path(r, SourcePolicy()) for r in local_roots]
        if not any(_under(path, r) for r in roots):
            raise SourceError(
                f"path '{uri}' is outside the allowed roots", expected=f"a file under one of {local_roots or '[] (no local roots allowed)'}"
            )
        return path
    if scheme in HTTP_SCHEMES:
        if not policy.allow_http:
            raise SourceError(f"http(s) URI '{uri}' but fetching over http is disabled", expected="a local path or allow_http=True")
        parts = urllib.parse.urlsplit(uri)
        host = parts.hostname or ""
        if not _host_allowed(host, policy.http_hosts):
            raise SourceError(f"host '{host}' is not in the http allowlist", expected=f"one of {policy.http_hosts}")
        if not policy.allow_private:
            port = parts.port or (443 if scheme == "https" else 80)
            bad = [a for a in _public_addresses(host, port) if _is_private(a)]
            if bad:
                raise SourceError(f"host '{host}' resolves to private/loopback address {bad[0]}", expected="a public address")
        return uri
    norm = uri.rstrip("/")
    for root in policy.allowed_roots:
        if _scheme(root) == scheme:
            r = root.rstrip("/")
            # Compare whole path segments and refuse dot-segments so "s3://b/imgs/../x" cannot climb out.
            if (norm == r or norm.startswith(r + "/")) and ".." not in uri.split("/"):
                return uri
    raise SourceError(f"URI '{uri}' is outside the allowed roots", expected=f"a URI under one of {policy.allowed_roots}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # a redirect would dodge the host check
        raise SourceError(f"'{req.full_url}' redirects to '{newurl}'", expected="a URI that serves the image directly")


def open_uri(uri: str, policy: SourcePolicy) -> bytes:
    """Read the bytes at ``uri`` if ``policy`` allows it, never more than ``policy.max_bytes``."""
    where = check_uri(uri, policy)
    scheme = _scheme(uri)
    cap = int(policy.max_bytes)
    if scheme in LOCAL_SCHEMES:
        try:
            size = os.stat(where).st_size
            if size > cap:
                raise SourceError(f"'{uri}' is {size} bytes", expected=f"at most {cap} bytes")
            with open(where, "rb") as f:
                data = f.read(cap + 1)
        except OSError as e:
            raise SourceError(f"cannot read '{uri}': {e.strerror}", expected="a readable file") from None
    elif scheme in HTTP_SCHEMES:
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(urllib.request.Request(uri, headers={"User-Agent": "pc2-curate"}), timeout=policy.timeout_s) as r:
                data = r.read(cap + 1)
        except SourceError:
            raise
        except Exception as e:  # timeouts, HTTP errors, resets: all the user's URI, none our bug
            raise SourceError(f"cannot fetch '{uri}': {e}", expected="a reachable URI") from None
    else:
        import fsspec

        try:
            with fsspec.open(uri, "rb") as f:
                data = f.read(cap + 1)
        except Exception as e:
            raise SourceError(f"cannot read '{uri}': {e}", expected="a readable object") from None
    if len(data) > cap:
        raise SourceError(f"'{uri}' is larger than the cap", expected=f"at most {cap} bytes")
    return data


class Extractor(Protocol):
    """Image bytes -> float32 ``(regions, dim)`` descriptors."""

    regions: int
    dim: int

    def __call__(self, data: bytes) -> np.ndarray: ...


class ImageDecodeError(ValueError):
    pass


def _decode_rgb(data: bytes):
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))
        im.draft("RGB", (512, 512))  # JPEG: decode at reduced size, far faster for big photos
        return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageDecodeError(str(e)) from None


@dataclass
class GridExtractor:
    """Per cell of a ``grid x grid`` split: one colour histogram per RGB channel (each L1) and a gradient-orientation
    histogram weighted by magnitude (L2), concatenated -> ``R = grid²`` regions of ``D = 3·bins + orient_bins``.

    Weak next to a trained encoder, but deterministic, weight-free and enough for the co-divide to see
    which captions fit which pictures when images are visually distinct.
    """

    grid: int = 6
    bins: int = 8
    orient_bins: int = 8
    cell_px: int = 16  # each cell is resampled to this size first, which fixes cost per image

    @property
    def regions(self) -> int:
        return self.grid * self.grid

    @property
    def dim(self) -> int:
        return 3 * self.bins + self.orient_bins

    def __call__(self, data: bytes) -> np.ndarray:
        from PIL import Image

        side = self.grid * self.cell_px
        im = _decode_rgb(data).resize((side, side), Image.BILINEAR)
        x = np.asarray(im, dtype=np.float32) / 255.0  # (H, W, 3)
        g, c = self.grid, self.cell_px
        cells = x.reshape(g, c, g, c, 3).transpose(0, 2, 1, 3, 4).reshape(g * g, c * c, 3)  # (R, P, 3)

        # Colour: one histogram per channel per cell, via a bin index and bincount over (cell, channel, bin).
        b = np.minimum((cells * self.bins).astype(np.int64), self.bins - 1)  # (R, P, 3)
        key = (np.arange(g * g)[:, None, None] * 3 + np.arange(3)[None, None, :]) * self.bins + b
        colour = np.bincount(key.ravel(), minlength=g * g * 3 * self.bins).reshape(g * g, 3, self.bins).astype(np.float32)
        colour = (colour / np.maximum(colour.sum(2, keepdims=True), 1e-12)).reshape(g * g, 3 * self.bins)

        gray = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        gy, gx = np.gradient(gray)
        mag = np.hypot(gx, gy)
        ang = np.mod(np.arctan2(gy, gx), np.pi)  # unsigned: an edge and its reverse are the same edge
        ob = np.minimum((ang / np.pi * self.orient_bins).astype(np.int64), self.orient_bins - 1)
        ob = ob.reshape(g, c, g, c).transpose(0, 2, 1, 3).reshape(g * g, c * c)
        mg = mag.reshape(g, c, g, c).transpose(0, 2, 1, 3).reshape(g * g, c * c)
        key = np.arange(g * g)[:, None] * self.orient_bins + ob
        orient = np.bincount(key.ravel(), weights=mg.ravel(), minlength=g * g * self.orient_bins)
        orient = orient.reshape(g * g, self.orient_bins).astype(np.float32)
        orient /= np.maximum(np.linalg.norm(orient, axis=1, keepdims=True), 1e-12)
        return np.concatenate([colour, orient], axis=1).astype(np.float32)


class ClipExtractor:
    """Extension point: global embeddings from a CLIP-style model loaded from a *local* weights file.

    Needs the optional ``open_clip_torch`` package; nothing is ever downloaded — ``weights_path`` must be
    a checkpoint already on disk. Produces ``R = 1`` region of the model's embedding width.
    """

    def __init__(self, weights_path: str | os.PathLike, arch: str = "ViT-B-32", device: str = "cpu"):
        try:
            import open_clip  # type: ignore[import-not-found]
        except ImportError:
            raise ImportError(
                "ClipExtractor needs the optional package 'open_clip_torch' (pip install open_clip_torch); "
                "use GridExtractor, or supply precomputed features with feature_row / image_embedding"
            ) from None
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"CLIP weights '{path}' not found; pass a local checkpoint file (nothing is downloaded)")
        import torch

        self._torch = torch
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(path), device=device)
        self.model.eval()
        self.device = device
        self.regions = 1
        self.dim = int(self.model.visual.output_dim)

    def __call__(self, data: bytes) -> np.ndarray:
        with self._torch.no_grad():
            x = self.preprocess(_decode_rgb(data)).unsqueeze(0).to(self.device)
            v = self.model.encode_image(x).float()
            v = v / v.norm(dim=-1, keepdim=True)
        return v.cpu().numpy().reshape(1, self.dim).astype(np.float32)
