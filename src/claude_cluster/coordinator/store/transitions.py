"""The one owner of task and run status.

Every status a task or a run takes is written here and nowhere else
(``tests/unit/coordinator/test_status_owner.py`` fails on any other assignment):
:func:`move_task` checks ``domain/states.py::TRANSITIONS``, stamps the timestamp the new
status carries, records the task event and notes a :class:`StatusChange` on the session;
:func:`move_run` does the same for runs with ``RUN_TRANSITIONS``. The store's transaction
helper (:meth:`~claude_cluster.coordinator.store.common.StoreBase._tx`) hands the noted
changes to the coordinator service once the transaction has committed, so every change is
counted and published exactly once whichever query made it.

A move applies to a row the session tracks (an ORM object: the flush writes it) or to a
snapshot (:func:`snapshot`, read with SQLAlchemy Core on the hot paths: claim, accept,
finish): then the move is one ``UPDATE`` of the changed columns, guarded by the status it
was read in, and several moves share one ``executemany``.

On PostgreSQL a claim's writes are one statement (:func:`assign_statement`), and the
agent's acceptance is one statement (:func:`accept_statement`): the run's
and the task's guarded ``UPDATE`` and the event's ``INSERT`` as data-modifying CTEs, checked
against the tables when it is built, run on a connection outside a transaction.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Any, TypeVar, cast

from sqlalchemy import (
    ARRAY,
    CTE,
    JSON,
    BigInteger,
    ColumnElement,
    Float,
    Integer,
    Select,
    String,
    Table,
    bindparam,
    case,
    func,
    insert,
    inspect,
    literal,
    null,
    select,
    true,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from claude_cluster.coordinator.store.tables import Agent, Base, Task, TaskEvent, TaskRun
from claude_cluster.domain.states import (
    RUNNING_TASK_STATUSES,
    AgentStatus,
    ErrorCategory,
    RunStatus,
    TaskStatus,
    can_transition,
    check_run_transition,
    check_transition,
)

M = TypeVar("M", bound=Base)

#: where a transaction keeps the changes it made until it commits
CHANGES_KEY = "claude_cluster.status_changes"


@dataclass(frozen=True)
class StatusChange:
    """A task moved from ``previous`` (``None``: it was created) to ``status``."""

    task_id: int
    previous: str | None
    status: str
    priority: str


#: the timestamp column each status stamps when a task enters it
_STAMPS = {
    TaskStatus.QUEUED: "queued_at",
    TaskStatus.ASSIGNED: "assigned_at",
    TaskStatus.COMPLETED: "completed_at",
    TaskStatus.FAILED: "failed_at",
    TaskStatus.CANCELLED: "cancelled_at",
}


_COLUMNS: dict[type[Base], list[Any]] = {}


def row_columns(model: type[Base]) -> list[Any]:
    """Every column of ``model``, labelled with its attribute name (for ``RETURNING``)."""
    cols = _COLUMNS.get(model)
    if cols is None:
        cols = _COLUMNS[model] = [
            attr.columns[0].label(attr.key) for attr in inspect(model).column_attrs
        ]
    return cols


def prefixed(columns: Iterable[ColumnElement[Any]], prefix: str) -> list[Any]:
    """``columns`` labelled ``prefix`` + their key: two rows' columns in one result."""
    return [column.label(f"{prefix}{column.key}") for column in columns]


def prefixed_snapshot(model: type[M], prefix: str, row: Row[Any], leave_out: str = "") -> M:
    """The columns of ``row`` named ``prefix`` + a column of ``model`` (see
    :func:`prefixed`; but ``leave_out``: a figure read beside them), as its snapshot."""
    columns = {
        key[len(prefix) :]: value
        for key, value in row._mapping.items()
        if key.startswith(prefix) and key != leave_out
    }
    return cast(M, Snapshot(**columns))


#: the statuses of a task being worked on, as stored (for ``IN`` in the one-statement paths)
WORKED_ON = sorted(status.value for status in RUNNING_TASK_STATUSES)


def select_rows(model: type[M]) -> Select[Any]:
    """``SELECT`` every column of ``model`` as plain rows (no ORM identity, no flush)."""
    return select(*row_columns(model))


