"""Helpers for the agent daemon's tests: a repository with a failing test, scripted
runners, and agent daemons in-process or as real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from claude_cluster.agent.config import AgentSettings
from claude_cluster.agent.daemon import AgentDaemon
from claude_cluster.agent.pull_request import PullRequestRequest
from claude_cluster.runners import RunnerEvent, RunnerOutcome, RunSpec
from tests.conftest import ADMIN_TOKEN, REGISTRATION_TOKEN
from tests.support.servers import free_port

CALC_BUGGY = "def add(a, b):\n    return a - b\n"
CALC_FIXED = "def add(a, b):\n    return a + b\n"
CALC_TEST = (
    "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\n"
    "def test_add_zero():\n    assert add(0, 0) == 0\n"
)
IDENTITY = ("-c", "user.name=Test Person", "-c", "user.email=test@example.invalid")


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", *IDENTITY, *args], cwd=cwd, capture_output=True, text=True, timeout=30
    )
    if result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {result.stderr}")
    return result.stdout.strip()


def make_origin(root: Path, files: dict[str, str] | None = None) -> Path:
    """A bare repository ``origin.git`` whose ``main`` has ``files``; by default
    ``calc.py`` with a bug that ``test_calc.py`` catches (1 of 2 tests fails)."""
    work, bare = root / "seed", root / "origin.git"
    work.mkdir(parents=True)
    for name, text in (files or {"calc.py": CALC_BUGGY, "test_calc.py": CALC_TEST}).items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    git(root, "init", "-q", "--bare", "-b", "main", str(bare))
    git(work, "init", "-q", "-b", "main")
    git(work, "add", ".")
    git(work, "commit", "-q", "-m", "start")
    git(work, "push", "-q", str(bare), "main")
    return bare


def branch_file(bare: Path, branch: str, path: str) -> str | None:
    """``path`` at the tip of ``branch`` in the bare repository, or None."""
    result = subprocess.run(
        ["git", "show", f"{branch}:{path}"], cwd=bare, capture_output=True, text=True
    )
    return result.stdout if result.returncode == 0 else None


def branches(bare: Path) -> list[str]:
    out = git(bare, "for-each-ref", "--format=%(refname:short)", "refs/heads")
    return [b for b in out.splitlines() if b]


def make_script(directory: Path, name: str, body: str) -> Path:
    """An executable Python script run by this interpreter."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!{sys.executable}\n{textwrap.dedent(body)}")
    path.chmod(0o755)
    return path


def fixer_script(directory: Path, *, sleep: float = 0.0, pid_file: Path | None = None) -> Path:
    """A ``command`` runner script: optionally sleeps, then fixes ``calc.py``; prints a
    Claude-shaped result line with cost and usage."""
    return make_script(
        directory,
        "fixer.py",
        f"""
        import json, os, pathlib, time
        pid_file = {str(pid_file) if pid_file else None!r}
        if pid_file:  # written whole (rename), so a reader never sees it half-done
            pathlib.Path(pid_file + ".tmp").write_text(str(os.getpid()))
            os.replace(pid_file + ".tmp", pid_file)
        print("working on", os.environ.get("CLUSTER_ISSUE_TITLE"), flush=True)
        time.sleep({sleep})
        pathlib.Path("calc.py").write_text({CALC_FIXED!r})
        print(json.dumps({{"type": "result", "subtype": "success", "is_error": False,
            "result": "Fixed add().", "total_cost_usd": 0.0123, "num_turns": 3,
            "session_id": "sess-1", "usage": {{"input_tokens": 1200, "output_tokens": 345}}}}))
        """,
    )


@dataclass
class ScriptedRunner:
    """A :class:`~claude_cluster.runners.Runner` whose rounds are Python callables.

    Each call takes the next step: ``step(spec) -> RunnerOutcome`` (the last step repeats).
    The specs it was given are kept.
    """

    steps: list[Callable[[RunSpec], RunnerOutcome | Awaitable[RunnerOutcome]]]
    name: str = "scripted"
    specs: list[RunSpec] = field(default_factory=list)

    async def run(
        self, spec: RunSpec, on_event: Callable[[RunnerEvent], Awaitable[None]]
    ) -> RunnerOutcome:
        self.specs.append(spec)
        step = self.steps[min(len(self.specs), len(self.steps)) - 1]
        await on_event(RunnerEvent("assistant_text", f"round {len(self.specs)}"))
        outcome = step(spec)
        if asyncio.iscoroutine(outcome):
            outcome = await outcome
        assert isinstance(outcome, RunnerOutcome)
        return outcome


