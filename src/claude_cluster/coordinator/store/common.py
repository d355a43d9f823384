"""What every query module of the store shares: the clock, conflict retries, the status
lists the queries filter on, the not-found lookup, and :class:`StoreBase`, the session
factory and the event helper each query mixin of
:class:`~claude_cluster.coordinator.store.repository.Repository` builds on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from claude_cluster.coordinator.store.tables import Base, Task
from claude_cluster.coordinator.store.transitions import CHANGES_KEY, StatusChange, add_event
from claude_cluster.domain.states import (
    ACTIVE_RUN_STATUSES,
    ONLINE_AGENT_STATUSES,
    TERMINAL_TASK_STATUSES,
)
from claude_cluster.errors import NotFound

#: the status values as stored, for ``IN`` filters
ACTIVE_RUNS = [s.value for s in ACTIVE_RUN_STATUSES]
ONLINE_AGENTS = [s.value for s in ONLINE_AGENT_STATUSES]
TERMINAL_TASKS = [s.value for s in TERMINAL_TASK_STATUSES]


P = ParamSpec("P")
T = TypeVar("T")
M = TypeVar("M", bound=Base)

#: deadlock_detected, serialization_failure
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


def _is_conflict(exc: DBAPIError) -> bool:
    state = getattr(exc.orig, "sqlstate", None)
    return (
        state in _RETRYABLE_SQLSTATES
        or "database is locked" in str(exc.orig)
        # a pooled connection the server had closed (a restart): the pool has dropped it
        or exc.connection_invalidated
    )


def retry_conflicts(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Run the transaction again when the database aborted it for a deadlock or a
    serialization conflict, or its pooled connection turned out to be closed (it changed
    nothing, so running it again is safe)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        for attempt in range(5):
            try:
                return await fn(*args, **kwargs)
            except DBAPIError as exc:
                if attempt == 4 or not _is_conflict(exc):
                    raise
                await asyncio.sleep(random.uniform(0, 0.02 * 2**attempt))  # noqa: S311
        raise AssertionError("unreachable")

    return wrapper


def utcnow() -> datetime:
    return datetime.now(UTC)


async def get_or_raise(
    s: AsyncSession, model: type[M], ident: int | str, kind: str, *, with_for_update: bool = False
) -> M:
    """The ``model`` row ``ident``, or :class:`NotFound` naming it as ``kind``."""
    row = await s.get(model, ident, with_for_update=with_for_update)
    if row is None:
        raise NotFound(kind=kind, id=ident)
    return row


class StoreBase:
    """The session factory and the steps every query mixin takes.

    Each public method of a mixin is one transaction, so a request that fails halfway
    changes nothing. ``_postgres`` turns on row locks (``FOR UPDATE``, ``SKIP LOCKED``);
    SQLite serialises writers with ``BEGIN IMMEDIATE`` instead.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, postgres: bool) -> None:
        self._sessions = sessions
        self._postgres = postgres
        #: hears the status changes of each committed transaction (the coordinator service)
        self.on_status_change: Callable[[list[StatusChange]], None] | None = None

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncSession]:
        """One transaction; the status changes it made are handed on after the commit."""
        async with self._sessions.begin() as s:
            yield s
        changes = s.info.pop(CHANGES_KEY, None)
        if changes and self.on_status_change is not None:
            self.on_status_change(changes)

    @contextlib.asynccontextmanager
    async def _statement(self) -> AsyncIterator[tuple[AsyncConnection, list[StatusChange]]]:
        """A connection outside any transaction, for a change made by one statement (its
        own transaction: no BEGIN and COMMIT round trips); the status changes noted in the
        list are handed on after it."""
        engine = self._sessions.kw["bind"]
        changes: list[StatusChange] = []
        async with engine.connect() as conn:
            yield await conn.execution_options(isolation_level="AUTOCOMMIT"), changes
        if changes and self.on_status_change is not None:
            self.on_status_change(changes)

    async def _task_for_update(self, s: AsyncSession, task_id: int) -> Task:
        return await get_or_raise(s, Task, task_id, "task", with_for_update=self._postgres)

    @staticmethod
    def _event(
        s: AsyncSession,
        task_id: int,
        kind: str,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        run_id: int | None = None,
        level: str = "info",
    ) -> None:
        add_event(s, task_id, kind, message, details, run_id=run_id, level=level, now=utcnow())
