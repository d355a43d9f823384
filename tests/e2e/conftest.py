"""End to end: a coordinator process, agent daemon processes running the REAL Claude Code
CLI against the fake Anthropic API, and a local git repository with a failing test.

Every process starts in its own process group and is SIGKILLed with its group at the end;
the CLI children of an agent killed with -9 (they have their own groups) are found through
``/proc`` and killed as well.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN
from tests.fakes.anthropic_api import FAKE_API_KEY, Scenario
from tests.support import databases
from tests.support.agents import AgentProcess, agent_env, agent_process, make_origin
from tests.support.processes import coordinator_process
from tests.support.servers import free_port


@dataclass
class Cluster:
    """A running coordinator with agents started on demand."""

    url: str
    root: Path
    origin: Path
    cli: str
    stack: ExitStack
    agents: dict[str, AgentProcess] = field(default_factory=dict)

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
        )

    def start_agent(self, agent_id: str, scenario: Scenario, **extra: str) -> AgentProcess:
        """An agent daemon process with the ``claude`` runner pointed at ``scenario``."""
        env = agent_env(
            self.url,
            self.root / agent_id,
            free_port(),
            AGENT_ID=agent_id,
            AGENT_RUNNER="claude",
            CLAUDE_CODE_CLI_PATH=self.cli,
            ANTHROPIC_BASE_URL=scenario.base_url,
            ANTHROPIC_API_KEY=FAKE_API_KEY,
            AGENT_SPECIALTY="backend,frontend,testing,devops,general",
            HEARTBEAT_INTERVAL="0.5",
            STALL_TIMEOUT="60",
            TEST_TIMEOUT="60",
            MAX_FIX_ROUNDS="2",
            **extra,
        )
        agent = self.stack.enter_context(agent_process(env, log=self.root / f"{agent_id}.log"))
        self.agents[agent_id] = agent
        return agent

    def submit(self, issue: int, title: str, description: str) -> dict[str, Any]:
        """Submit through ``claude-cluster task submit`` (the HTTP API if the CLI is absent)."""
        cli = shutil.which("claude-cluster", path=str(Path(sys.executable).parent))
        if cli is not None:
            env = {**os.environ, "COORDINATOR_URL": self.url, "ADMIN_TOKEN": ADMIN_TOKEN}
            done = subprocess.run(
                [cli, "task", "submit", "--repository", str(self.origin), "--issue", str(issue),
                 "--title", title, "--description", description, "--json"],
                env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            task: dict[str, Any] = json.loads(done.stdout)
            return task
        body = {
            "title": title,
            "description": description,
            "github_repository": str(self.origin),
            "github_issue_number": issue,
        }
        with self.api() as api:
            response = api.post("/api/v1/tasks", json=body)
            response.raise_for_status()
            created: dict[str, Any] = response.json()
            return created

    def wait_task(self, task_id: int, wanted: set[str], timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.api() as api:
            while True:
                task: dict[str, Any] = api.get(f"/api/v1/tasks/{task_id}").json()
                if task["status"] in wanted:
                    return task
                if time.monotonic() > deadline:
                    logs = {name: a.output()[-3000:] for name, a in self.agents.items()}
                    raise AssertionError(f"task {task_id} is {task['status']}; agents: {logs}")
                time.sleep(0.2)

    def runs(self, task_id: int) -> list[dict[str, Any]]:
        with self.api() as api:
            runs: list[dict[str, Any]] = api.get(f"/api/v1/tasks/{task_id}/runs").json()
        return sorted(runs, key=lambda r: r["attempt"])


@pytest.fixture
def cluster(tmp_path: Path, claude_cli: str) -> Iterator[Cluster]:
    """The coordinator process on a migrated SQLite file, short leases for the tests."""
    with ExitStack() as stack:
        coordinator = stack.enter_context(
            coordinator_process(
                databases.new_sqlite_database(tmp_path),
                log=tmp_path / "coordinator.log",
                HEARTBEAT_INTERVAL="0.5",
                RUN_LEASE_SECONDS="3",
                AGENT_HEARTBEAT_TIMEOUT="3",
                RETRY_BASE_SECONDS="0.5",
                RETRY_MAX_SECONDS="1",
                AGENT_COOLDOWN_SECONDS="0.5",
            )
        )
        origin = make_origin(tmp_path / "remote")
        yield Cluster(coordinator.url, tmp_path, origin, claude_cli, stack)
