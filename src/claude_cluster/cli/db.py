"""``claude-cluster db upgrade|downgrade|check``: Alembic, with DATABASE_URL from the
coordinator's settings."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from claude_cluster.cli.settings import coordinator_settings
from claude_cluster.coordinator.store import migrate

app = typer.Typer(help="Database migrations.", no_args_is_help=True)
out = Console()


@app.command()
def upgrade(revision: Annotated[str, typer.Argument(help="target revision")] = "head") -> None:
    """Apply migrations up to REVISION (run this before starting a new version)."""
    settings = coordinator_settings()
    migrate.upgrade(settings.database_url, revision)
    out.print(f"database at {revision}")


@app.command()
def downgrade(revision: Annotated[str, typer.Argument(help="target revision")]) -> None:
    """Revert migrations down to REVISION ('base' empties the database)."""
    settings = coordinator_settings()
    migrate.downgrade(settings.database_url, revision)
    out.print(f"database at {revision}")


@app.command()
def check() -> None:
    """Fail when the tables and the migrations disagree."""
    migrate.check(coordinator_settings().database_url)
    out.print("no drift")
