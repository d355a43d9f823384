"""``claude-cluster agents list|drain|reset``."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

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
    table = Table(
        "id",
        "status",
        "slots",
        "load",
        "specialties",
        "done",
        "failed",
        "heartbeat",
        "url",
        "drain",
    )
    for a in agents:
        table.add_row(
            a["id"],
            a["status"],
            f"{a['active_task_count']}/{a['max_concurrent_tasks']}",
            f"{a['current_load']:.2f}",
            ",".join(a["specialties"]),
            str(a["total_tasks_completed"]),
            str(a["total_tasks_failed"]),
            ago(parse_time(a["last_heartbeat"])),
            "yes" if a["draining"] else "",
        )
    out.print(table)


@app.command()
def drain(
    agent_id: str,
    undo: Annotated[bool, typer.Option("--undo", help="take new work again")] = False,
) -> None:
    """Give the agent no new runs (its running runs finish)."""
    agent = call("POST", f"/api/v1/agents/{agent_id}/drain", json={"drain": not undo})
    out.print(f"agent {agent['id']} draining={agent['draining']}")


@app.command()
def reset(agent_id: str) -> None:
    """Revoke the agent's token so that it may enrol again with the registration token
    (a rebuilt host that lost its state directory)."""
    agent = call("POST", f"/api/v1/agents/{agent_id}/reset")
    out.print(
        f"agent {agent['id']} reset: its old token no longer works; it enrols again with "
        "the registration token when it next starts"
    )
