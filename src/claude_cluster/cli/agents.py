"""``claude-cluster agents list|drain|ready|reset``."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Column, Table

from claude_cluster.cli.client import call
from claude_cluster.humanize import ago, parse_time

app = typer.Typer(help="Look at, drain and reset agents.", no_args_is_help=True)
out = Console()


@app.command("list")
def list_(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Registered agents."""
    agents = call("GET", "/api/v1/agents")
    if as_json:
        typer.echo(json.dumps(agents, indent=2))
        return
    # short figures only, so the table fits 80 columns whole; the lists follow it
    table = Table(
        *(Column(name, no_wrap=True) for name in ("id", "status", "slots", "load")),
        *(Column(name, no_wrap=True) for name in ("done/failed", "heartbeat", "drain")),
    )
    for a in agents:
        table.add_row(
            a["id"],
            "not ready" if a.get("not_ready_reason") else a["status"],
            f"{a['active_task_count']}/{a['max_concurrent_tasks']}",
            f"{a['current_load']:.2f}",
            f"{a['total_tasks_completed']}/{a['total_tasks_failed']}",
            ago(parse_time(a["last_heartbeat"])),
            "yes" if a["draining"] else "",
        )
    out.print(table)
    for a in agents:  # whole, below the table: lists and reasons wrap as text, not cells
        runners = "unknown" if a.get("runners") is None else ", ".join(a["runners"]) or "none"
        specialties = ", ".join(a["specialties"]) or "none"
        out.print(f"{a['id']}: specialties {specialties}; runners {runners}", markup=False)
        if a.get("not_ready_reason"):
            out.print(f"{a['id']} is not ready: {a['not_ready_reason']}", markup=False)


@app.command()
def drain(
    agent_id: str,
    undo: Annotated[bool, typer.Option("--undo", help="take new work again")] = False,
) -> None:
    """Give the agent no new runs (its running runs finish)."""
    agent = call("POST", f"/api/v1/agents/{agent_id}/drain", json={"drain": not undo})
    out.print(f"agent {agent['id']} draining={agent['draining']}")


@app.command()
def ready(agent_id: str) -> None:
    """Clear the agent's not-ready reason and fault streak after fixing its host: it takes
    work again (its own start checks block it again if they still fail)."""
    agent = call("POST", f"/api/v1/agents/{agent_id}/ready")
    out.print(f"agent {agent['id']} is ready: it takes work again")


@app.command()
def reset(agent_id: str) -> None:
    """Revoke the agent's token so that it may enrol again with the registration token
    (a rebuilt host that lost its state directory)."""
    agent = call("POST", f"/api/v1/agents/{agent_id}/reset")
    out.print(
        f"agent {agent['id']} reset: its old token no longer works; it enrols again with "
        "the registration token when it next starts"
    )
