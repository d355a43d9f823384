"""Whether this agent can run anything at all: its start checks, run again periodically.

An agent that takes tasks it cannot run fails each one (a black hole). Before it takes
work, and every ``READY_CHECK_INTERVAL`` seconds after, it checks what every run needs
from the host (the sandbox canary is run by the daemon beside these):

- the runner's executable is found (``claude`` via ``CLAUDE_CODE_CLI_PATH`` or PATH; the
  ``codex``/``aider`` executable; the first word of ``AGENT_COMMAND``);
- the runner has a model credential (``claude``: ``ANTHROPIC_API_KEY``,
  ``CLAUDE_CODE_OAUTH_TOKEN`` or a logged-in CLI's ``~/.claude/.credentials.json``;
  ``codex``: ``OPENAI_API_KEY`` or ``~/.codex/auth.json``; ``aider``: either key);
- ``WORKSPACE_PATH`` is writable and has at least ``WORKSPACE_MIN_FREE_GB`` free.

Each problem is one sentence naming the fix; the agent reports the first ones as its
``not_ready_reason`` (SPEC §5).
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from claude_cluster.runners import Runner
from claude_cluster.runners.claude_code import find_claude_cli
from claude_cluster.runners.credentials import CREDENTIALS, has_credential

__all__ = [
    "credential_problem",
    "runner_problem",
    "workspace_problem",
]


def runner_problem(runner: Runner) -> str | None:
    """``None`` when the runner's executable is found, else what to do about it. A runner
    that does not say which executable it runs (a test's fake) is taken as found."""
    name = getattr(runner, "name", "")
    if name == "claude":
        return executable_problem("claude", cli_path=getattr(runner, "cli_path", None))
    if name == "command":
        argv = getattr(runner, "argv", None)
        return executable_problem("command", command=shlex.join(argv) if argv else None)
    if name in ("codex", "aider"):
        return executable_problem(name, cli_path=getattr(runner, "cli_path", None))
    return None


def executable_problem(
    runner: str, *, cli_path: str | None = None, command: str | None = None
) -> str | None:
    """``None`` when the runner's executable is found, else what to do about it."""
    if runner == "claude":
        if find_claude_cli(cli_path) is None:
            where = f"CLAUDE_CODE_CLI_PATH={cli_path}" if cli_path else "PATH"
            return (
                f"runner claude: the Claude Code CLI is not found ({where}): install it "
                "(npm install -g @anthropic-ai/claude-code) or set CLAUDE_CODE_CLI_PATH"
            )
        return None
    if runner == "command":
        try:
            words = shlex.split(command or "")
        except ValueError as exc:
            return f"runner command: AGENT_COMMAND cannot be parsed ({exc})"
        if not words:
            return "runner command: AGENT_COMMAND is empty"
        if shutil.which(words[0]) is None:
            return f"runner command: {words[0]!r} (AGENT_COMMAND) is not an executable found"
        return None
    executable = cli_path or runner
    if shutil.which(executable) is None:
        return f"runner {runner}: {executable!r} is not installed on this agent (not on PATH)"
    return None


def credential_problem(
    runner: str, env: Mapping[str, str | None], home: Path | None = None
) -> str | None:
    """``None`` when ``runner`` has a model credential (``env`` holds the agent's
    settings and environment), else which variable to set."""
    home = home or Path(os.environ.get("HOME") or Path.home())
    if has_credential(runner, env, home):
        return None
    names, login_file = CREDENTIALS[runner]
    hint = f" (or log the {runner} CLI in, which writes ~/{login_file})" if login_file else ""
    return f"runner {runner}: no model credential: set {' or '.join(names)}{hint}"


def workspace_problem(workspace: Path, min_free_gb: float) -> str | None:
    """``None`` when ``workspace`` is writable with at least ``min_free_gb`` free."""
    try:
        workspace.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workspace, prefix=".ready-"):
            pass
    except OSError as exc:
        return f"WORKSPACE_PATH {workspace} is not writable ({exc.strerror or exc})"
    free_gb = shutil.disk_usage(workspace).free / 1e9
    if free_gb < min_free_gb:
        return (
            f"WORKSPACE_PATH {workspace} has {free_gb:.1f} GB free, below "
            f"WORKSPACE_MIN_FREE_GB={min_free_gb:g}: free some space"
        )
    return None
