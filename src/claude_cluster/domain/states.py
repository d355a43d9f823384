"""Statuses of tasks, runs and agents, and the task state machine.

The task statuses and priorities are the seed's. A task moves along
``queued → assigned → in_progress → testing → review → completed`` and may leave that
path for ``failed`` or ``cancelled``; ``TRANSITIONS`` is the whole machine and
:func:`check_transition` enforces it; ``RUN_TRANSITIONS`` and
:func:`check_run_transition` do the same for runs. Only
``coordinator/store/transitions.py`` moves a task or a run, through these checks.
"""

from __future__ import annotations

from enum import StrEnum

from claude_cluster.errors import IllegalRunTransition, IllegalTransition


class TaskStatus(StrEnum):
    PENDING = "pending"  #: created, not analysed yet (only seen inside the creating transaction)
    ANALYZING = "analyzing"  #: being analysed (kept for the seed's vocabulary)
    QUEUED = "queued"  #: waiting for a slot; ``not_before`` may delay it (retry back-off)
    ASSIGNED = "assigned"  #: claimed for a run; the push to the agent is under way
    IN_PROGRESS = "in_progress"  #: the agent accepted the run and is working
    TESTING = "testing"  #: the agent is running the repository's tests
    REVIEW = "review"  #: a pull request is open (or a branch was delivered and waits for review)
    COMPLETED = "completed"  #: merged, or delivered for a repository without pull requests
    FAILED = (
        "failed"  #: gave up: non-retryable outcome or attempts exhausted, or PR closed unmerged
    )
    CANCELLED = "cancelled"  #: a user cancelled it or its issue was closed


TERMINAL_TASK_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})
#: statuses in which a run of the task is active on an agent
RUNNING_TASK_STATUSES = frozenset({TaskStatus.ASSIGNED, TaskStatus.IN_PROGRESS, TaskStatus.TESTING})

TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING: frozenset({TaskStatus.ANALYZING, TaskStatus.QUEUED, TaskStatus.CANCELLED}),
    TaskStatus.ANALYZING: frozenset({TaskStatus.QUEUED, TaskStatus.FAILED, TaskStatus.CANCELLED}),
    # queued/assigned → completed: the pull request was merged while a follow-up waited
    TaskStatus.QUEUED: frozenset(
        {TaskStatus.ASSIGNED, TaskStatus.CANCELLED, TaskStatus.FAILED, TaskStatus.COMPLETED}
    ),
    TaskStatus.ASSIGNED: frozenset(
        {
            TaskStatus.IN_PROGRESS,
            TaskStatus.QUEUED,
            TaskStatus.FAILED,
            TaskStatus.CANCELLED,
            TaskStatus.COMPLETED,
        }
    ),
    TaskStatus.IN_PROGRESS: frozenset(
        {
            TaskStatus.TESTING,
            TaskStatus.REVIEW,
            TaskStatus.COMPLETED,
            TaskStatus.QUEUED,
            TaskStatus.FAILED,
            TaskStatus.CANCELLED,
        }
    ),
    TaskStatus.TESTING: frozenset(
        {
            TaskStatus.IN_PROGRESS,
            TaskStatus.REVIEW,
            TaskStatus.COMPLETED,
            TaskStatus.QUEUED,
            TaskStatus.FAILED,
            TaskStatus.CANCELLED,
        }
    ),
    # review → queued: a follow-up run for review feedback on the same branch
    TaskStatus.REVIEW: frozenset(
        {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.QUEUED}
    ),
    TaskStatus.COMPLETED: frozenset(),
    TaskStatus.FAILED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
}


def can_transition(current: TaskStatus, target: TaskStatus) -> bool:
    return target in TRANSITIONS[current]


def check_transition(current: TaskStatus, target: TaskStatus) -> None:
    """Raise :class:`IllegalTransition` naming both statuses when the move is not allowed."""
    if not can_transition(current, target):
        raise IllegalTransition(current=current.value, target=target.value)


class Priority(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    URGENT = "urgent"

    @property
    def rank(self) -> int:
        """Higher is more urgent; the dispatcher orders by rank descending."""
        return _PRIORITY_RANK[self]


_PRIORITY_RANK = {Priority.LOW: 0, Priority.MEDIUM: 1, Priority.HIGH: 2, Priority.URGENT: 3}


class RunStatus(StrEnum):
    DISPATCHING = "dispatching"  #: claimed; the coordinator is pushing it to the agent
    RUNNING = "running"  #: the agent accepted it
    SUCCEEDED = "succeeded"  #: the agent reported success
    FAILED = "failed"  #: the agent reported a failure (see ``error_category``)
    LOST = "lost"  #: no heartbeat mentioned it for a lease, or the push failed
    CANCELLED = "cancelled"  #: stopped because the task was cancelled


ACTIVE_RUN_STATUSES = frozenset({RunStatus.DISPATCHING, RunStatus.RUNNING})

_RUN_ENDINGS = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.LOST, RunStatus.CANCELLED}
)

