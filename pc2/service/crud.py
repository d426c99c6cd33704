"""What the API does, as plain keyword-only functions over a session (route handlers stay thin)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pc2.models.config import PC2Config
from pc2.service import layout
from pc2.service.core import queue
from pc2.service.core.config import Settings
from pc2.service.models import Dataset, Export, Job, PairResult, Team, utcnow
from pc2.service.schemas import DatasetFromUris, ExportCreate, JobCreate
from pc2.service.storage import Storage, fetch_uri
from pc2.service.uploads import UploadedForm
from pc2.service.validation import validate_inputs

TERMINAL = ("succeeded", "failed", "cancelled")
MANIFEST_SUFFIXES = (".parquet", ".pq", ".jsonl", ".ndjson", ".json", ".csv")


class NotFound(Exception):
    def __init__(self, kind: str, id_: str):
        super().__init__(f"{kind} {id_!r} not found")


class Conflict(Exception):
    """The request is valid but the resource is in the wrong state for it (HTTP 409)."""


class Forbidden(Exception):
    """A server-side path outside the allowed roots (HTTP 403)."""


class BadRequest(Exception):
    """A request the schema accepts but whose content is wrong (HTTP 422), with a field name."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# -- datasets -------------------------------------------------------------------------------------
def _manifest_suffix(filename: str) -> str:
    suffix = PurePosixPath(filename).suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise BadRequest("manifest", f"file name must end with one of {list(MANIFEST_SUFFIXES)}, got {filename!r}")
    return ".parquet" if suffix == ".pq" else suffix


def create_dataset_from_upload(*, session: Session, settings: Settings, store: Storage, team: Team,
                               form: UploadedForm) -> Dataset:
    """Validate the staged upload, move it into the store, record it and enqueue ``ingest.run``."""
    name = form.fields.get("name", "").strip()
    if not name:
        raise BadRequest("name", "a non-empty dataset name is required")
    manifests = form.files_for("manifest")
    if len(manifests) != 1:
        raise BadRequest("manifest", f"exactly one manifest file is required, got {len(manifests)}")
    suffix = _manifest_suffix(manifests[0].filename)
    features = form.files_for("features")
    for f in features:
        if not f.filename.lower().endswith(".npy"):
            raise BadRequest("features", f"feature files must be .npy, got {f.filename!r}")
    # The reader picks the format from the suffix, so give the staged file a canonical name.
    manifest_path = manifests[0].path.with_name(f"manifest{suffix}")
    manifests[0].path.rename(manifest_path)
    validate_inputs(manifest_path, [f.path for f in features])

    dataset_id = str(uuid.uuid4())
    manifest_key = layout.dataset_input_key(dataset_id, f"manifest{suffix}")
    feature_keys = [layout.dataset_input_key(dataset_id, f"features-{i:03d}.npy") for i in range(len(features))]
    try:
        store.move_in(manifest_path, manifest_key)
        for f, key in zip(features, feature_keys):
            store.move_in(f.path, key)
        ds = Dataset(id=dataset_id, team_id=team.id, name=name[:200], source="upload", manifest_uri=manifest_key,
                     feature_uris=feature_keys, artifact_prefix=layout.dataset_prefix(dataset_id))
        session.add(ds)
        session.commit()
    except BaseException:
        session.rollback()
        store.rm(layout.dataset_prefix(dataset_id))
        raise
    _enqueue(session, settings, "ingest.run", ds)
    return ds


def check_allowed(uri: str, roots: list[str]) -> None:
    """Refuse any URI that is not inside one of the configured roots (after resolving ``..``)."""
    if not roots:
        raise Forbidden("this server accepts no server-side paths (PC2_ALLOWED_ROOTS is empty); upload the files")
    target = _canonical(uri)
    for root in roots:
        base = _canonical(root).rstrip("/")
        if target == base or target.startswith(base + "/"):
            return
    raise Forbidden(f"{uri!r} is outside the allowed roots {roots}")


