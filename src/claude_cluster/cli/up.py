"""``claude-cluster up``: a whole cluster on this machine, on the embedded default.

The coordinator on SQLite (a file in the data directory, in-process bus) and N local agents
on 127.0.0.1:8081.., each a child process of this one. Secrets are made on the first run
and kept in the data directory (mode 0600). Ctrl-C (or SIGTERM) stops everything: agents
first, so that their runs end, then the coordinator.

Before starting anything it checks that the ports are free and that the runner has its
credentials (exit 2 naming the fix). On a terminal the children's logs are one coloured
line per event under a live status line; elsewhere (or with ``--json-logs``) they are
JSON lines. The banner appears once the coordinator answers (ours: it takes our admin
token) and every agent registered; agents start only after the coordinator answers. A port
taken after the checks is named when the child that needed it exits (exit 2).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.live import Live
from rich.text import Text

from claude_cluster.cli.preflight import port_problem, preflight

out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)  # a message is one line
#: how long each stop step waits for the children
STOP_GRACE_SECONDS = 10.0
START_TIMEOUT_SECONDS = 60.0


def _secret(path: Path) -> str:
    if path.is_file():
        return path.read_text().strip()
    value = secrets.token_urlsafe(32)
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


class Children:
    """The processes `up` started, by name, and (on a terminal) the relay of their output."""

    def __init__(self, relay: Console | None) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._relay = relay
        self._threads: list[threading.Thread] = []
        #: set by a signal that arrives while stopping: go to the next step now
        self.hurry = threading.Event()

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        # Own session: a Ctrl-C in the terminal reaches only `up`, which then stops each
        # child with one SIGTERM (two signals would make an agent hand its runs back at once).
        piped = self._relay is not None
        proc = subprocess.Popen(
            [sys.executable, "-m", "claude_cluster", *args],
            env=env,
            start_new_session=True,
            stdout=subprocess.PIPE if piped else None,
            stderr=subprocess.STDOUT if piped else None,
        )
        self.procs[name] = proc
        if piped and proc.stdout is not None:
            thread = threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _pump(self, stream: IO[bytes]) -> None:
        """Relay the child's lines; keep draining its pipe even when our own output is
        gone, or the child would block on a full pipe and never reach its exit."""
        assert self._relay is not None
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            if line:
                _say(self._relay, Text.from_ansi(line))

    def exited(self) -> tuple[str, int] | None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                return name, proc.returncode
        return None

    def stop(self, grace: float) -> None:
        """Agents first (they report to the coordinator), then the coordinator.

        A signal that arrives meanwhile (a second Ctrl-C) cannot cut this short, which
        would leave the children running: it moves every child to its next step at once.
        """
        previous = _on_stop_signals(lambda *_: self.hurry.set())
        try:
            agents = [p for name, p in self.procs.items() if name != "coordinator"]
            _stop(agents, grace, self.hurry)
            _stop([p for name, p in self.procs.items() if name == "coordinator"], grace, self.hurry)
        finally:
            for signal_number, handler in previous.items():
                signal.signal(signal_number, handler)
        for thread in self._threads:
            thread.join(timeout=2)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _on_stop_signals(handler: Callable[[int, Any], None]) -> dict[int, Any]:
    """Install ``handler`` for SIGINT, SIGTERM and SIGHUP; the handlers it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, handler) for sig in _STOP_SIGNALS}


def _stop(procs: list[subprocess.Popen[bytes]], grace: float, hurry: threading.Event) -> None:
    """SIGTERM (agents drain), again after ``grace`` (agents hand their runs back), then
    SIGKILL to the process group. ``hurry`` set (by a signal) ends the current wait."""
    for signal_number, wait in (
        (signal.SIGTERM, grace),
        (signal.SIGTERM, grace),
        (signal.SIGKILL, 5.0),
    ):
        alive = [p for p in procs if p.poll() is None]
        if not alive:
            return
        hurry.clear()
        for proc in alive:
            with contextlib.suppress(ProcessLookupError):
                if signal_number == signal.SIGKILL:
                    os.killpg(proc.pid, signal_number)
                else:
                    proc.send_signal(signal_number)
        deadline = time.monotonic() + wait
        while any(p.poll() is None for p in alive) and time.monotonic() < deadline:
            if hurry.wait(0.05):
                break


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


def _say(console: Console, message: object) -> None:
    """Print, unless our output is gone (a closed pipe): stopping must go on regardless."""
    with contextlib.suppress(OSError, ValueError):
        console.print(message)


def _interrupt(_signum: int, _frame: object) -> None:
    """SIGTERM, and SIGHUP (the terminal closed), stop `up` the way Ctrl-C does: the
    children live in sessions of their own, so nothing else would stop them."""
    raise KeyboardInterrupt


