"""Alembic: upgrade -> downgrade -> upgrade, and the revision matches the ORM tables exactly."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from pc2.service.core.db import get_engine
from pc2.service.core.migrate import current, downgrade, upgrade
from pc2.service.models import Base

TABLES = {"teams", "api_keys", "datasets", "jobs", "pair_results", "exports"}


def _tables(url: str) -> set[str]:
    return set(inspect(get_engine(url)).get_table_names()) - {"alembic_version"}


def _round_trip(url: str) -> None:
    upgrade(url)
    assert current(url) == "0001_initial"
    assert _tables(url) == TABLES
    with get_engine(url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"
    downgrade(url, "base")
    assert current(url) is None
    assert _tables(url) == set()
    upgrade(url)
    assert _tables(url) == TABLES


@pytest.mark.integration
def test_postgres_upgrade_downgrade_upgrade(pg_databases):
    _round_trip(pg_databases.create())


def test_sqlite_upgrade_downgrade_upgrade(tmp_path):
    _round_trip(f"sqlite:///{tmp_path / 'm.db'}")


def test_pc2_db_upgrade_command(tmp_path, capsys):
    from pc2.service.cli_commands import db_upgrade

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert db_upgrade(["--database-url", url]) == 0
    assert "0001_initial" in capsys.readouterr().out
    assert _tables(url) == TABLES
