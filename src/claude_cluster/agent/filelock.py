"""Advisory file locks (``flock``) that an asyncio task can wait for and be cancelled in.

Several agent processes on one host may share a workspace directory, so in-process
locks are not enough. ``flock`` locks belong to an open file description: two opens of
the same file conflict even inside one process, and the kernel drops the lock when the
holder dies, so a killed agent never leaves a lock behind.

Waiting polls with ``LOCK_NB`` instead of blocking a thread in ``flock``: a blocked
thread cannot be cancelled and would take the lock after its task had gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

__all__ = ["FileLock"]


class FileLock:
    """An exclusive lock on ``path`` (created if missing).

    Use ``async with FileLock(path):`` to wait for it, or :meth:`try_acquire` to take it
    only if it is free.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; return whether we now hold it."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this FileLock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    async def acquire(self, *, timeout: float | None = None) -> None:
        """Wait until the lock is ours.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        delay = 0.005
        while not self.try_acquire():
            if deadline is not None and loop.time() >= deadline:
                raise TimeoutError(f"lock {self.path} still busy after {timeout:g}s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    def release(self) -> None:
        """Give the lock back (closing the descriptor releases it)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def release_and_unlink(self) -> None:
        """Delete the lock file, then release it.

        Only for locks whose name nobody will open again (a finished run's), otherwise a
        newcomer could lock a fresh file while an old holder still holds the unlinked one.
        """
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.release()

    async def __aenter__(self) -> FileLock:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
