"""Fixtures shared by every tier: databases on both backends and a running coordinator."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from claude_cluster.coordinator.app import create_app
from claude_cluster.coordinator.config import CoordinatorSettings
from claude_cluster.logging import configure
from tests.support import databases
from tests.support.servers import ServerThread

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
REGISTRATION_TOKEN = "test-registration-token-0123456789"

#: ``claude_cli`` and ``fake_api``, for the tiers that drive the real Claude Code CLI
pytest_plugins = ["tests.support.claude_cli"]


@pytest.fixture(scope="session", autouse=True)
def _quiet_logs() -> None:
    """Servers started in-process log warnings only, as JSON on stderr."""
    configure("WARNING", service="tests")


@pytest.fixture(scope="session")
def _pg_template() -> Iterator[None]:
    databases.make_pg_template()
    yield
    databases.drop_pg_template()


@contextmanager
def fresh_pg_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated, empty PostgreSQL database, dropped afterwards."""
    request.getfixturevalue("_pg_template")
    name, url = databases.new_pg_database()
    try:
        yield url
    finally:
        databases.drop_pg_database(name)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database: each test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield databases.new_sqlite_database(tmp_path)
        return
    with fresh_pg_database(request) as url:
        yield url


def coordinator_settings(db_url: str, **overrides: object) -> CoordinatorSettings:
    values: dict[str, object] = {
        "database_url": db_url,
        "secret_key": "test-secret-key-0123456789",
        "admin_token": ADMIN_TOKEN,
        "agent_registration_token": REGISTRATION_TOKEN,
        "sweep_interval": 0.2,
        "retry_base_seconds": 0.2,
        "retry_max_seconds": 1.0,
        "agent_cooldown_seconds": 0.5,
        "agent_call_timeout": 2.0,
        "redis_url": "",
    }
    values.update(overrides)
    return CoordinatorSettings(_env_file=None, **values)  # type: ignore[call-arg]


@dataclass
class RunningCoordinator:
    url: str
    server: ServerThread
    settings: CoordinatorSettings

    def client(self, token: str = ADMIN_TOKEN) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )

    def async_client(self, token: str = ADMIN_TOKEN) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )


@pytest.fixture
def start_coordinator(db_url: str) -> Iterator[Callable[..., RunningCoordinator]]:
    """Start the real coordinator app under uvicorn on a free port, with settings overrides."""
    started: list[ServerThread] = []

    def start(**overrides: object) -> RunningCoordinator:
        settings = coordinator_settings(db_url, **overrides)
        server = ServerThread(create_app(settings)).start()
        started.append(server)
        return RunningCoordinator(server.url, server, settings)

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def coordinator(start_coordinator: Callable[..., RunningCoordinator]) -> RunningCoordinator:
    """The real coordinator on each backend, with the test defaults."""
    return start_coordinator()


@pytest.fixture
def api(coordinator: RunningCoordinator) -> Iterator[httpx.Client]:
    with coordinator.client() as client:
        yield client