@functools.cache
def select_by_key(model: type[Base], lock: bool) -> Select[Any]:
    """``SELECT`` one row of ``model`` by the bound parameter ``key`` (``FOR UPDATE`` when
    ``lock``). Built once: SQLAlchemy builds and hashes a new statement on every call, a
    cost that a prepared statement object pays only the first time."""
    query = select_rows(model).where(inspect(model).primary_key[0] == bindparam("key"))
    return query.with_for_update() if lock else query


class Snapshot(SimpleNamespace):
    """A row read with Core: its columns as attributes, like the ORM object it stands for,
    at a fraction of the cost of building one (no instrumentation, no identity map)."""


def snapshot(model: type[M], row: Row[Any]) -> M:
    """``row`` of ``model``'s table, read like a ``model`` object, written by a move."""
    return cast(M, Snapshot(**row._mapping))


async def connection(s: AsyncSession) -> AsyncConnection:
    """The transaction's connection, after writing what the session holds (Core statements
    on the connection skip the session's autoflush)."""
    if s.new or s.dirty or s.deleted:
        await s.flush()
    return await s.connection()


def _tracked(obj: Base) -> bool:
    """A row the session tracks (its flush writes it), not a :class:`Snapshot`."""
    return not isinstance(obj, Snapshot) and inspect(obj).session is not None


def note_change(s: AsyncSession, change: StatusChange) -> None:
    s.info.setdefault(CHANGES_KEY, []).append(change)


def _event_row(
    task_id: int,
    kind: str,
    message: str,
    details: dict[str, Any] | None,
    run_id: int | None,
    level: str,
    now: datetime,
) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "run_id": run_id,
        "seq": None,
        "timestamp": now,
        "kind": kind,
        "level": level,
        "message": message,
        "details": details or {},
    }


def add_event(
    s: AsyncSession,
    task_id: int,
    kind: str,
    message: str,
    details: dict[str, Any] | None = None,
    *,
    run_id: int | None = None,
    level: str = "info",
    now: datetime,
) -> None:
    """Record a coordinator event (``seq`` is only set on the agent's own events)."""
    s.add(TaskEvent(**_event_row(task_id, kind, message, details, run_id, level, now)))


def queue_new_task(values: dict[str, Any], now: datetime) -> None:
    """A task being created (its columns) enters the queue, before it is inserted."""
    values.update(status=TaskStatus.QUEUED.value, queued_at=now, updated_at=now)


async def created(s: AsyncSession, task: Task, now: datetime, details: dict[str, Any]) -> None:
    """Record the creation of an inserted task (it has its id now)."""
    message = f"queued with priority {task.priority}"
    conn = await connection(s)
    await conn.execute(
        insert(TaskEvent), [_event_row(task.id, "created", message, details, None, "info", now)]
    )
    note_change(s, StatusChange(task.id, None, task.status, task.priority))


async def create(
    conn: AsyncConnection,
    values: dict[str, Any],
    details: dict[str, Any],
    changes: list[StatusChange],
) -> Task | None:
    """Insert the task ``values`` (:func:`queue_new_task` gave it its status) with its
    ``created`` event, in one statement (:func:`create_statement`, PostgreSQL); ``None``
    when the issue has an open task already."""
    statement = create_statement(tuple(values))
    row = (await conn.execute(statement, {**values, "details": details})).first()
    if row is None:
        return None
    task = snapshot(Task, row)
    changes.append(StatusChange(task.id, None, task.status, task.priority))
    return task


@functools.cache
def create_statement(keys: tuple[str, ...]) -> Select[Any]:
    """A task created in one PostgreSQL statement: its ``INSERT`` (nothing when the issue
    has an open task: ``ON CONFLICT`` on the partial unique index) and its ``created``
    event, as data-modifying CTEs; returns the task's row. Parameters: the task's columns
    ``keys`` and the event's ``details``."""
    table = cast(Table, Task.__table__)
    index = next(i for i in table.indexes if i.name == "uq_tasks_open_issue")
    task = (
        pg_insert(Task)
        .values({key: bindparam(key, type_=table.c[key].type) for key in keys})
        .on_conflict_do_nothing(
            index_elements=list(index.columns),
            index_where=index.dialect_options["postgresql"]["where"],
        )
        .returning(*row_columns(Task))
        .cte("new_task")
    )
    event = event_cte(
        "created_event",
        select(
            task.c.id,
            null(),
            task.c.created_at,
            literal("created"),
            literal("queued with priority ") + task.c.priority,
            bindparam("details", type_=JSON),
        ),
    )
    return select(task).add_cte(event)


