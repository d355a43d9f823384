"""The runner interface: what a run needs, what it reports, how it ends.

A runner turns a :class:`RunSpec` (prompt, worktree, HOME, environment, limits) into a
:class:`RunnerOutcome`, forwarding :class:`RunnerEvent` objects while it works. Every
runner starts its CLI through :func:`claude_cluster.process.run_process`, so all of
them share the process-group handling and the watchdogs; cancelling the task that awaits
:meth:`Runner.run` stops the process group and re-raises :class:`asyncio.CancelledError`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from claude_cluster.domain.states import ErrorCategory
from claude_cluster.errors import ConfigError
from claude_cluster.process import (
    LineHandler,
    ProcessExit,
    StderrHandler,
    StopReason,
    Watchdogs,
    run_process,
)

__all__ = [
    "EventKind",
    "EventSink",
    "RunSpec",
    "Runner",
    "RunnerEvent",
    "RunnerOutcome",
    "clip",
    "get_runner",
    "run_cli",
    "runner_names",
    "scrubbed_env",
    "watchdog_event",
]

#: how many characters of a tool input, tool output or message an event carries
EVENT_TEXT_LIMIT = 4000


@dataclass(frozen=True)
class RunSpec:
    """Everything a runner needs for one run.

    Attributes:
        prompt: the task for the agent.
        cwd: the worktree the agent works in.
        home: a per-run HOME (the CLI keeps its config and transcripts there).
        env: extra variables (API credentials, task variables), laid over a scrubbed base
            environment; nothing else of the agent's environment reaches the child.
        model: the model name, passed through unchanged.
        max_turns: stop after this many agent turns.
        budget_usd: stop when the run has cost this much.
        resume_session_id: continue this session (fix rounds, follow-ups).
        wall_timeout: seconds the whole run may take.
        idle_timeout: seconds the CLI may stay silent (no stdout or stderr).
        result_grace: seconds the CLI gets to exit after its final ``result`` line.
        wrap: turns the command line into the sandboxed one (``argv, cwd → argv``); every
            runner's CLI starts through it. ``None``: unconfined (``RUN_SANDBOX=off``).
    """

    prompt: str
    cwd: Path
    home: Path
    env: Mapping[str, str]
    model: str | None = None
    max_turns: int | None = None
    budget_usd: float | None = None
    resume_session_id: str | None = None
    wall_timeout: float = 3600.0
    idle_timeout: float = 300.0
    result_grace: float = 10.0
    wrap: Callable[[Sequence[str], Path], list[str]] | None = None

    def watchdogs(self, kill_grace: float) -> Watchdogs:
        return Watchdogs(self.wall_timeout, self.idle_timeout, self.result_grace, kill_grace)


class EventKind(StrEnum):
    """The ``kind`` of a :class:`RunnerEvent`. Stable strings: the coordinator stores them."""

    SESSION_STARTED = "session_started"  #: the CLI is up; data: session_id, model, cwd, tools
    ASSISTANT_TEXT = "assistant_text"  #: the model said something
    TOOL_USE = "tool_use"  #: the model called a tool; data: tool_use_id, name, input
    TOOL_RESULT = "tool_result"  #: a tool answered; data: tool_use_id, content, is_error
    PERMISSION_DENIED = "permission_denied"  #: the CLI refused a tool call
    API_RETRY = "api_retry"  #: the CLI retries a failed API call; data: attempt, status
    API_ERROR = "api_error"  #: the CLI gave up on the API (rate limit, auth, server)
    RATE_LIMIT = "rate_limit"  #: a subscription rate-limit notice; data: status, resets_at
    SYSTEM = "system"  #: another notice of the CLI (compaction, task progress, ...)
    USAGE = "usage"  #: tokens used so far (runners without a final result line)
    #: one model call's tokens (the ``claude`` runner, per assistant line); the agent turns
    #: them into ``round_progress`` and does not forward them (one per content block)
    MODEL_USAGE = "model_usage"
    RESULT = "result"  #: the final result; data: subtype, is_error, cost, tokens, turns
    OUTPUT = "output"  #: a line of output the runner does not interpret
    WATCHDOG = "watchdog"  #: the runner stopped the process; data: reason


@dataclass
class RunnerEvent:
    """One thing that happened during a run, forwarded to the coordinator.

    ``level`` is ``debug``, ``info``, ``warning`` or ``error``.
    """

    kind: str
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    level: str = "info"


#: receives the events of a run, in order
EventSink = Callable[[RunnerEvent], Awaitable[None]]


@dataclass
class RunnerOutcome:
    """How a run ended, with what it cost.

    ``error_category`` is ``None`` exactly when ``succeeded``; ``retry_after_seconds`` is
    set when the CLI told us when a rate limit resets.
    """

    succeeded: bool
    error_category: ErrorCategory | None
    message: str
    retry_after_seconds: float | None = None
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    num_turns: int = 0
    session_id: str | None = None
    exit_code: int | None = None
    permission_denials: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def runner_error(cls, message: str) -> RunnerOutcome:
        """The runner could not start its CLI (missing binary, bad configuration)."""
        return cls(succeeded=False, error_category=ErrorCategory.RUNNER_ERROR, message=message)


class Runner(Protocol):
    """Runs one agent CLI. Implementations: ``claude``, ``codex``, ``aider``, ``command``."""

    name: str

    async def run(self, spec: RunSpec, on_event: EventSink) -> RunnerOutcome:
        """Run ``spec`` to the end, sending events to ``on_event``; never raises for a
        failed run (that is the outcome), only for cancellation or a failing sink."""
        ...


# --- helpers shared by the runners ---------------------------------------------------------

#: variables of the agent's own environment a child may see; credentials never are
_INHERITED = frozenset(
    {"PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR", "USER", "LOGNAME", "SHELL"}
    # proxies and CA bundles: a host behind a proxy needs them for any API call at all
    | {"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"}
    | {"http_proxy", "https_proxy", "no_proxy", "all_proxy"}
    | {"SSL_CERT_FILE", "SSL_CERT_DIR", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE"}
)


def scrubbed_env(
    spec: RunSpec,
    defaults: Mapping[str, str] | None = None,
    *,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The child's whole environment: an allow-list of ours, ``defaults``, then ``spec.env``.

    Anything not on the allow-list (``ANTHROPIC_*``, ``GITHUB_TOKEN``, ``CLAUDECODE``, the
    agent's registration secret, ...) stays out unless the spec passes it explicitly.

    Args:
        spec: supplies ``home`` (as ``HOME``) and the caller's variables, which win.
        defaults: the runner's own settings (quiet-traffic switches and the like).
        base: the environment to filter; the agent's own by default.
    """
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if k in _INHERITED or k.startswith("LC_")}
    env["HOME"] = str(spec.home)
    env.update(defaults or {})
    env.update(spec.env)
    return env


