"""Loading settings for CLI commands: a bad variable is an error message naming it and
exit code 2, never a traceback."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from claude_cluster.config import load
from claude_cluster.coordinator.config import CoordinatorSettings
from claude_cluster.errors import ConfigError


def coordinator_settings(**overrides: object) -> CoordinatorSettings:
    try:
        return load(CoordinatorSettings, **overrides)
    except ConfigError as exc:
        refuse(exc)


def refuse(exc: ConfigError) -> NoReturn:
    """Print a configuration error and exit with code 2."""
    Console(stderr=True).print(f"[red]configuration error:[/red] {escape(str(exc))}")
    raise typer.Exit(2) from None
