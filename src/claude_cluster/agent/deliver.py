"""Deliver, git side: commit what the run changed and push the run's branch.

Opening the pull request is the GitHub client's job; for a local repository the pushed
branch is the delivery.

The push uses ``--force-with-lease`` pinned to the branch's commit as the mirror saw it
when the run started (or to "absent" for a new branch). The run owns its branch, so it
may replace what an earlier attempt pushed; but if anybody pushed in the meantime (a
person, or a previous attempt that was presumed lost and is still alive) the push fails
instead of destroying their work.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from claude_cluster.agent.git import DeliveryError, auth_env, git
from claude_cluster.agent.mirror import git_url
from claude_cluster.agent.runbox import RunBox
from claude_cluster.agent.workspace import Workspace

__all__ = [
    "DEFAULT_PROTECTED_PATHS",
    "Delivery",
    "ProtectedPathError",
    "commit_and_push",
    "commit_message",
    "deliver_run_repository",
    "protected_changes",
]


@dataclass(frozen=True)
class Delivery:
    """The result of :func:`commit_and_push`."""

    commit_sha: str | None  #: the branch's new tip; ``None`` when there was nothing to deliver
    branch: str
    changed_files: tuple[str, ...]  #: paths changed by this run (since the workspace's start)
    pushed: bool
    no_changes: bool  #: the run changed nothing: no commit, no push


def commit_message(summary: str, task_id: int) -> str:
    """The seed's commit message format."""
    title = summary.strip() or f"Resolve task {task_id}"
    return f"{title}\n\nTask ID: {task_id}\n\n🤖 Generated with Claude Code Cluster"


async def commit_and_push(
    ws: Workspace,
    *,
    task_id: int,
    summary: str,
    author_name: str,
    author_email: str,
    remote_url: str,
    git_token: str | None,
    push: bool = True,
    timeout: float = 600,
) -> Delivery:
    """Stage everything in the worktree, commit it, and push the branch.

    Commits the agent already made in the worktree count as changes too; they are pushed
    as they are.

    Args:
        ws: The run's workspace.
        task_id: Goes into the commit message (``Task ID: <id>``).
        summary: First line(s) of the commit message.
        author_name: Author and committer name (``GIT_USER_NAME``).
        author_email: Author and committer e-mail (``GIT_USER_EMAIL``).
        remote_url: Where to push: the repository URL or local path.
        git_token: Token for an ``https`` remote; never written to disk or argv.
        push: ``False`` to commit only.
        timeout: Seconds any single git command may take.

    Raises:
        DeliveryError: git failed, or the push was rejected (the lease included); the
            message holds no credentials.
    """
    cwd = ws.path

    async def run(*args: str, env: dict[str, str] | None = None) -> str:
        result = await git(
            *args, cwd=cwd, timeout=timeout, env=env, secrets=[git_token], error=DeliveryError
        )
        return result.stdout

    await run("add", "--all")
    if await run("diff", "--cached", "--name-only"):
        identity = {
            "GIT_AUTHOR_NAME": author_name,
            "GIT_AUTHOR_EMAIL": author_email,
            "GIT_COMMITTER_NAME": author_name,
            "GIT_COMMITTER_EMAIL": author_email,
        }
        await run(
            "-c", "commit.gpgsign=false", "commit", "--quiet", "--no-verify",
            "-m", commit_message(summary, task_id), env=identity,
        )  # fmt: skip
    head = (await run("rev-parse", "HEAD")).strip()
    if head == ws.start_sha:
        return Delivery(None, ws.branch, (), pushed=False, no_changes=True)
    listed = await run("diff", "--name-only", "-z", ws.start_sha, head)
    changed = tuple(name for name in listed.split("\0") if name)
    if push:
        lease = f"--force-with-lease=refs/heads/{ws.branch}:{ws.remote_sha or ''}"
        await run(
            "push", "--quiet", "--no-verify", lease, git_url(remote_url),
            f"{head}:refs/heads/{ws.branch}", env=auth_env(remote_url, git_token),
        )  # fmt: skip
    return Delivery(head, ws.branch, changed, pushed=push, no_changes=False)


#: paths a run may not change unless the operator allows it
DEFAULT_PROTECTED_PATHS = (".github/workflows/**",)
#: git settings for every command the daemon runs on the mirror once it holds a run's
#: objects: no hooks, no fsmonitor, objects checked
_HARDENED = (
    "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false",
    "-c", "transfer.fsckObjects=true",
)  # fmt: skip
#: for taking the run's bundle: no transport but local files
_LOCAL_ONLY = ("-c", "protocol.allow=never", "-c", "protocol.file.allow=always")


class ProtectedPathError(DeliveryError):
    """The run changed protected paths: {detail}"""


