"""``claude-cluster agent``: run the agent daemon (settings from the environment)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["agent"]


def agent(
    env_file: Annotated[
        Path | None,
        typer.Option(
            "--env-file",
            help="read settings from this .env file (the environment still wins)",
        ),
    ] = None,
) -> None:
    """Run the agent daemon until SIGTERM (first: drain; second: stop runs; third: exit)."""
    from claude_cluster.agent.config import load_agent_settings
    from claude_cluster.agent.daemon import AgentDaemon
    from claude_cluster.errors import ConfigError
    from claude_cluster.logging import configure

    try:
        settings = load_agent_settings(env_file)
        configure(
            settings.log_level,
            service="claude-cluster-agent",
            log_file=settings.log_file,
            fmt=settings.log_format,
        )
        daemon = AgentDaemon(settings)
    except ConfigError as exc:
        typer.echo(f"claude-cluster agent: {exc}", err=True)
        raise typer.Exit(2) from None
    code = asyncio.run(daemon.run())
    if code:
        raise typer.Exit(code)
