"""Exports: Parquet files of the manifest plus results, in one of three modes."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import StreamingResponse

from pc2.service import crud, layout
from pc2.service.api.deps import SessionDep, SettingsDep, StorageDep, TeamDep
from pc2.service.schemas import ExportCreate, ExportPublic

router = APIRouter(tags=["exports"])


@router.post("/jobs/{job_id}/exports", status_code=status.HTTP_202_ACCEPTED, response_model=ExportPublic)
def create_export(job_id: str, spec: ExportCreate, session: SessionDep, settings: SettingsDep,
                  team: TeamDep) -> ExportPublic:
    """Build an annotated, filtered or recaptioned Parquet export of a succeeded job."""
    exp = crud.create_export(session=session, settings=settings, team=team, job_id=job_id, spec=spec)
    return ExportPublic.model_validate(exp)


@router.get("/exports/{export_id}", response_model=ExportPublic)
def get_export(export_id: str, session: SessionDep, team: TeamDep) -> ExportPublic:
    """Status of one export; its size and SHA-256 once it has succeeded."""
    return ExportPublic.model_validate(crud.get_export(session=session, team=team, export_id=export_id))


@router.get("/exports/{export_id}/download", response_class=StreamingResponse,
            responses={200: {"content": {"application/vnd.apache.parquet": {}}}, 304: {}})
def download_export(export_id: str, request: Request, session: SessionDep, store: StorageDep,
                    team: TeamDep) -> Response:
    """Stream the Parquet file with Content-Length, ETag and X-Content-SHA256."""
    exp = crud.get_export(session=session, team=team, export_id=export_id)
    if exp.status != "succeeded" or not exp.sha256:
        raise crud.Conflict(f"export is {exp.status}; download once it has succeeded")
    etag = f'"{exp.sha256}"'
    headers = {"ETag": etag, "X-Content-SHA256": exp.sha256, "Cache-Control": "private, max-age=0"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    key = exp.uri or layout.export_key(exp.id)
    headers["Content-Length"] = str(exp.size_bytes)
    headers["Content-Disposition"] = f'attachment; filename="pc2-{exp.job_id[:8]}-{exp.mode}.parquet"'
    return StreamingResponse(store.iter_bytes(key), media_type="application/vnd.apache.parquet", headers=headers)