def _wait_for(what: str, probe: Callable[[], bool], children: Children, timeout: float) -> None:
    """Poll ``probe`` until it holds; a child exiting or the timeout ends `up` (exit 1)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gone = children.exited()
        if gone:
            _say(
                err,
                f"[red]the {gone[0]} exited with {gone[1]}[/red] before {what}; its log is above",
            )
            raise typer.Exit(1)
        with contextlib.suppress(httpx.HTTPError, ValueError):
            if probe():
                return
        time.sleep(0.2)
    _say(err, f"[red]{what} did not happen within {timeout:.0f} s[/red]; the logs above say why")
    raise typer.Exit(1)


def _status_line(api: httpx.Client, url: str, agent_ids: list[str]) -> Text:
    try:
        queue = api.get("/api/v1/queue/status").json()
        online = [
            a
            for a in api.get("/api/v1/agents").json()
            if a["id"] in agent_ids and a["status"] != "offline"
        ]
    except (httpx.HTTPError, ValueError):
        return Text(f"● coordinator at {url} not answering", style="red")
    return Text.assemble(
        ("● ", "green"),
        f"{url}/  ·  agents {len(online)}/{len(agent_ids)}  ·  queued {queue['pending_tasks']}"
        f"  ·  running {queue['active_tasks']}  ·  completed {queue['completed_tasks']}"
        f"  ·  failed {queue['failed_tasks']}  ·  Ctrl-C stops",
    )


def up(
    agents: Annotated[int, typer.Option(min=0, max=32, help="local agents to start")] = 2,
    port: Annotated[int, typer.Option(min=1, max=65535, help="coordinator port")] = 8080,
    agent_port: Annotated[
        int, typer.Option(min=1, max=65535, help="first agent port (then +1 per agent)")
    ] = 8081,
    data_dir: Annotated[
        Path, typer.Option(help="where the database, secrets and workspaces live")
    ] = Path(".data"),
    runner: Annotated[
        str,
        typer.Option(
            help="agent runner: claude, codex, aider or command [env: AGENT_RUNNER]",
            autocompletion=lambda: ["claude", "codex", "aider", "command"],
        ),
    ] = "",
    json_logs: Annotated[
        bool, typer.Option("--json-logs", help="JSON log lines even on a terminal")
    ] = False,
) -> None:
    """Run the coordinator on SQLite and N local agents until interrupted."""
    runner = runner or os.environ.get("AGENT_RUNNER", "claude")
    problems = preflight(port=port, agent_port=agent_port, agents=agents, runner=runner)
    if problems:
        for problem in problems:
            err.print(f"[red]cannot start:[/red] {problem}")
        raise typer.Exit(2)
    terminal = out.is_terminal and not json_logs
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
        "LOG_FORMAT": "color" if terminal else "json",
    }
    url = f"http://127.0.0.1:{port}"
    children = Children(out if terminal else None)
    agent_ids = [f"local-{i + 1}" for i in range(agents)]
    api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin}"}, timeout=5)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    try:
        children.spawn("coordinator", ["coordinator", "--migrate"], base_env)
        try:
            # ours: another program that took the port since the check may answer /health
            # too, but not to our admin token
            _wait_for(
                f"the coordinator answering {url}/health",
                lambda: (
                    api.get("/health").status_code == 200
                    and api.get("/api/v1/queue/status").status_code == 200
                ),
                children,
                START_TIMEOUT_SECONDS,
            )
        except typer.Exit:
            exited = children.procs["coordinator"].poll() is not None
            taken = port_problem(port, "the coordinator", "--port") if exited else None
            if taken is not None:  # taken between the check and the coordinator's start
                _say(err, f"[red]cannot start:[/red] {taken}")
                raise typer.Exit(2) from None
            raise
        sandbox = _sandbox_mode(data_dir)
        started = datetime.now(UTC)
        for i, agent_id in enumerate(agent_ids):
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
                "AGENT_RUNNER": runner,
                "RUN_SANDBOX": sandbox,
            }
            children.spawn(f"agent {agent_id}", ["agent"], env)

        def registered() -> bool:
            # registering stamps last_heartbeat; a row left from an earlier run is older
            seen = {
                a["id"]
                for a in api.get("/api/v1/agents").json()
                if a["last_heartbeat"] and datetime.fromisoformat(a["last_heartbeat"]) >= started
            }
            return set(agent_ids) <= seen

        try:
            _wait_for(f"{agents} agent(s) registering", registered, children, START_TIMEOUT_SECONDS)
        except typer.Exit:
            for i, agent_id in enumerate(agent_ids):
                exited = children.procs[f"agent {agent_id}"].poll() is not None
                what = f"agent {agent_id}"
                taken = port_problem(agent_port + i, what, "--agent-port") if exited else None
                if taken is not None:
                    _say(err, f"[red]cannot start:[/red] {taken}")
                    raise typer.Exit(2) from None
            raise
        _banner(url, agents, agent_port, data_dir, admin)
        signal.signal(signal.SIGTERM, _interrupt)
        _watch(children, api, url, agent_ids, terminal)
    except KeyboardInterrupt:
        _say(out, "stopping…")
    finally:
        api.close()
        children.stop(STOP_GRACE_SECONDS)


def _banner(url: str, agents: int, agent_port: int, data_dir: Path, admin: str) -> None:
    agents_at = f"from 127.0.0.1:{agent_port}" if agents else ""
    _say(
        out,
        f"[bold green]claude-cluster is up[/bold green]: dashboard {url}/ , API docs "
        f"{url}/docs, {agents} agent(s) {agents_at}".rstrip(),
    )
    _say(out, f"admin token (also in {data_dir / 'admin-token'}): {admin}")
    _say(
        out,
        "submit work:  claude-cluster task submit --repository /path/to/repo "
        "--issue 1 --title 'Fix the failing test'",
    )


def _watch(
    children: Children, api: httpx.Client, url: str, agent_ids: list[str], terminal: bool
) -> None:
    """Until a child exits (exit 1) or Ctrl-C: on a terminal, a live status line."""
    live: Any = (
        Live(_status_line(api, url, agent_ids), console=out, auto_refresh=False, transient=True)
        if terminal
        else contextlib.nullcontext()
    )
    with live:
        last = 0.0
        while True:
            gone = children.exited()
            if gone:
                _say(err, f"[red]the {gone[0]} exited with {gone[1]}[/red]; its log is above")
                raise typer.Exit(1)
            if terminal and time.monotonic() - last >= 2:
                with contextlib.suppress(OSError, ValueError):  # the terminal is gone
                    live.update(_status_line(api, url, agent_ids), refresh=True)
                last = time.monotonic()
            time.sleep(0.25)
