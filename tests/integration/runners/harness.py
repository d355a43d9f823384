"""Helpers for driving the real Claude Code CLI against the fake Anthropic API."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from claude_cluster.runners.base import RunnerOutcome, RunSpec
from claude_cluster.runners.claude_code import ClaudeCodeRunner
from tests.fakes.anthropic_api import Scenario
from tests.unit.runners.helpers import Recorder

CALC_BUGGY = "def add(a, b):\n    return a - b\n"
CALC_TEST = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def make_repo(root: Path) -> Path:
    """A git repository with one commit: ``calc.py`` has a bug ``test_calc.py`` catches."""
    root.mkdir()
    (root / "calc.py").write_text(CALC_BUGGY)
    (root / "test_calc.py").write_text(CALC_TEST)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".")
    git(root, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "start")
    return root


def repo_tests_pass(repo: Path) -> bool:
    """Whether the repository's tests pass (run with this interpreter's pytest)."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(repo)]
    return subprocess.run(command, cwd=repo, capture_output=True).returncode == 0


@dataclass
class ClaudeRun:
    """Builds specs for a scenario and runs the real CLI on them: ``await run(scenario)``."""

    repo: Path
    home: Path
    runner: ClaudeCodeRunner

    def spec(
        self,
        scenario: Scenario,
        prompt: str = "Fix the failing test.",
        *,
        oauth: bool = False,
        **kw: Any,
    ) -> RunSpec:
        """A spec pointing at ``scenario``; ``env`` is laid over the scenario's variables."""
        env = {**scenario.env(oauth=oauth), **kw.pop("env", {})}
        limits = {"wall_timeout": 30.0, "idle_timeout": 15.0, "result_grace": 5.0}
        return RunSpec(prompt=prompt, cwd=self.repo, home=self.home, env=env, **{**limits, **kw})

    async def __call__(
        self, scenario: Scenario, runner: ClaudeCodeRunner | None = None, **kw: Any
    ) -> tuple[RunnerOutcome, Recorder]:
        """Run ``scenario``; keyword arguments go to :meth:`spec`."""
        recorder = Recorder()
        outcome = await (runner or self.runner).run(self.spec(scenario, **kw), recorder)
        return outcome, recorder
