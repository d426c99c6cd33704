"""Apply Alembic revisions programmatically (``pc2 db upgrade``, embedded start-up, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from pc2.service.core.db import normalise_url

def project_root() -> Path:
    """The folder holding ``migrations/``: the source checkout (editable install) or, for an
    installed package (the container image), the working directory the scripts were copied to."""
    for root in (Path(__file__).resolve().parents[3], Path.cwd()):
        if (root / "migrations" / "env.py").is_file():
            return root
    raise FileNotFoundError("migrations/env.py not found beside the package or in the working directory")


def alembic_config(url: str) -> Config:
    root = project_root()
    ini = root / "alembic.ini"
    cfg = Config(str(ini)) if ini.exists() else Config()
    cfg.set_main_option("script_location", str(root / "migrations"))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    if url.startswith("sqlite:///"):
        Path(url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def current(url: str) -> str | None:
    """The revision the database is at (None: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    from pc2.service.core.db import get_engine

    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
