"""README's first command: ``claude-cluster up`` runs a coordinator on SQLite and a local
agent that does real work with the real Claude Code CLI (against the fake Anthropic API);
Ctrl-C stops every process it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.fakes.anthropic_api import FakeAnthropic, edit, text, tool_use
from tests.support.agents import CALC_FIXED, branch_file, make_origin
from tests.support.servers import free_port

pytestmark = [pytest.mark.claude, pytest.mark.timeout(150)]


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.add(int(entry.name))
    return found


def test_up_runs_a_local_cluster_that_fixes_a_failing_test(
    tmp_path: Path, fake_api: FakeAnthropic
) -> None:
    origin = make_origin(tmp_path)
    scenario = fake_api.scenario(
        [
            tool_use("Read", {"file_path": "calc.py"}, say="Let me look."),
            edit("calc.py", "a - b", "a + b"),
            text("Fixed add()."),
        ]
    )  # type: ignore[list-item]
    port, agent_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE"))}
    env.update(scenario.env(), HOME=str(tmp_path / "home"), LOG_LEVEL="WARNING")
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "claude_cluster",
            "up",
            "--agents",
            "1",
            "--port",
            str(port),
            "--agent-port",
            str(agent_port),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    children: set[int] = set()
    try:
        url = f"http://127.0.0.1:{port}"
        token = _wait_for_token(tmp_path / "data" / "admin-token", up)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=headers, timeout=10) as api:
            _wait(lambda: api.get("/api/v1/agents").json(), 60)
            children = _children(up.pid)
            cli_env = {**env, "COORDINATOR_URL": url, "ADMIN_TOKEN": token}
            submit = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "claude_cluster",
                    "task",
                    "submit",
                    "--repository",
                    str(origin),
                    "--issue",
                    "1",
                    "--title",
                    "add() subtracts",
                    "--wait",
                    "--timeout",
                    "90",
                    "--json",
                ],
                env=cli_env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert submit.returncode == 0, submit.stdout + submit.stderr
            [run] = api.get("/api/v1/tasks/1/runs").json()
        assert run["status"] == "succeeded"
        assert (run["tests_passed"], run["tests_failed"]) == (2, 0)
        assert branch_file(origin, run["branch"], "calc.py") == CALC_FIXED
    finally:
        up.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            output = up.communicate(timeout=60)[0].decode()
        except subprocess.TimeoutExpired:
            up.kill()
            output = up.communicate()[0].decode()
    assert up.returncode == 0, output
    assert "claude-cluster is up" in output
    assert len(children) == 2, "a coordinator and one agent"
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()], "a child outlived up"


def _wait_for_token(path: Path, up: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 30
    while not path.is_file() or not path.read_text().strip():
        assert up.poll() is None, "up exited early"
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return path.read_text().strip()


def _wait(probe: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if probe():  # type: ignore[operator]
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("timed out")
