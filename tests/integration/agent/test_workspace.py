"""WorkspaceManager against real git repositories: mirrors, worktrees, slots, sweeper."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import time
from asyncio.subprocess import PIPE
from pathlib import Path

import pytest

from claude_cluster.agent.git import WorkspaceError
from claude_cluster.domain.states import ErrorCategory
from tests.integration.agent.conftest import (
    GitHttpServer,
    MakeManager,
    Origin,
    assert_token_hidden,
    make_origin,
    sh,
)
from tests.integration.agent.conftest import prepare_workspace as prepare

pytestmark = pytest.mark.timeout(30)


def head_branch(path: Path) -> str:
    return sh(path, "symbolic-ref", "--short", "HEAD")


async def test_fresh_worktree_per_run_is_removed_on_release(
    make_manager: MakeManager, origin: Origin
) -> None:
    manager = make_manager(reuse_slots=False)
    ws = await prepare(manager, origin)

    assert ws.path == manager.root / "tasks" / "task-7-a1"
    assert ws.branch == "claude/issue-12-make-answer-return-42"
    assert head_branch(ws.path) == ws.branch
    assert ws.base_branch == "main"
    assert ws.base_sha == ws.start_sha == origin.sha("main")
    assert ws.remote_sha is None
    assert (ws.path / "app.py").read_text().startswith("def answer")
    assert ws.mirror.parent == manager.root / "cache" / "mirrors"
    assert sh(ws.mirror, "rev-parse", "--is-bare-repository") == "true"

    await manager.release(ws)
    assert not ws.path.exists()
    assert sh(ws.mirror, "branch", "--list", ws.branch) == ""
    assert "task-7-a1" not in sh(ws.mirror, "worktree", "list")


async def test_slot_is_reused_and_reset_to_a_clean_tree(
    make_manager: MakeManager, origin: Origin
) -> None:
    manager = make_manager()
    first = await prepare(manager, origin)
    # everything a run can leave behind
    (first.path / "app.py").write_text("changed\n")  # modified tracked file
    (first.path / ".gitignore").unlink()  # deleted tracked file
    (first.path / "new.txt").write_text("untracked\n")
    (first.path / "debug.log").write_text("ignored\n")
    (first.path / "build").mkdir()
    (first.path / "build" / "out.bin").write_bytes(b"\0")
    sh(first.path, "add", "new.txt")  # staged
    sh(first.path, "commit", "-q", "-m", "local commit", "--", "new.txt")
    admin = Path(sh(first.path, "rev-parse", "--absolute-git-dir"))
    (admin / "MERGE_HEAD").write_text(first.base_sha + "\n")  # an interrupted merge
    await manager.release(first)

    second = await prepare(manager, origin, task_id=8, issue_number=13, title="Other")

    assert second.path == first.path  # the same slot
    assert head_branch(second.path) == "claude/issue-13-other"
    assert sh(second.path, "rev-parse", "HEAD") == origin.sha("main")
    assert sh(second.path, "status", "--porcelain", "--ignored") == ""
    assert (second.path / "app.py").read_text() == "def answer():\n    return 41\n"
    assert not (admin / "MERGE_HEAD").exists()
    # the first run's branch is gone from the mirror
    assert sh(second.mirror, "branch", "--list", first.branch) == ""
    await manager.release(second)


async def test_concurrent_runs_of_one_repository_get_separate_slots(
    make_manager: MakeManager, origin: Origin
) -> None:
    manager = make_manager()
    spaces = await asyncio.gather(
        *(prepare(manager, origin, task_id=n, issue_number=n, title=f"t{n}") for n in range(4))
    )
    assert len({ws.path for ws in spaces}) == 4
    for ws in spaces:
        assert head_branch(ws.path) == ws.branch
        assert sh(ws.path, "status", "--porcelain") == ""
    await asyncio.gather(*(manager.release(ws) for ws in spaces))
    assert sh(spaces[0].mirror, "fsck", "--no-progress") == ""


@pytest.mark.parametrize("reuse_slots", [True, False])
async def test_concurrent_processes_share_one_mirror_safely(
    tmp_path: Path, origin: Origin, reuse_slots: bool
) -> None:
    """Three agent processes with one WORKSPACE_PATH prepare the same repository at once."""
    root = tmp_path / "workspace"
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from pathlib import Path
        from claude_cluster.agent.workspace import WorkspaceManager

        async def main(n):
            m = WorkspaceManager(Path({str(root)!r}), reuse_slots={reuse_slots})
            ws = await m.prepare(task_id=n, attempt=1, repository_url={origin.url!r},
                                 issue_number=n, title="run")
            (ws.path / f"out-{{n}}.txt").write_text("x")
            await asyncio.sleep(0.3)  # hold the workspace while the others prepare
            print(ws.path)
            await m.release(ws)

        asyncio.run(main(int(sys.argv[1])))
        """
    )
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, str(n), stdout=PIPE, stderr=PIPE
        )
        for n in range(3)
    ]
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 20)
    assert [p.returncode for p in procs] == [0, 0, 0], [err.decode() for _, err in outputs]
    assert len({out.strip() for out, _ in outputs}) == 3  # three different directories
    mirror = next((root / "cache" / "mirrors").glob("*.git"))
    assert sh(mirror, "fsck", "--no-progress") == ""
    assert sh(mirror, "for-each-ref", "refs/heads/") == ""  # every run cleaned up


