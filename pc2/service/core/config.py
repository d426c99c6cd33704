"""Service settings: one pydantic-settings class read from ``PC2_*`` environment variables.

Every process (API, worker, CLI) builds the same ``Settings``; the embedded default needs none of
them set: SQLite and a file-system broker under ``PC2_DATA_DIR``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PC2_", env_file=None, extra="ignore")

    DATA_DIR: Path = Path(".pc2")  # SQLite file, embedded broker folders, artifacts, local key
    DATABASE_URL: str | None = None  # None: sqlite:///DATA_DIR/pc2.db
    BROKER_URL: str | None = None  # None: embedded file-system broker under DATA_DIR/broker
    DEDUP_THRESHOLD: float = 0.97  # cosine of mean-pooled image features at which images are near-duplicates
    ARTIFACT_URL: str | None = None  # fsspec URL of the artifact store; None: DATA_DIR/artifacts
    # Server-side paths/URLs a JSON dataset request may reference (comma-separated in the env).
    ALLOWED_ROOTS: Annotated[list[str], NoDecode] = []
    MAX_UPLOAD_BYTES: int = 8 * 1024**3  # whole multipart body of one dataset upload
    WEBHOOK_SECRET: str = "change-me"  # HMAC key of the X-PC2-Signature header
    WEBHOOK_MAX_RETRIES: int = 6
    WEBHOOK_BACKOFF_S: float = 2.0  # first retry delay; doubles each attempt
    WEBHOOK_TIMEOUT_S: float = 10.0
    EMBEDDED: bool = True  # `pc2 serve` also starts a worker child process
    HOST: str = "127.0.0.1"
    PORT: int = 8000
    WORKER_CONCURRENCY: int = 1
    API_THREADS: int = 8  # threads running database-bound request handlers in each API process
    PROGRESS_INTERVAL_S: float = 1.0  # at most one job-row progress write per interval
    JOB_LEASE_S: float = 60.0  # a running job whose heartbeat is older than this is taken over
    BROKER_VISIBILITY_TIMEOUT_S: int = 6 * 3600  # Redis: unacked messages come back after this
    LOG_LEVEL: str = "info"

    @field_validator("ALLOWED_ROOTS", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    # -- derived values ------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.DATA_DIR.expanduser().resolve()

    @property
    def database_url(self) -> str:
        return self.DATABASE_URL or f"sqlite:///{self.data_dir / 'pc2.db'}"

    @property
    def broker_url(self) -> str:
        return self.BROKER_URL or "filesystem://"

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def artifact_url(self) -> str:
        return self.ARTIFACT_URL or str(self.data_dir / "artifacts")

    @property
    def staging_dir(self) -> Path:
        """Local scratch space for uploads in flight; never seen by a client."""
        return self.data_dir / "staging"

    @property
    def work_dir(self) -> Path:
        """Local job work dirs (engine checkpoints). Shared storage lets another host resume."""
        return self.data_dir / "work"

    @property
    def local_key_file(self) -> Path:
        return self.data_dir / "local_api_key"

    def env(self) -> dict[str, str]:
        """These settings as ``PC2_*`` variables, to hand to a child process."""
        out: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, list):
                value = ",".join(value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, Path):
                value = str(value.expanduser().resolve())
            out[f"PC2_{name}"] = str(value)
        return out


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
