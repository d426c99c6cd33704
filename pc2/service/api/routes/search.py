"""Search a succeeded job: text, pair or vector queries over its image and caption indexes."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.orm import Session

from pc2.models.search import MAX_K, NotSearchable, SearchError, open_searcher
from pc2.service import crud, layout
from pc2.service.api.deps import SessionDep, SettingsDep, StorageDep, TeamDep
from pc2.service.core.config import Settings
from pc2.service.models import Team
from pc2.service.storage import Storage

router = APIRouter(tags=["search"])


class SearchQuery(BaseModel):
    """Exactly one of ``text``, ``pair_id`` or ``vector``."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(default=None, min_length=1, max_length=2000, description="words to search for")
    pair_id: str | None = Field(default=None, min_length=1, max_length=256, description="a pair of this job")
    vector: list[float] | None = Field(default=None, min_length=1, max_length=8192,
                                       description="a joint-space vector of the job's embedding width")
    direction: Literal["text2image", "image2text", "image2image", "text2text"] = "text2image"
    k: int = Field(default=10, ge=1, le=MAX_K)
    label: Literal["clean", "noisy"] | None = None

    @model_validator(mode="after")
    def _one_query(self) -> "SearchQuery":
        given = [n for n in ("text", "pair_id", "vector") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of text, pair_id or vector (got {given or 'none'})")
        return self


class SearchHit(BaseModel):
    pair_id: str
    score: float
    caption: str
    label: Literal["clean", "noisy"] | None


class SearchResults(BaseModel):
    data: list[SearchHit]
    count: int


def search_job(*, session: Session, settings: Settings, store: Storage, team: Team, job_id: str,
               query: SearchQuery) -> SearchResults:
    """Nearest pairs of one job; another team's job is not found, an unfinished one is a conflict."""
    job = crud.get_job(session=session, team=team, job_id=job_id)
    if job.status != "succeeded":
        raise crud.Conflict(f"job is {job.status}; search works once it has succeeded")
    try:
        searcher = open_searcher(layout.job_workdir(settings, job.id),
                                 layout.prepared_dir(settings, store, job.dataset_id))
        hits = searcher.search(text=query.text, pair_id=query.pair_id, vector=query.vector,
                               direction=query.direction, k=query.k, label=query.label)
    except NotSearchable as e:
        raise crud.Conflict(e.message) from None
    except SearchError as e:
        raise crud.BadRequest(e.field, e.message) from None
    data = [SearchHit(pair_id=h["pair_id"], score=h["score"], caption=h["caption"], label=h["label"]) for h in hits]
    return SearchResults(data=data, count=len(data))


@router.post("/jobs/{job_id}/search", response_model=SearchResults)
def search(job_id: str, query: SearchQuery, session: SessionDep, settings: SettingsDep, store: StorageDep,
           team: TeamDep) -> SearchResults:
    """Pairs nearest to a text, a pair or a vector, best first, optionally only clean or noisy ones."""
    return search_job(session=session, settings=settings, store=store, team=team, job_id=job_id, query=query)