def ok(session: str = "sess-1", cost: float = 0.01, **kw: Any) -> RunnerOutcome:
    defaults: dict[str, Any] = {
        "input_tokens": 100,
        "output_tokens": 20,
        "num_turns": 2,
        "exit_code": 0,
    }
    return RunnerOutcome(
        succeeded=True,
        error_category=None,
        message="Done.",
        cost_usd=cost,
        session_id=session,
        **{**defaults, **kw},
    )


def writes(content: str, path: str = "calc.py", **kw: Any) -> Callable[[RunSpec], RunnerOutcome]:
    def step(spec: RunSpec) -> RunnerOutcome:
        (spec.cwd / path).write_text(content)
        return ok(**kw)

    return step


class Opener:
    """Records the pull requests a run opens."""

    def __init__(self) -> None:
        self.opened: list[PullRequestRequest] = []

    async def __call__(self, pr: PullRequestRequest) -> tuple[int, str]:
        self.opened.append(pr)
        return 11, "https://github.com/o/r/pull/11"


def agent_settings(coordinator_url: str, workspace: Path, **overrides: Any) -> AgentSettings:
    values: dict[str, Any] = {
        "agent_id": "agent-1",
        "coordinator_url": coordinator_url,
        "registration_token": REGISTRATION_TOKEN,
        "agent_host": "127.0.0.1",
        "agent_port": free_port(),
        "ip_address": "127.0.0.1",
        "workspace_path": workspace,
        "heartbeat_interval": 0.5,
        "agent_runner": "command",
        "agent_command": "true",
        "test_timeout": 60,
        "git_user_name": "Agent",
        "git_user_email": "agent@example.invalid",
        # these agents test reporting, leases and signals with scripts that read host
        # paths and pids; the sandbox has tests of its own (test_sandbox_runs.py,
        # test_sandbox_agent.py) and the Claude e2e tests run with it
        "run_sandbox": False,
    }
    values.update(overrides)
    return AgentSettings(_env_file=None, **values)  # type: ignore[call-arg]


@dataclass
class RunningDaemon:
    daemon: AgentDaemon
    task: asyncio.Task[int]

    @property
    def url(self) -> str:
        return self.daemon.settings.url

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.daemon.secret}"},
            timeout=10,
        )

    async def stop(self, timeout: float = 30) -> int:
        self.daemon.stop_gracefully()
        return await asyncio.wait_for(self.task, timeout)


async def start_daemon(settings: AgentSettings, **options: Any) -> RunningDaemon:
    """Run an :class:`AgentDaemon` in this event loop (no signal handlers)."""
    daemon = AgentDaemon(settings, **options)
    task = asyncio.create_task(daemon.run(install_signals=False))
    deadline = time.monotonic() + 10
    while daemon._server is None or not daemon._server.started:
        if task.done():
            task.result()
            raise AssertionError("the daemon stopped at start")
        if time.monotonic() > deadline:
            raise AssertionError("the daemon did not start serving")
        await asyncio.sleep(0.02)
    return RunningDaemon(daemon, task)


def admin(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
    )


# --- real processes ------------------------------------------------------------------------


def agent_env(coordinator_url: str, workspace: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE"))}
    for name in ("PORT", "HOST", "AGENT_ID", "DEBUG"):
        env.pop(name, None)
    env.update(
        AGENT_ID="agent-1",
        COORDINATOR_URL=coordinator_url,
        REGISTRATION_TOKEN=REGISTRATION_TOKEN,
        AGENT_HOST="127.0.0.1",
        AGENT_PORT=str(port),
        IP_ADDRESS="127.0.0.1",
        WORKSPACE_PATH=str(workspace),
        HEARTBEAT_INTERVAL="0.5",
        LOG_LEVEL="INFO",
        GIT_USER_NAME="Agent",
        GIT_USER_EMAIL="agent@example.invalid",
    )
    env.update(extra)
    return env


@dataclass
class AgentProcess:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def spawn_agent(env: dict[str, str], *, log: Path) -> subprocess.Popen[bytes]:
    """``python -m claude_cluster.agent`` in its own process group, output appended to
    ``log`` (a restarted agent keeps one log)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "claude_cluster.agent"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_agent_serving(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Wait until the agent answers ``/health`` (30 s at most)."""
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"agent exited with {proc.returncode}: {log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("the agent did not serve /health in 30 s")
        time.sleep(0.1)


@contextmanager
def agent_process(env: dict[str, str], *, log: Path) -> Iterator[AgentProcess]:
    """``python -m claude_cluster.agent`` in its own process group; always stopped."""
    proc = spawn_agent(env, log=log)
    url = f"http://127.0.0.1:{env['AGENT_PORT']}"
    try:
        wait_agent_serving(proc, url, log)
        yield AgentProcess(proc, url, log)
    finally:
        kill_group(proc)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group of ``proc`` and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
