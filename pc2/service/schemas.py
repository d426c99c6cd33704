"""API request and response schemas (pydantic v2), separate from the database tables."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl


class _Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# -- datasets -------------------------------------------------------------------------------------
class DatasetFromUris(BaseModel):
    """Register a dataset whose files already sit on storage the server can read."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    manifest_uri: str = Field(min_length=1)
    features_uris: list[str] = Field(default_factory=list)


class DatasetPublic(_Public):
    id: str
    name: str
    status: Literal["validating", "ready", "failed"]
    source: str
    n_pairs: int | None
    columns: list[str] | None
    report: dict[str, Any] | None
    error: dict[str, Any] | None
    created_at: datetime
    finished_at: datetime | None


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    count: int


# -- jobs -----------------------------------------------------------------------------------------
class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset_id: str
    config: dict[str, Any] = Field(default_factory=dict)
    callback_url: HttpUrl | None = None


JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobPublic(_Public):
    id: str
    dataset_id: str
    status: JobStatus
    phase: str | None
    epoch: int | None
    epochs: int | None
    progress: float
    eta_s: float | None
    metrics: dict[str, Any] | None
    error: dict[str, Any] | None
    config: dict[str, Any]
    callback_url: str | None
    cancel_requested: bool
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class PairPublic(_Public):
    idx: int
    pair_id: str
    confidence: float
    label: Literal["clean", "noisy"]
    pseudo_class: int
    pseudo_caption: str | None
    pseudo_caption_source: str | None
    pseudo_caption_score: float | None


class PairsPublic(BaseModel):
    data: list[PairPublic]
    next_after: int | None = Field(description="pass as ?after= for the next page; null on the last page")


# -- exports --------------------------------------------------------------------------------------
class ExportCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["annotated", "filtered", "recaptioned"] = "annotated"
    min_confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    min_pseudo_caption_score: float | None = Field(default=None, ge=-1.0, le=1.0)


class ExportPublic(_Public):
    id: str
    job_id: str
    mode: str
    params: dict[str, Any]
    status: Literal["queued", "running", "succeeded", "failed"]
    n_rows: int | None
    size_bytes: int | None
    sha256: str | None
    error: dict[str, Any] | None
    created_at: datetime
    finished_at: datetime | None


class Message(BaseModel):
    detail: str
