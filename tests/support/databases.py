"""Databases for tests: a fresh SQLite file, or a fresh PostgreSQL database cloned from a
migrated template (``CREATE DATABASE … TEMPLATE``: a few tens of ms instead of migrating)."""

from __future__ import annotations

import asyncio
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg

from claude_cluster.coordinator.store import migrate

#: the server the tests use; CI starts it when it is not running
PG_ADMIN_URL = os.environ.get("TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
#: one template per test session, so that concurrent sessions on one server never drop
#: each other's template halfway through a clone
TEMPLATE = f"cc_template_{os.getpid()}"


def _run(coro: Any) -> Any:
    # Fixtures may run while an event loop is running in this thread; use another thread.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _url_for(name: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


async def _admin(*statements: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def make_pg_template() -> None:
    """(Re)build the template from the migrations, once per test session."""
    _run(_admin(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)", f"CREATE DATABASE {TEMPLATE}"))
    migrate.upgrade(_url_for(TEMPLATE))


def drop_pg_template() -> None:
    _run(_admin(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)"))


def new_pg_database() -> tuple[str, str]:
    name = f"cc_test_{uuid.uuid4().hex[:12]}"
    _run(_admin(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
    return name, _url_for(name)


def drop_pg_database(name: str) -> None:
    _run(_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def new_empty_pg_database() -> tuple[str, str]:
    name = f"cc_test_{uuid.uuid4().hex[:12]}"
    _run(_admin(f"CREATE DATABASE {name}"))
    return name, _url_for(name)


def new_sqlite_database(directory: Path, *, migrated: bool = True) -> str:
    url = f"sqlite:///{directory / 'coordinator.db'}"
    if migrated:
        migrate.upgrade(url)
    return url
