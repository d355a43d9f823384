"""The workspace sweeper: retention days and a size cap for ``WORKSPACE_PATH``.

It deletes, in this order:

1. idle workspaces (fresh task worktrees and slots) last used more than the retention ago;
2. while the directory is larger than the cap, the idle workspaces used longest ago;
3. mirrors not fetched for the retention that no worktree belongs to any more.

"Idle" means nobody holds the workspace's ``.lock``: a run keeps it from prepare to
release, in whichever agent process it runs. Then each mirror forgets the deleted
worktrees (``git worktree prune``) and the local branches no worktree has checked out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from claude_cluster.agent.filelock import FileLock
from claude_cluster.agent.git import git

if TYPE_CHECKING:
    from claude_cluster.agent.workspace import WorkspaceManager

__all__ = ["SweepReport", "dir_size", "force_rmtree", "sweep"]

_DAY = 86_400.0
_GB = 1024**3


@dataclass
class SweepReport:
    """What :meth:`WorkspaceManager.sweep` did."""

    removed: list[Path] = field(default_factory=list)  #: workspaces and mirrors deleted
    freed_bytes: int = 0
    total_bytes: int = 0  #: size of the workspace directory afterwards
    busy: int = 0  #: candidates skipped because a run holds them


@dataclass
class _Candidate:
    path: Path
    lock: FileLock
    last_used: float
    unlink_lock: bool  #: task locks have unique names; slot locks are reused, so kept


async def sweep(
    manager: WorkspaceManager, *, retention_days: float, max_size_gb: float
) -> SweepReport:
    """See :meth:`WorkspaceManager.sweep`."""
    report = SweepReport()
    cutoff = time.time() - retention_days * _DAY
    candidates = sorted(_workspaces(manager), key=lambda c: c.last_used)

    remaining: list[_Candidate] = []
    for candidate in candidates:
        if candidate.last_used < cutoff:
            await _remove(candidate, report)
        else:
            remaining.append(candidate)

    cap = int(max_size_gb * _GB)
    total = await asyncio.to_thread(dir_size, manager.root)
    for candidate in remaining:  # oldest first
        if total <= cap:
            break
        total -= await _remove(candidate, report)

    for mirror in sorted(manager.mirrors.root.glob("*.git")):
        async with manager.mirrors.locked(mirror):
            await prune_mirror(mirror, timeout=manager.git_timeout)
        await _remove_unused_mirror(manager, mirror, cutoff, report)

    report.total_bytes = await asyncio.to_thread(dir_size, manager.root)
    return report


def _workspaces(manager: WorkspaceManager) -> list[_Candidate]:
    found = []
    for path in _subdirs(manager.tasks_dir, "task-*"):
        found.append(_candidate(path, unlink_lock=True))
    for repo in _subdirs(manager.slots_dir, "*"):
        for path in _subdirs(repo, "slot-*"):
            found.append(_candidate(path, unlink_lock=False))
    return found


def _subdirs(parent: Path, pattern: str) -> list[Path]:
    return [p for p in parent.glob(pattern) if p.is_dir() and not p.is_symlink()]


def _candidate(path: Path, *, unlink_lock: bool) -> _Candidate:
    lock = FileLock(path.with_name(path.name + ".lock"))
    try:
        # prepare touches the lock, so its mtime is the last use (the start of the run)
        last_used = lock.path.stat().st_mtime
    except FileNotFoundError:
        last_used = path.stat().st_mtime
    return _Candidate(path, lock, last_used, unlink_lock)


async def _remove(candidate: _Candidate, report: SweepReport) -> int:
    """Delete an idle workspace; return the bytes freed (0 if a run holds it)."""
    if not candidate.lock.try_acquire():
        report.busy += 1
        return 0
    try:
        size = await asyncio.to_thread(dir_size, candidate.path)
        await asyncio.to_thread(force_rmtree, candidate.path)
    finally:
        if candidate.unlink_lock:
            candidate.lock.release_and_unlink()
        else:
            candidate.lock.release()
    report.removed.append(candidate.path)
    report.freed_bytes += size
    return size


async def _remove_unused_mirror(
    manager: WorkspaceManager, mirror: Path, cutoff: float, report: SweepReport
) -> None:
    fetched = mirror / "FETCH_HEAD"
    last_used = (fetched if fetched.exists() else mirror).stat().st_mtime
    if last_used >= cutoff:
        return
    async with manager.mirrors.try_locked(mirror) as locked:
        worktrees = mirror / "worktrees"
        if not locked or (worktrees.exists() and any(worktrees.iterdir())):
            report.busy += 1
            return
        size = await asyncio.to_thread(dir_size, mirror)
        await asyncio.to_thread(force_rmtree, mirror)
    report.removed.append(mirror)
    report.freed_bytes += size


async def prune_mirror(mirror: Path, *, timeout: float = 600) -> None:
    """Forget deleted worktrees and delete local branches no worktree has checked out.

    Call it while holding the mirror's lock: a run creates its branch and its worktree
    under that lock, so no run's branch can be caught between the two.
    """
    await git("worktree", "prune", cwd=mirror, timeout=timeout)
    listed = await git("worktree", "list", "--porcelain", cwd=mirror, timeout=timeout)
    checked_out = {
        line.removeprefix("branch refs/heads/")
        for line in listed.stdout.splitlines()
        if line.startswith("branch ")
    }
    heads = await git(
        "for-each-ref", "--format=%(refname:lstrip=2)", "refs/heads/", cwd=mirror, timeout=timeout
    )
    stale = [b for b in heads.stdout.splitlines() if b and b not in checked_out]
    if stale:
        await git("branch", "-D", "-q", "--", *stale, cwd=mirror, timeout=timeout, check=False)


def dir_size(path: Path) -> int:
    """Bytes on disk under ``path`` (allocated blocks, symlinks not followed)."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def force_rmtree(path: Path) -> None:
    """Delete a directory tree, read-only parts included (Go's module cache has some).

    A missing ``path`` is not an error.
    """

    def make_writable_and_retry(func: Callable[..., Any], name: str, _exc: object) -> None:
        for target in (os.path.dirname(name), name):
            with contextlib.suppress(OSError):
                mode = os.lstat(target).st_mode
                if not stat.S_ISLNK(mode):
                    os.chmod(target, mode | stat.S_IWUSR | stat.S_IXUSR | stat.S_IRUSR)
        if os.path.isdir(name) and not os.path.islink(name):
            shutil.rmtree(name, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    if path.is_symlink():
        path.unlink()
    elif not path.exists():
        return
    elif sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=make_writable_and_retry)
    else:
        shutil.rmtree(path, onerror=make_writable_and_retry)