def clip(text: str, limit: int = EVENT_TEXT_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, saying how much was dropped."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit} more characters]"


def watchdog_event(process: ProcessExit, spec: RunSpec) -> RunnerEvent | None:
    """The event announcing that a watchdog stopped the process, if one did."""
    limits = {
        StopReason.WALL_TIMEOUT: f"the run exceeded its wall time of {spec.wall_timeout:g}s",
        StopReason.IDLE_TIMEOUT: f"no output for {spec.idle_timeout:g}s",
        StopReason.AFTER_TERMINAL: (
            f"still running {spec.result_grace:g}s after its final result line"
        ),
    }
    if process.stop_reason not in limits:
        return None
    return RunnerEvent(
        kind=EventKind.WATCHDOG,
        message=f"stopped the process: {limits[process.stop_reason]}",
        data={"reason": process.stop_reason.value, "exit_code": process.exit_code},
        level="warning",
    )


async def run_cli(
    spec: RunSpec,
    argv: Sequence[str],
    on_event: EventSink,
    *,
    on_line: LineHandler,
    outcome: Callable[[ProcessExit], RunnerOutcome],
    kill_grace: float,
    env: Mapping[str, str] | None = None,
    on_stderr_line: StderrHandler | None = None,
) -> RunnerOutcome:
    """The skeleton of every runner's :meth:`~Runner.run`: start ``argv``, wait for it, judge.

    Creates ``spec.home``, runs ``argv`` in ``spec.cwd`` under the spec's watchdogs, sends
    the :func:`watchdog_event` when a watchdog stopped it, and returns ``outcome(process)``.
    A CLI that cannot be started is a :meth:`RunnerOutcome.runner_error`.

    Args:
        spec: the run.
        argv: the command line; ``argv[0]`` names the CLI in the start error.
        on_event: the run's event sink (for the watchdog notice).
        on_line: receives stdout lines; returning True marks the line as terminal.
        outcome: classifies the finished process (the handlers' state included).
        kill_grace: seconds between SIGTERM and SIGKILL when stopping it.
        env: the child's whole environment; :func:`scrubbed_env` of ``spec`` by default.
        on_stderr_line: receives stderr lines, if given.
    """
    spec.home.mkdir(parents=True, exist_ok=True)
    try:
        process = await run_process(
            argv if spec.wrap is None else spec.wrap(argv, spec.cwd),
            cwd=spec.cwd,
            env=scrubbed_env(spec) if env is None else env,
            on_line=on_line,
            on_stderr_line=on_stderr_line,
            watchdogs=spec.watchdogs(kill_grace),
        )
    except OSError as exc:
        return RunnerOutcome.runner_error(f"cannot start {argv[0]}: {exc}")
    notice = watchdog_event(process, spec)
    if notice is not None:
        await on_event(notice)
    return outcome(process)


# --- registry ------------------------------------------------------------------------------

#: runner name → "module:class"; imported on demand so a name costs nothing until used
_RUNNERS = {
    "claude": "claude_cluster.runners.claude_code:ClaudeCodeRunner",
    "codex": "claude_cluster.runners.codex:CodexRunner",
    "aider": "claude_cluster.runners.aider:AiderRunner",
    "command": "claude_cluster.runners.command:CommandRunner",
}


def runner_names() -> list[str]:
    """The names :func:`get_runner` accepts."""
    return sorted(_RUNNERS)


def get_runner(name: str, **config: Any) -> Runner:
    """Build the runner called ``name`` with its keyword configuration.

    Example: ``get_runner("claude", cli_path=settings.claude_code_cli_path)`` or
    ``get_runner("command", command=settings.agent_command)``.

    Raises:
        ConfigError: unknown runner name or configuration it does not accept.
    """
    target = _RUNNERS.get(name)
    if target is None:
        raise ConfigError(f"AGENT_RUNNER={name!r} is not one of {', '.join(runner_names())}")
    module_name, class_name = target.split(":")
    factory = getattr(importlib.import_module(module_name), class_name)
    try:
        runner: Runner = factory(**config)
    except TypeError as exc:
        raise ConfigError(f"runner {name!r}: {exc}") from exc
    return runner
