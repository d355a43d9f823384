"""A task's log, live: Server-Sent Events of rendered log items.

Each client subscribes to the task's bus channel and, on every message (and every few
seconds in any case, so nothing missed between page load and subscription is lost), reads
the events stored after the last one it sent. Items go out as HTML rendered by the same
template as the page (``event: log``, ``id:`` the event id, so a reconnecting browser
resumes where it stopped); a status change goes out as ``event: task``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response
from sse_starlette.sse import EventSourceResponse

from claude_cluster.coordinator.api.deps import CoordinatorDep, IdPath
from claude_cluster.coordinator.api.routes.dashboard import User
from claude_cluster.coordinator.service import Coordinator
from claude_cluster.coordinator.store.tables import TaskEvent
from claude_cluster.coordinator.web.templating import templates
from claude_cluster.coordinator.web.views import item_of

router = APIRouter(tags=["dashboard"], include_in_schema=False)

#: a client re-reads the log this often even when the bus says nothing
IDLE_POLL_SECONDS = 5.0
#: after a wake-up, events arriving this soon are read together: a busy run reports many
#: events a second, and each read costs every open tab a query
BATCH_SECONDS = 0.2


def _render(events: Sequence[TaskEvent]) -> list[dict[str, str]]:
    macro = templates.get_template("_log.html").module.item  # type: ignore[attr-defined]
    return [{"event": "log", "id": str(e.id), "data": str(macro(item_of(e)))} for e in events]


async def _pump(
    coordinator: Coordinator, channel: str, woke: asyncio.Event, changes: list[dict[str, Any]]
) -> None:
    async for message in coordinator.bus.subscribe(channel):
        if "seq" not in message:
            changes.append(message)
        woke.set()


@router.get("/tasks/{task_id}/stream")
async def task_stream(
    task_id: IdPath,
    request: Request,
    coordinator: CoordinatorDep,
    user: User,
    after: Annotated[int, Query(ge=0)] = 0,
    last_event_id: Annotated[str, Header()] = "",
) -> Response:
    """New log items of the task as they are stored, and its status changes."""
    if user is None:
        return Response("sign in first", status_code=401)
    await coordinator.repo.get_task(task_id)  # 404 for an unknown task
    start = int(last_event_id) if last_event_id.isdigit() else after

    async def stream() -> AsyncIterator[dict[str, str]]:
        woke = asyncio.Event()
        changes: list[dict[str, Any]] = []
        pump = asyncio.create_task(_pump(coordinator, f"task:{task_id}", woke, changes))
        last = start
        try:
            while True:
                events = await coordinator.events(task_id, after_id=last)
                if events:
                    last = events[-1].id
                    for sent in _render(events):
                        yield sent
                while changes:
                    change = changes.pop(0)
                    yield {"event": "task", "data": json.dumps(change, default=str)}
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woke.wait(), IDLE_POLL_SECONDS)
                    await asyncio.sleep(BATCH_SECONDS)
                woke.clear()
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump

    return EventSourceResponse(stream(), ping=15)