def _canonical(uri: str) -> str:
    fs, path = fsspec.core.url_to_fs(uri)
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    if protocol in ("file", "local"):
        return "file://" + str(Path(path).resolve())
    parts: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return f"{protocol}://" + "/".join(parts)


def create_dataset_from_uris(*, session: Session, settings: Settings, spec: DatasetFromUris, team: Team) -> Dataset:
    """Register files that already sit on storage the server may read; nothing is copied."""
    for uri in [spec.manifest_uri, *spec.features_uris]:
        check_allowed(uri, settings.ALLOWED_ROOTS)
    _manifest_suffix(spec.manifest_uri)
    cache = layout.cache_dir(settings)
    manifest = fetch_uri(spec.manifest_uri, cache)
    features = [fetch_uri(u, cache) for u in spec.features_uris]
    validate_inputs(manifest, features)
    dataset_id = str(uuid.uuid4())
    ds = Dataset(id=dataset_id, team_id=team.id, name=spec.name, source="uri", manifest_uri=spec.manifest_uri,
                 feature_uris=list(spec.features_uris), artifact_prefix=layout.dataset_prefix(dataset_id))
    session.add(ds)
    session.commit()
    _enqueue(session, settings, "ingest.run", ds)
    return ds


def _enqueue(session: Session, settings: Settings, task: str, row: Dataset | Job | Export) -> None:
    """Send the task; if the broker is down, mark the row failed rather than leave it waiting forever."""
    try:
        queue.send(settings, task, row.id)
    except Exception as exc:  # noqa: BLE001 - any broker error means the work will never run
        row.status = "failed"
        row.error = {"message": f"could not enqueue {task}: {exc}", "type": type(exc).__name__}
        session.commit()
        raise


def _owned(session: Session, team: Team, model: Any, kind: str, id_: str) -> Any:
    row = session.get(model, id_)
    if row is None or row.team_id != team.id:
        raise NotFound(kind, id_)  # another team's id looks exactly like a missing one
    return row


def get_dataset(*, session: Session, team: Team, dataset_id: str) -> Dataset:
    return _owned(session, team, Dataset, "dataset", dataset_id)


def list_datasets(*, session: Session, team: Team, skip: int, limit: int) -> tuple[list[Dataset], int]:
    q = select(Dataset).where(Dataset.team_id == team.id)
    count = session.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = session.scalars(q.order_by(Dataset.created_at.desc(), Dataset.id).offset(skip).limit(limit)).all()
    return list(rows), int(count)


def delete_dataset(*, session: Session, settings: Settings, store: Storage, team: Team, dataset_id: str) -> None:
    ds = get_dataset(session=session, team=team, dataset_id=dataset_id)
    jobs = session.scalars(select(Job).where(Job.dataset_id == ds.id)).all()
    if any(j.status in ("queued", "running") for j in jobs):
        raise Conflict("dataset has queued or running jobs; cancel them first")
    if ds.status == "validating":
        raise Conflict("dataset is still being ingested; delete it once it is ready or failed")
    exports = session.scalars(select(Export).where(Export.job_id.in_([j.id for j in jobs]))).all() if jobs else []
    keys = [layout.export_key(e.id) for e in exports] + [layout.job_prefix(j.id) for j in jobs]
    for job in jobs:
        session.query(PairResult).filter(PairResult.job_id == job.id).delete(synchronize_session=False)
    for e in exports:
        session.delete(e)
    for j in jobs:
        session.delete(j)
    session.delete(ds)
    session.commit()
    # Files go after the rows: a crash in between leaves unreferenced files, never rows without files.
    for key in keys + [layout.dataset_prefix(ds.id)]:
        store.rm(key)
    shutil.rmtree(layout.prepared_dir(settings, store, ds.id), ignore_errors=True)
    for j in jobs:
        shutil.rmtree(layout.job_workdir(settings, j.id), ignore_errors=True)


