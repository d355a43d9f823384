"""The ``codex`` runner: OpenAI Codex CLI, ``codex exec --json``.

Codex prints one JSON event per line: ``thread.started`` (the thread id is its session
id), ``turn.started``, ``item.started|updated|completed`` (agent messages, commands, file
changes, ...), then ``turn.completed`` with token usage or ``turn.failed``; a top-level
``error`` reports a failure outside a turn. It reports no cost. Exit code 0 means success,
1 any failed turn or error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
    classify_error_text,
    exit_verdict,
    verdict_outcome,
    watchdog_verdict,
)

__all__ = ["CodexRunner", "CodexState", "codex_events"]


@dataclass
class CodexState:
    """What a codex run has reported so far."""

    thread_id: str | None = None
    turns_completed: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    last_message: str = ""
    failure: str | None = None
    ended: bool = False

    def outcome(self, process: ProcessExit) -> RunnerOutcome:
        return verdict_outcome(
            self._verdict(process),
            process,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cache_read_tokens=self.cached_input_tokens,
            cache_creation_tokens=self.cache_write_tokens,
            num_turns=self.turns_completed,
            session_id=self.thread_id,
        )

    def _verdict(self, process: ProcessExit) -> Verdict:
        finished = process.exit_code == 0 or process.killed  # killed after its last turn
        if self.turns_completed and self.failure is None and finished:
            return Verdict(None, self.last_message or "codex finished")
        if self.failure is not None:
            return Verdict(classify_error_text(self.failure), self.failure)
        if not self.ended:
            stopped = watchdog_verdict(process)
            if stopped is not None:
                return stopped
            if process.exit_code == 0:
                return Verdict(ErrorCategory.CRASH, "codex exited without completing a turn")
        return exit_verdict(process, "codex")


def codex_events(line: str, state: CodexState) -> list[RunnerEvent]:
    """Update ``state`` from one stdout line and return its events (unknown types: none)."""
    try:
        event = json.loads(line)
    except ValueError:
        return [RunnerEvent(EventKind.OUTPUT, clip(line))]
    if not isinstance(event, dict):
        return [RunnerEvent(EventKind.OUTPUT, clip(line))]
    kind = event.get("type")
    if kind == "thread.started":
        state.thread_id = _str(event.get("thread_id")) or state.thread_id
        data = {"session_id": state.thread_id}
        return [RunnerEvent(EventKind.SESSION_STARTED, f"thread {state.thread_id}", data)]
    if kind == "turn.completed":
        return [_usage(event, state)]
    if kind in ("turn.failed", "error"):
        error = event.get("error")
        message = _str(error.get("message")) if isinstance(error, dict) else None
        state.failure = message or _str(event.get("message")) or f"codex reported {kind}"
        # turn.failed ends the run; a top-level error may be a retry notice codex survives.
        state.ended = state.ended or kind == "turn.failed"
        return [RunnerEvent(EventKind.API_ERROR, clip(state.failure), {"type": kind}, "error")]
    if isinstance(kind, str) and kind.startswith("item."):
        item = event.get("item")
        return _item(kind, item, state) if isinstance(item, dict) else []
    return []  # turn.started and future types


def _usage(event: dict[str, Any], state: CodexState) -> RunnerEvent:
    raw = event.get("usage")
    usage: dict[str, Any] = raw if isinstance(raw, dict) else {}
    state.turns_completed += 1
    state.ended = True
    state.failure = None  # whatever went wrong before, the turn got through
    state.input_tokens += _int(usage.get("input_tokens"))
    state.cached_input_tokens += _int(usage.get("cached_input_tokens"))
    state.cache_write_tokens += _int(usage.get("cache_write_input_tokens"))
    state.output_tokens += _int(usage.get("output_tokens"))
    return RunnerEvent(EventKind.USAGE, "turn completed", dict(usage))


def _item(kind: str, item: dict[str, Any], state: CodexState) -> list[RunnerEvent]:
    item_type = item.get("type")
    item_id = _str(item.get("id"))
    data: dict[str, Any]
    if item_type == "agent_message" and kind == "item.completed":
        state.last_message = _str(item.get("text")) or ""
        return [RunnerEvent(EventKind.ASSISTANT_TEXT, clip(state.last_message))]
    if item_type == "command_execution":
        command = _str(item.get("command")) or ""
        if kind == "item.started":
            data = {"tool_use_id": item_id, "name": "command", "input": {"command": clip(command)}}
            return [RunnerEvent(EventKind.TOOL_USE, "command", data)]
        if kind == "item.completed":
            failed = (
                item.get("status") in ("failed", "declined") or _int(item.get("exit_code")) != 0
            )
            output = clip(_str(item.get("aggregated_output")) or "")
            data = {"tool_use_id": item_id, "is_error": failed, "exit_code": item.get("exit_code")}
            return [
                RunnerEvent(EventKind.TOOL_RESULT, output, data, "warning" if failed else "info")
            ]
    if item_type == "file_change" and kind == "item.completed":
        changes = [c for c in item.get("changes") or [] if isinstance(c, dict)]
        summary = ", ".join(f"{c.get('kind')} {c.get('path')}" for c in changes)
        data = {"tool_use_id": item_id, "name": "file_change", "input": {"changes": changes}}
        return [RunnerEvent(EventKind.TOOL_USE, clip(summary), data)]
    if item_type in ("mcp_tool_call", "web_search") and kind == "item.started":
        data = {"tool_use_id": item_id, "name": item_type, "input": _clipped(item)}
        return [RunnerEvent(EventKind.TOOL_USE, item_type, data)]
    if item_type == "error" and kind == "item.completed":
        # A non-fatal error inside the turn; a fatal one ends in turn.failed.
        message = clip(_str(item.get("message")) or "error")
        return [RunnerEvent(EventKind.OUTPUT, message, {"type": "error"}, "warning")]
    if kind == "item.completed" and isinstance(item_type, str):
        return [RunnerEvent(EventKind.SYSTEM, item_type, _clipped(item), "debug")]
    return []


class CodexRunner:
    """Runs ``codex exec --json --full-auto --skip-git-repo-check``.

    Args:
        cli_path: the ``codex`` executable (a name on PATH or a path).
        extra_args: more arguments for ``codex exec``, before the prompt.
        kill_grace: seconds between SIGTERM and SIGKILL when stopping it.
    """

    name = "codex"

    def __init__(
        self, cli_path: str = "codex", extra_args: Sequence[str] = (), kill_grace: float = 5.0
    ) -> None:
        self.cli_path = cli_path
        self.extra_args = tuple(extra_args)
        self.kill_grace = kill_grace

    def argv(self, spec: RunSpec) -> list[str]:
        """The command line for ``spec`` (no budget or turn limit: codex has neither)."""
        argv = [self.cli_path, "exec", "--json", "--full-auto", "--skip-git-repo-check"]
        if spec.model:
            argv += ["--model", spec.model]
        argv += self.extra_args
        if spec.resume_session_id:
            argv += ["resume", spec.resume_session_id]
        # "--" ends the options: a prompt starting with "-" stays the prompt.
        return [*argv, "--", spec.prompt]

    async def run(self, spec: RunSpec, on_event: EventSink) -> RunnerOutcome:
        """Run codex for ``spec``. See :class:`~claude_cluster.runners.base.Runner`."""
        state = CodexState()

        async def on_line(line: str) -> bool:
            for event in codex_events(line, state):
                await on_event(event)
            return state.ended  # codex exits after its turn; a hang there is cut short

        return await run_cli(
            spec,
            self.argv(spec),
            on_event,
            on_line=on_line,
            outcome=state.outcome,
            kill_grace=self.kill_grace,
        )


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _clipped(item: dict[str, Any]) -> dict[str, Any]:
    return {k: clip(v) if isinstance(v, str) else v for k, v in item.items()}
