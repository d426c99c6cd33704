"""Curation jobs: start, watch, cancel, and page through per-pair results."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, status

from pc2.service import crud
from pc2.service.api.deps import SessionDep, SettingsDep, TeamDep
from pc2.service.schemas import JobCreate, JobPublic, JobsPublic, PairPublic, PairsPublic

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic)
def create_job(spec: JobCreate, session: SessionDep, settings: SettingsDep, team: TeamDep) -> JobPublic:
    """Queue a PC² curation of a ready dataset; unknown config keys are refused."""
    return JobPublic.model_validate(crud.create_job(session=session, settings=settings, team=team, spec=spec))


@router.get("", response_model=JobsPublic)
def list_jobs(session: SessionDep, team: TeamDep, skip: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000),
              status: str | None = None, dataset_id: str | None = None) -> JobsPublic:
    """This team's jobs, newest first, optionally by status or dataset."""
    rows, count = crud.list_jobs(session=session, team=team, skip=skip, limit=limit, status=status,
                                 dataset_id=dataset_id)
    return JobsPublic(data=[JobPublic.model_validate(r) for r in rows], count=count)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, session: SessionDep, team: TeamDep) -> JobPublic:
    """Status, phase, epoch, progress 0–1, ETA, metrics and error of one job."""
    return JobPublic.model_validate(crud.get_job(session=session, team=team, job_id=job_id))


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: str, session: SessionDep, team: TeamDep) -> JobPublic:
    """Cancel a queued job now, or ask a running one to stop (it turns cancelled within seconds)."""
    return JobPublic.model_validate(crud.cancel_job(session=session, team=team, job_id=job_id))


@router.get("/{job_id}/pairs", response_model=PairsPublic)
def list_pairs(job_id: str, session: SessionDep, team: TeamDep,
               label: Literal["clean", "noisy"] | None = None,
               min_confidence: float | None = Query(None, ge=0, le=1),
               max_confidence: float | None = Query(None, ge=0, le=1),
               has_pseudo_caption: bool | None = None,
               limit: int = Query(100, ge=1, le=5000),
               after: int | None = Query(None, ge=-1, description="pair index of the last row of the previous page")
               ) -> PairsPublic:
    """Per-pair results in manifest order, filtered, one keyset page at a time."""
    rows, next_after = crud.list_pairs(session=session, team=team, job_id=job_id, label=label,
                                       min_confidence=min_confidence, max_confidence=max_confidence,
                                       has_pseudo_caption=has_pseudo_caption, limit=limit, after=after)
    return PairsPublic(data=[PairPublic.model_validate(r) for r in rows], next_after=next_after)
