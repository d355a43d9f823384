"""The per-repository bare mirrors in the agent's cache.

A mirror is a bare repository at ``<cache>/mirrors/<safe-name>.git`` whose ``origin`` is
the repository URL (a local path or ``file://`` URL works exactly like a remote one). Its
refspec stores the remote's heads as ``refs/remotes/origin/*`` rather than ``refs/heads/*``:
the runs' worktrees create their own branches under ``refs/heads/``, and git refuses to
fetch into a branch that a worktree has checked out, so the two must not share a namespace.
``refs/remotes/origin/HEAD`` names the remote's default branch.

Anything that changes the mirror's refs or worktree list happens inside
:meth:`MirrorCache.locked`: an asyncio lock per mirror (for runs in this process) plus an
``flock`` on ``<name>.git.lock`` (for other agent processes sharing the cache).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from claude_cluster.agent.filelock import FileLock
from claude_cluster.agent.git import WorkspaceError, auth_env, git, redact

__all__ = ["MirrorCache", "RemoteRefs", "git_url", "is_local_url", "mirror_name"]

#: Files that runs produce but that never belong in a commit. They go to the mirror's
#: ``info/exclude``, which every worktree of the mirror reads; tracked files are unaffected.
DEFAULT_EXCLUDES = (
    "__pycache__/",
    "*.py[cod]",
    ".pytest_cache/",
    ".mypy_cache/",
    ".ruff_cache/",
    "node_modules/",
    # setup's editable install of a setuptools project writes it into the checkout
    "*.egg-info/",
)

_EXCLUDE_HEADER = "# claude-cluster: run by-products that never belong in a commit"
_EXCLUDES = "\n".join((_EXCLUDE_HEADER, *DEFAULT_EXCLUDES)) + "\n"
_REFSPEC = "+refs/heads/*:refs/remotes/origin/*"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def is_local_url(url: str) -> bool:
    """Whether ``url`` names a repository on this machine (a path or ``file://``)."""
    if url.startswith("file://"):
        return True
    if "://" in url:
        return False
    # scp-like ssh syntax, "git@github.com:owner/repo.git"; a colon after a slash is a path
    head = url.split("/", 1)[0]
    return ":" not in head


def mirror_name(url: str) -> str:
    """A readable, collision-free directory name for the mirror of ``url``.

    >>> mirror_name("https://github.com/octo/hello.git")[:22]
    'github.com-octo-hello-'
    """
    parts = urlsplit(url)
    if parts.scheme and parts.scheme != "file":
        readable = f"{parts.hostname or ''}{parts.path}"
    else:
        readable = parts.path if parts.scheme == "file" else url
    readable = _UNSAFE.sub("-", readable.removesuffix(".git")).strip("-.")[-60:].lstrip("-.")
    digest = hashlib.sha256(redact(url).encode()).hexdigest()[:10]
    return f"{readable or 'repo'}-{digest}"


def git_url(url: str) -> str:
    """``url`` as git should be given it: local paths made absolute."""
    # A relative path would be resolved against git's cwd, which is the mirror.
    if is_local_url(url) and not url.startswith("file://"):
        return str(Path(url).expanduser().resolve())
    return url


def _configured(mirror: Path) -> bool:
    # Reading files saves a git process per run. _create writes our info/exclude last, so
    # a mirror interrupted before that (git init makes a default one) is completed later.
    try:
        exclude = (mirror / "info" / "exclude").read_text()
        config = (mirror / "config").read_text()
    except OSError:
        return False
    # a mirror made with an older list is completed with the current one
    return exclude == _EXCLUDES and _REFSPEC in config


@dataclass(frozen=True, slots=True)
class RemoteRefs:
    """The remote's state as the mirror saw it at the last fetch."""

    default_branch: str
    heads: dict[str, str]  #: branch name → commit sha

    def sha(self, branch: str) -> str | None:
        return self.heads.get(branch)


class MirrorCache:
    """Creates, fetches and locks the bare mirrors under ``root``.

    Args:
        root: The mirrors' directory (``<WORKSPACE_PATH>/cache/mirrors``).
        git_timeout: Seconds any one git command may take (a first fetch of a big
            repository is the slow one).
    """

    def __init__(self, root: Path, *, git_timeout: float = 600) -> None:
        self.root = root
        self.git_timeout = git_timeout
        self._locks: dict[Path, asyncio.Lock] = {}

    def path_for(self, url: str) -> Path:
        return self.root / f"{mirror_name(url)}.git"

    @contextlib.asynccontextmanager
    async def locked(self, mirror: Path) -> AsyncIterator[None]:
        """Hold the mirror exclusively, against this process and others."""
        lock = self._locks.setdefault(mirror, asyncio.Lock())
        async with lock, FileLock(mirror.with_name(mirror.name + ".lock")):
            yield

    @contextlib.asynccontextmanager
    async def try_locked(self, mirror: Path) -> AsyncIterator[bool]:
        """Hold the mirror if it is free right now; yield whether we do."""
        lock = self._locks.setdefault(mirror, asyncio.Lock())
        if lock.locked():
            yield False
            return
        async with lock:
            flock = FileLock(mirror.with_name(mirror.name + ".lock"))
            if not flock.try_acquire():
                yield False
                return
            try:
                yield True
            finally:
                flock.release()

    async def fetch(self, url: str, *, token: str | None = None) -> tuple[Path, RemoteRefs]:
        """Create the mirror of ``url`` if needed and fetch all its heads (with ``--prune``).

        Must be called inside :meth:`locked` for the returned path.

        Returns:
            The mirror's path and the remote's refs after the fetch.

        Raises:
            WorkspaceError: the fetch failed, or the remote has no default branch (empty).
        """
        mirror = self.path_for(url)
        env = auth_env(url, token)
        if not _configured(mirror):
            await self._create(mirror, git_url(url))
        await git(
            "fetch", "--prune", "--quiet", "origin",
            cwd=mirror, timeout=self.git_timeout, env=env, secrets=[token],
        )  # fmt: skip
        refs = await self._read_refs(mirror)
        if refs is None:
            # First fetch, or the default branch was renamed or deleted: ask the remote.
            await git(
                "remote", "set-head", "origin", "--auto",
                cwd=mirror, timeout=self.git_timeout, env=env, secrets=[token],
            )  # fmt: skip
            refs = await self._read_refs(mirror)
        if refs is None:
            raise WorkspaceError(detail=f"{redact(url)} has no default branch (empty repository?)")
        return mirror, refs

    async def _create(self, mirror: Path, fetch_url: str) -> None:
        # Idempotent, so a half-made mirror (agent killed mid-way) is simply completed.
        mirror.mkdir(parents=True, exist_ok=True)
        await git("init", "--quiet", "--bare", str(mirror), timeout=self.git_timeout)
        settings = {
            "remote.origin.url": fetch_url,
            "remote.origin.fetch": _REFSPEC,
            # auto-gc may run inside our fetch, but never in the background where it
            # would outlive the lock
            "gc.autoDetach": "false",
        }
        for key, value in settings.items():
            await git("config", key, value, cwd=mirror)
        info = mirror / "info"
        info.mkdir(exist_ok=True)
        # written last: its presence marks a complete mirror (see _configured)
        (info / "exclude").write_text(_EXCLUDES)

    async def _read_refs(self, mirror: Path) -> RemoteRefs | None:
        """The remote-tracking refs, or ``None`` while ``origin/HEAD`` is missing or dangling."""
        out = await git(
            "for-each-ref", "--format=%(refname)%00%(objectname)%00%(symref)",
            "refs/remotes/origin/", cwd=mirror,
        )  # fmt: skip
        prefix = "refs/remotes/origin/"
        heads: dict[str, str] = {}
        head_target = ""
        for line in out.stdout.splitlines():
            refname, sha, symref = line.split("\0")
            name = refname.removeprefix(prefix)
            if name == "HEAD":
                head_target = symref.removeprefix(prefix)
            else:
                heads[name] = sha
        if head_target not in heads:
            return None
        return RemoteRefs(default_branch=head_target, heads=heads)
