"""Artifact store over fsspec: a local directory by default, any fsspec URL (s3://…) in production.

Keys are ``/``-separated paths relative to the store root (``datasets/<id>/prepared``). Writes go
to a temporary key and are renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import fsspec
from fsspec.implementations.local import LocalFileSystem


class Storage:
    def __init__(self, url: str):
        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = root.rstrip("/")
        self.url = url
        if self.is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, key: str) -> str:
        """Full path of ``key`` inside the store's file system."""
        key = key.strip("/")
        if ".." in key.split("/"):
            raise ValueError(f"artifact key may not contain '..': {key!r}")
        return f"{self.root}/{key}" if key else self.root

    def local_path(self, key: str) -> Path:
        """Path on this machine; only for a local store (the engine memory-maps features)."""
        if not self.is_local:
            raise RuntimeError("artifact store is remote; use fetch() for a local copy")
        return Path(self.path(key))

    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def size(self, key: str) -> int:
        return int(self.fs.size(self.path(key)))

    def open(self, key: str, mode: str = "rb") -> IO[bytes]:
        return self.fs.open(self.path(key), mode)

    def iter_bytes(self, key: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        with self.open(key) as f:
            while block := f.read(chunk):
                yield block

    def sha256(self, key: str) -> str:
        h = hashlib.sha256()
        for block in self.iter_bytes(key):
            h.update(block)
        return h.hexdigest()

    def put_file(self, local: str | os.PathLike, key: str) -> None:
        """Copy a local file into the store under ``key``, atomically."""
        target = self.path(key)
        if self.is_local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{target}.tmp-{uuid.uuid4().hex}"
            shutil.copyfile(local, tmp)
            _fsync(tmp)
            os.replace(tmp, target)
        else:  # object stores publish a key only once the upload completes
            self.fs.put_file(str(local), target)

    def move_in(self, local: str | os.PathLike, key: str) -> None:
        """Move a local file into the store (a rename when both sit on one local disk)."""
        if self.is_local:
            target = Path(self.path(key))
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                _fsync(local)  # the rename publishes it: its bytes must be on disk first
                os.replace(local, target)
                return
            except OSError:  # another device: copy then remove
                pass
        self.put_file(local, key)
        os.unlink(local)

    def fetch(self, key: str, cache_dir: str | os.PathLike) -> Path:
        """A local file with the contents of ``key`` (the file itself for a local store)."""
        if self.is_local:
            return Path(self.path(key))
        dest = Path(cache_dir) / key
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f"{dest.name}.tmp-{uuid.uuid4().hex}")
            self.fs.get_file(self.path(key), str(tmp))
            os.replace(tmp, dest)
        return dest

    def rm(self, key: str) -> None:
        """Delete a key or a whole prefix; missing keys are fine."""
        p = self.path(key)
        if self.fs.exists(p):
            self.fs.rm(p, recursive=True)


def _fsync(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_local_target(path: str | os.PathLike) -> Path:
    """A temporary sibling name for ``path``; the caller writes it, fsyncs and ``os.replace``s."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p.with_name(f".{p.name}.tmp-{uuid.uuid4().hex}")


def publish(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """fsync a finished temporary file and rename it to its final name."""
    _fsync(tmp)
    os.replace(tmp, final)


def fetch_uri(uri: str, cache_dir: str | os.PathLike) -> Path:
    """A local path for any fsspec URI (local paths pass through)."""
    fs, path = fsspec.core.url_to_fs(uri)
    if isinstance(fs, LocalFileSystem):
        return Path(path)
    dest = Path(cache_dir) / hashlib.sha256(uri.encode()).hexdigest()[:16] / Path(path).name
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = atomic_local_target(dest)
        fs.get_file(path, str(tmp))
        os.replace(tmp, dest)
    return dest
