"""``claude-cluster up``: a whole cluster on this machine, on the embedded default.

The coordinator on SQLite (a file in the data directory, in-process bus) and N local agents
on 127.0.0.1:8081.., each a child process of this one. Secrets are made on the first run
and kept in the data directory (mode 0600). Ctrl-C (or SIGTERM) stops everything: agents
first, so that their runs end, then the coordinator.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console

out = Console()
#: how long each stop step waits for the children
STOP_GRACE_SECONDS = 10.0


def _secret(path: Path) -> str:
    if path.is_file():
        return path.read_text().strip()
    value = secrets.token_urlsafe(32)
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out.print(f"[red]the coordinator exited with {proc.returncode}[/red]")
            raise typer.Exit(1)
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    out.print(f"[red]the coordinator did not become healthy at {url} in {timeout:.0f} s[/red]")
    raise typer.Exit(1)


def _stop(procs: list[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM (agents drain), again after ``grace`` (agents hand their runs back), then
    SIGKILL to the process group."""
    for signal_number, wait in (
        (signal.SIGTERM, grace),
        (signal.SIGTERM, grace),
        (signal.SIGKILL, 5.0),
    ):
        alive = [p for p in procs if p.poll() is None]
        if not alive:
            return
        for proc in alive:
            with contextlib.suppress(ProcessLookupError):
                if signal_number == signal.SIGKILL:
                    os.killpg(proc.pid, signal_number)
                else:
                    proc.send_signal(signal_number)
        deadline = time.monotonic() + wait
        for proc in alive:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.05, deadline - time.monotonic()))


def _sandbox_mode(data_dir: Path) -> str:
    """``RUN_SANDBOX`` for the agents: as set, else ``on`` when the canary passes here.

    Says which, and why not, so nobody runs unconfined without knowing it.
    """
    if os.environ.get("RUN_SANDBOX"):
        return os.environ["RUN_SANDBOX"]
    import asyncio

    from claude_cluster.agent.daemon import SANDBOX_FIX
    from claude_cluster.agent.sandbox import Sandbox, SandboxUnavailable

    try:
        asyncio.run(
            Sandbox.for_agent(enabled=True).canary(
                secret_files=[data_dir / "admin-token"], forbidden_dirs=[data_dir]
            )
        )
    except SandboxUnavailable as exc:
        out.print(
            f"[bold red]runs are NOT confined[/bold red]: {exc}. The agents run with "
            f"RUN_SANDBOX=off. To confine them: {SANDBOX_FIX}."
        )
        return "off"
    out.print("runs are confined: bubblewrap sandbox, network only through each agent's gateway")
    return "on"


def _interrupt(_signum: int, _frame: object) -> None:
    """SIGTERM stops `up` the way Ctrl-C does."""
    raise KeyboardInterrupt


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Own session: a Ctrl-C in the terminal reaches only `up`, which then stops each child
    # with one SIGTERM (two signals would make an agent hand its runs back at once).
    return subprocess.Popen(
        [sys.executable, "-m", "claude_cluster", *args], env=env, start_new_session=True
    )


def up(
    agents: Annotated[int, typer.Option(min=0, max=32, help="local agents to start")] = 2,
    port: Annotated[int, typer.Option(help="coordinator port")] = 8080,
    agent_port: Annotated[int, typer.Option(help="first agent port")] = 8081,
    data_dir: Annotated[
        Path, typer.Option(help="where the database, secrets and workspaces live")
    ] = Path(".data"),
    runner: Annotated[
        str, typer.Option(help="agent runner: claude, codex, aider or command [env: AGENT_RUNNER]")
    ] = "",
) -> None:
    """Run the coordinator on SQLite and N local agents until interrupted."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    admin = _secret(data_dir / "admin-token")
    base_env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{data_dir / 'coordinator.db'}",
        "REDIS_URL": "",
        "ADMIN_TOKEN": admin,
        "SECRET_KEY": _secret(data_dir / "secret-key"),
        "AGENT_REGISTRATION_TOKEN": _secret(data_dir / "registration-token"),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WORKERS": "1",
    }
    url = f"http://127.0.0.1:{port}"
    coordinator = _spawn(["coordinator", "--migrate"], base_env)
    agents_procs: list[subprocess.Popen[bytes]] = []
    try:
        _wait_healthy(url, coordinator, timeout=60)
        sandbox = _sandbox_mode(data_dir)
        for i in range(agents):
            agent_id = f"local-{i + 1}"
            env = {
                **base_env,
                "AGENT_ID": agent_id,
                "AGENT_NAME": agent_id,
                "AGENT_HOST": "127.0.0.1",
                "AGENT_PORT": str(agent_port + i),
                "IP_ADDRESS": "127.0.0.1",
                "COORDINATOR_URL": url,
                "REGISTRATION_TOKEN": base_env["AGENT_REGISTRATION_TOKEN"],
                "WORKSPACE_PATH": str(data_dir / "agents" / agent_id),
                "RUN_SANDBOX": sandbox,
            }
            if runner:
                env["AGENT_RUNNER"] = runner
            agents_procs.append(_spawn(["agent"], env))
        out.print(
            f"[bold green]claude-cluster is up[/bold green]: dashboard {url}/ , API docs "
            f"{url}/docs, {agents} agent(s) from 127.0.0.1:{agent_port}"
        )
        out.print(f"admin token (also in {data_dir / 'admin-token'}): {admin}")
        out.print(
            "submit work:  claude-cluster task submit --repository /path/to/repo "
            "--issue 1 --title 'Fix the failing test'"
        )
        signal.signal(signal.SIGTERM, _interrupt)
        names = {coordinator.pid: "coordinator"} | {
            p.pid: f"agent local-{i + 1}" for i, p in enumerate(agents_procs)
        }
        while True:
            for proc in [*agents_procs, coordinator]:
                if proc.poll() is not None:
                    out.print(f"[red]the {names[proc.pid]} exited with {proc.returncode}[/red]")
                    raise typer.Exit(1)
            time.sleep(0.5)
    except KeyboardInterrupt:
        out.print("stopping…")
    finally:
        _stop(agents_procs, STOP_GRACE_SECONDS)  # agents first: they report to the coordinator
        _stop([coordinator], STOP_GRACE_SECONDS)