async def test_follow_up_run_continues_the_existing_branch(
    make_manager: MakeManager, origin: Origin
) -> None:
    manager = make_manager()
    tip = origin.commit("fix.txt", "first attempt\n", branch="claude/issue-12-x")

    ws = await prepare(manager, origin, branch="claude/issue-12-x")

    assert ws.branch == "claude/issue-12-x"
    assert ws.start_sha == ws.remote_sha == tip
    assert ws.base_sha == origin.sha("main")
    assert (ws.path / "fix.txt").read_text() == "first attempt\n"
    assert head_branch(ws.path) == "claude/issue-12-x"
    await manager.release(ws)


async def test_given_branch_missing_on_remote_starts_from_base(
    make_manager: MakeManager, origin: Origin
) -> None:
    manager = make_manager()
    ws = await prepare(manager, origin, branch="claude/custom", base_branch="feature")
    assert ws.base_branch == "feature"
    assert ws.start_sha == origin.sha("feature")
    assert ws.remote_sha is None
    assert (ws.path / "feature.txt").exists()
    await manager.release(ws)


async def test_missing_base_branch_is_a_workspace_error(
    make_manager: MakeManager, origin: Origin
) -> None:
    manager = make_manager()
    with pytest.raises(WorkspaceError, match="'nope' does not exist") as err:
        await prepare(manager, origin, base_branch="nope")
    assert err.value.category is ErrorCategory.WORKSPACE_ERROR
    # the slot was given back: the next run gets slot-0 again
    ws = await prepare(manager, origin)
    assert ws.path.name == "slot-0"
    await manager.release(ws)


async def test_unreachable_repository_is_a_workspace_error(
    make_manager: MakeManager, tmp_path: Path
) -> None:
    with pytest.raises(WorkspaceError) as err:
        await prepare(make_manager(), Origin(tmp_path / "missing.git", tmp_path))
    assert err.value.category is ErrorCategory.WORKSPACE_ERROR


async def test_each_run_fetches_new_commits_and_prunes_deleted_branches(
    make_manager: MakeManager, origin: Origin
) -> None:
    manager = make_manager()
    ws = await prepare(manager, origin)
    await manager.release(ws)
    new_tip = origin.commit("app.py", "def answer():\n    return 42\n")
    sh(origin.bare, "branch", "-D", "feature")

    ws = await prepare(manager, origin, task_id=8)

    assert ws.start_sha == new_tip
    assert "return 42" in (ws.path / "app.py").read_text()
    assert sh(ws.mirror, "branch", "-r") == "origin/HEAD -> origin/main\n  origin/main".strip()
    await manager.release(ws)


async def test_default_branch_follows_the_remote(make_manager: MakeManager, origin: Origin) -> None:
    manager = make_manager()
    await manager.release(await prepare(manager, origin))
    # the remote renames its default branch: main → trunk
    sh(origin.bare, "branch", "-m", "main", "trunk")

    ws = await prepare(manager, origin, task_id=8)

    assert ws.base_branch == "trunk"
    await manager.release(ws)


