"""The ``command`` runner: any executable, for dry runs, benchmarks and home-made agents.

``AGENT_COMMAND`` is split like a shell would (``shlex.split``) but never run through a
shell. The executable runs in the worktree with the task in its environment:

* ``CLAUDE_CLUSTER_PROMPT``: the prompt;
* ``CLAUDE_CLUSTER_MODEL``, ``CLAUDE_CLUSTER_MAX_TURNS``, ``CLAUDE_CLUSTER_BUDGET_USD``,
  ``CLAUDE_CLUSTER_RESUME_SESSION_ID``: the spec's limits, when set;
* plus everything the spec's ``env`` carries.

Exit 0 is success. Output lines become events; lines in Claude's stream-json shape are
understood, so a last line ``{"type": "result", "total_cost_usd": ..., "usage": {...},
"num_turns": ..., "session_id": ...}`` reports cost and usage (optional).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from claude_cluster.errors import ConfigError
from claude_cluster.process import ProcessExit
from claude_cluster.runners.base import (
    EventKind,
    EventSink,
    RunnerEvent,
    RunnerOutcome,
    RunSpec,
    clip,
    run_cli,
    scrubbed_env,
)
from claude_cluster.runners.claude_stream import (
    PlainOutput,
    StreamSummary,
    parse_line,
    runner_event,
)
from claude_cluster.runners.outcome import Verdict, exit_verdict, outcome_from, watchdog_verdict

__all__ = ["PROMPT_VARIABLE", "CommandRunner"]

#: the environment variable holding the prompt
PROMPT_VARIABLE = "CLAUDE_CLUSTER_PROMPT"


class CommandRunner:
    """Runs ``command`` in the worktree.

    Args:
        command: the command line (``AGENT_COMMAND``), split with :func:`shlex.split`; or
            an argv list.
        kill_grace: seconds between SIGTERM and SIGKILL when stopping it.

    Raises:
        ConfigError: the command is empty or cannot be split.
    """

    name = "command"

    def __init__(self, command: str | Sequence[str], kill_grace: float = 5.0) -> None:
        try:
            argv = shlex.split(command) if isinstance(command, str) else list(command)
        except ValueError as exc:
            raise ConfigError(f"AGENT_COMMAND cannot be parsed: {exc}") from exc
        if not argv:
            raise ConfigError("AGENT_COMMAND is empty")
        self.argv = argv
        self.kill_grace = kill_grace

    def env(self, spec: RunSpec) -> dict[str, str]:
        """The scrubbed environment with the task's variables."""
        task = {PROMPT_VARIABLE: spec.prompt}
        optional = {
            "CLAUDE_CLUSTER_MODEL": spec.model,
            "CLAUDE_CLUSTER_MAX_TURNS": spec.max_turns,
            "CLAUDE_CLUSTER_BUDGET_USD": spec.budget_usd,
            "CLAUDE_CLUSTER_RESUME_SESSION_ID": spec.resume_session_id,
        }
        task |= {name: str(value) for name, value in optional.items() if value is not None}
        return scrubbed_env(spec, task)

    async def run(self, spec: RunSpec, on_event: EventSink) -> RunnerOutcome:
        """Run the command for ``spec``. See :class:`~claude_cluster.runners.base.Runner`."""
        summary = StreamSummary()
        last_output: list[str] = []

        async def on_line(line: str) -> bool:
            # Claude-shaped lines are understood; anything else is plain output.
            for event in parse_line(line) or [PlainOutput(line)]:
                summary.add(event)
                if isinstance(event, PlainOutput):
                    last_output[:] = [event.text]
                await on_event(runner_event(event))
            return False  # success is the exit code, so wait for it

        async def on_stderr_line(line: str) -> None:
            await on_event(RunnerEvent(EventKind.OUTPUT, clip(line), {"stream": "stderr"}))

        def outcome(process: ProcessExit) -> RunnerOutcome:
            fallback = last_output[0] if last_output else "the command finished"
            return _outcome(summary, process, fallback)

        return await run_cli(
            spec,
            self.argv,
            on_event,
            on_line=on_line,
            on_stderr_line=on_stderr_line,
            outcome=outcome,
            env=self.env(spec),
            kill_grace=self.kill_grace,
        )


def _outcome(summary: StreamSummary, process: ProcessExit, fallback: str) -> RunnerOutcome:
    verdict = watchdog_verdict(process)
    if verdict is None and process.exit_code == 0:
        verdict = Verdict(None, summary.result.description if summary.result else fallback)
    return outcome_from(verdict or exit_verdict(process, "the command"), summary, process)