def event_cte(name: str, rows: Select[Any]) -> CTE:
    """The ``info`` events of a one-statement path, as a data-modifying CTE ``name``:
    one per row of ``rows`` (task id, run id, timestamp, kind, message, details)."""
    task_id, run_id, timestamp, kind, message, details = rows.selected_columns
    return (
        insert(TaskEvent)
        .from_select(
            ["task_id", "run_id", "timestamp", "kind", "level", "message", "details"],
            rows.with_only_columns(
                task_id,
                run_id,
                timestamp,
                kind,
                literal("info"),
                message,
                details,
                maintain_column_froms=True,
            ),
        )
        .cte(name)
    )


@dataclass
class Move:
    """One task move: ``task`` to ``target``, logged as ``kind``/``message``, with other
    columns of the task changed in the same statement (``fields``)."""

    task: Task
    target: TaskStatus
    kind: str
    message: str
    details: dict[str, Any] | None = None
    run_id: int | None = None
    level: str = "info"
    queued_at: datetime | None = None
    fields: dict[str, Any] = field(default_factory=dict)


async def move_tasks(s: AsyncSession, moves: Sequence[Move], now: datetime) -> None:
    """Apply ``moves``: each checked against ``TRANSITIONS``, stamped, logged and noted.

    Snapshots are written with one ``executemany`` per set of columns, each ``UPDATE``
    guarded by the status the task was read in (rows are locked by then: the guard only
    makes a stale snapshot fail loudly instead of writing over a newer status).
    Raises :class:`~claude_cluster.errors.IllegalTransition` for a move the table forbids.
    """
    batches: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    events = []
    for move in moves:
        task = move.task
        previous = TaskStatus(task.status)
        check_transition(previous, move.target)
        values: dict[str, Any] = {
            **move.fields,
            "status": move.target.value,
            "updated_at": now,
        }
        if move.target == TaskStatus.IN_PROGRESS:
            values["started_at"] = task.started_at or now
        elif move.target in _STAMPS:
            values[_STAMPS[move.target]] = move.queued_at or now
        for key, value in values.items():
            setattr(task, key, value)
        if not _tracked(task):
            params = {f"v_{k}": v for k, v in values.items()}
            params["k_id"], params["k_status"] = task.id, previous.value
            batches.setdefault(tuple(sorted(values)), []).append(params)
        events.append(
            _event_row(task.id, move.kind, move.message, move.details, move.run_id, move.level, now)
        )
        note_change(s, StatusChange(task.id, previous.value, move.target.value, task.priority))
    conn = await connection(s)
    for keys, rows in batches.items():
        stmt = (
            update(Task)
            .where(Task.id == bindparam("k_id"), Task.status == bindparam("k_status"))
            .values({k: bindparam(f"v_{k}") for k in keys})
        )
        done = await conn.execute(stmt, rows)
        if (len(rows) == 1 or conn.dialect.supports_sane_multi_rowcount) and done.rowcount != len(
            rows
        ):
            raise RuntimeError("a task changed under a locked snapshot")
    if events:
        await conn.execute(insert(TaskEvent), events)


async def move_task(
    s: AsyncSession,
    task: Task,
    target: TaskStatus,
    now: datetime,
    *,
    kind: str,
    message: str,
    details: dict[str, Any] | None = None,
    run_id: int | None = None,
    level: str = "info",
    queued_at: datetime | None = None,
    **fields: Any,
) -> None:
    """Move one task (see :func:`move_tasks`); ``queued_at`` overrides the queue stamp (a
    retry is queued from the end of its back-off)."""
    await move_tasks(
        s, [Move(task, target, kind, message, details, run_id, level, queued_at, fields)], now
    )


async def change_task(s: AsyncSession, task: Task, changes: dict[str, Any]) -> None:
    """Write columns of a task other than its status (a snapshot or a tracked row)."""
    if "status" in changes:
        raise ValueError("a status is changed by a move")
    for key, value in changes.items():
        setattr(task, key, value)
    if changes and not _tracked(task):
        conn = await connection(s)
        await conn.execute(update(Task).where(Task.id == task.id).values(changes))


#: the figures of a run that has just begun
NEW_RUN_FIGURES: dict[str, float | int] = {
    "cost_usd": 0.0,
    "input_tokens": 0,
    "output_tokens": 0,
    "cache_read_tokens": 0,
    "cache_creation_tokens": 0,
    "num_turns": 0,
    "fix_rounds": 0,
}


