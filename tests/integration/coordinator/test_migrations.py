"""Migrations on both backends: upgrade, no drift against the tables, downgrade, again."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def test_0004_moves_keyword_requirements_of_live_tasks_to_preferences(tmp_path: Path) -> None:
    """A live task the old analysis made require ``testing`` for "fix" prefers it after the
    upgrade; explicit requirements (API) and label requirements stay required."""
    import json
    import sqlite3

    url = databases.new_sqlite_database(tmp_path, migrated=False)
    migrate.upgrade(url, "0003")
    db = sqlite3.connect(tmp_path / "coordinator.db")
    rows = [
        # (issue, title, labels, requirements as stored, status)
        (1, "Fix the API", [], ["backend", "testing"], "queued"),
        (2, "Fix the login", ["claude-code-security"], ["testing", "security"], "queued"),
        (3, "Fix the API", [], ["frontend"], "queued"),  # given through the API
        (4, "Fix the API", [], ["backend", "testing"], "completed"),  # history stays
    ]
    for issue, title, labels, requirements, status in rows:
        db.execute(
            "INSERT INTO tasks (title, description, status, priority, priority_rank, "
            "github_repository, github_issue_number, repository_url, labels, requirements, "
            "estimated_complexity, estimated_duration_minutes, result_data, attempts, "
            "retry_count, cost_usd, created_at, updated_at, created_by) VALUES "
            "(?, '', ?, 'medium', 1, 'acme/app', ?, 'x', ?, ?, 'low', 60, '{}', 0, 0, 0, "
            "'2026-12-04 12:00:00', '2026-12-04 12:00:00', '')",
            (title, status, issue, json.dumps(labels), json.dumps(requirements)),
        )
    db.commit()
    db.close()
    migrate.upgrade(url)
    db = sqlite3.connect(tmp_path / "coordinator.db")
    got = {
        issue: (json.loads(req), json.loads(pref))
        for issue, req, pref in db.execute(
            "SELECT github_issue_number, requirements, preferences FROM tasks"
        )
    }
    db.close()
    assert got == {
        1: (["general"], ["backend", "testing"]),
        2: (["security"], ["testing"]),
        3: (["frontend"], []),
        4: (["backend", "testing"], []),
    }


async def test_0005_adds_the_runner_columns_empty_and_takes_them_away(empty_db: str) -> None:
    """Up: agents and tasks that were there offer and need no runner (NULL: as before,
    every task may go to any agent). Down: the columns go, the rows stay."""
    from sqlalchemy import inspect, text

    from claude_cluster.coordinator.store.db import create_engine

    def columns(conn: Any, table: str) -> set[str]:
        return {c["name"] for c in inspect(conn).get_columns(table)}

    await asyncio.to_thread(migrate.upgrade, empty_db, "0004")
    engine = create_engine(empty_db)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO agents (id, name, hostname, ip_address, port, url, specialties, "
                    "capabilities, max_concurrent_tasks, status, active_task_count, "
                    "current_load, total_tasks_completed, total_tasks_failed, "
                    "average_task_duration, uptime_percentage, registered_at, workspace_path, "
                    "configuration, version, metadata, token_hash, draining, "
                    "dispatch_failures, fault_streak) VALUES ('a1', 'a1', '', '', 8081, "
                    "'http://a1', '[]', '[]', 3, 'idle', 0, 0, 0, 0, 0, 100, "
                    "'2026-12-05 12:00:00', '', '{}', '', '{}', 'h', false, 0, 0)"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO tasks (title, description, status, priority, priority_rank, "
                    "github_repository, github_issue_number, repository_url, labels, "
                    "requirements, preferences, estimated_complexity, "
                    "estimated_duration_minutes, result_data, attempts, retry_count, cost_usd, "
                    "created_at, updated_at, created_by) VALUES ('t', '', 'queued', 'medium', "
                    "1, 'acme/app', 1, 'x', '[]', '[]', '[]', 'low', 60, '{}', 0, 0, 0, "
                    "'2026-12-05 12:00:00', '2026-12-05 12:00:00', '')"
                )
            )
        await asyncio.to_thread(migrate.upgrade, empty_db)
        async with engine.connect() as conn:
            assert "runners" in await conn.run_sync(columns, "agents")
            assert "required_runner" in await conn.run_sync(columns, "tasks")
            assert (await conn.execute(text("SELECT runners FROM agents"))).all() == [(None,)]
            assert (await conn.execute(text("SELECT required_runner FROM tasks"))).all() == [
                (None,)
            ]
        await asyncio.to_thread(migrate.downgrade, empty_db, "0004")
        async with engine.connect() as conn:
            assert "runners" not in await conn.run_sync(columns, "agents")
            assert "required_runner" not in await conn.run_sync(columns, "tasks")
            assert (await conn.execute(text("SELECT id FROM agents"))).all() == [("a1",)]
            assert (await conn.execute(text("SELECT count(*) FROM tasks"))).scalar() == 1
    finally:
        await engine.dispose()
