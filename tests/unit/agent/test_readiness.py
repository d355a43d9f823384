"""The agent's readiness checks, one sentence per problem naming the fix."""

from __future__ import annotations

import sys
from pathlib import Path

from claude_cluster.agent.readiness import (
    credential_problem,
    executable_problem,
    runner_problem,
    workspace_problem,
)
from claude_cluster.runners import get_runner


def test_the_runner_executable_must_be_found(tmp_path: Path) -> None:
    assert runner_problem(get_runner("command", command=f"{sys.executable} x.py")) is None
    missing = runner_problem(get_runner("command", command=f"{tmp_path}/nope x.py"))
    assert missing is not None and "nope" in missing and "AGENT_COMMAND" in missing
    claude = runner_problem(get_runner("claude", cli_path=str(tmp_path / "claude")))
    assert claude is not None and "CLAUDE_CODE_CLI_PATH" in claude
    assert executable_problem("codex", cli_path=str(tmp_path / "codex")) is not None
    assert executable_problem("aider", cli_path=sys.executable) is None


def test_the_runner_needs_a_model_credential(tmp_path: Path) -> None:
    assert credential_problem("claude", {"ANTHROPIC_API_KEY": "k"}, tmp_path) is None
    assert credential_problem("claude", {"CLAUDE_CODE_OAUTH_TOKEN": "t"}, tmp_path) is None
    problem = credential_problem("claude", {"ANTHROPIC_API_KEY": None}, tmp_path)
    assert problem is not None and "ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN" in problem
    (tmp_path / ".claude").mkdir()
    (tmp_path / ".claude/.credentials.json").write_text("{}")
    assert credential_problem("claude", {}, tmp_path) is None  # a logged-in CLI
    assert credential_problem("aider", {"OPENAI_API_KEY": "k"}, tmp_path) is None
    assert credential_problem("command", {}, tmp_path) is None


def test_the_workspace_must_be_writable_with_room(tmp_path: Path) -> None:
    assert workspace_problem(tmp_path / "ws", 0) is None
    full = workspace_problem(tmp_path / "ws", 1e12)
    assert full is not None and "WORKSPACE_MIN_FREE_GB" in full
    blocked = tmp_path / "file"
    blocked.write_text("")
    problem = workspace_problem(blocked / "ws", 0)  # a path under a file: never writable
    assert problem is not None and "not writable" in problem