def new_run(task: Task, agent_id: str, now: datetime) -> TaskRun:
    """A run of ``task`` for ``agent_id``, being pushed (``dispatching``), attempt counted."""
    task.attempts += 1
    return TaskRun(
        task_id=task.id,
        attempt=task.attempts,
        agent_id=agent_id,
        status=RunStatus.DISPATCHING.value,
        kind="followup" if task.feedback else "initial",
        started_at=now,
        last_seen_at=now,
        branch=task.github_branch,
        **NEW_RUN_FIGURES,
        changed_files=[],
    )


def values_of(obj: Base) -> dict[str, Any]:
    """The columns set on a new (transient) row, for a Core ``INSERT``: the others get
    their defaults."""
    given = inspect(obj).dict
    return {a.key: given[a.key] for a in inspect(type(obj)).column_attrs if a.key in given}


_INSERT_TASK: Any = None


async def insert_task(s: AsyncSession, values: dict[str, Any]) -> Task:
    """Insert a new task (:func:`queue_new_task` gave it its status); the inserted row.
    One prepared statement for every insert: only the parameters change."""
    global _INSERT_TASK
    if _INSERT_TASK is None:
        _INSERT_TASK = insert(Task).returning(*row_columns(Task))
    conn = await connection(s)
    row = (await conn.execute(_INSERT_TASK, values)).one()
    return snapshot(Task, row)


async def move_run(
    s: AsyncSession,
    run: TaskRun,
    target: RunStatus,
    now: datetime,
    *,
    category: ErrorCategory | None = None,
    message: str | None = None,
    **fields: Any,
) -> None:
    """Move ``run`` to ``target``: accepted (``running``) or ended, checked and stamped,
    with other columns (the reported figures) in the same statement."""
    previous = RunStatus(run.status)
    check_run_transition(previous, target)
    values: dict[str, Any] = {**fields, "status": target.value}
    if target == RunStatus.RUNNING:
        values["accepted_at"] = values["last_seen_at"] = now
    else:
        values["ended_at"] = now
        values["error_category"] = category.value if category else None
        values["message"] = message
    for key, value in values.items():
        setattr(run, key, value)
    if not _tracked(run):
        conn = await connection(s)
        done = await conn.execute(
            update(TaskRun)
            .where(TaskRun.id == run.id, TaskRun.status == previous.value)
            .values(values)
        )
        if done.rowcount != 1:
            raise RuntimeError(f"run {run.id} changed under a locked snapshot")


async def accept(
    conn: AsyncConnection, run_id: int, now: datetime, changes: list[StatusChange]
) -> Task | None:
    """Run ``run_id`` accepted, in one statement (:func:`accept_statement`, PostgreSQL);
    the task when it moved, its change added to ``changes``."""
    row = (await conn.execute(accept_statement(), {"run_id": run_id, "now": now})).first()
    if row is None:
        return None
    task = snapshot(Task, row)
    changes.append(StatusChange(task.id, TaskStatus.ASSIGNED.value, task.status, task.priority))
    return task


