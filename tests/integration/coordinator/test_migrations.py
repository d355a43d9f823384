"""Migrations on both backends: upgrade, no drift against the tables, downgrade, again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.util.exc import CommandError

from claude_cluster.coordinator.store import migrate
from tests.support import databases


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield databases.new_sqlite_database(tmp_path, migrated=False)
        return
    name, url = databases.new_empty_pg_database()
    try:
        yield url
    finally:
        databases.drop_pg_database(name)


def test_upgrade_check_downgrade_upgrade(empty_db: str) -> None:
    with pytest.raises(CommandError, match="not up to date"):
        migrate.check(empty_db)  # a database behind the migrations is reported
    migrate.upgrade(empty_db)
    migrate.check(empty_db)
    migrate.downgrade(empty_db, "base")
    with pytest.raises(CommandError, match="not up to date"):
        migrate.check(empty_db)
    migrate.upgrade(empty_db)
    migrate.check(empty_db)