def protected_changes(changed: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """The paths of ``changed`` matched by ``patterns`` (``dir/**`` = everything under dir)."""
    hits = []
    for path in changed:
        for pattern in patterns:
            if pattern.endswith("/**"):
                if path.startswith(pattern[:-2]):
                    hits.append(path)
                    break
            elif fnmatch.fnmatchcase(path, pattern):
                hits.append(path)
                break
    return hits


async def deliver_run_repository(
    ws: Workspace,
    box: RunBox,
    *,
    run_id: int,
    task_id: int,
    summary: str,
    author_name: str,
    author_email: str,
    remote_url: str,
    git_token: Callable[[], Awaitable[str | None]],
    mirror_lock: Callable[[], AbstractAsyncContextManager[object]],
    protected: Sequence[str] = DEFAULT_PROTECTED_PATHS,
    timeout: float = 600,
) -> Delivery:
    """Deliver a sandboxed run: commit in its box, take its commits, push from the mirror.

    The run's repository is untrusted (its config, hooks and refs are the run's): every git
    command in it runs inside the run's sandbox, and the only thing that leaves it is a
    bundle file. The daemon fetches that bundle into the mirror (a repository the run
    never could write) with hooks, fsmonitor and every transport but local files off,
    checks the changed paths against ``protected``, and pushes from the mirror with a
    token it asks for only now (``git_token``).

    Raises:
        ProtectedPathError: the run changed a protected path; nothing was pushed.
        DeliveryError: git failed inside or outside the box, or the push was rejected.
    """
    identity = {
        "GIT_AUTHOR_NAME": author_name,
        "GIT_AUTHOR_EMAIL": author_email,
        "GIT_COMMITTER_NAME": author_name,
        "GIT_COMMITTER_EMAIL": author_email,
        "HOME": "/tmp",  # noqa: S108 - inside the box
        "PATH": "/usr/bin:/bin",
        "LC_ALL": "C",
        "GIT_TERMINAL_PROMPT": "0",
    }

    async def boxed(*args: str, check: bool = True) -> str:
        code, out = await box.run(["git", *args], cwd=ws.path, env=identity, timeout=timeout)
        if check and code != 0:
            raise DeliveryError(
                command=f"git {args[0]}", detail=f"git {args[0]} exited {code}: {out[-1000:]}"
            )
        return out

    await boxed("add", "--all")
    staged = await boxed("diff", "--cached", "--name-only")
    if staged.strip():
        message = commit_message(summary, task_id)
        await boxed("-c", "commit.gpgsign=false", "commit", "--quiet", "--no-verify", "-m", message)
    head = (await boxed("rev-parse", "HEAD")).strip().splitlines()[-1:] or [""]
    if head[0] == ws.start_sha:
        return Delivery(None, ws.branch, (), pushed=False, no_changes=True)
    assert box.tmp is not None
    inside = "/tmp/delivery.bundle"  # noqa: S108 - the box's own /tmp
    await boxed("bundle", "create", "--quiet", inside, "HEAD", f"^{ws.start_sha}")
    bundle = box.tmp / "delivery.bundle"
    # The box's processes are gone; the file is the run's, so take only a regular file.
    if bundle.is_symlink() or not bundle.is_file():
        raise DeliveryError(detail="the run's bundle is not a regular file")
    ref = f"refs/cluster/run-{run_id}"

    async def mirror_git(
        *args: str, env: dict[str, str] | None = None, token: str | None = None
    ) -> str:
        result = await git(
            *_HARDENED, *args, cwd=ws.mirror, timeout=timeout, env=env, secrets=[token],
            error=DeliveryError,
        )  # fmt: skip
        return result.stdout

    async with mirror_lock():
        try:
            await mirror_git(*_LOCAL_ONLY, "fetch", "--quiet", "--no-tags",
                             "--no-write-fetch-head", str(bundle), f"+HEAD:{ref}")  # fmt: skip
            sha = (await mirror_git("rev-parse", "--verify", f"{ref}^{{commit}}")).strip()
            listed = await mirror_git("diff", "--name-only", "-z", ws.start_sha, sha)
            changed = tuple(name for name in listed.split("\0") if name)
            refused = protected_changes(changed, protected)
            if refused:
                raise ProtectedPathError(
                    detail=f"{', '.join(refused[:20])} match {', '.join(protected)}; "
                    "these are refused at delivery (a GitHub App without the `workflows` "
                    "permission cannot push workflow files either)"
                )
            token = await git_token()
            lease = f"--force-with-lease=refs/heads/{ws.branch}:{ws.remote_sha or ''}"
            await mirror_git(
                "push", "--quiet", "--no-verify", lease, git_url(remote_url),
                f"{sha}:refs/heads/{ws.branch}", env=auth_env(remote_url, token), token=token,
            )  # fmt: skip
        finally:
            await git("update-ref", "-d", ref, cwd=ws.mirror, check=False)
    return Delivery(sha, ws.branch, changed, pushed=True, no_changes=False)
