"""``claude-cluster up`` as a person sees it: refusals before anything starts, readable
coloured logs and a status line on a real terminal (tmux), JSON lines elsewhere."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import free_port

pytestmark = pytest.mark.timeout(150)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE"))}
    env.pop("AGENT_RUNNER", None)
    env.pop("AGENT_COMMAND", None)
    env.update(HOME=str(tmp_path / "home"), **extra)
    return env


def _up(*args: str) -> list[str]:
    return [sys.executable, "-m", "claude_cluster", "up", *args]


def _ports_free(*ports: int) -> bool:
    for port in ports:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def test_a_taken_port_is_named_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            _up("--port", str(port), "--agent-port", str(free_port()), "--runner", "command",
                "--data-dir", str(tmp_path / "data")),
            env=_env(tmp_path, AGENT_COMMAND="true"),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"port {port} (the coordinator) is taken" in done.stderr
    assert "--port" in done.stderr
    assert not (tmp_path / "data").exists(), "nothing may start before the checks pass"


def test_a_port_taken_after_the_check_is_named_and_no_agent_starts(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as taker:
        # bound but not listening: the check (SO_REUSEADDR) can bind it as well
        taker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taker.bind(("127.0.0.1", port))
        up = subprocess.Popen(
            _up("--agents", "1", "--port", str(port), "--agent-port", str(free_port()),
                "--runner", "command", "--data-dir", str(tmp_path / "data")),
            env=_env(tmp_path, AGENT_COMMAND="true"), cwd=tmp_path,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            # the checks passed once the secrets exist; now another program takes the port
            deadline = time.monotonic() + 30
            while not (tmp_path / "data" / "admin-token").exists():
                assert up.poll() is None and time.monotonic() < deadline, "up did not start"
                time.sleep(0.01)
            taker.listen()
            stdout, stderr = up.communicate(timeout=90)
        finally:
            if up.poll() is None:
                up.kill()
                up.communicate()
    assert up.returncode == 2, stdout + stderr
    assert f"port {port} (the coordinator) is taken by another program" in stderr
    assert "claude-cluster is up" not in stdout, "no banner without our coordinator"
    assert "agent_started" not in stderr and not (tmp_path / "data" / "agents").exists()


def test_missing_credentials_name_the_variable(tmp_path: Path) -> None:
    args = ("--port", str(free_port()), "--agent-port", str(free_port()))
    claude = subprocess.run(
        _up(*args), env=_env(tmp_path), capture_output=True, text=True, timeout=60
    )
    assert claude.returncode == 2
    assert "ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN" in claude.stderr
    assert "--runner command needs none" in claude.stderr
    command = subprocess.run(
        _up(*args, "--runner", "command"),
        env=_env(tmp_path), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert command.returncode == 2 and "AGENT_COMMAND" in command.stderr
    unknown = subprocess.run(
        _up(*args, "--runner", "gpt"), env=_env(tmp_path), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert unknown.returncode == 2 and "use one of claude, codex, aider, command" in unknown.stderr


def test_logs_are_json_lines_when_not_a_terminal(tmp_path: Path) -> None:
    port, agent_port = free_port(), free_port()
    up = subprocess.Popen(
        _up("--agents", "1", "--port", str(port), "--agent-port", str(agent_port),
            "--runner", "command", "--data-dir", str(tmp_path / "data")),
        env=_env(tmp_path, AGENT_COMMAND="true"), cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        banner = ""
        deadline = time.monotonic() + 90
        while "claude-cluster is up" not in banner:
            assert up.poll() is None and time.monotonic() < deadline, "up did not come up"
            banner += up.stdout.readline() if up.stdout else ""
    finally:
        up.send_signal(2)
        _stdout, stderr = up.communicate(timeout=60)
    assert up.returncode == 0, stderr
    logs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    events = {entry["event"] for entry in logs}
    assert {"coordinator_started", "agent_registered"} <= events
    assert all("timestamp" in entry and "level" in entry for entry in logs)
    assert _ports_free(port, agent_port)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[str]:
    if not shutil.which("tmux"):
        pytest.skip("tmux is missing (scripts/setup installs it)")
    session = f"cc-up-{os.getpid()}-{time.monotonic_ns()}"
    socket_path = tmp_path / "tmux.sock"
    yield f"tmux -S {socket_path} ::{session}"
    # closing the terminal sends SIGHUP, which stops `up` and its children too
    subprocess.run(["tmux", "-S", str(socket_path), "kill-server"], capture_output=True)


def _pane(tmux: str) -> str:
    base, session = tmux.split(" ::")
    return subprocess.run(
        [*shlex.split(base), "capture-pane", "-p", "-e", "-t", session],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def test_on_a_terminal_logs_are_readable_lines_under_a_status_line(
    tmp_path: Path, tmux: str
) -> None:
    port, agent_port = free_port(), free_port()
    base, session = tmux.split(" ::")
    env = _env(tmp_path, AGENT_COMMAND="true", TERM="xterm-256color")
    command = shlex.join(
        _up("--agents", "1", "--port", str(port), "--agent-port", str(agent_port),
            "--runner", "command", "--data-dir", str(tmp_path / "data"))
    )  # fmt: skip
    subprocess.run(
        [*shlex.split(base), "new-session", "-d", "-s", session, "-x", "200", "-y", "50",
         f"cd {shlex.quote(str(tmp_path))} && {command}; echo up-exited-$?; sleep 60"],
        env=env, check=True,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    screen = ""
    while "agents 1/1" not in screen:
        assert time.monotonic() < deadline, f"no status line; the screen:\n{screen}"
        time.sleep(0.5)
        screen = _pane(tmux)
    plain = subprocess.run(
        ["sed", "-e", r"s/\x1b\[[0-9;]*m//g"], input=screen, capture_output=True, text=True
    ).stdout
    lines = [line for line in plain.splitlines() if line.strip()]
    assert "\x1b[" in screen, "colours on a terminal"
    assert not any(line.lstrip().startswith("{") for line in lines), "no JSON on a terminal"
    started = next(i for i, line in enumerate(lines) if "coord coordinator_started" in line)
    registered = next(i for i, line in enumerate(lines) if "agent agent_registered" in line)
    banner = next(i for i, line in enumerate(lines) if "claude-cluster is up" in line)
    # the two processes' lines reach the terminal through separate pipes, so only the
    # banner's place is promised: after both
    assert max(started, registered) < banner, "the banner comes once the agents registered"
    assert lines[-1].startswith("● http://127.0.0.1:") and "queued 0" in lines[-1]

    subprocess.run([*shlex.split(base), "send-keys", "-t", session, "C-c"], check=True)
    deadline = time.monotonic() + 60
    while "up-exited-" not in (screen := _pane(tmux)):
        assert time.monotonic() < deadline, "Ctrl-C did not stop the cluster"
        time.sleep(0.5)
    assert "up-exited-0" in screen
    assert "coordinator_stopped" in screen and "agent_stopped" in screen
    assert _ports_free(port, agent_port)
