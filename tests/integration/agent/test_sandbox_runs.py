"""The trust boundary with real parts: bubblewrap, the gateway, the real Claude Code CLI
against the fake API, real git. The model's tool calls try what an attacker who wrote the
issue would try; the assertions read what the fake API got back (the tool results), what
a loopback listener saw and what git did afterwards."""

from __future__ import annotations

import json
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from claude_cluster.agent.coordinator_client import CoordinatorClient
from claude_cluster.agent.job_runner import JobRunner
from claude_cluster.agent.pull_request import PullRequestOpener
from claude_cluster.agent.reporter import RunReporter
from claude_cluster.agent.run_context import GitTokenSource, JobConfig
from claude_cluster.agent.runbox import GatewayConfig
from claude_cluster.agent.sandbox import Sandbox
from claude_cluster.agent.workspace import WorkspaceManager
from claude_cluster.domain.states import ErrorCategory
from claude_cluster.domain.wire import ExecuteTaskRequest
from claude_cluster.runners import Runner, RunSpec
from claude_cluster.runners.claude_code import ClaudeCodeRunner
from tests.fakes.anthropic_api import FakeAnthropic, bash, text, write
from tests.integration.agent.conftest import GitHttpServer
from tests.support.agents import (
    CALC_FIXED,
    Opener,
    ScriptedRunner,
    branch_file,
    git,
    make_origin,
    writes,
)

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

REAL_KEY = "sk-ant-REAL-key-never-in-a-run-0123456789"
ENV_SECRET = "registration-SECRET-from-the-env-file-42"
OTHER_SECRET = "other-repository-SECRET-7"


class Listener:
    """A TCP listener on the host's loopback that records every connection."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


def reporter() -> RunReporter:
    return RunReporter(CoordinatorClient("http://127.0.0.1:9", registration_token="x"), 1)


def request(origin: Path, **kw: object) -> ExecuteTaskRequest:
    values: dict[str, object] = {
        "run_id": 5,
        "task_id": 7,
        "title": "add() subtracts",
        "description": "add(2, 3) returns -1",
        "github_repository": str(origin),
        "github_issue_number": 3,
        "repository_url": str(origin),
        "timeout_seconds": 90,
    }
    values.update(kw)
    return ExecuteTaskRequest(**values)  # type: ignore[arg-type]


class CliIgnoringBudget(ClaudeCodeRunner):
    """The real CLI, but told no budget: the gateway alone must stop the run."""

    def argv(self, executable: str, spec: RunSpec) -> list[str]:
        return super().argv(executable, replace(spec, budget_usd=None))


def job_runner(
    tmp_path: Path,
    upstream: str,
    runner: Runner | None = None,
    git_tokens: GitTokenSource | None = None,
    open_pull_request: PullRequestOpener | None = None,
    allow: tuple[str, ...] = (),
    **config: object,
) -> JobRunner:
    """A runner confined like an agent's; ``allow`` is ``RUN_EGRESS_ALLOW``."""
    ws = tmp_path / "ws"
    return JobRunner(
        JobConfig(
            agent_id="agent-sbx",
            homes_dir=ws / "homes",
            state_dir=tmp_path / "agent-state" / "runs",
            test_timeout=30,
            max_fix_rounds=0,
            git_user_name="Agent",
            git_user_email="agent@example.invalid",
            sandbox=Sandbox.for_agent(enabled=True),
            gateway=GatewayConfig(
                upstream=upstream, credential=("x-api-key", REAL_KEY), allow=allow
            ),
            **config,  # type: ignore[arg-type]
        ),
        workspaces=WorkspaceManager(ws, git_timeout=30, isolated=True),
        runner=runner or ClaudeCodeRunner(kill_grace=2),
        git_tokens=git_tokens,
        open_pull_request=open_pull_request,
    )


