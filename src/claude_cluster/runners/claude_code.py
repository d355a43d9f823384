"""The ``claude`` runner: Claude Code headless (``claude -p --output-format stream-json``).

Every stdout line becomes typed events (:mod:`claude_cluster.runners.claude_stream`) forwarded
to the sink; the ``result`` line is terminal, so a CLI that hangs after it is stopped
``result_grace`` seconds later and its result kept. :mod:`claude_cluster.runners.outcome`
classifies the end.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from claude_cluster.runners.base import (
    EventSink,
    RunnerOutcome,
    RunSpec,
    run_cli,
    scrubbed_env,
)
from claude_cluster.runners.claude_stream import StreamSummary, parse_line, runner_event
from claude_cluster.runners.outcome import claude_outcome

__all__ = ["ClaudeCodeRunner", "find_claude_cli"]

#: what every run sets; the spec's env may still override it
_DEFAULT_ENV = {
    # No telemetry, update checks or DNS lookups: the model API is the only connection.
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
}


def find_claude_cli(cli_path: str | None = None) -> str | None:
    """The Claude Code executable to run, or ``None`` when there is none.

    ``cli_path`` (``CLAUDE_CODE_CLI_PATH``) wins when given, and is not second-guessed:
    if it does not exist the answer is ``None``. Otherwise the binary bundled in the
    ``claude-agent-sdk`` wheel, else ``claude`` on ``PATH``.
    """
    if cli_path:
        return shutil.which(cli_path)  # an absolute path or a name on PATH, executable
    # find_spec locates the package without importing it (the SDK is heavy to import).
    package = importlib.util.find_spec("claude_agent_sdk")
    for location in (package.submodule_search_locations or []) if package else []:
        bundled = Path(location) / "_bundled" / "claude"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    return shutil.which("claude")


class ClaudeCodeRunner:
    """Runs the real Claude Code CLI.

    Args:
        cli_path: the executable (``CLAUDE_CODE_CLI_PATH``); found automatically if None.
        permission_mode: passed as ``--permission-mode``; runs are unattended, so the
            default lets tools run without asking.
        extra_args: more CLI arguments, inserted before the prompt.
        kill_grace: seconds between SIGTERM and SIGKILL when stopping the CLI.
    """

    name = "claude"

    def __init__(
        self,
        cli_path: str | None = None,
        permission_mode: str = "bypassPermissions",
        extra_args: Sequence[str] = (),
        kill_grace: float = 5.0,
    ) -> None:
        self.cli_path = cli_path
        self.permission_mode = permission_mode
        self.extra_args = tuple(extra_args)
        self.kill_grace = kill_grace

    def argv(self, executable: str, spec: RunSpec) -> list[str]:
        """The command line for ``spec``."""
        argv = [executable, "-p", "--output-format", "stream-json", "--verbose"]
        argv += ["--permission-mode", self.permission_mode]
        if spec.model:
            argv += ["--model", spec.model]
        if spec.max_turns is not None:
            argv += ["--max-turns", str(spec.max_turns)]
        if spec.budget_usd is not None:
            argv += ["--max-budget-usd", f"{spec.budget_usd:g}"]
        if spec.resume_session_id:
            # One token, so an id starting with "-" cannot be read as a flag.
            argv.append(f"--resume={spec.resume_session_id}")
        argv += self.extra_args
        # "--" ends the options: a prompt starting with "-" stays the prompt.
        return [*argv, "--", spec.prompt]

    def env(self, spec: RunSpec) -> dict[str, str]:
        """The CLI's environment: scrubbed, per-run HOME, quiet, root switch if needed."""
        defaults = dict(_DEFAULT_ENV)
        if os.geteuid() == 0:
            # The CLI refuses bypassPermissions as root ("cannot be used with root/sudo
            # privileges") unless told it runs in a sandbox. Agents should run as a
            # dedicated user; where root cannot be avoided (containers, CI) IS_SANDBOX=1
            # is the documented switch.
            defaults["IS_SANDBOX"] = "1"
        return scrubbed_env(spec, defaults)

    async def run(self, spec: RunSpec, on_event: EventSink) -> RunnerOutcome:
        """Run the CLI for ``spec``. See :class:`~claude_cluster.runners.base.Runner`."""
        executable = find_claude_cli(self.cli_path)
        if executable is None:
            where = self.cli_path or "claude-agent-sdk's bundled CLI or `claude` on PATH"
            return RunnerOutcome.runner_error(f"Claude Code CLI not found: {where}")
        summary = StreamSummary()

        async def on_line(line: str) -> bool:
            for event in parse_line(line):
                summary.add(event)
                await on_event(runner_event(event))
            return summary.result is not None

        return await run_cli(
            spec,
            self.argv(executable, spec),
            on_event,
            on_line=on_line,
            outcome=lambda process: claude_outcome(summary, process),
            env=self.env(spec),
            kill_grace=self.kill_grace,
        )
