"""Helpers for runner tests: an event recorder, specs, and fake CLI executables."""

from __future__ import annotations

import stat
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from claude_cluster.runners.base import RunnerEvent, RunSpec


@dataclass
class Recorder:
    """An event sink that keeps what it receives."""

    events: list[RunnerEvent] = field(default_factory=list)

    async def __call__(self, event: RunnerEvent) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    def of(self, kind: str) -> list[RunnerEvent]:
        return [e for e in self.events if e.kind == kind]


def make_spec(tmp_path: Path, prompt: str = "Fix the bug.", **kw: Any) -> RunSpec:
    """A spec for a worktree and HOME under ``tmp_path``, with short test limits."""
    worktree = tmp_path / "worktree"
    worktree.mkdir(exist_ok=True)
    limits: dict[str, Any] = {"wall_timeout": 15.0, "idle_timeout": 10.0, "result_grace": 5.0}
    return RunSpec(
        prompt=prompt,
        cwd=worktree,
        home=tmp_path / "home",
        env=kw.pop("env", {}),
        **{**limits, **kw},
    )


def make_script(directory: Path, name: str, body: str) -> Path:
    """An executable Python script (run by this interpreter) called ``name``."""
    path = directory / name
    path.write_text(f"#!{sys.executable}\n{textwrap.dedent(body)}")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path
