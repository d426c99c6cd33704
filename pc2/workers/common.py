"""Helpers shared by the tasks: settings, the artifact store, worker identity, row updates."""

from __future__ import annotations

import os
import socket
import traceback
from pathlib import Path
from typing import Any

from pc2.service.core.config import Settings, get_settings
from pc2.service.models import Dataset
from pc2.service.storage import Storage, fetch_uri

_stores: dict[str, Storage] = {}


def settings() -> Settings:
    return get_settings()


def store(s: Settings) -> Storage:
    st = _stores.get(s.artifact_url)
    if st is None:
        st = _stores[s.artifact_url] = Storage(s.artifact_url)
    return st


def worker_id() -> str:
    """host:pid of this process; a claim by a dead pid on this host can be taken over at once."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_is_dead(owner: str | None) -> bool:
    """True only when ``owner`` is a process on this host that no longer exists."""
    if not owner or ":" not in owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def error_detail(exc: BaseException) -> dict[str, Any]:
    """A failure as stored in a row: typed input errors keep their column/rows, bugs their type."""
    to_dict = getattr(exc, "to_dict", None)
    if callable(to_dict):
        return {"error": getattr(exc, "kind", "input"), **to_dict()}
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return {"error": "internal", "type": type(exc).__name__, "message": str(exc)[:2000],
            "traceback": "".join(tb)[-4000:]}


def dataset_inputs(s: Settings, ds: Dataset) -> tuple[Path, list[Path]]:
    """Local paths of a dataset's manifest and feature files (fetched when remote)."""
    st = store(s)
    cache = s.work_dir / "cache"
    if ds.source == "upload":
        return st.fetch(ds.manifest_uri, cache), [st.fetch(k, cache) for k in ds.feature_uris]
    return fetch_uri(ds.manifest_uri, cache), [fetch_uri(u, cache) for u in ds.feature_uris]
