"""``claude-cluster coordinator``: serve the API, the dispatcher and the reconciler."""

from __future__ import annotations

import asyncio
import os
from typing import Annotated

import typer
import uvicorn
from rich.console import Console

from claude_cluster.cli.settings import coordinator_settings, refuse
from claude_cluster.coordinator.store import migrate
from claude_cluster.coordinator.store.db import check_connection_budget
from claude_cluster.errors import ConfigError
from claude_cluster.tls import KEEP_ALIVE_SECONDS


def coordinator(
    host: Annotated[str | None, typer.Option(help="bind address [env: HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="port [env: PORT]")] = None,
    workers: Annotated[int | None, typer.Option(help="worker processes [env: WORKERS]")] = None,
    migrate_first: Annotated[
        bool | None,
        typer.Option("--migrate/--no-migrate", help="apply migrations first (default: on SQLite)"),
    ] = None,
) -> None:
    """Serve the coordinator (settings from the environment and .env)."""
    for name, value in (("HOST", host), ("PORT", port), ("WORKERS", workers)):
        if value is not None:
            os.environ[name] = str(value)
    settings = coordinator_settings()
    n_workers = settings.workers
    if settings.is_sqlite and n_workers > 1:
        Console(stderr=True).print("WORKERS > 1 needs PostgreSQL; SQLite runs one worker")
        n_workers = 1
    try:
        asyncio.run(
            check_connection_budget(
                settings.database_url,
                workers=n_workers,
                per_worker=settings.database_pool_size + settings.database_max_overflow,
            )
        )
    except ConfigError as exc:
        refuse(exc)
    if migrate_first if migrate_first is not None else settings.is_sqlite:
        migrate.upgrade(settings.database_url)
    uvicorn.run(
        "claude_cluster.coordinator.asgi:app",
        host=settings.host,
        port=settings.port,
        workers=n_workers,
        log_level=settings.log_level.lower(),
        access_log=settings.debug,
        log_config=None,  # uvicorn's lines go through our logging (LOG_FORMAT)
        ssl_certfile=settings.tls_cert_file,
        ssl_keyfile=settings.tls_key_file,
        # Idle keep-alive TLS connections would otherwise hold a stop for 30 s each.
        timeout_graceful_shutdown=10,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