def attack(tmp_path: Path, listener: Listener) -> str:
    """One Bash call doing what a prompt-injected model would try; prints what it got."""
    ws = tmp_path / "ws"
    pwned = tmp_path / "pwned"
    return "; ".join(
        [
            f"cat {tmp_path}/agent/.env",
            "env",
            f"ls -la {ws} {ws}/cache/mirrors {ws}/tasks",
            f"cat {ws}/tasks/task-99-a1/secret.txt",
            f"cat {ws}/cache/mirrors/other.git/config",
            "cat /proc/*/environ | tr '\\0' '\\n'",
            "ls /proc",
            # the mirror (its config and hooks) and the run's own repository config
            f"for m in {ws}/cache/mirrors/*.git; do git -C $m config core.sshCommand "
            f"'touch {pwned}-mirror'; echo x > $m/hooks/pre-push; done",
            f"git config core.sshCommand 'touch {pwned}-ssh'",
            f"git config core.fsmonitor 'touch {pwned}-fsmonitor'",
            f"git config url.file://{pwned}-url/.pushInsteadOf {tmp_path}",
            f"printf '#!/bin/sh\\ntouch {pwned}-hook\\n' > .git/hooks/pre-commit",
            "chmod +x .git/hooks/pre-commit",
            f"echo probe > {ws}/homes/escape.txt",
            f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', "
            f"{listener.port}), 2); print('CONNECTED-TO-HOST')\"",
            "echo ATTACK-DONE",
        ]
    )


async def test_a_hostile_session_leaks_nothing_and_still_delivers(
    tmp_path: Path, claude_cli: str, fake_api: FakeAnthropic, listener: Listener
) -> None:
    origin = make_origin(tmp_path / "remote")
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / ".env").write_text(f"REGISTRATION_TOKEN={ENV_SECRET}\n")
    other_run = tmp_path / "ws" / "tasks" / "task-99-a1"
    other_run.mkdir(parents=True)
    (other_run / "secret.txt").write_text(OTHER_SECRET)
    other_mirror = tmp_path / "ws" / "cache" / "mirrors" / "other.git"
    git(tmp_path, "init", "-q", "--bare", str(other_mirror))
    git(other_mirror, "config", "secret.value", OTHER_SECRET)
    scenario = fake_api.scenario(
        [bash(attack(tmp_path, listener)), write("calc.py", CALC_FIXED), text("Fixed add().")]
    )
    runner = job_runner(tmp_path, scenario.base_url)

    result = await runner.run(request(origin), reporter())

    assert result.succeeded, result.message
    results = json.dumps([r.tool_results() for r in scenario.messages_requests])
    assert "ATTACK-DONE" in results, "the attack ran"
    for secret in (REAL_KEY, ENV_SECRET, OTHER_SECRET):
        assert secret not in results
    assert "CONNECTED-TO-HOST" not in results and listener.connections == 0
    # the model API saw the real key (swapped in by the gateway), the run only its token
    assert {r.headers.get("x-api-key") for r in scenario.messages_requests} == {REAL_KEY}
    assert "cc-run-" in results
    # nothing of the run's choosing ran outside the sandbox, now or at the next fetch/push
    assert not list(tmp_path.glob("pwned*"))
    assert not (tmp_path / "ws" / "homes" / "escape.txt").exists()
    assert branch_file(origin, result.branch or "", "calc.py") == CALC_FIXED
    assert (result.tests_passed, result.tests_failed) == (2, 0)
    mirror = runner.workspaces.mirrors.path_for(str(origin))
    assert "sshCommand" not in (mirror / "config").read_text()
    assert not (mirror / "hooks" / "pre-push").exists()
    second = await runner.run(request(origin, run_id=6, attempt=2), reporter())
    assert not list(tmp_path.glob("pwned*")), second.message


