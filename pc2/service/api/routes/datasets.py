"""Datasets: upload (multipart) or register (JSON URIs), inspect, list, delete."""

from __future__ import annotations

import shutil
import uuid

from fastapi import APIRouter, Query, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from pc2.service import crud
from pc2.service.api.deps import SessionDep, SettingsDep, StorageDep, TeamDep
from pc2.service.schemas import DatasetFromUris, DatasetPublic, DatasetsPublic
from pc2.service.uploads import receive_multipart

router = APIRouter(prefix="/datasets", tags=["datasets"])

_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["name", "manifest"],
                    "properties": {
                        "name": {"type": "string"},
                        "manifest": {"type": "string", "format": "binary",
                                     "description": "Parquet, JSONL or CSV; one row per pair"},
                        "features": {"type": "array", "items": {"type": "string", "format": "binary"},
                                     "description": ".npy feature shards [N,R,D] or [N,D]"},
                    },
                }
            },
            "application/json": {"schema": DatasetFromUris.model_json_schema()},
        },
    }
}


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=DatasetPublic, openapi_extra=_UPLOAD_DOC)
async def create_dataset(request: Request, session: SessionDep, settings: SettingsDep, store: StorageDep,
                         team: TeamDep) -> DatasetPublic:
    """Upload a manifest (+ features) or register server-side URIs; ingest runs in the background."""
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            spec = DatasetFromUris.model_validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False)) from exc
        ds = await run_in_threadpool(crud.create_dataset_from_uris, session=session, settings=settings,
                                     spec=spec, team=team)
        return DatasetPublic.model_validate(ds)
    staging = settings.staging_dir / uuid.uuid4().hex
    try:
        form = await receive_multipart(request, staging, limit=settings.MAX_UPLOAD_BYTES)
        # Validation reads the manifest: keep that off the event loop.
        ds = await run_in_threadpool(crud.create_dataset_from_upload, session=session, settings=settings,
                                     store=store, team=team, form=form)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # on success the files were moved out already
    return DatasetPublic.model_validate(ds)


@router.get("", response_model=DatasetsPublic)
def list_datasets(session: SessionDep, team: TeamDep, skip: int = Query(0, ge=0),
                  limit: int = Query(100, ge=1, le=1000)) -> DatasetsPublic:
    """This team's datasets, newest first."""
    rows, count = crud.list_datasets(session=session, team=team, skip=skip, limit=limit)
    return DatasetsPublic(data=[DatasetPublic.model_validate(r) for r in rows], count=count)


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(dataset_id: str, session: SessionDep, team: TeamDep) -> DatasetPublic:
    """One dataset: status validating | ready | failed, with the error detail when failed."""
    return DatasetPublic.model_validate(crud.get_dataset(session=session, team=team, dataset_id=dataset_id))


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(dataset_id: str, session: SessionDep, settings: SettingsDep, store: StorageDep,
                   team: TeamDep) -> None:
    """Delete a dataset with its jobs, results, exports and files."""
    crud.delete_dataset(session=session, settings=settings, store=store, team=team, dataset_id=dataset_id)