# -- jobs -----------------------------------------------------------------------------------------
def create_job(*, session: Session, settings: Settings, team: Team, spec: JobCreate) -> Job:
    """Check the config against the engine's schema and enqueue ``curate.run``."""
    config = PC2Config.from_dict(spec.config)  # ConfigError -> 422 naming the key
    ds = get_dataset(session=session, team=team, dataset_id=spec.dataset_id)
    if ds.status != "ready":
        raise Conflict(f"dataset {ds.id} is {ds.status}; jobs need a ready dataset")
    job = Job(team_id=team.id, dataset_id=ds.id, config=spec.config, epochs=config.epochs,
              callback_url=str(spec.callback_url) if spec.callback_url else None)
    session.add(job)
    session.commit()
    _enqueue(session, settings, "curate.run", job)
    return job


def get_job(*, session: Session, team: Team, job_id: str) -> Job:
    return _owned(session, team, Job, "job", job_id)


def list_jobs(*, session: Session, team: Team, skip: int, limit: int, status: str | None = None,
              dataset_id: str | None = None) -> tuple[list[Job], int]:
    q = select(Job).where(Job.team_id == team.id)
    if status:
        q = q.where(Job.status == status)
    if dataset_id:
        q = q.where(Job.dataset_id == dataset_id)
    count = session.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = session.scalars(q.order_by(Job.created_at.desc(), Job.id).offset(skip).limit(limit)).all()
    return list(rows), int(count)


def cancel_job(*, session: Session, team: Team, job_id: str) -> Job:
    """A queued job is cancelled at once; a running one is flagged and its worker stops at the next
    check (within about a second) and marks it cancelled."""
    job = get_job(session=session, team=team, job_id=job_id)
    if job.status in TERMINAL:
        raise Conflict(f"job is already {job.status}")
    job.cancel_requested = True
    if job.status == "queued":
        job.status = "cancelled"
        job.finished_at = utcnow()
    session.commit()
    return job


def list_pairs(*, session: Session, team: Team, job_id: str, label: str | None, min_confidence: float | None,
               max_confidence: float | None, has_pseudo_caption: bool | None, limit: int,
               after: int | None) -> tuple[list[PairResult], int | None]:
    """One keyset page over the pair index; returns the rows and the ``after`` of the next page."""
    job = get_job(session=session, team=team, job_id=job_id)
    if job.status != "succeeded":
        raise Conflict(f"job is {job.status}; results exist once it has succeeded")
    q = select(PairResult).where(PairResult.job_id == job.id)
    if after is not None:
        q = q.where(PairResult.idx > after)
    if label:
        q = q.where(PairResult.label == label)
    if min_confidence is not None:
        q = q.where(PairResult.confidence >= min_confidence)
    if max_confidence is not None:
        q = q.where(PairResult.confidence <= max_confidence)
    if has_pseudo_caption is not None:
        col = PairResult.pseudo_caption
        q = q.where(col.is_not(None) if has_pseudo_caption else col.is_(None))
    rows = list(session.scalars(q.order_by(PairResult.idx).limit(limit + 1)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].idx if more and rows else None)


# -- exports --------------------------------------------------------------------------------------
def create_export(*, session: Session, settings: Settings, team: Team, job_id: str, spec: ExportCreate) -> Export:
    job = get_job(session=session, team=team, job_id=job_id)
    if job.status != "succeeded":
        raise Conflict(f"job is {job.status}; exports need a succeeded job")
    params: dict[str, Any] = {k: v for k, v in spec.model_dump(exclude={"mode"}).items() if v is not None}
    exp = Export(team_id=team.id, job_id=job.id, mode=spec.mode, params=params)
    session.add(exp)
    session.commit()
    _enqueue(session, settings, "export.run", exp)
    return exp


def get_export(*, session: Session, team: Team, export_id: str) -> Export:
    return _owned(session, team, Export, "export", export_id)