@functools.cache
def succeed_statement(
    target: TaskStatus,
    run_keys: Sequence[str],
    task_keys: Sequence[str],
    agent_values: Callable[[ColumnElement[float], ColumnElement[datetime]], dict[str, Any]],
) -> Select[Any]:
    """A run's success, in one PostgreSQL statement, as data-modifying CTEs: the
    ``running`` run → ``succeeded`` with its figures (``run_keys``), its agent's slot and
    statistics (``agent_values`` of the run's duration in seconds and the time), its task's other
    columns (``task_keys``, and the run's cost added) with its move to ``target`` when the
    task is being worked on (else its status stays, as in a transaction), and the
    ``run_succeeded`` event. Returns the run's and the task's columns (prefixed ``run_`` and
    ``task_``) and the task's status before (``previous``); no row when the run is not this
    agent's ``running`` run (the transaction handles the rest and says why). Built once
    per set of arguments (they are hashable: tuples and a function).

    Parameters: ``run``, ``agent``, ``now``, ``cost``, ``run_message``, ``event_message``,
    ``event_details``, ``r_<key>`` and ``t_<key>`` (named after no column: an ``UPDATE``
    would also set those)."""
    check_run_transition(RunStatus.RUNNING, RunStatus.SUCCEEDED)
    # a task being worked on from which the table forbids ``target`` (``assigned`` →
    # ``review``) is left to the transaction, which refuses the move
    forbidden = [s for s in WORKED_ON if not can_transition(TaskStatus(s), target)]
    now = bindparam("now", type_=TaskRun.__table__.c.ended_at.type)
    run = (
        update(TaskRun)
        .where(
            TaskRun.id == bindparam("run"),
            TaskRun.agent_id == bindparam("agent"),
            TaskRun.status == RunStatus.RUNNING.value,
            ~select(Task.id).where(Task.id == TaskRun.task_id, Task.status.in_(forbidden)).exists(),
        )
        .values(
            status=RunStatus.SUCCEEDED.value,
            ended_at=now,
            error_category=None,
            message=bindparam("run_message", type_=String()),
            **{key: bindparam(f"r_{key}", type_=TaskRun.__table__.c[key].type) for key in run_keys},
        )
        .returning(*row_columns(TaskRun))
        .cte("succeeded_run")
    )
    agent = (
        update(Agent)
        .where(Agent.id == run.c.agent_id)
        .values(agent_values(sql_cast(func.extract("epoch", now - run.c.started_at), Float), now))
        .returning(Agent.id)
        .cte("released_agent")
    )
    before = select(Task.id, Task.status).where(Task.id == run.c.task_id).cte("task_before")
    moves = Task.status.in_([s for s in WORKED_ON if s not in forbidden])
    stamp = _STAMPS.get(target)
    task = (
        update(Task)
        .where(Task.id == run.c.task_id)
        .values(
            status=case((moves, target.value), else_=Task.status),
            updated_at=now,
            cost_usd=func.coalesce(Task.cost_usd, 0.0) + bindparam("cost", type_=Float()),
            **({stamp: case((moves, now), else_=getattr(Task, stamp))} if stamp else {}),
            **{key: bindparam(f"t_{key}", type_=Task.__table__.c[key].type) for key in task_keys},
        )
        .returning(*row_columns(Task))
        .cte("succeeded_task")
    )
    event = event_cte(
        "succeeded_event",
        select(
            task.c.id,
            run.c.id,
            now,
            literal("run_succeeded"),
            bindparam("event_message", type_=String()),
            bindparam("event_details", type_=JSON),
        ).select_from(task.join(run, true())),
    )
    return (
        select(
            *prefixed(run.c, "run_"),
            *prefixed(task.c, "task_"),
            before.c.status.label("previous"),
        )
        .select_from(run.join(task, true()).join(before, true()))
        .add_cte(agent, event)
    )


@functools.cache
def accept_statement() -> Select[Any]:
    """The agent took the run, in one PostgreSQL statement: run ``dispatching`` →
    ``running`` and its task ``assigned`` → ``in_progress``, each guarded by the status it
    leaves, with the ``accepted`` event; returns the task's row when the task moved (no row:
    a report or a sweep got there first). Parameters: ``run_id``, ``now``."""
    check_run_transition(RunStatus.DISPATCHING, RunStatus.RUNNING)
    check_transition(TaskStatus.ASSIGNED, TaskStatus.IN_PROGRESS)
    now = bindparam("now", type_=TaskRun.__table__.c.accepted_at.type)
    run = (
        update(TaskRun)
        .where(TaskRun.id == bindparam("run_id"), TaskRun.status == RunStatus.DISPATCHING.value)
        .values(status=RunStatus.RUNNING.value, accepted_at=now, last_seen_at=now)
        .returning(TaskRun.id.label("run_id"), TaskRun.task_id, TaskRun.agent_id)
        .cte("accepted_run")
    )
    task = (
        update(Task)
        .where(Task.id == run.c.task_id, Task.status == TaskStatus.ASSIGNED.value)
        .values(
            status=TaskStatus.IN_PROGRESS.value,
            started_at=func.coalesce(Task.started_at, now),
            updated_at=now,
        )
        .returning(*row_columns(Task))
        .cte("started_task")
    )
    message = (
        literal("run ") + sql_cast(run.c.run_id, String) + literal(" accepted by ") + run.c.agent_id
    )
    event = event_cte(
        "accepted_event",
        select(
            task.c.id, run.c.run_id, now, literal("accepted"), message, literal({}, JSON)
        ).select_from(task.join(run, true())),
    )
    return select(task).add_cte(event)


