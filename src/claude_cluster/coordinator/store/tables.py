"""Tables of the coordinator. SPEC.md §3 describes them; migrations must match them
(``tests/integration/coordinator/test_migrations.py`` runs ``alembic check``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Partial indexes carry the same predicate on both backends.
_NON_TERMINAL = "status NOT IN ('completed', 'failed', 'cancelled')"
_ACTIVE_RUN = "status IN ('dispatching', 'running')"
# BigInteger ids that are still INTEGER PRIMARY KEY (rowid) on SQLite
_Id = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on both backends (SQLite itself would hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use datetime.now(UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        list[str]: JSON,
        datetime: UTCDateTime(),
    }


class Agent(Base):
    __tablename__ = "agents"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    hostname: Mapped[str] = mapped_column(String(255), default="")
    ip_address: Mapped[str] = mapped_column(String(64), default="")
    port: Mapped[int] = mapped_column(Integer, default=8081)
    url: Mapped[str] = mapped_column(String(500))
    specialties: Mapped[list[str]] = mapped_column(default=list)
    capabilities: Mapped[list[str]] = mapped_column(default=list)
    max_concurrent_tasks: Mapped[int] = mapped_column(Integer, default=3)
    status: Mapped[str] = mapped_column(String(20), default="idle")
    #: slots taken by active runs; owned by the coordinator (taken by a claim, given back
    #: when a run ends)
    active_task_count: Mapped[int] = mapped_column(Integer, default=0)
    #: load the agent reported, 0–1
    current_load: Mapped[float] = mapped_column(Float, default=0.0)
    cpu_cores: Mapped[int | None] = mapped_column(Integer)
    memory_gb: Mapped[float | None] = mapped_column(Float)
    disk_gb: Mapped[float | None] = mapped_column(Float)
    total_tasks_completed: Mapped[int] = mapped_column(Integer, default=0)
    total_tasks_failed: Mapped[int] = mapped_column(Integer, default=0)
    #: seconds, running mean over finished runs
    average_task_duration: Mapped[float] = mapped_column(Float, default=0.0)
    uptime_percentage: Mapped[float] = mapped_column(Float, default=100.0)
    last_heartbeat: Mapped[datetime | None]
    registered_at: Mapped[datetime]
    last_task_completed_at: Mapped[datetime | None]
    workspace_path: Mapped[str] = mapped_column(String(500), default="")
    configuration: Mapped[dict[str, Any]] = mapped_column(default=dict)
    version: Mapped[str] = mapped_column(String(64), default="")
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    token_hash: Mapped[str] = mapped_column(String(64), index=True)
    #: bearer the coordinator presents when calling the agent (the agent chose it)
    call_secret: Mapped[str | None] = mapped_column(String(256))
    draining: Mapped[bool] = mapped_column(Boolean, default=False)
    dispatch_failures: Mapped[int] = mapped_column(Integer, default=0)
    cooldown_until: Mapped[datetime | None]
    #: why the agent cannot run work (its own start checks, or runs that failed for a
    #: reason of the agent); NULL = ready. A not-ready agent gets no dispatch.
    not_ready_reason: Mapped[str | None] = mapped_column(Text)
    #: runs in a row that failed for a reason of the agent, not of the task
    fault_streak: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: the runners the agent says it can run (known names only); NULL: not told (an older
    #: agent), which takes no task that needs a runner
    runners: Mapped[list[str] | None] = mapped_column(JSON)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        # One task per (repository, issue) while it is not terminal.
        Index(
            "uq_tasks_open_issue",
            "github_repository",
            "github_issue_number",
            unique=True,
            sqlite_where=text(_NON_TERMINAL),
            postgresql_where=text(_NON_TERMINAL),
        ),
    )

    id: Mapped[int] = mapped_column(_Id, primary_key=True, autoincrement=True)
    title: Mapped[str] = mapped_column(String(500))
    description: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(20), index=True)
    priority: Mapped[str] = mapped_column(String(10))
    #: priority as a number so the claim query can sort by it (urgent = 3 … low = 0)
    priority_rank: Mapped[int] = mapped_column(Integer)
    github_repository: Mapped[str] = mapped_column(String(500))
    github_issue_number: Mapped[int] = mapped_column(Integer)
    #: what agents fetch: local path, file:// or https URL
    repository_url: Mapped[str] = mapped_column(String(1000))
    github_branch: Mapped[str | None] = mapped_column(String(255))
    github_pr_number: Mapped[int | None] = mapped_column(Integer)
    github_pr_url: Mapped[str | None] = mapped_column(String(1000))
    labels: Mapped[list[str]] = mapped_column(default=list)
    #: what an agent must have (explicit: ``claude-code-<area>`` labels, the API)
    requirements: Mapped[list[str]] = mapped_column(default=list)
    #: what raises an agent's score but restricts nothing (keywords of the issue)
    preferences: Mapped[list[str]] = mapped_column(default=list, server_default="[]")
    #: the runner the task's contract names (the operator's at creation, else the one an
    #: agent refused for lack of it); only agents that offer it take the task. NULL: any
    required_runner: Mapped[str | None] = mapped_column(String(20))
    estimated_complexity: Mapped[str] = mapped_column(String(10), default="medium")
    estimated_duration_minutes: Mapped[int] = mapped_column(Integer, default=180)
    assigned_agent_id: Mapped[str | None] = mapped_column(ForeignKey("agents.id"))
    assigned_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]
    #: the ready time of a queued task (retry back-off); NULL = now
    not_before: Mapped[datetime | None]
    queued_at: Mapped[datetime | None]
    result_data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error_message: Mapped[str | None] = mapped_column(Text)
    #: runs started for this task; always increments
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: retryable failures so far; the task fails when it passes TASK_RETRY_ATTEMPTS
    retry_count: Mapped[int] = mapped_column(Integer, default=0)
    budget_usd: Mapped[float | None] = mapped_column(Float)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    test_command: Mapped[str | None] = mapped_column(String(1000))
    #: review feedback waiting for a follow-up run
    feedback: Mapped[str | None] = mapped_column(Text)
    session_id: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(200), default="")


# the claim's read: most urgent first, then oldest, in the index's own order
Index("ix_tasks_claim", Task.status, Task.priority_rank.desc(), Task.created_at, Task.id)


class TaskRun(Base):
    """One attempt of a task on an agent (DESIGN §3)."""

    __tablename__ = "task_runs"
    __table_args__ = (
        UniqueConstraint("task_id", "attempt"),
        # At most one active run per task, enforced by the database.
        Index(
            "uq_task_runs_active",
            "task_id",
            unique=True,
            sqlite_where=text(_ACTIVE_RUN),
            postgresql_where=text(_ACTIVE_RUN),
        ),
        Index("ix_task_runs_agent_status", "agent_id", "status"),
    )

    id: Mapped[int] = mapped_column(_Id, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.id"))
    status: Mapped[str] = mapped_column(String(20))
    kind: Mapped[str] = mapped_column(String(20), default="initial")
    started_at: Mapped[datetime]
    accepted_at: Mapped[datetime | None]
    last_seen_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    error_category: Mapped[str | None] = mapped_column(String(40))
    message: Mapped[str | None] = mapped_column(Text)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_creation_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    num_turns: Mapped[int] = mapped_column(Integer, default=0)
    session_id: Mapped[str | None] = mapped_column(String(100))
    branch: Mapped[str | None] = mapped_column(String(255))
    commit_sha: Mapped[str | None] = mapped_column(String(64))
    pr_number: Mapped[int | None] = mapped_column(Integer)
    pr_url: Mapped[str | None] = mapped_column(String(1000))
    tests_command: Mapped[str | None] = mapped_column(String(1000))
    tests_passed: Mapped[int | None] = mapped_column(Integer)
    tests_failed: Mapped[int | None] = mapped_column(Integer)
    tests_ok: Mapped[bool | None] = mapped_column(Boolean)
    fix_rounds: Mapped[int] = mapped_column(Integer, default=0)
    changed_files: Mapped[list[str]] = mapped_column(default=list)
    log_excerpt: Mapped[str | None] = mapped_column(Text)
    #: when the coordinator confirmed that this run still holds its task and may deliver
    #: (the fencing check before a push or a pull request)
    delivery_confirmed_at: Mapped[datetime | None]


class TaskEvent(Base):
    """The seed's task_execution_logs: what happened to a task, and every run event."""

    __tablename__ = "task_events"
    __table_args__ = (
        UniqueConstraint("run_id", "seq"),
        Index("ix_task_events_task", "task_id", "id"),
    )

    id: Mapped[int] = mapped_column(_Id, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("task_runs.id", ondelete="CASCADE"))
    seq: Mapped[int | None] = mapped_column(Integer)
    timestamp: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(40))
    level: Mapped[str] = mapped_column(String(10), default="info")
    message: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(100), primary_key=True)  #: X-GitHub-Delivery
    event: Mapped[str] = mapped_column(String(50))
    action: Mapped[str | None] = mapped_column(String(50))
    repository: Mapped[str | None] = mapped_column(String(500))
    received_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(20))  #: received, processed, ignored, error, refused
    reason: Mapped[str | None] = mapped_column(Text)
    task_id: Mapped[int | None] = mapped_column(Integer)
    #: the verified body, kept until the delivery is processed (a crash resumes from it)
    payload: Mapped[str | None] = mapped_column(Text)
    #: what orders deliveries: "owner/repo#number" of the issue or pull request
    issue_key: Mapped[str | None] = mapped_column(String(600))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None]
    processed_at: Mapped[datetime | None]


class ClusterLease(Base):
    """A named lease held by one coordinator process at a time (e.g. the poller of one
    repository): the holder renews it before ``expires_at``; anyone may take it after."""

    __tablename__ = "cluster_leases"

    name: Mapped[str] = mapped_column(String(300), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime]


class OnceMark(Base):
    """Something that must happen once cluster-wide (a "once" comment, a budget refusal):
    inserting the key claims it; a second insert fails."""

    __tablename__ = "once_marks"

    key: Mapped[str] = mapped_column(String(500), primary_key=True)
    created_at: Mapped[datetime]


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(_Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    #: "admin" (everything an admin token may do) or "viewer" (read-only)
    role: Mapped[str] = mapped_column(String(16), default="admin", server_default="admin")


class DashboardSession(Base):
    """A signed-in browser: the cookie holds a random id, the row its SHA-256 (a stolen
    database does not sign anyone in). Signing out deletes the row."""

    __tablename__ = "dashboard_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
