"""Real coordinator processes for tests (``python -m claude_cluster coordinator``)."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ADMIN_TOKEN, REGISTRATION_TOKEN
from tests.support.servers import free_port


def coordinator_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE"))}
    env.update(
        DATABASE_URL=database_url,
        ADMIN_TOKEN=ADMIN_TOKEN,
        AGENT_REGISTRATION_TOKEN=REGISTRATION_TOKEN,
        SECRET_KEY="test-secret-key-0123456789",
        HOST="127.0.0.1",
        WORKERS="1",
        LOG_LEVEL="WARNING",
        SWEEP_INTERVAL="0.5",
        REDIS_URL="",
    )
    env.update(extra)
    return env


def wait_healthy(
    url: str, proc: subprocess.Popen[bytes], timeout: float = 30, verify: Any = True
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1, verify=verify).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become healthy in {timeout} s")


def spawn_coordinator(env: dict[str, str], *, log: Path) -> subprocess.Popen[bytes]:
    """``claude-cluster coordinator --no-migrate`` in its own process group, output to
    ``log`` (appended: a restarted process keeps one log)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "claude_cluster", "coordinator", "--no-migrate"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def descendants_of(pid: int) -> list[int]:
    """Every descendant of ``pid``, children first (from /proc)."""
    found: list[int] = []
    frontier = [pid]
    while frontier:
        children = [c for p in frontier for c in children_of(p)]
        found.extend(children)
        frontier = children
    return found


def kill_groups(pids: list[int]) -> None:
    """SIGKILL the process group of each pid (the runners of an agent have their own)."""
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@dataclass(frozen=True)
class CoordinatorProcess:
    url: str
    pid: int


@contextmanager
def coordinator_process(
    database_url: str, *, log: Path, **extra: str
) -> Iterator[CoordinatorProcess]:
    """Start a coordinator process; yields its URL; always stops it (the whole group)."""
    port = free_port()
    proc = spawn_coordinator(coordinator_env(database_url, PORT=str(port), **extra), log=log)
    tls = "TLS_CERT_FILE" in extra
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    verify = ssl.create_default_context(cafile=extra["TLS_CA_FILE"]) if tls else True
    try:
        wait_healthy(url, proc, verify=verify)
        yield CoordinatorProcess(url, proc.pid)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
