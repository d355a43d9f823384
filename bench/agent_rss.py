"""Agent daemon memory: resident set size idle and while it holds 3 runs.

Starts a coordinator (SQLite, a real process) and one agent daemon process with the
``command`` runner running ``sleep``, submits 3 tasks on a local repository, and reads the
daemon's own ``VmRSS`` (children excluded: their memory is the runner's, not the daemon's).

    uv run python bench/agent_rss.py
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ADMIN = "bench-admin-token-0123456789"
REGISTRATION = "bench-registration-token-0123456789"
RUNS = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def wait_for(probe: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = probe()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def make_repo(root: Path) -> Path:
    work, bare = root / "seed", root / "origin.git"
    work.mkdir()
    (work / "app.py").write_text("print('hello')\n")
    ident = ["-c", "user.name=b", "-c", "user.email=b@example.invalid"]
    for args in (
        ["init", "-q", "--bare", "-b", "main", str(bare)],
        ["-C", str(work), "init", "-q", "-b", "main"],
        ["-C", str(work), "add", "."],
        ["-C", str(work), *ident, "commit", "-q", "-m", "start"],
        ["-C", str(work), "push", "-q", str(bare), "main"],
    ):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    return bare


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen[bytes], *, signals: int = 1) -> None:
    """SIGTERM ``signals`` times (twice stops an agent's runs at once), then SIGKILL."""
    for _ in range(signals):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        origin = make_repo(root)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC", "CLAUDE"))}
        cport, aport = free_port(), free_port()
        url = f"http://127.0.0.1:{cport}"
        coordinator = start(
            [sys.executable, "-m", "claude_cluster", "coordinator", "--migrate"],
            {
                **base,
                "DATABASE_URL": f"sqlite:///{root / 'c.db'}",
                "ADMIN_TOKEN": ADMIN,
                "AGENT_REGISTRATION_TOKEN": REGISTRATION,
                "SECRET_KEY": "bench-secret-key-0123456789",
                "HOST": "127.0.0.1",
                "PORT": str(cport),
                "LOG_LEVEL": "WARNING",
            },
            root / "coordinator.log",
        )
        agent = None
        try:
            wait_for(lambda: httpx.get(f"{url}/health").status_code == 200, 60, "coordinator")
            agent = start(
                [sys.executable, "-m", "claude_cluster.agent"],
                {
                    **base,
                    "AGENT_ID": "bench",
                    "COORDINATOR_URL": url,
                    "REGISTRATION_TOKEN": REGISTRATION,
                    "AGENT_HOST": "127.0.0.1",
                    "AGENT_PORT": str(aport),
                    "IP_ADDRESS": "127.0.0.1",
                    "WORKSPACE_PATH": str(root / "ws"),
                    "AGENT_RUNNER": "command",
                    "AGENT_COMMAND": "sleep 60",
                    "AGENT_SPECIALTY": "backend,frontend,testing,devops,general",
                    "MAX_CONCURRENT_TASKS": str(RUNS),
                    "LOG_LEVEL": "WARNING",
                },
                root / "agent.log",
            )
            api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"})
            wait_for(
                lambda: api.get("/api/v1/agents/bench").json().get("last_heartbeat"),
                30,
                "the agent's first heartbeat",
            )
            time.sleep(2)
            idle = rss_mib(agent.pid)
            for issue in range(1, RUNS + 1):
                api.post(
                    "/api/v1/tasks",
                    json={
                        "title": f"Bench task {issue}",
                        "github_repository": str(origin),
                        "github_issue_number": issue,
                    },
                ).raise_for_status()
            wait_for(
                lambda: api.get("/api/v1/agents/bench").json()["active_task_count"] == RUNS,
                30,
                f"{RUNS} runs on the agent",
            )
            time.sleep(2)
            busy = rss_mib(agent.pid)
            print(f"agent daemon RSS idle: {idle:.1f} MiB")
            print(f"agent daemon RSS with {RUNS} runs: {busy:.1f} MiB")
        finally:
            if agent is not None:
                stop(agent, signals=2)
            stop(coordinator)


if __name__ == "__main__":
    main()