@functools.cache
def assign_statement() -> Select[Any]:
    """A claim's writes in one PostgreSQL statement, as data-modifying CTEs: each agent's
    slots taken by a conditional ``UPDATE`` (an agent another replica filled since it was
    read takes none), a ``dispatching`` run per pick whose agent had room, its task
    ``queued`` → ``assigned`` and the ``assigned`` event. Returns a row per claimed task:
    the run's and the task's columns (prefixed ``run_`` and ``task_``), the agent's new
    ``agent_active`` and ``agent_status``, and ``runs_inserted`` (a check: every run's task
    moved). Parameters: ``now`` and one array per column of the picks, in step:
    ``task_ids``, ``agent_ids``, ``attempts``, ``kinds``, ``branches``."""
    check_transition(TaskStatus.QUEUED, TaskStatus.ASSIGNED)
    now = bindparam("now", type_=TaskRun.__table__.c.started_at.type)
    picks = (
        func.unnest(
            bindparam("task_ids", type_=ARRAY(BigInteger)),
            bindparam("agent_ids", type_=ARRAY(String)),
            bindparam("attempts", type_=ARRAY(Integer)),
            bindparam("kinds", type_=ARRAY(String)),
            bindparam("branches", type_=ARRAY(String)),
        )
        .table_valued("task_id", "agent_id", "attempt", "kind", "branch")
        .render_derived(name="pick")
    )
    pick = select(picks).cte("picks")
    wanted = (
        select(pick.c.agent_id, func.count().label("n")).group_by(pick.c.agent_id).cte("wanted")
    )
    after = Agent.active_task_count + wanted.c.n
    slots = (
        update(Agent)
        .where(Agent.id == wanted.c.agent_id, after <= Agent.max_concurrent_tasks)
        .values(
            active_task_count=after,
            # candidates are online, so the status follows the new load
            status=case(
                (after >= Agent.max_concurrent_tasks, AgentStatus.OVERLOADED.value),
                else_=AgentStatus.BUSY.value,
            ),
        )
        .returning(Agent.id, Agent.active_task_count, Agent.status)
        .cte("slots")
    )
    run_columns = {
        "task_id": pick.c.task_id,
        "attempt": pick.c.attempt,
        "agent_id": pick.c.agent_id,
        "status": literal(RunStatus.DISPATCHING.value),
        "kind": pick.c.kind,
        "started_at": now,
        "last_seen_at": now,
        "branch": pick.c.branch,
        **{key: literal(value) for key, value in NEW_RUN_FIGURES.items()},
        "changed_files": literal([], JSON),
    }
    runs = (
        insert(TaskRun)
        .from_select(
            list(run_columns),
            select(*run_columns.values()).join_from(pick, slots, slots.c.id == pick.c.agent_id),
            include_defaults=False,
        )
        .returning(*row_columns(TaskRun))
        .cte("new_runs")
    )
    tasks = (
        update(Task)
        .where(Task.id == runs.c.task_id, Task.status == TaskStatus.QUEUED.value)
        .values(
            status=TaskStatus.ASSIGNED.value,
            updated_at=now,
            assigned_at=now,
            attempts=runs.c.attempt,
            assigned_agent_id=runs.c.agent_id,
        )
        .returning(*row_columns(Task))
        .cte("assigned_tasks")
    )
    message = (
        literal("run ")
        + sql_cast(runs.c.id, String)
        + literal(" (attempt ")
        + sql_cast(runs.c.attempt, String)
        + literal(") to ")
        + runs.c.agent_id
    )
    events = event_cte(
        "assigned_events",
        select(
            tasks.c.id,
            runs.c.id,
            now,
            literal("assigned"),
            message,
            func.json_build_object("run_id", runs.c.id, "agent_id", runs.c.agent_id),
        ).join_from(runs, tasks, tasks.c.id == runs.c.task_id),
    )
    return (
        select(
            *prefixed(runs.c, "run_"),
            *prefixed(tasks.c, "task_"),
            slots.c.active_task_count.label("agent_active"),
            slots.c.status.label("agent_status"),
            select(func.count()).select_from(runs).scalar_subquery().label("runs_inserted"),
        )
        .join_from(runs, tasks, tasks.c.id == runs.c.task_id)
        .join(slots, slots.c.id == runs.c.agent_id)
        .add_cte(events)
    )