@pytest.mark.parametrize("form", ["file-url", "relative-path"])
async def test_local_repository_urls(
    make_manager: MakeManager,
    origin: Origin,
    form: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if form == "file-url":
        url = origin.bare.as_uri()
    else:
        monkeypatch.chdir(origin.bare.parent)
        url = origin.bare.name
    manager = make_manager()
    ws = await prepare(manager, origin, repository_url=url)
    assert ws.start_sha == origin.sha("main")
    assert sh(ws.mirror, "config", "remote.origin.url") in (url, str(origin.bare))
    await manager.release(ws)


async def test_keep_leaves_the_worktree_but_frees_the_branch(
    make_manager: MakeManager, origin: Origin
) -> None:
    manager = make_manager(keep=True, reuse_slots=True)
    assert manager.reuse_slots is False  # debugging wants one directory per run
    first = await prepare(manager, origin)
    (first.path / "notes.txt").write_text("for the post-mortem\n")
    await manager.release(first)
    assert (first.path / "notes.txt").exists()

    second = await prepare(manager, origin, attempt=2)  # same branch, next attempt

    assert head_branch(second.path) == first.branch
    assert sh(first.path, "rev-parse", "--abbrev-ref", "HEAD") == "HEAD"  # detached
    await manager.release(second)


async def test_a_crashed_runs_worktree_does_not_block_the_branch(
    make_manager: MakeManager, origin: Origin
) -> None:
    manager = make_manager(reuse_slots=False)
    crashed = await prepare(manager, origin)
    assert crashed.lock is not None
    crashed.lock.release()  # the process died: the kernel dropped its lock, files remain

    retry = await prepare(manager, origin, attempt=2)
    assert head_branch(retry.path) == crashed.branch
    await manager.release(retry)

    again = await prepare(manager, origin, attempt=1)  # the crashed attempt's own dir
    assert sh(again.path, "status", "--porcelain") == ""
    await manager.release(again)


async def test_invalid_branch_name_is_refused(make_manager: MakeManager, origin: Origin) -> None:
    with pytest.raises(WorkspaceError, match="not a valid branch name"):
        await prepare(make_manager(), origin, branch="bad..name")


async def test_token_travels_in_a_header_never_in_argv_config_or_errors(
    make_manager: MakeManager,
    origin: Origin,
    git_http: GitHttpServer,
    argv_log: Path,
) -> None:
    token = "ghs_secret_token_123"
    manager = make_manager()
    url = git_http.url("origin.git")

    ws = await prepare(manager, origin, repository_url=url, git_token=token)

    assert ws.start_sha == origin.sha("main")
    assert git_http.seen_authorization and all(git_http.seen_authorization)
    assert "fetch --prune" in argv_log.read_text()  # the recorder saw the command
    assert token not in argv_log.read_text()
    for config in (ws.mirror / "config", ws.path / ".git"):
        assert token not in config.read_text()
    await manager.release(ws)

    with pytest.raises(WorkspaceError) as err:
        await prepare(manager, origin, repository_url=url, git_token="ghs_wrong_token_456")
    message = str(err.value)
    assert "git fetch" in message  # says what failed…
    assert_token_hidden(message, "ghs_wrong_token_456")  # …without the token


# -- sweeper ------------------------------------------------------------------------


def age(ws_path: Path, days: float) -> None:
    """Pretend the workspace was last used ``days`` ago."""
    stamp = time.time() - days * 86_400
    lock = ws_path.with_name(ws_path.name + ".lock")
    for path in (lock, ws_path):
        if path.exists():
            os.utime(path, (stamp, stamp))


async def test_sweep_removes_old_idle_workspaces_only(
    make_manager: MakeManager, origin: Origin
) -> None:
    manager = make_manager(keep=True)
    old = await prepare(manager, origin, task_id=1)
    await manager.release(old)
    recent = await prepare(manager, origin, task_id=2)
    await manager.release(recent)
    busy = await prepare(manager, origin, task_id=3)  # a run still holds it
    for ws in (old, busy):
        age(ws.path, 10)

    report = await manager.sweep(retention_days=7, max_size_gb=100)

    assert report.removed == [old.path]
    assert report.busy == 1
    assert report.freed_bytes > 0
    assert not old.path.exists() and not old.path.with_name("task-1-a1.lock").exists()
    assert recent.path.exists() and busy.path.exists()
    assert "task-1-a1" not in sh(old.mirror, "worktree", "list")
    await manager.release(busy)


async def test_sweep_enforces_the_size_cap_oldest_first(
    make_manager: MakeManager, origin: Origin
) -> None:
    manager = make_manager(keep=True)
    spaces = []
    for n in range(3):
        ws = await prepare(manager, origin, task_id=n)
        (ws.path / "blob.bin").write_bytes(os.urandom(2 * 1024 * 1024))
        await manager.release(ws)
        age(ws.path, 3 - n)  # task 0 is the oldest
        spaces.append(ws)
    # room for the mirror and a bit more than two workspaces
    cap_gb = (5 * 1024 * 1024 + 512 * 1024) / 1024**3

    report = await manager.sweep(retention_days=30, max_size_gb=cap_gb)

    assert report.removed == [spaces[0].path]
    assert report.total_bytes <= cap_gb * 1024**3
    assert [ws.path.exists() for ws in spaces] == [False, True, True]


async def test_sweep_removes_idle_slots_and_unused_mirrors(
    make_manager: MakeManager, tmp_path: Path
) -> None:
    manager = make_manager()
    origin = make_origin(tmp_path)
    ws = await prepare(manager, origin)
    await manager.release(ws)
    age(ws.path, 10)
    fetched = ws.mirror / "FETCH_HEAD"
    stamp = time.time() - 10 * 86_400
    os.utime(fetched, (stamp, stamp))

    report = await manager.sweep(retention_days=7, max_size_gb=100)

    assert set(report.removed) == {ws.path, ws.mirror}
    # and the repository still works afterwards
    again = await prepare(manager, origin)
    assert again.start_sha == origin.sha("main")
    await manager.release(again)
