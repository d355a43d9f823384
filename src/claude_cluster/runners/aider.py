"""The ``aider`` runner: ``aider --message <prompt> --yes-always``.

Aider has no machine-readable output. After each model call it prints
``Tokens: 2.1k sent, 1.5k cache hit, 150 received. Cost: $0.0080 message, $0.0240 session.``
(``Cost:`` sometimes on a line of its own), which gives usage and the running cost. It
exits 0 even when the model call failed, so failures are read from its output: litellm
errors (``litellm.RateLimitError: ...``) and the explanations aider prints after them.
An error followed by a later successful call does not count.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from claude_cluster.domain.states import ErrorCategory
from claude_cluster.process import ProcessExit
from claude_cluster.runners.base import (
    EventKind,
    EventSink,
    RunnerEvent,
    RunnerOutcome,
    RunSpec,
    clip,
    run_cli,
)
from claude_cluster.runners.outcome import (
    Verdict,
    exit_verdict,
    verdict_outcome,
    watchdog_verdict,
)

__all__ = ["AiderRunner", "AiderState", "aider_events", "parse_token_count"]

_TOKENS = re.compile(r"([\d.,]+)\s*([kKmM]?)\s+(sent|received|cache write|cache hit)")
_COST = re.compile(r"Cost:\s*\$([\d.]+)\s+message,\s*\$([\d.]+)\s+session")
_LITELLM = re.compile(r"litellm\.(\w+)")
_RETRY = re.compile(r"Retrying in ([\d.]+) seconds")

#: litellm exception names (as aider reports them) → category
_LITELLM_CATEGORIES = {
    "RateLimitError": ErrorCategory.RATE_LIMITED,
    "RouterRateLimitError": ErrorCategory.RATE_LIMITED,
    "AuthenticationError": ErrorCategory.AUTH_ERROR,
    "PermissionDeniedError": ErrorCategory.AUTH_ERROR,
    "InternalServerError": ErrorCategory.OVERLOADED,
    "ServiceUnavailableError": ErrorCategory.OVERLOADED,
    "APIConnectionError": ErrorCategory.OVERLOADED,
    "Timeout": ErrorCategory.OVERLOADED,
    "BudgetExceededError": ErrorCategory.BUDGET_EXCEEDED,
}
#: aider's own explanations (aider/exceptions.py), for output without the litellm line
_DESCRIPTIONS = {
    "The API provider has rate limited you": ErrorCategory.RATE_LIMITED,
    "The API provider is not able to authenticate you": ErrorCategory.AUTH_ERROR,
    "The API provider's servers are down or overloaded": ErrorCategory.OVERLOADED,
    "The API provider timed out without returning a response": ErrorCategory.OVERLOADED,
}


def parse_token_count(text: str, suffix: str = "") -> int:
    """Aider's abbreviated counts: ``150``, ``2.1k``, ``12k``, ``1.2M``."""
    value = float(text.replace(",", ""))
    scale = {"k": 1_000, "m": 1_000_000}.get(suffix.lower(), 1)
    return round(value * scale)


