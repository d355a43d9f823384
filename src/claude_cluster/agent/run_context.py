"""What a run's phases share: the agent's :class:`JobConfig` and one run's :class:`RunContext`.

The phases of a run (:mod:`~claude_cluster.agent.run_environment`,
:mod:`~claude_cluster.agent.run_turns`, :mod:`~claude_cluster.agent.run_delivery`) take a
:class:`RunContext` once the run has its workspace, policy and box;
:class:`~claude_cluster.agent.job_runner.JobRunner` builds it and orders the phases.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from claude_cluster.agent.deliver import DEFAULT_PROTECTED_PATHS
from claude_cluster.agent.reporter import RunReporter
from claude_cluster.agent.round_progress import ROUND_PROGRESS_INTERVAL
from claude_cluster.agent.run_report import RunProgress
from claude_cluster.agent.runbox import GatewayConfig, RunBox
from claude_cluster.agent.sandbox import Sandbox
from claude_cluster.agent.workspace import Workspace
from claude_cluster.domain.contract import RunPolicy
from claude_cluster.domain.wire import ExecuteTaskRequest

__all__ = ["GitTokenSource", "JobConfig", "RunContext", "git_token"]

#: asks the coordinator for a fresh git token: ``(run_id, "fetch" | "deliver") → token``
GitTokenSource = Callable[[int, str], Awaitable[str | None]]


@dataclass(frozen=True)
class JobConfig:
    """What every run of this agent shares.

    Attributes:
        agent_id: shown in pull requests and logs.
        homes_dir: parent of the per-task HOME directories of the CLI.
        specialties: the agent's specialties, for the prompt's context section.
        runner_env: credentials and settings for the runner (``ANTHROPIC_API_KEY``, …).
        model: ``CLAUDE_MODEL``.
        max_turns: ``CLAUDE_MAX_TURNS``.
        task_timeout: wall time of a run when the request names none (``TASK_TIMEOUT``).
        stall_timeout: output-idle limit of the runner (``STALL_TIMEOUT``).
        result_grace: how long the CLI may linger after its result line (``RESULT_GRACE``).
        progress_interval: seconds between two ``round_progress`` reports of an agent
            round (:data:`~claude_cluster.agent.round_progress.ROUND_PROGRESS_INTERVAL`).
        max_fix_rounds: ``MAX_FIX_ROUNDS``.
        test_timeout: ``TEST_TIMEOUT``.
        git_user_name: commit author (``GIT_USER_NAME``).
        git_user_email: commit e-mail (``GIT_USER_EMAIL``).
        git_timeout: seconds a single git command may take.
        sandbox: the sandbox every process of a run starts in; ``None`` runs them
            unconfined (``RUN_SANDBOX=off``, said in every run's events and PR).
        gateway: the model API and egress allowlist of the runs' gateways.
        state_dir: the daemon's own directory for the runs' sockets and tmp (no run sees it).
        readable: more read-only paths every run needs (the CLI when it lives elsewhere).
        ca_bundle: the CA bundle built from ``RUN_CA_BUNDLE`` and the system roots, which
            the run's tools trust (read-only in the sandbox); ``None``: the system's only.
        protected_paths: paths a run may not change (refused at delivery).
        dashboard_url: the coordinator's address, for the run's link in pull requests.
    """

    agent_id: str
    homes_dir: Path
    specialties: tuple[str, ...] = ()
    runner_env: Mapping[str, str] = field(default_factory=dict)
    model: str | None = None
    max_turns: int | None = None
    task_timeout: float = 3600.0
    stall_timeout: float = 300.0
    result_grace: float = 10.0
    progress_interval: float = ROUND_PROGRESS_INTERVAL
    max_fix_rounds: int = 2
    test_timeout: float = 900.0
    git_user_name: str = "Claude Code Cluster"
    git_user_email: str = "claude-cluster@localhost"
    git_timeout: float = 600.0
    sandbox: Sandbox | None = None
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    state_dir: Path | None = None
    readable: tuple[Path, ...] = ()
    ca_bundle: Path | None = None
    protected_paths: tuple[str, ...] = DEFAULT_PROTECTED_PATHS
    dashboard_url: str | None = None

    def home_for(self, task_id: int) -> Path:
        """The CLI's HOME for a task (kept across the task's runs, so sessions resume)."""
        return self.homes_dir / f"task-{task_id}"

    def env_cache(self, ws: Workspace) -> Path:
        """The repository's own tool caches (uv, npm, go, cargo), kept between its runs."""
        return self.homes_dir.parent / "envcache" / ws.mirror.name


@dataclass(frozen=True)
class RunContext:
    """One run once it has its workspace, its policy and its box."""

    config: JobConfig
    request: ExecuteTaskRequest
    reporter: RunReporter
    ws: Workspace
    box: RunBox
    policy: RunPolicy
    progress: RunProgress
    #: the CLI's HOME for the task
    home: Path
    #: when the run's wall time runs out (the event loop's clock)
    deadline: float


async def git_token(
    source: GitTokenSource | None, request: ExecuteTaskRequest, purpose: str
) -> str | None:
    """A fresh token for an http(s) repository or a pull request, from the coordinator."""
    wanted = request.repository_url.startswith(("https://", "http://")) or (
        purpose == "deliver" and request.open_pull_request
    )
    if source is None or not wanted:
        return None
    return await source(request.run_id, purpose)
