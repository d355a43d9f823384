"""FileLock: exclusive across descriptors, cancellable while waiting, released on close."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from claude_cluster.agent.filelock import FileLock


def test_two_holders_exclude_each_other_even_in_one_process(tmp_path: Path) -> None:
    first, second = FileLock(tmp_path / "x.lock"), FileLock(tmp_path / "x.lock")
    assert first.try_acquire()
    assert not second.try_acquire()
    first.release()
    assert second.try_acquire()
    second.release()


async def test_waiter_gets_the_lock_when_it_is_released(tmp_path: Path) -> None:
    holder = FileLock(tmp_path / "x.lock")
    assert holder.try_acquire()
    waiter = FileLock(tmp_path / "x.lock")
    task = asyncio.create_task(waiter.acquire())
    await asyncio.sleep(0.05)
    assert not task.done()
    holder.release()
    await asyncio.wait_for(task, 2)
    assert waiter.held
    waiter.release()


async def test_waiting_times_out(tmp_path: Path) -> None:
    holder = FileLock(tmp_path / "x.lock")
    assert holder.try_acquire()
    with pytest.raises(TimeoutError):
        await FileLock(tmp_path / "x.lock").acquire(timeout=0.1)
    holder.release()


async def test_a_cancelled_waiter_never_takes_the_lock_later(tmp_path: Path) -> None:
    holder = FileLock(tmp_path / "x.lock")
    assert holder.try_acquire()
    waiter = FileLock(tmp_path / "x.lock")
    task = asyncio.create_task(waiter.acquire())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    holder.release()
    await asyncio.sleep(0.2)
    assert not waiter.held
    assert FileLock(tmp_path / "x.lock").try_acquire()


async def test_context_manager_and_unlink(tmp_path: Path) -> None:
    lock = FileLock(tmp_path / "sub" / "x.lock")
    async with lock:
        assert lock.held and lock.path.exists()
    assert not lock.held
    assert lock.try_acquire()
    lock.release_and_unlink()
    assert not lock.path.exists()
