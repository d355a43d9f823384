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

from dataclasses import dataclass

from claude_cluster.agent.git import DeliveryError, auth_env, git
from claude_cluster.agent.mirror import git_url
from claude_cluster.agent.workspace import Workspace

__all__ = ["Delivery", "commit_and_push", "commit_message"]


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
