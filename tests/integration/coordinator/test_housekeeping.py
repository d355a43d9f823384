"""The housekeeping purge on both backends: deliveries past their retention go, events of
tasks that ended past theirs go (the tasks stay), everything younger or still open stays."""

from __future__ import annotations

from datetime import timedelta

import pytest

from claude_cluster.coordinator.housekeeping import Purged, purge_once
from claude_cluster.coordinator.store.common import utcnow
from claude_cluster.coordinator.store.db import create_engine, sessionmaker
from claude_cluster.coordinator.store.repository import Repository
from tests.conftest import RunningCoordinator, coordinator_settings

pytestmark = pytest.mark.timeout(60)


def task(issue: int) -> dict[str, object]:
    return {"title": f"T{issue}", "github_repository": "acme/app", "github_issue_number": issue}


async def test_purge(coordinator: RunningCoordinator, db_url: str) -> None:
    async with coordinator.async_client() as api:
        ended = (await api.post("/api/v1/tasks", json=task(1))).json()["id"]
        open_ = (await api.post("/api/v1/tasks", json=task(2))).json()["id"]
        assert (await api.delete(f"/api/v1/tasks/{ended}")).status_code == 200
    engine = create_engine(db_url)
    repo = Repository(sessionmaker(engine), postgres=engine.dialect.name == "postgresql")
    try:
        assert await repo.record_delivery("d-old", "issues", "labeled", "acme/app")
        # one still waiting to be processed is never purged (its payload is the work)
        waiting = await repo.record_delivery(
            "d-waiting", "issues", "labeled", "acme/app", payload="{}", issue_key="acme/app#1"
        )
        assert waiting == "new"
        now = utcnow()

        # default settings: deliveries kept 30 days, events forever
        defaults = coordinator_settings(db_url)
        assert await purge_once(repo, defaults, now + timedelta(days=29)) == Purged(0, 0)
        purged = await purge_once(repo, defaults, now + timedelta(days=31))
        assert (purged.deliveries, purged.task_events) == (1, 0)
        assert await repo.get_delivery("d-old") is None
        assert (await repo.get_delivery("d-waiting")).payload == "{}"  # type: ignore[union-attr]
        assert await repo.list_events(ended)

        # with an event retention: the ended task's log goes, the open task's stays
        settings = coordinator_settings(db_url, task_event_retention_days=7)
        assert (await purge_once(repo, settings, now + timedelta(days=6))).task_events == 0
        purged = await purge_once(repo, settings, now + timedelta(days=8))
        assert purged.task_events > 0
        assert list(await repo.list_events(ended)) == []
        assert await repo.list_events(open_)
        assert (await repo.get_task(ended)).status == "cancelled"  # the task itself stays
    finally:
        await engine.dispose()
