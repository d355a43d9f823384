"""Engine and sessions for both backends.

SQLite (the embedded default) gets WAL, a busy timeout, foreign keys and ``BEGIN IMMEDIATE``
so that a transaction that reads before it writes takes the write lock up front instead of
failing with "database is locked" halfway. PostgreSQL needs nothing special.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from claude_cluster.errors import ConfigError


def async_url(url: str) -> str:
    """Map the URLs people write (``postgresql://``, ``sqlite:///``) to the async drivers."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif backend == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    return parsed.render_as_string(hide_password=False)


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine(url: str, *, pool_size: int = 10, max_overflow: int = 20) -> AsyncEngine:
    url = async_url(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("postgresql"):
        # No ping before each checkout (a round trip per transaction on the hot path): a
        # connection the server dropped fails its statement instead, the pool discards
        # every connection of that age, and the store runs the transaction again
        # (store/common.py::retry_conflicts). Connections are recycled after an hour.
        kwargs.update(pool_size=pool_size, max_overflow=max_overflow, pool_recycle=3600)
    engine = create_async_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        _tune_sqlite(engine)
    return engine


#: what PostgreSQL lets ordinary roles open: max_connections less the reserved slots
_CONNECTION_LIMIT = text(
    "SELECT current_setting('max_connections')::int"
    " - current_setting('superuser_reserved_connections')::int"
)


async def check_connection_budget(url: str, *, workers: int, per_worker: int) -> None:
    """Refuse to start when this host's worker processes could open more connections than
    PostgreSQL accepts: under a burst the extra ones would fail with "too many clients"
    (500s) instead of waiting for a free connection. Other replicas' pools are not seen
    here (SPEC §8). Nothing to check on SQLite, nor when the server cannot be reached yet:
    the coordinator's start says so in its own words."""
    engine = create_async_engine(async_url(url), poolclass=NullPool)
    try:
        if is_sqlite(engine):
            return
        async with engine.connect() as connection:
            limit = int((await connection.execute(_CONNECTION_LIMIT)).scalar_one())
    except (OSError, SQLAlchemyError):
        return
    finally:
        await engine.dispose()
    if workers * per_worker > limit:
        raise ConfigError(
            f"WORKERS ({workers}) x (DATABASE_POOL_SIZE + DATABASE_MAX_OVERFLOW = {per_worker})"
            f" = {workers * per_worker} connections, more than PostgreSQL accepts ({limit}:"
            " max_connections less superuser_reserved_connections); lower them or raise"
            " max_connections"
        )


def _tune_sqlite(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see "begin").
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return async_sessionmaker(engine, expire_on_commit=False)