async def test_a_change_to_a_workflow_is_refused_at_delivery(
    tmp_path: Path, claude_cli: str, fake_api: FakeAnthropic
) -> None:
    origin = make_origin(tmp_path / "remote")
    scenario = fake_api.scenario(
        [
            write("calc.py", CALC_FIXED),
            write(".github/workflows/ci.yml", "on: push\njobs: {}\n"),
            text("Done."),
        ]
    )
    result = await job_runner(tmp_path, scenario.base_url).run(request(origin), reporter())

    assert not result.succeeded
    assert result.error_category == ErrorCategory.EXECUTION_ERROR
    assert ".github/workflows/ci.yml" in result.message and "workflows" in result.message
    assert git(origin, "for-each-ref", "refs/heads/claude") == "", "nothing was pushed"


async def test_the_gateway_cuts_off_a_run_past_its_budget(
    tmp_path: Path, claude_cli: str, fake_api: FakeAnthropic
) -> None:
    origin = make_origin(tmp_path / "remote")
    # every turn costs ~$0.5 at the gateway's opus price: 100k input tokens
    expensive = bash("echo working", input_tokens=100_000)
    scenario = fake_api.scenario([expensive, expensive, expensive, text("Done.")])
    rep = reporter()
    runner = job_runner(tmp_path, scenario.base_url, CliIgnoringBudget(kill_grace=2))
    result = await runner.run(request(origin, budget_usd=0.6), rep)

    assert result.error_category == ErrorCategory.BUDGET_EXCEEDED, result.message
    assert len(scenario.messages_requests) == 2, "the third request never reached the API"
    assert "budget_exceeded" in [e.kind for e in rep._events.first(len(rep._events))]


async def test_the_git_token_is_asked_for_at_fetch_and_delivery_and_never_enters_the_run(
    tmp_path: Path, claude_cli: str, fake_api: FakeAnthropic
) -> None:
    origin = make_origin(tmp_path / "remote")
    token = "ghs_delivery_token_0123456789"
    asked: list[tuple[int, str]] = []

    async def tokens(run_id: int, purpose: str) -> str:
        asked.append((run_id, purpose))
        return token

    with GitHttpServer(origin.parent, token) as server:
        url = server.url("origin.git")
        scenario = fake_api.scenario(
            [bash("env; cat .git/config; ls /tmp"), write("calc.py", CALC_FIXED), text("Done.")]
        )
        runner = job_runner(tmp_path, scenario.base_url, git_tokens=tokens)
        result = await runner.run(request(origin, repository_url=url), reporter())

    assert result.succeeded, result.message
    assert asked == [(5, "fetch"), (5, "deliver")]
    assert branch_file(origin, result.branch or "", "calc.py") == CALC_FIXED
    results = json.dumps([r.tool_results() for r in scenario.messages_requests])
    assert "cc-run-" in results and "[remote" not in results, "env ran; the run has no remote"
    assert token not in results and "x-access-token" not in results


async def test_a_confined_run_says_so_and_its_pull_request_has_no_warning(
    tmp_path: Path, fake_api: FakeAnthropic
) -> None:
    """The other side of RUN_SANDBOX=off (test_job_runner.py): no unconfined note."""
    origin = make_origin(tmp_path / "remote")
    opener = Opener()

    async def tokens(run_id: int, purpose: str) -> str:
        return "ghs_token"

    scripted = ScriptedRunner([writes(CALC_FIXED)])
    runner = job_runner(
        tmp_path,
        fake_api.scenario([text("unused")]).base_url,
        scripted,
        git_tokens=tokens,
        open_pull_request=opener,
        runner_env={"ANTHROPIC_API_KEY": REAL_KEY},
    )
    rep = reporter()
    result = await runner.run(
        request(origin, github_repository="octo/app", open_pull_request=True), rep
    )

    assert result.succeeded, result.message
    [sandbox] = [e for e in rep._events.first(len(rep._events)) if e.kind == "sandbox"]
    assert (sandbox.level, sandbox.data) == ("info", {"sandbox": "on"})
    env = scripted.specs[0].env
    assert env["ANTHROPIC_API_KEY"].startswith("cc-run-") and REAL_KEY not in str(env)
    [pr] = opener.opened
    assert "not sandboxed" not in pr.body and "RUN_SANDBOX" not in pr.body
    assert "2 passed, 0 failed" in pr.body