#: a run is pushed (``dispatching``), accepted (``running``) and ends once; an agent may
#: report its result before the coordinator has seen the push accepted
RUN_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.DISPATCHING: _RUN_ENDINGS | {RunStatus.RUNNING},
    RunStatus.RUNNING: _RUN_ENDINGS,
    RunStatus.SUCCEEDED: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.LOST: frozenset(),
    RunStatus.CANCELLED: frozenset(),
}


def check_run_transition(current: RunStatus, target: RunStatus) -> None:
    """Raise :class:`IllegalTransition` naming both statuses when a run may not move so."""
    if target not in RUN_TRANSITIONS[current]:
        raise IllegalRunTransition(current=current.value, target=target.value)


class AgentStatus(StrEnum):
    """The seed's agent statuses. ``idle``/``busy``/``overloaded`` follow the load."""

    OFFLINE = "offline"
    IDLE = "idle"
    BUSY = "busy"
    OVERLOADED = "overloaded"
    MAINTENANCE = "maintenance"
    ERROR = "error"


ONLINE_AGENT_STATUSES = frozenset({AgentStatus.IDLE, AgentStatus.BUSY, AgentStatus.OVERLOADED})


def status_for_load(active: int, capacity: int) -> AgentStatus:
    if active <= 0:
        return AgentStatus.IDLE
    return AgentStatus.OVERLOADED if active >= capacity else AgentStatus.BUSY


class ErrorCategory(StrEnum):
    """Why a run did not succeed. Stable strings: they appear in the API, logs and metrics."""

    TESTS_FAILED = "tests_failed"  #: tests still red after the fix rounds
    NO_CHANGES = "no_changes"  #: the agent finished without changing anything
    MAX_TURNS = "max_turns"  #: the CLI hit --max-turns
    BUDGET_EXCEEDED = "budget_exceeded"  #: the CLI hit --max-budget-usd
    RATE_LIMITED = "rate_limited"  #: the model API answered 429 after the CLI's own retries
    OVERLOADED = "overloaded"  #: the model API answered 529/5xx
    AUTH_ERROR = "auth_error"  #: 401/403 from the model API: a configuration problem
    STALL = "stall"  #: no output for the idle limit
    TIMEOUT = "timeout"  #: the run's wall time ran out
    CRASH = "crash"  #: the CLI exited without a result line
    EXECUTION_ERROR = "execution_error"  #: the CLI reported an error result of another kind
    RUNNER_ERROR = "runner_error"  #: the runner could not start (missing binary, bad config)
    WORKSPACE_ERROR = "workspace_error"  #: fetching the repository or making the worktree failed
    SANDBOX_ERROR = "sandbox_error"  #: the run's sandbox or gateway could not be started
    DISK_FULL = "disk_full"  #: the agent's disk had no space left for the run
    DELIVERY_ERROR = "delivery_error"  #: push or pull request failed
    LOST = "lost"  #: the agent stopped reporting the run (set by the coordinator)
    DISPATCH_FAILED = "dispatch_failed"  #: the agent refused or did not answer the push
    CANCELLED = "cancelled"  #: the task was cancelled
    CONTRACT_ERROR = "contract_error"  #: the repository's .claude-cluster.yml is invalid
    UNTESTED = "untested"  #: the tests could not run and the contract says fail


#: outcomes worth another attempt; everything else ends the task
RETRYABLE_CATEGORIES = frozenset(
    {
        ErrorCategory.RATE_LIMITED,
        ErrorCategory.OVERLOADED,
        ErrorCategory.STALL,
        ErrorCategory.TIMEOUT,
        ErrorCategory.CRASH,
        ErrorCategory.WORKSPACE_ERROR,
        ErrorCategory.DELIVERY_ERROR,
        ErrorCategory.LOST,
        ErrorCategory.DISPATCH_FAILED,
    }
)


#: outcomes that say the agent cannot work, not that the task is wrong: the task goes back
#: to the queue without counting a retry and the agent's fault streak grows
AGENT_FAULT_CATEGORIES = frozenset(
    {
        ErrorCategory.RUNNER_ERROR,
        ErrorCategory.AUTH_ERROR,
        ErrorCategory.SANDBOX_ERROR,
        ErrorCategory.DISK_FULL,
    }
)
#: runs in a row that failed for a reason of the agent after which it gets no more work
AGENT_FAULT_LIMIT = 2


def is_retryable(category: ErrorCategory) -> bool:
    return category in RETRYABLE_CATEGORIES
