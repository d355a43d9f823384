"""ASGI entry for uvicorn workers: ``claude_cluster.coordinator.asgi:app`` builds the app
from the environment (each worker process reads the same settings)."""

from __future__ import annotations

from claude_cluster.config import load
from claude_cluster.coordinator.app import create_app
from claude_cluster.coordinator.config import CoordinatorSettings
from claude_cluster.logging import configure

settings = load(CoordinatorSettings)
configure(
    settings.log_level, service="coordinator", log_file=settings.log_file, fmt=settings.log_format
)
app = create_app(settings)
