"""``claude-cluster tokens create|list|revoke``: API tokens for people and scripts."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from claude_cluster.cli.client import call
from claude_cluster.humanize import ago, parse_time

app = typer.Typer(
    help="API tokens with a role: admin, or viewer (read-only).", no_args_is_help=True
)
out = Console()


ROLES = ("admin", "viewer")


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="who or what holds it, e.g. 'grafana'")],
    role: Annotated[
        str, typer.Option(help="admin, or viewer (read-only)", case_sensitive=False)
    ] = "viewer",
) -> None:
    """Create a token; it is printed once (only its hash is kept)."""
    role = role.lower()
    if role not in ROLES:
        raise typer.BadParameter("must be admin or viewer", param_hint="--role")
    created = call("POST", "/api/v1/tokens", json={"name": name, "role": role})
    out.print(f"token {created['id']} ({created['role']}) for {created['name']}:")
    typer.echo(created["token"])
    out.print("Store it now: it is not shown again.", style="yellow")


@app.command("list")
def list_(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Every token: id, name, role, created, revoked (never the token)."""
    tokens = call("GET", "/api/v1/tokens")
    if as_json:
        typer.echo(json.dumps(tokens, indent=2))
        return
    table = Table("id", "name", "role", "created", "revoked")
    for t in tokens:
        table.add_row(
            str(t["id"]),
            t["name"],
            t["role"],
            ago(parse_time(t["created_at"])),
            "yes" if t["revoked"] else "",
        )
    out.print(table)


@app.command()
def revoke(token_id: int) -> None:
    """Revoke a token: it stops working at once."""
    token = call("DELETE", f"/api/v1/tokens/{token_id}")
    out.print(f"token {token['id']} ({token['name']}) revoked")
