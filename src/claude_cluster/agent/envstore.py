"""Saved test environments: a repository's ``.venv`` or ``node_modules``, reused by its next runs.

Detected setup (:mod:`~claude_cluster.agent.provision`) makes a directory in the run's
worktree whose content is decided by a few files (manifests and lockfiles), the tools and
the command lines. Once the steps that make it succeed, the agent copies it into the
repository's store under a key, the SHA-256 of all of those (:func:`environment_key`); a
later run of the same repository whose key matches gets a copy of it instead of the
install. Any change of a keyed file, tool or command line is another key.

What keeps the store clean:

* It is the repository's own (one directory per repository, beside the repository's tool
  caches, never shared): another repository's run never reads it, whatever its files.
* It is written by the agent, never by a run: it lies outside everything a run's sandbox
  may write, and it is saved right after the setup steps, before the agent (the model)
  starts. A run changes only its own copy.
* Copies, never hard links (which would let a run write through to the store's files;
  ``copy_file_range`` shares extents only where the file system copies on write).
  Copying never follows a symbolic link (it is copied as a link), keeps only regular
  files, directories and links (a FIFO or a device is left out), and drops the
  set-user-ID, set-group-ID and sticky bits.
* A snapshot serves for at most :data:`MAX_AGE` seconds (unlocked dependencies then get
  their newer releases), and a repository keeps at most :data:`KEEP` per directory, the
  most recently used.
* A restore that does not find exactly what was saved (a snapshot being pruned by another
  agent process at the same time) is removed again and counts as a miss.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["KEEP", "MAX_AGE", "EnvStore", "Restored", "environment_key", "tool_identity"]

#: snapshots kept per repository and directory (``.venv``, ``node_modules``)
KEEP = 2
#: seconds a snapshot serves before it is made afresh (a week)
MAX_AGE = 7 * 24 * 3600
#: part of every key: bump it when what a snapshot holds changes meaning
_FORMAT = "claude-cluster env 1"
_META = "meta.json"
_TREE = "tree"
#: a save interrupted by a crash leaves a temporary directory; removed after an hour
_STALE_TMP = 3600


def environment_key(
    root: Path, files: Iterable[str], *, argv: Iterable[Iterable[str]], tools: Mapping[str, str]
) -> str:
    """The key of a directory made by ``argv`` from ``files`` (relative to ``root``).

    Each file counts by name and content (an absent file counts as absent), each tool by
    :func:`tool_identity`, each command line by its words.
    """
    digest = hashlib.sha256(_FORMAT.encode())
    for name in sorted(set(files)):
        digest.update(b"\0file\0" + name.encode())
        try:
            digest.update(b"\0" + (root / name).read_bytes())
        except OSError:
            digest.update(b"\0absent")
    for words in argv:
        digest.update(b"\0argv" + b"".join(b"\0" + w.encode() for w in words))
    for name, identity in sorted(tools.items()):
        digest.update(f"\0tool\0{name}\0{identity}".encode())
    return digest.hexdigest()


def tool_identity(path: str | None) -> str:
    """Where a tool really is, its size and change time: another build is another key."""
    if path is None:
        return "absent"
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return f"absent:{path}"
    return f"{real}:{st.st_size}:{st.st_mtime_ns}"


@dataclass(frozen=True)
class Restored:
    """A restored snapshot: how much was copied."""

    key: str
    entries: int
    size: int


class EnvStore:
    """The saved environments of one repository, in ``root`` (created on the first save).

    The methods do file work and block: call them in a thread.
    """

    def __init__(self, root: Path, *, keep: int = KEEP, max_age: float = MAX_AGE) -> None:
        self.root = root
        self.keep = keep
        self.max_age = max_age

    def restore(
        self, directory: str, key: str, target: Path, *, requires: Iterable[str] = ()
    ) -> Restored | None:
        """Copy the snapshot of ``directory`` with ``key`` to ``target``; None on a miss.

        ``target`` must not exist. ``requires`` are paths inside the copy that must
        resolve afterwards (a venv's interpreter link); otherwise the copy is removed.
        """
        snapshot = self._path(directory, key)
        meta = _read_meta(snapshot)
        if meta is None or meta.get("key") != key:
            return None
        created = meta.get("created")
        if not isinstance(created, int | float) or time.time() - created > self.max_age:
            self._drop(snapshot)
            return None
        if os.path.lexists(target):
            return None
        try:
            entries, size = _copy_tree(snapshot / _TREE, target)
        except OSError:
            entries, size = -1, -1
        whole = (entries, size) == (meta.get("entries"), meta.get("size"))
        if not whole or not all((target / path).exists() for path in requires):
            _remove(target)
            return None
        with contextlib.suppress(OSError):
            os.utime(snapshot / _META)  # most recently used: pruned last
        return Restored(key, entries, size)

    def save(self, directory: str, key: str, source: Path) -> Restored | None:
        """Keep a copy of ``source`` (a real directory, not a link) as ``directory``/``key``.

        Returns None when there is nothing to save or it is saved already. Raises
        ``OSError`` when the copy fails (a full disk); nothing partial is left.
        """
        if not source.is_dir() or source.is_symlink():
            return None
        snapshot = self._path(directory, key)
        if (snapshot / _META).exists():
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{secrets.token_hex(6)}"
        try:
            tmp.mkdir()
            entries, size = _copy_tree(source, tmp / _TREE)
            meta = {
                "key": key,
                "directory": directory,
                "created": time.time(),
                "entries": entries,
                "size": size,
            }
            (tmp / _META).write_text(json.dumps(meta))
            try:
                tmp.rename(snapshot)
            except OSError:  # another run saved the same key first
                _remove(tmp)
                return None
        except BaseException:
            _remove(tmp)
            raise
        self._prune(directory)
        return Restored(key, entries, size)

    def _path(self, directory: str, key: str) -> Path:
        return self.root / f"{_slug(directory)}-{key}"

    def _prune(self, directory: str) -> None:
        """Keep the :attr:`keep` most recently used snapshots of ``directory``."""
        prefix = f"{_slug(directory)}-"
        dated: list[tuple[float, Path]] = []
        for path in self.root.iterdir():
            with contextlib.suppress(OSError):
                if path.name.startswith(prefix):
                    dated.append(((path / _META).stat().st_mtime, path))
                elif path.name.startswith(".tmp-") and _older(path, _STALE_TMP):
                    _remove(path)
        for _, path in sorted(dated, reverse=True)[self.keep :]:
            self._drop(path)

    def _drop(self, snapshot: Path) -> None:
        """Remove a snapshot: renamed first, so nobody starts copying a half-deleted one."""
        trash = self.root / f".tmp-{secrets.token_hex(6)}"
        try:
            snapshot.rename(trash)
        except OSError:
            return
        _remove(trash)


def _slug(directory: str) -> str:
    return directory.strip(".").replace("/", "_") or "env"


def _read_meta(snapshot: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((snapshot / _META).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _older(path: Path, seconds: float) -> bool:
    return time.time() - path.stat().st_mtime > seconds


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _copy_tree(source: Path, target: Path) -> tuple[int, int]:
    """Copy ``source`` to the new directory ``target``: (entries copied, bytes of files).

    Directories, regular files and symbolic links (as links) only; nothing followed.
    """
    os.mkdir(target, 0o700)
    entries = size = 0
    pending = [(str(source), str(target))]
    while pending:
        src_dir, dst_dir = pending.pop()
        with os.scandir(src_dir) as scan:
            for entry in scan:
                dst = os.path.join(dst_dir, entry.name)
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISLNK(mode):
                    os.symlink(os.readlink(entry.path), dst)
                elif stat.S_ISDIR(mode):
                    os.mkdir(dst, 0o700)
                    pending.append((entry.path, dst))
                elif stat.S_ISREG(mode):
                    copied = _copy_file(entry.path, dst)
                    if copied is None:
                        continue
                    size += copied
                else:
                    continue  # FIFOs, sockets, devices: no part of an environment
                entries += 1
        os.chmod(dst_dir, stat.S_IMODE(os.stat(src_dir, follow_symlinks=False).st_mode) | 0o700)
    return entries, size


def _copy_file(src: str, dst: str) -> int | None:
    """Copy one regular file (never through a link); its size, or None if it is none."""
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # replaced since it was listed
            return None
        out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            left = st.st_size
            while left > 0:
                try:
                    done = os.copy_file_range(fd, out, left)
                except OSError:  # a file system or kernel without it: read and write on
                    # from where it stopped (both offsets have moved with what was copied)
                    with open(fd, "rb", closefd=False) as r, open(out, "wb", closefd=False) as w:
                        shutil.copyfileobj(r, w)
                    break
                if done == 0:
                    break
                left -= done
            # the permission bits only: no set-user-ID, set-group-ID or sticky bit
            os.fchmod(out, st.st_mode & 0o777)
        finally:
            os.close(out)
    finally:
        os.close(fd)
    return st.st_size
