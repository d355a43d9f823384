"""Wire models exchanged between the coordinator and the agents.

These are the only shapes that cross the coordinator ↔ agent boundary; SPEC.md §5 is their
normative description. Both sides import them, so a change here is a protocol change.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from claude_cluster.domain.contract import OperatorPolicy
from claude_cluster.domain.states import AgentStatus, ErrorCategory, Priority

# Bounds that match where each value is stored (SPEC §7 "Bounded input"): a value the
# database could not hold is a 422 naming the field, never a 500.
#: an INTEGER column
Int32 = Annotated[int, Field(ge=0, le=2**31 - 1)]
#: a BIGINT column (ids, token counts)
Int64 = Annotated[int, Field(ge=0, le=2**63 - 1)]
#: a short name (specialty, capability, file path)
Name = Annotated[str, Field(max_length=200)]
#: a runner's name as an agent sends it (checked against the known runners where stored)
RunnerName = Annotated[str, Field(max_length=40)]
#: registration ``configuration`` and ``metadata``, each as JSON
MAX_METADATA_BYTES = 16 * 1024
#: one reported event, as JSON
MAX_EVENT_BYTES = 64 * 1024
MAX_EVENTS_PER_BATCH = 500
MAX_CHANGED_FILES = 10_000


def _json_size(value: Any) -> int:
    return len(json.dumps(value, default=str, separators=(",", ":")).encode())


def nul_free(value: Any, where: str = "") -> None:
    """Refuse a NUL character anywhere in ``value`` (PostgreSQL cannot store one in text)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{where or 'a value'} contains a NUL character")
    elif isinstance(value, dict):
        for key, item in value.items():
            nul_free(key, where)
            nul_free(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            nul_free(item, f"{where}.{index}" if where else str(index))


class NoNul(BaseModel):
    """A body whose strings may not contain NUL: 422 naming the field, never a 500."""

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        nul_free(data)
        return data


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Inbound(_Wire, NoNul):
    """What the coordinator stores from an agent: no NUL characters."""


# --- agent → coordinator ---------------------------------------------------------------


class AgentRegistration(_Inbound):
    """Body of ``POST /api/v1/agents`` (the seed's fields, plus ``secret`` and ``url``)."""

    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")
    name: str = Field(min_length=1, max_length=200)
    hostname: str = Field(default="", max_length=255)
    ip_address: str = Field(default="127.0.0.1", max_length=64)
    port: int = Field(default=8081, ge=1, le=65535)
    specialties: list[Name] = Field(default_factory=list, max_length=50)
    capabilities: list[Name] = Field(default_factory=list, max_length=100)
    max_concurrent_tasks: int = Field(default=3, ge=1, le=256)
    cpu_cores: Int32 | None = None
    memory_gb: float | None = Field(default=None, ge=0, le=1e9)
    disk_gb: float | None = Field(default=None, ge=0, le=1e12)
    workspace_path: str = Field(default="", max_length=500)
    version: str = Field(default="", max_length=64)
    configuration: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    #: the bearer secret the coordinator must present when it calls this agent
    secret: str | None = Field(default=None, min_length=16, max_length=256)
    #: base URL to reach the agent; default ``http://{ip_address}:{port}``
    url: str | None = Field(default=None, max_length=500)
    #: False when one of the agent's start checks failed (runner, credentials, sandbox
    #: canary, workspace): it is registered in ``maintenance`` and gets no work
    ready: bool = True
    not_ready_reason: str | None = Field(default=None, max_length=2000)
    #: the runners this agent can run (its own and those it can build: installed, with a
    #: model credential); the coordinator keeps the names it knows. None: not told (an
    #: older agent), so it gets no task that needs a runner (SPEC §5)
    runners: list[RunnerName] | None = Field(default=None, max_length=20)

    @field_validator("configuration", "metadata")
    @classmethod
    def _small(cls, value: dict[str, Any]) -> dict[str, Any]:
        if _json_size(value) > MAX_METADATA_BYTES:
            raise ValueError(f"is over {MAX_METADATA_BYTES} bytes as JSON")
        return value


class Heartbeat(_Inbound):
    """Body of ``PUT /api/v1/agents/{id}``: the agent's view of itself."""

    status: AgentStatus | None = None
    current_load: float = Field(default=0.0, ge=0.0, le=1.0)
    active_task_count: Int32 = 0
    uptime: float | None = Field(default=None, ge=0, le=1e12)
    last_task_completed_at: datetime | None = None
    #: every run the agent holds right now; runs not listed for a lease are lost
    run_ids: list[Int64] = Field(default_factory=list, max_length=1000)
    #: the result of the agent's latest readiness checks (None: not told, an older agent);
    #: False comes with ``not_ready_reason``
    ready: bool | None = None
    not_ready_reason: str | None = Field(default=None, max_length=2000)
    #: the runners the agent can run now (a credential may come or go); None: not told
    runners: list[RunnerName] | None = Field(default=None, max_length=20)


class HeartbeatReply(_Wire):
    #: runs the agent holds that the coordinator no longer assigns to it: stop them
    stop_run_ids: list[int] = Field(default_factory=list)
    draining: bool = False


#: the kind of the event that reports the agent round in progress
ROUND_PROGRESS = "round_progress"
#: the most agent rounds a run can have (the first turn and ``MAX_FIX_ROUNDS`` ≤ 10)
MAX_ROUNDS = 100
#: bounds of a round's figures: far above any real round, far below what breaks a sum
MAX_ROUND_TURNS = 1_000_000
MAX_ROUND_COST_USD = 1_000_000.0


class RoundProgressData(BaseModel):
    """``data`` of a ``round_progress`` event: the turns and cost of the agent round in
    progress (SPEC §5). Numbers only, strictly typed and bounded, and nothing else: the
    issue's comment and the dashboard show them, so no text of a run rides along."""

    model_config = ConfigDict(extra="forbid", strict=True)

    #: the round (0: the first turn, then the fix rounds), as its ``runner_finished`` says
    fix_round: int = Field(ge=0, le=MAX_ROUNDS)
    num_turns: int = Field(ge=0, le=MAX_ROUND_TURNS)
    cost_usd: float = Field(ge=0, le=MAX_ROUND_COST_USD, allow_inf_nan=False)
    #: the cost is the agent's estimate from the tokens (shown as "~$")
    estimate: bool = True


class RunEvent(_Inbound):
    """One event of a run, as the agent reports it (batched)."""

    seq: Int32  #: per run, from 0; (run_id, seq) is unique, so resending is safe
    ts: datetime
    kind: str = Field(min_length=1, max_length=40)  #: phase, assistant, tool_use, tool_result, ...
    level: str = Field(default="info", max_length=10)
    message: str = Field(default="", max_length=MAX_EVENT_BYTES)
    data: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _small(self) -> RunEvent:
        if _json_size({"message": self.message, "data": self.data}) > MAX_EVENT_BYTES:
            raise ValueError(f"the event is over {MAX_EVENT_BYTES} bytes as JSON")
        if self.kind == ROUND_PROGRESS:
            try:
                RoundProgressData.model_validate(self.data)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"]) or "data"
                raise ValueError(f"round_progress data.{where}: {first['msg']}") from None
        return self


class RunEventBatch(_Inbound):
    events: list[RunEvent] = Field(min_length=1, max_length=MAX_EVENTS_PER_BATCH)


class RunPhase(_Inbound):
    """Body of ``POST /api/v1/runs/{id}/phase``: the task moves with it."""

    phase: str = Field(pattern=r"^(in_progress|testing)$")


class GitTokenRequest(_Inbound):
    """Body of ``POST /api/v1/runs/{id}/git-token``: what the token is for."""

    purpose: str = Field(pattern=r"^(fetch|deliver)$")


class GitTokenReply(_Wire):
    #: a short-lived token narrowed to the run's repository; None when it needs none
    token: str | None = None


class DeliveryConfirmation(_Wire):
    """Answer of ``POST /api/v1/runs/{id}/confirm-delivery``: the fencing check passed, the
    run still holds its task and may push and open its pull request now."""

    run_id: int
    confirmed_at: datetime
    #: the delivery (push and pull request) must be over this many seconds after the
    #: agent asked; the coordinator keeps the run for a lease on top of that
    deliver_within_seconds: float
    #: the deliver token narrowed to the run's repository; None when it needs none
    token: str | None = None


class RunResult(_Inbound):
    """Body of ``POST /api/v1/runs/{id}/result``: how the run ended, with the real figures."""

    succeeded: bool
    error_category: ErrorCategory | None = None
    message: str = Field(default="", max_length=20_000)
    retry_after_seconds: float | None = Field(default=None, ge=0)
    cost_usd: float = Field(default=0.0, ge=0)
    input_tokens: Int64 = 0
    output_tokens: Int64 = 0
    cache_read_tokens: Int64 = 0
    cache_creation_tokens: Int64 = 0
    num_turns: Int32 = 0
    session_id: str | None = Field(default=None, max_length=100)
    branch: str | None = Field(default=None, max_length=255)
    commit_sha: str | None = Field(default=None, max_length=64)
    pr_number: Int32 | None = None
    pr_url: str | None = Field(default=None, max_length=1000)
    tests_command: str | None = Field(default=None, max_length=1000)
    tests_passed: Int32 | None = None
    tests_failed: Int32 | None = None
    tests_ok: bool | None = None
    fix_rounds: Int32 = 0
    changed_files: list[Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=list, max_length=MAX_CHANGED_FILES
    )
    log_excerpt: str = Field(default="", max_length=20_000)
    #: with ``contract_error``: the runner the run's contract names, which this agent
    #: cannot run. The coordinator then requeues the task for an agent that offers it,
    #: without counting a retry (SPEC §4b); a name it does not know is ignored
    needs_runner: RunnerName | None = None


# --- coordinator → agent ---------------------------------------------------------------


class ExecuteTaskRequest(_Wire):
    """Body of the agent's ``POST /execute_task``. ``run_id`` is the idempotency key."""

    run_id: int
    task_id: int
    attempt: int = 1
    title: str
    description: str = ""
    requirements: list[str] = Field(default_factory=list)
    priority: Priority = Priority.MEDIUM
    github_repository: str
    github_issue_number: int
    estimated_duration_minutes: int = 60
    #: what ``git fetch`` reads: a local path, file:// URL or https URL
    repository_url: str
    #: branch to base new work on; None = the remote's default branch
    base_branch: str | None = None
    #: existing branch to continue (follow-up runs for review feedback)
    branch: str | None = None
    #: review feedback for a follow-up run
    feedback: str | None = None
    #: Claude session to resume on a follow-up run
    resume_session_id: str | None = None
    budget_usd: float | None = Field(default=None, gt=0)
    #: the repository's configured test command (operator text, split with shlex, no shell)
    test_command: str | None = None
    #: the operator's side of the repository contract (``contract:`` in
    #: ``GITHUB_REPOSITORIES_FILE``, SPEC §4b): its defaults and caps, which the agent
    #: resolves the repository's contract against, with the task's test command and budget
    #: above. None: no operator contract (an unwatched repository, an older coordinator).
    #: A key this agent does not know is refused (422), never ignored: it could be a cap.
    operator_contract: OperatorPolicy | None = None
    timeout_seconds: int | None = Field(default=None, gt=0)
    #: open a pull request (GitHub repositories) or only push the branch
    open_pull_request: bool = False
    issue_comments: list[str] = Field(default_factory=list)


class ExecuteTaskReply(_Wire):
    run_id: int
    accepted: bool = True
    duplicate: bool = False
