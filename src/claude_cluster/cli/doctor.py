"""``claude-cluster doctor``: one line per check of the coordinator's setup."""

from __future__ import annotations

import asyncio

import typer
from rich.console import Console

from claude_cluster.cli.settings import coordinator_settings

out = Console(highlight=False, soft_wrap=True)


def doctor() -> None:
    """Check configuration, database, Redis, GitHub and agents (exit 1 when any fails)."""
    from claude_cluster.coordinator.doctor import run_checks  # coordinator imports stay lazy

    checks = asyncio.run(run_checks(coordinator_settings()))
    width = max(len(check.name) for check in checks)
    for check in checks:
        mark = "[green]ok  [/green]" if check.ok else "[red]FAIL[/red]"
        out.print(f"{mark} {check.name:<{width}}  {check.detail}")
        if check.fix:
            out.print(f"     {'':<{width}}  [yellow]fix:[/yellow] {check.fix}")
    failed = sum(not check.ok for check in checks)
    out.print(f"{len(checks) - failed} ok, {failed} failed")
    if failed:
        raise typer.Exit(1)
