"""The chaos tier: real processes on a PostgreSQL of its own (see tests/support/chaos.py).

One private PostgreSQL instance serves the whole session (a fresh database per scenario);
each test gets a :class:`Lab` that is torn down whatever happens, and prints its figures.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.chaos import PG_BIN, Figures, Lab, PrivatePostgres


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/chaos/" in str(item.path):
            item.add_marker(pytest.mark.chaos)


@pytest.fixture(scope="session")
def private_pg() -> Iterator[PrivatePostgres]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL server binaries in {PG_BIN} (CHAOS_PG_BIN)")
    pg = PrivatePostgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.close()


@pytest.fixture
async def lab(private_pg: PrivatePostgres) -> AsyncIterator[Lab]:
    # not tmp_path: pytest keeps those, and a lab leaves workspaces of some size
    root = Path(tempfile.mkdtemp(prefix="cc-chaos-"))
    lab = Lab(root, await private_pg.new_database(), private_pg)
    try:
        yield lab
    finally:
        await lab.aclose()
        if os.environ.get("CHAOS_KEEP"):
            print(f"\nCHAOS_KEEP: the lab's logs are in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def report(figures: Figures) -> None:
    """Print the figures (shown with ``-s`` and in the report of a failed test)."""
    print(f"\nCHAOS {figures.line()}")