@dataclass
class AiderState:
    """What an aider run has printed so far."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    calls: int = 0
    session_cost: float = 0.0
    error: str | None = None
    error_category: ErrorCategory | None = None
    last_line: str = ""

    def outcome(self, process: ProcessExit) -> RunnerOutcome:
        return verdict_outcome(
            self._verdict(process),
            process,
            cost_usd=self.session_cost,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_read_tokens=self.cache_read_tokens,
            cache_creation_tokens=self.cache_creation_tokens,
            num_turns=self.calls,
        )

    def _verdict(self, process: ProcessExit) -> Verdict:
        stopped = watchdog_verdict(process)
        if stopped is not None:
            return stopped
        if process.exit_code != 0:
            return exit_verdict(process, "aider")  # startup errors: bad repo, bad arguments
        if self.error is not None:
            return Verdict(self.error_category or ErrorCategory.EXECUTION_ERROR, self.error)
        return Verdict(None, self.last_line or "aider finished")


def aider_events(line: str, state: AiderState) -> list[RunnerEvent]:
    """Update ``state`` from one output line and return its events."""
    text = line.strip()
    if text.startswith("Tokens:") or _COST.search(text):
        return [_usage(text, state)]
    if retry := _RETRY.search(text):
        data = {"retry_delay_ms": float(retry.group(1)) * 1000}
        return [RunnerEvent(EventKind.API_RETRY, text, data, "warning")]
    category = _error_category(text)
    if category is not None:
        # The litellm line names the error; aider's explanation after it only fills in.
        if state.error is None or _LITELLM.search(text):
            state.error, state.error_category = text, category
        return [RunnerEvent(EventKind.API_ERROR, clip(text), {"category": category}, "error")]
    if text:
        state.last_line = text
    return [RunnerEvent(EventKind.OUTPUT, clip(line))]


def _usage(text: str, state: AiderState) -> RunnerEvent:
    """A ``Tokens: ...`` and/or ``Cost: ...`` line: a model call got through."""
    if text.startswith("Tokens:"):
        state.calls += 1
        # Earlier errors were retried away.
        state.error = state.error_category = None
        for number, suffix, label in _TOKENS.findall(text):
            count = parse_token_count(number, suffix)
            if label == "sent":
                state.input_tokens += count
            elif label == "received":
                state.output_tokens += count
            elif label == "cache hit":
                state.cache_read_tokens += count
            else:
                state.cache_creation_tokens += count
    if cost := _COST.search(text):
        state.session_cost = float(cost.group(2))  # the session figure is the running total
    data = {
        "input_tokens": state.input_tokens,
        "output_tokens": state.output_tokens,
        "cache_read_tokens": state.cache_read_tokens,
        "cache_creation_tokens": state.cache_creation_tokens,
        "cost_usd": state.session_cost,
        # the model calls so far: with the running cost, the round's progress
        "num_turns": state.calls,
    }
    return RunnerEvent(EventKind.USAGE, text, data)


def _error_category(line: str) -> ErrorCategory | None:
    if match := _LITELLM.search(line):
        name = match.group(1)
        if name.endswith("Error") or name == "Timeout":
            return _LITELLM_CATEGORIES.get(name, ErrorCategory.EXECUTION_ERROR)
    for prefix, category in _DESCRIPTIONS.items():
        if line.strip().startswith(prefix):
            return category
    return None


class AiderRunner:
    """Runs ``aider --message <prompt> --yes-always --no-auto-commits --no-stream``.

    Args:
        cli_path: the ``aider`` executable (a name on PATH or a path).
        extra_args: more arguments (``--model``, ``--edit-format``, ...), before the prompt.
        kill_grace: seconds between SIGTERM and SIGKILL when stopping it.
    """

    name = "aider"

    def __init__(
        self, cli_path: str = "aider", extra_args: Sequence[str] = (), kill_grace: float = 5.0
    ) -> None:
        self.cli_path = cli_path
        self.extra_args = tuple(extra_args)
        self.kill_grace = kill_grace

    def argv(self, spec: RunSpec) -> list[str]:
        """The command line for ``spec``; aider has no turn limit, budget or session id."""
        argv = [self.cli_path, "--yes-always", "--no-auto-commits", "--no-stream"]
        # No colours or update checks: plain text we can parse, no stray network calls.
        argv += ["--no-pretty", "--no-check-update"]
        if spec.model:
            argv += ["--model", spec.model]
        if spec.resume_session_id:
            # Aider's closest thing to a session: the chat history kept in the worktree.
            argv.append("--restore-chat-history")
        # One token, so a prompt starting with "-" is not read as an option.
        return [*argv, *self.extra_args, f"--message={spec.prompt}"]

    async def run(self, spec: RunSpec, on_event: EventSink) -> RunnerOutcome:
        """Run aider for ``spec``. See :class:`~claude_cluster.runners.base.Runner`."""
        state = AiderState()

        async def on_line(line: str) -> bool:
            for event in aider_events(line, state):
                await on_event(event)
            return False  # no terminal line: aider exits after the message

        async def on_stderr_line(line: str) -> None:
            for event in aider_events(line, state):
                await on_event(event)

        return await run_cli(
            spec,
            self.argv(spec),
            on_event,
            on_line=on_line,
            on_stderr_line=on_stderr_line,
            outcome=state.outcome,
            kill_grace=self.kill_grace,
        )
