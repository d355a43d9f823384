"""The runs an agent holds: admission, idempotency, stopping, draining.

:class:`JobPool` admits a run (:meth:`JobPool.submit`) only when it has a free slot, is not
draining and does not hold another run of the same task; the run id is the idempotency
key, so the coordinator may push the same run again and get "duplicate". Each run is an
asyncio task doing the :class:`~claude_cluster.agent.job_runner.JobRunner` work and then
reporting its result through its :class:`~claude_cluster.agent.reporter.RunReporter`.

A run holds a *slot* while it works and stays *held* (listed in heartbeats) until its
result is delivered, so the coordinator never presumes a finished-but-unreported run lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from claude_cluster import metrics
from claude_cluster.agent.job_runner import JobRunner
from claude_cluster.agent.reporter import RunReporter
from claude_cluster.domain.states import AGENT_FAULT_CATEGORIES, ErrorCategory
from claude_cluster.domain.wire import ExecuteTaskRequest, RunResult
from claude_cluster.logging import get_logger

__all__ = ["Admission", "Job", "JobPool", "StopCause"]

log = get_logger(__name__)

#: how many finished run ids are remembered for idempotency
_REMEMBERED = 1000


class Admission(StrEnum):
    """The answer to :meth:`JobPool.submit`."""

    ACCEPTED = "accepted"  #: started
    DUPLICATE = "duplicate"  #: this run is held (or was finished) already
    TASK_BUSY = "task_busy"  #: another run of the same task is held
    FULL = "full"  #: no free slot
    DRAINING = "draining"  #: shutting down: no new work
    NOT_READY = "not_ready"  #: the sandbox canary failed: no work at all


class StopCause(StrEnum):
    """Why a run was stopped before it ended by itself; decides what is reported."""

    CANCELLED = "cancelled"  #: the coordinator cancelled the task
    NOT_ASSIGNED = "not_assigned"  #: the heartbeat said the run is no longer ours
    SHUTDOWN = "shutdown"  #: the daemon is stopping: hand the run back


_STOP_RESULTS = {
    StopCause.CANCELLED: (ErrorCategory.CANCELLED, "the task was cancelled"),
    StopCause.NOT_ASSIGNED: (ErrorCategory.LOST, "the coordinator no longer assigns this run"),
    StopCause.SHUTDOWN: (ErrorCategory.LOST, "the agent is shutting down; the run is handed back"),
}


@dataclass
class Job:
    """One held run."""

    request: ExecuteTaskRequest
    reporter: RunReporter
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    task: asyncio.Task[None] | None = None
    working: bool = True
    stop_cause: StopCause | None = None

    @property
    def run_id(self) -> int:
        return self.request.run_id


class JobPool:
    """Holds the agent's runs.

    Args:
        job_runner: does the work of a run.
        make_reporter: builds the reporter of a run (started by the pool).
        capacity: ``MAX_CONCURRENT_TASKS``.
        agent_id: metrics label.
    """

    def __init__(
        self,
        job_runner: JobRunner,
        make_reporter: Callable[[int], RunReporter],
        *,
        capacity: int,
        agent_id: str,
    ) -> None:
        self.job_runner = job_runner
        self.make_reporter = make_reporter
        self.capacity = capacity
        self.agent_id = agent_id
        self.jobs: dict[int, Job] = {}
        self.draining = False
        #: why the agent takes no runs (a readiness check failed), or None
        self.not_ready: str | None = None
        #: called when a run fails for a reason of the agent (runner, credential, sandbox,
        #: disk): the daemon checks its readiness again at once
        self.on_agent_fault: Callable[[], None] | None = None
        self.last_completed_at: datetime | None = None
        #: seconds a stopped run's reports get to go out during shutdown
        self.report_timeout: float | None = None
        self._finished: OrderedDict[int, None] = OrderedDict()
        self._idle = asyncio.Event()
        self._idle.set()

    # --- views ---------------------------------------------------------------------

    @property
    def working(self) -> int:
        """Runs occupying a slot."""
        return sum(1 for job in self.jobs.values() if job.working)

    @property
    def load(self) -> float:
        """0–1, the seed's ``current_load``."""
        return min(1.0, self.working / self.capacity)

    def held_run_ids(self) -> list[int]:
        """Every run to name in the heartbeat (working or still reporting)."""
        return sorted(self.jobs)

    # --- admission -----------------------------------------------------------------

    def submit(self, request: ExecuteTaskRequest) -> Admission:
        """Start ``request`` if it may run now; see :class:`Admission`."""
        if request.run_id in self.jobs or request.run_id in self._finished:
            return Admission.DUPLICATE
        if self.draining:
            return Admission.DRAINING
        if self.not_ready is not None:
            return Admission.NOT_READY
        if any(job.request.task_id == request.task_id for job in self.jobs.values()):
            return Admission.TASK_BUSY
        if self.working >= self.capacity:
            return Admission.FULL
        reporter = self.make_reporter(request.run_id)
        job = Job(request=request, reporter=reporter)
        self.jobs[request.run_id] = job
        self._idle.clear()
        reporter.start()
        job.task = asyncio.create_task(self._run(job), name=f"run-{request.run_id}")
        metrics.WORKSPACE_ACTIVE_TASKS.set(self.working)
        log.info(
            "run_accepted",
            run_id=request.run_id,
            task_id=request.task_id,
            attempt=request.attempt,
            repository=request.github_repository,
            issue=request.github_issue_number,
        )
        return Admission.ACCEPTED

    # --- stopping ------------------------------------------------------------------

    def cancel_task(self, task_id: int) -> int | None:
        """Stop the run of ``task_id``; returns its run id, or None if none is held."""
        for job in self.jobs.values():
            if job.request.task_id == task_id:
                self._stop(job, StopCause.CANCELLED)
                return job.run_id
        return None

    def stop_run(self, run_id: int, cause: StopCause) -> bool:
        job = self.jobs.get(run_id)
        if job is None:
            return False
        self._stop(job, cause)
        return True

    def stop_all(self, cause: StopCause) -> int:
        """Stop every working run; returns how many were stopped."""
        stopped = 0
        for job in list(self.jobs.values()):
            if job.working:
                self._stop(job, cause)
                stopped += 1
        return stopped

    def drain(self) -> None:
        """Refuse new runs from now on; held runs go on."""
        self.draining = True

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no run is held (results delivered); False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _stop(self, job: Job, cause: StopCause) -> None:
        if not job.working or job.task is None or job.stop_cause is not None:
            return
        job.stop_cause = cause
        log.info("run_stopping", run_id=job.run_id, task_id=job.request.task_id, cause=cause)
        job.task.cancel()

    # --- one run -------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        started = time.monotonic()
        try:
            try:
                result = await self.job_runner.run(job.request, job.reporter)
            except asyncio.CancelledError:
                # cancelled before the job runner got going (it reports by itself otherwise)
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                result = RunResult(succeeded=False, error_category=ErrorCategory.CANCELLED)
            except Exception as exc:  # a bug must still end the run with a report
                log.exception("run_crashed", run_id=job.run_id)
                result = RunResult(
                    succeeded=False,
                    error_category=ErrorCategory.EXECUTION_ERROR,
                    message=f"the agent failed: {type(exc).__name__}: {exc}"[:2000],
                )
            if job.stop_cause is not None:
                category, message = _STOP_RESULTS[job.stop_cause]
                result = result.model_copy(
                    update={"succeeded": False, "error_category": category, "message": message}
                )
            job.working = False
            metrics.WORKSPACE_ACTIVE_TASKS.set(self.working)
            self._observe(job, result, time.monotonic() - started)
            job.reporter.result(result)
            await job.reporter.finish(timeout=self.report_timeout)
        finally:
            self.jobs.pop(job.run_id, None)
            self._finished[job.run_id] = None
            while len(self._finished) > _REMEMBERED:
                self._finished.popitem(last=False)
            if not self.jobs:
                self._idle.set()

    def _observe(self, job: Job, result: RunResult, duration: float) -> None:
        agent = self.agent_id
        if result.succeeded:
            metrics.AGENT_TASKS_COMPLETED.labels(agent).inc()
            self.last_completed_at = datetime.now(UTC)
        else:
            metrics.AGENT_TASKS_FAILED.labels(agent).inc()
            if result.error_category in AGENT_FAULT_CATEGORIES and self.on_agent_fault:
                self.on_agent_fault()
        metrics.AGENT_TASK_DURATION.observe(duration)
        metrics.MODEL_COST_USD.labels(agent).inc(result.cost_usd)
        for kind, count in (
            ("input", result.input_tokens),
            ("output", result.output_tokens),
            ("cache_read", result.cache_read_tokens),
            ("cache_creation", result.cache_creation_tokens),
        ):
            if count:
                metrics.MODEL_TOKENS.labels(agent, kind).inc(count)
        log.info(
            "run_finished",
            run_id=job.run_id,
            task_id=job.request.task_id,
            succeeded=result.succeeded,
            error_category=result.error_category,
            cost_usd=result.cost_usd,
            tests_passed=result.tests_passed,
            tests_failed=result.tests_failed,
            duration=round(duration, 3),
        )

    async def close(self) -> None:
        """Cancel every run task outright (last resort at exit)."""
        tasks = [job.task for job in self.jobs.values() if job.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
