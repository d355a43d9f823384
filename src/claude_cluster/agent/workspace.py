"""Where a run works: a git worktree of the repository's cached mirror, on the run's branch.

Layout under the agent's ``WORKSPACE_PATH``::

    cache/mirrors/<safe-name>.git      bare mirror per repository (see mirror.py) + .lock
    tasks/task-<id>-a<attempt>/        a fresh worktree per run (+ a .lock beside it)
    tasks/task-<id>/                   isolated (sandboxed runs): the run's own repository
    slots/<safe-name>/slot-<k>/        reusable worktrees per repository (+ .lock files)

Two ways to get a worktree, chosen by ``reuse_slots``:

* fresh: ``git worktree add`` a new directory per run and delete it afterwards;
* slots (the default): keep one worktree per concurrent run of a repository and reset it
  for the next run (``checkout --force -B <branch> <start>``, which also does what a
  ``reset --hard`` would, then ``clean -ffdx``; leftovers of an interrupted merge or
  rebase are removed first). Only
  files that differ between two runs are rewritten, which is what makes preparing a run
  of a big repository take tens of milliseconds (see ``bench/workspace.py``).

``keep`` (the agent's ``DEBUG``) always uses fresh worktrees and leaves them in place.
Each prepared workspace holds an ``flock`` on its ``.lock`` until :meth:`release`, which
is how the sweeper (and other agent processes sharing the directory) know it is in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from claude_cluster.agent.filelock import FileLock
from claude_cluster.agent.git import WorkspaceError, git, redact
from claude_cluster.agent.mirror import MirrorCache
from claude_cluster.agent.sweep import SweepReport, force_rmtree, sweep

__all__ = [
    "MAX_BRANCH_LENGTH",
    "SweepReport",
    "Workspace",
    "WorkspaceManager",
    "branch_name",
]

MAX_BRANCH_LENGTH = 60
_NON_ALNUM = re.compile(r"[^a-z0-9]+")
# git check-ref-format rules that a prefix or a coordinator-chosen branch could break
_BAD_REF = re.compile(r"(^[-/.])|(\.\.)|([\x00-\x20\x7f~^:?*\[\\])|(@\{)|(/\.)|([/.]$)|(\.lock$)")
#: per-worktree leftovers of an interrupted merge, rebase, … that a slot must not inherit
_OPERATION_STATE = (
    "MERGE_HEAD",
    "MERGE_MSG",
    "CHERRY_PICK_HEAD",
    "REVERT_HEAD",
    "BISECT_LOG",
    "rebase-merge",
    "rebase-apply",
    "sequencer",
)


def branch_name(prefix: str, issue_number: int, title: str) -> str:
    """The run's branch: ``<prefix>issue-<n>-<slug>``, at most 60 characters.

    The slug is the title folded to lowercase ASCII words joined by dashes, cut at a word
    boundary when it has to be shortened.

    >>> branch_name("claude/", 42, "Fix the crash on empty input!")
    'claude/issue-42-fix-the-crash-on-empty-input'
    """
    stem = f"{prefix}issue-{issue_number}"
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    slug = _NON_ALNUM.sub("-", ascii_title.lower()).strip("-")
    room = MAX_BRANCH_LENGTH - len(stem) - 1
    if len(slug) > room:
        cut = slug[: room + 1]
        # keep whole words when a dash is reasonably close to the limit
        slug = cut.rsplit("-", 1)[0] if "-" in cut[room // 2 :] else cut[:room]
        slug = slug.strip("-")
    return f"{stem}-{slug}" if slug and room > 0 else stem


@dataclass(frozen=True)
class Workspace:
    """A prepared worktree. Pass it back to :meth:`WorkspaceManager.release`."""

    path: Path  #: the worktree; the run's working directory
    branch: str  #: the branch checked out in it (a local branch of the mirror)
    base_branch: str  #: the branch the work is based on (given, else the remote's default)
    base_sha: str  #: the base branch's commit at the fetch
    mirror: Path  #: the bare mirror the worktree belongs to
    start_sha: str  #: HEAD when prepared (the branch's tip for a follow-up, else base_sha)
    remote_sha: str | None  #: the branch's commit on the remote at the fetch, if it existed
    task_id: int
    attempt: int
    slot: bool = False  #: a reusable slot rather than a fresh worktree
    lock: FileLock | None = field(default=None, compare=False, repr=False)


class WorkspaceManager:
    """Prepares and releases the runs' worktrees and sweeps leftovers.

    Args:
        root: The agent's ``WORKSPACE_PATH``.
        branch_prefix: Prefix of the branches it creates (``BRANCH_PREFIX``).
        keep: Leave worktrees in place after the run (``DEBUG``); implies fresh worktrees.
        reuse_slots: Reset a per-repository slot worktree instead of creating one per run.
        git_timeout: Seconds any single git command may take.
        isolated: Give each run a repository of its own instead of a worktree of the
            mirror (the sandbox's mode): ``git clone --shared`` of the mirror, so the
            run's config, hooks and refs are its own and the mirror is only read (its
            object store, through ``objects/info/alternates``). Implies fresh directories:
            a repository a run has written is never used again by anyone.
    """

    def __init__(
        self,
        root: Path,
        *,
        branch_prefix: str = "claude/",
        keep: bool = False,
        reuse_slots: bool = True,
        git_timeout: float = 600,
        isolated: bool = False,
    ) -> None:
        if _BAD_REF.search(branch_prefix.removesuffix("/") or "x"):
            raise ValueError(f"branch prefix {branch_prefix!r} is not valid in a git ref")
        self.root = root
        self.branch_prefix = branch_prefix
        self.keep = keep
        self.isolated = isolated
        self.reuse_slots = reuse_slots and not keep and not isolated
        self.git_timeout = git_timeout
        self.mirrors = MirrorCache(root / "cache" / "mirrors", git_timeout=git_timeout)
        self.tasks_dir = root / "tasks"
        self.slots_dir = root / "slots"

    async def prepare(
        self,
        *,
        task_id: int,
        attempt: int,
        repository_url: str,
        issue_number: int,
        title: str,
        base_branch: str | None = None,
        branch: str | None = None,
        git_token: str | None = None,
    ) -> Workspace:
        """Fetch the repository's mirror and check out the run's branch in a worktree.

        Args:
            task_id: The task, for the directory name.
            attempt: The run's attempt number, for the directory name.
            repository_url: Clone URL, local path or ``file://`` URL.
            issue_number: The issue, for the branch name.
            title: The issue's title, for the branch name's slug.
            base_branch: Branch to start from; default: the remote's default branch.
            branch: An existing branch to continue (a follow-up run). When it exists on
                the remote the worktree starts from its tip, else from the base branch.
                Default: :func:`branch_name` of the issue.
            git_token: Token for fetching a private ``https`` repository.

        Raises:
            WorkspaceError: the fetch failed, a branch is missing or invalid, or git failed.
        """
        follow_up = branch is not None
        branch = branch or branch_name(self.branch_prefix, issue_number, title)
        if _BAD_REF.search(branch) or len(branch) > 255:
            raise WorkspaceError(detail=f"{branch!r} is not a valid branch name")
        mirror = self.mirrors.path_for(repository_url)
        lock, path = await self._claim_directory(mirror, task_id, attempt)
        try:
            async with self.mirrors.locked(mirror):
                _, refs = await self.mirrors.fetch(repository_url, token=git_token)
                base = base_branch or refs.default_branch
                base_sha = refs.sha(base)
                if base_sha is None:
                    raise WorkspaceError(
                        detail=f"branch {base!r} does not exist in {redact(repository_url)}"
                    )
                remote_sha = refs.sha(branch)
                # A follow-up continues the branch. Otherwise (a new task, or a retry) the run
                # starts from the base; the push then replaces the branch under a lease.
                # The default branch is never continued: a run must not push onto main.
                continued = follow_up and branch != refs.default_branch
                start = remote_sha if continued and remote_sha else base_sha
                populate = await self._check_out(mirror, path, branch, start)
            await populate()
        except BaseException:
            await self._discard(mirror, path, slot=self.reuse_slots)
            lock.release()
            raise
        return Workspace(
            path=path,
            branch=branch,
            base_branch=base,
            base_sha=base_sha,
            mirror=mirror,
            start_sha=start,
            remote_sha=remote_sha,
            task_id=task_id,
            attempt=attempt,
            slot=self.reuse_slots,
            lock=lock,
        )

    async def release(self, ws: Workspace) -> None:
        """Hand the workspace back after the run.

        A slot is detached from the run's branch and kept for the next run; a fresh
        worktree is deleted, or with ``keep`` detached and left for inspection. The run's
        local branch is deleted from the mirror either way (the remote has what was
        pushed).
        """
        try:
            if self.isolated:
                if not self.keep:
                    await asyncio.to_thread(force_rmtree, ws.path)
                return
            if ws.slot or self.keep:
                await self._detach(ws.path)
            else:
                # The effect of `git worktree remove --force` + prune, but the slow part
                # (deleting the files) happens before taking the mirror lock.
                await asyncio.to_thread(force_rmtree, ws.path)
            async with self.mirrors.locked(ws.mirror):
                if not (ws.slot or self.keep):
                    await git("worktree", "prune", cwd=ws.mirror, timeout=self.git_timeout)
                # fails (harmlessly) if another worktree still has the branch checked out
                await git("branch", "-D", "-q", ws.branch, cwd=ws.mirror, check=False)
        finally:
            if ws.lock is None:
                pass
            elif ws.slot:
                ws.lock.release()
            else:
                ws.lock.release_and_unlink()

    async def sweep(self, *, retention_days: float, max_size_gb: float) -> SweepReport:
        """Delete idle workspaces older than ``retention_days``, then the oldest idle ones
        while the directory is larger than ``max_size_gb``, and mirrors unused for
        ``retention_days``. Workspaces held by a run (in any process) are never touched.
        """
        return await sweep(self, retention_days=retention_days, max_size_gb=max_size_gb)

    # -- internals ------------------------------------------------------------------

    async def _claim_directory(
        self, mirror: Path, task_id: int, attempt: int
    ) -> tuple[FileLock, Path]:
        """Lock the directory the run will use: a free slot, or its own task directory."""
        if not self.reuse_slots:
            # isolated: one path per task, so that the CLI finds the session of an earlier
            # attempt (its transcripts are keyed by the working directory)
            name = f"task-{task_id}" if self.isolated else f"task-{task_id}-a{attempt}"
            path = self.tasks_dir / name
            lock = FileLock(path.with_name(path.name + ".lock"))
            try:
                await lock.acquire(timeout=30)
            except TimeoutError as exc:
                raise WorkspaceError(detail=f"{path} is in use by another run") from exc
            return lock, path
        slots = self.slots_dir / mirror.name.removesuffix(".git")
        for k in range(10_000):
            path = slots / f"slot-{k}"
            lock = FileLock(path.with_name(path.name + ".lock"))
            if lock.try_acquire():
                os.utime(lock.path)  # the sweeper reads "last used" from the lock's mtime
                return lock, path
        raise WorkspaceError(detail=f"no free slot under {slots}")

    async def _check_out(
        self, mirror: Path, path: Path, branch: str, start: str
    ) -> Callable[[], Awaitable[None]]:
        """The part that changes the mirror's refs (runs under the mirror lock).

        Returns the part that writes the files, which runs after the lock is released so
        that concurrent runs of one repository do not wait for each other's checkouts.
        """
        if self.isolated:
            return await self._clone(mirror, path, branch, start)
        if self.reuse_slots and _is_worktree(path):
            _clear_operation_state(path)
            # --ignore-other-worktrees: a crashed run's worktree may still name the branch;
            # the newest run owns it. --force discards whatever the last run left in tracked
            # files; clean -ffdx (below) the untracked and ignored ones.
            await git(
                "checkout", "--quiet", "--force", "--no-track", "--ignore-other-worktrees",
                "-B", branch, start, cwd=path, timeout=self.git_timeout,
            )  # fmt: skip
            return lambda: self._git_quiet(path, "clean", "-ffdxq")
        if path.exists():  # a crashed run's directory, or a slot that is not a worktree
            await asyncio.to_thread(force_rmtree, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        await git("worktree", "prune", cwd=mirror, timeout=self.git_timeout)
        # update-ref + add --force rather than add -B: -B refuses a branch that a crashed
        # run's worktree still has checked out, and the newest run owns the branch.
        await git("update-ref", f"refs/heads/{branch}", start, cwd=mirror)
        await git(
            "worktree", "add", "--quiet", "--no-checkout", "--force", str(path), branch,
            cwd=mirror, timeout=self.git_timeout,
        )  # fmt: skip
        return lambda: self._git_quiet(path, "reset", "--hard", "--quiet")

    async def _clone(
        self, mirror: Path, path: Path, branch: str, start: str
    ) -> Callable[[], Awaitable[None]]:
        """A repository of the run's own that borrows the mirror's objects (read-only)."""
        if path.exists():
            await asyncio.to_thread(force_rmtree, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        await git(
            "clone", "--quiet", "--shared", "--no-checkout", "--no-tags", str(mirror), str(path),
            timeout=self.git_timeout,
        )  # fmt: skip
        # the run needs no remote: it must not learn where the mirror's refs live
        await git("remote", "remove", "origin", cwd=path, check=False)
        exclude = mirror / "info" / "exclude"
        if exclude.is_file():
            (path / ".git" / "info").mkdir(exist_ok=True)
            (path / ".git" / "info" / "exclude").write_text(exclude.read_text())
        return lambda: self._git_quiet(
            path, "checkout", "--quiet", "--force", "--no-track", "-B", branch, start
        )

    async def _git_quiet(self, path: Path, *args: str) -> None:
        await git(*args, cwd=path, timeout=self.git_timeout)

    async def _detach(self, path: Path) -> None:
        # Frees the branch (so it can be deleted and reused) without touching the files.
        with contextlib.suppress(WorkspaceError):
            await git("checkout", "--quiet", "--detach", cwd=path, timeout=self.git_timeout)

    async def _discard(self, mirror: Path, path: Path, *, slot: bool) -> None:
        """After a failed prepare: drop a half-made fresh worktree (a slot is reset anyway)."""
        if slot or not path.exists():
            return
        with contextlib.suppress(Exception):
            await asyncio.to_thread(force_rmtree, path)
            await git("worktree", "prune", cwd=mirror, check=False)


def _is_worktree(path: Path) -> bool:
    """Whether ``path`` is a registered worktree (its ``.git`` file points at a live entry)."""
    try:
        pointer = (path / ".git").read_text().strip()
    except OSError:
        return False
    admin = Path(pointer.removeprefix("gitdir: "))
    return pointer.startswith("gitdir: ") and (admin / "HEAD").exists()


def _clear_operation_state(path: Path) -> None:
    admin = Path((path / ".git").read_text().strip().removeprefix("gitdir: "))
    for name in _OPERATION_STATE:
        target = admin / name
        if target.is_dir():
            force_rmtree(target)
        else:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
