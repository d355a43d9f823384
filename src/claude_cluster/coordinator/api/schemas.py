"""Request and response bodies of the REST API (the wire models for agents live in
``claude_cluster.domain.wire``)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from claude_cluster.domain.states import Priority, TaskStatus
from claude_cluster.domain.wire import NoNul

_REPO = re.compile(r"^([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+|/.+|file://.+)$")


class TaskCreate(NoNul):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=256)  # GitHub's limit for issue titles
    description: str = Field(default="", max_length=65_536)  # GitHub's for issue bodies
    github_repository: str = Field(
        min_length=1,
        max_length=500,
        description="owner/name of a GitHub repository, or an absolute path or file:// URL "
        "of a local git repository",
    )
    github_issue_number: int = Field(ge=1, le=2**31 - 1)
    priority: Priority | None = None
    requirements: list[Annotated[str, Field(max_length=100)]] | None = Field(
        default=None, max_length=20
    )
    labels: list[Annotated[str, Field(max_length=100)]] = Field(
        default_factory=list, max_length=100
    )
    budget_usd: float | None = Field(default=None, gt=0, le=1e6)
    test_command: str | None = Field(default=None, max_length=1000)

    @field_validator("github_repository")
    @classmethod
    def _repository(cls, value: str) -> str:
        if not _REPO.match(value) or ".." in value.split("/"):
            raise ValueError("must be owner/name, an absolute path or a file:// URL")
        return value


class TaskUpdate(NoNul):
    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, min_length=1, max_length=256)
    description: str | None = Field(default=None, max_length=65_536)
    priority: Priority | None = None
    requirements: list[Annotated[str, Field(max_length=100)]] | None = Field(
        default=None, max_length=20
    )
    budget_usd: float | None = Field(default=None, gt=0, le=1e6)
    status: TaskStatus | None = Field(
        default=None, description="only 'cancelled' is accepted here (same as DELETE)"
    )

    @field_validator("title", "description", "requirements")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # omitted means "unchanged"; an explicit null would blank a column that cannot be
        if value is None:
            raise ValueError("may be left out but not null")
        return value


class TaskOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    title: str
    description: str
    status: str
    priority: str
    github_repository: str
    github_issue_number: int
    github_branch: str | None
    github_pr_number: int | None
    github_pr_url: str | None
    labels: list[str]
    #: what an agent must have to take the task (explicit labels or the API)
    requirements: list[str]
    #: what raises an agent's score but restricts nothing (keywords of the issue)
    preferences: list[str] = []
    #: why a queued task waits when no online, ready agent can take it
    #: (``waiting for an agent with: testing``); None when one can or it is not queued
    waiting_for: str | None = None
    #: the runner the task's contract names, when known (the operator's contract, or an
    #: agent that refused it for lack of it): only agents that offer it take the task
    required_runner: str | None = None
    estimated_complexity: str
    estimated_duration_minutes: int
    assigned_agent_id: str | None
    assigned_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None
    not_before: datetime | None
    result_data: dict[str, Any]
    error_message: str | None
    attempts: int
    retry_count: int
    budget_usd: float | None
    cost_usd: float
    created_at: datetime
    updated_at: datetime
    created_by: str


class RunOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    task_id: int
    attempt: int
    agent_id: str
    status: str
    kind: str
    started_at: datetime
    accepted_at: datetime | None
    last_seen_at: datetime
    ended_at: datetime | None
    error_category: str | None
    message: str | None
    cost_usd: float
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_creation_tokens: int
    num_turns: int
    session_id: str | None
    branch: str | None
    commit_sha: str | None
    pr_number: int | None
    pr_url: str | None
    tests_command: str | None
    tests_passed: int | None
    tests_failed: int | None
    tests_ok: bool | None
    fix_rounds: int
    changed_files: list[str]
    #: when the coordinator last confirmed that the run may deliver (the fencing check)
    delivery_confirmed_at: datetime | None = None


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    task_id: int
    run_id: int | None
    seq: int | None
    timestamp: datetime
    kind: str
    level: str
    message: str
    details: dict[str, Any]


class AgentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    hostname: str
    ip_address: str
    port: int
    url: str
    specialties: list[str]
    capabilities: list[str]
    max_concurrent_tasks: int
    status: str
    active_task_count: int
    current_load: float
    total_tasks_completed: int
    total_tasks_failed: int
    average_task_duration: float
    last_heartbeat: datetime | None
    registered_at: datetime
    last_task_completed_at: datetime | None
    workspace_path: str
    version: str
    draining: bool
    #: why the agent gets no work (its start checks failed, or runs failed for a reason of
    #: the agent ``fault_streak`` times in a row); None = ready
    not_ready_reason: str | None = None
    #: runs in a row that failed for a reason of the agent (runner, credentials, sandbox,
    #: disk); a success resets it
    fault_streak: int = 0
    #: the runners the agent can run (its own and those it can build); None: not told (an
    #: older agent), which takes no task that needs a runner
    runners: list[str] | None = None
    #: what the agent told about itself at registration (runner, model, ``sandbox``,
    #: ``ready``, ``not_ready_reason``); never credentials
    configuration: dict[str, Any] = {}


class RegistrationOut(BaseModel):
    agent: AgentOut
    token: str
    created: bool
    heartbeat_interval: float
    lease_seconds: float


class AssignIn(NoNul):
    model_config = ConfigDict(extra="forbid")
    task_id: int = Field(ge=1, le=2**63 - 1)


class DrainIn(NoNul):
    model_config = ConfigDict(extra="forbid")
    drain: bool = True


class TokenCreate(NoNul):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="who or what holds it")
    role: str = Field(default="viewer", pattern="^(admin|viewer)$")


class TokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    role: str
    created_at: datetime
    revoked: bool


class TokenCreated(TokenOut):
    token: str = Field(description="shown once; only its SHA-256 is stored")
