"""Where each artifact lives: keys inside the artifact store and local working directories."""

from __future__ import annotations

from pathlib import Path

from pc2.service.core.config import Settings
from pc2.service.storage import Storage


def dataset_prefix(dataset_id: str) -> str:
    return f"datasets/{dataset_id}"


def dataset_input_key(dataset_id: str, name: str) -> str:
    return f"{dataset_prefix(dataset_id)}/input/{name}"


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}"


def annotated_key(job_id: str) -> str:
    """Manifest columns + result columns for every pair: the source of every export."""
    return f"{job_prefix(job_id)}/annotated.parquet"


def export_key(export_id: str) -> str:
    return f"exports/{export_id}.parquet"


def prepared_dir(settings: Settings, store: Storage, dataset_id: str) -> Path:
    """The prepared corpus. It references feature files by local path (they are memory-mapped), so
    it sits inside a local store, or in the local work dir when the store is remote."""
    if store.is_local:
        return store.local_path(f"{dataset_prefix(dataset_id)}/prepared")
    return settings.work_dir / "datasets" / dataset_id / "prepared"


def job_workdir(settings: Settings, job_id: str) -> Path:
    """Engine checkpoints. On shared storage (compose volume) another worker host resumes from it."""
    return settings.work_dir / "jobs" / job_id


def cache_dir(settings: Settings) -> Path:
    return settings.work_dir / "cache"
