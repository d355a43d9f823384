"""The ``claude-cluster`` command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

from claude_cluster import __version__
from claude_cluster.cli import agents, db, repo, tasks, tokens
from claude_cluster.cli.client import call, coordinator_url
from claude_cluster.cli.coordinator import coordinator
from claude_cluster.cli.doctor import doctor
from claude_cluster.cli.up import up
from claude_cluster.humanize import ago, parse_time

app = typer.Typer(
    help="claude-cluster: turn GitHub issues into tested pull requests.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(tasks.app, name="task")
app.add_typer(agents.app, name="agents")
app.add_typer(db.app, name="db")
app.add_typer(repo.app, name="repo")
app.add_typer(tokens.app, name="tokens")
app.command()(coordinator)
app.command()(up)
app.command()(doctor)
out = Console()


@app.command("agent")
def agent(
    env_file: Annotated[
        Path | None, typer.Option("--env-file", help="read settings from this .env file")
    ] = None,
) -> None:
    """Run the agent daemon (settings from the environment)."""
    from claude_cluster.cli.agent import agent as run_agent  # the agent's imports stay lazy

    run_agent(env_file=env_file)


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Queue and agents at a glance."""
    queue = call("GET", "/api/v1/queue/status")
    agents = call("GET", "/api/v1/agents")
    if as_json:
        typer.echo(json.dumps({"queue": queue, "agents": agents}, indent=2))
        return
    out.print(
        f"queued {queue['pending_tasks']}  active {queue['active_tasks']}  completed "
        f"{queue['completed_tasks']}  failed {queue['failed_tasks']}  agents available "
        f"{queue['available_nodes']}  load {queue['current_load']:.0%} of "
        f"{queue['total_capacity']} slots"
    )
    table = Table("agent", "status", "slots", "last heartbeat")
    for a in agents:
        table.add_row(
            a["id"],
            a["status"]
            + (" (draining)" if a["draining"] else "")
            + (" (not ready)" if a.get("not_ready_reason") else ""),
            f"{a['active_task_count']}/{a['max_concurrent_tasks']}",
            ago(parse_time(a["last_heartbeat"])),
        )
    out.print(table)
    for a in agents:
        if a.get("not_ready_reason"):
            out.print(f"{a['id']} is not ready: {a['not_ready_reason']}", markup=False)


@app.command()
def health() -> None:
    """Ask the coordinator's /health (exit 1 when unhealthy)."""
    url = coordinator_url()
    try:
        response = httpx.get(f"{url}/health", timeout=10)
    except httpx.HTTPError as exc:
        out.print(f"[red]cannot reach {url}[/red]: {type(exc).__name__}")
        raise typer.Exit(3) from None
    out.print_json(response.text)
    if response.status_code != 200:
        raise typer.Exit(1)


@app.command()
def version() -> None:
    """Print the version."""
    out.print(__version__)
