"""commit_and_push against real repositories: message, identity, no-changes, lease, token."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

from claude_cluster.agent.deliver import commit_and_push, commit_message
from claude_cluster.agent.git import DeliveryError
from claude_cluster.agent.workspace import Workspace
from claude_cluster.domain.states import ErrorCategory
from tests.integration.agent.conftest import (
    GitHttpServer,
    MakeManager,
    Origin,
    assert_token_hidden,
    prepare_workspace,
    sh,
)

pytestmark = pytest.mark.timeout(30)
prepare = partial(prepare_workspace, title="Return 42")


async def deliver(ws: Workspace, origin: Origin, **kw: object) -> object:
    args: dict[str, object] = {
        "task_id": 7,
        "summary": "Return 42 from answer()",
        "author_name": "Cluster Bot",
        "author_email": "bot@example.invalid",
        "remote_url": origin.url,
        "git_token": None,
    }
    args.update(kw)
    return await commit_and_push(ws, **args)  # type: ignore[arg-type]


async def test_commits_with_the_seed_message_and_pushes_the_branch(
    make_manager: MakeManager, origin: Origin
) -> None:
    manager = make_manager()
    ws = await prepare(manager, origin)
    (ws.path / "app.py").write_text("def answer():\n    return 42\n")
    (ws.path / "docs").mkdir()
    (ws.path / "docs" / "answer.md").write_text("42\n")

    result = await deliver(ws, origin)

    assert result.no_changes is False
    assert result.pushed is True
    assert result.branch == ws.branch
    assert sorted(result.changed_files) == ["app.py", "docs/answer.md"]
    assert origin.sha(f"refs/heads/{ws.branch}") == result.commit_sha
    message = sh(origin.bare, "log", "-1", "--format=%B", result.commit_sha)
    assert message == commit_message("Return 42 from answer()", 7).strip()
    assert message.splitlines()[2] == "Task ID: 7"
    who = sh(origin.bare, "log", "-1", "--format=%an <%ae>|%cn <%ce>", result.commit_sha)
    assert who == "Cluster Bot <bot@example.invalid>|Cluster Bot <bot@example.invalid>"
    assert sh(origin.bare, "rev-parse", f"{result.commit_sha}^") == ws.start_sha
    await manager.release(ws)


async def test_nothing_changed_means_no_commit_and_no_push(
    make_manager: MakeManager, origin: Origin
) -> None:
    manager = make_manager()
    ws = await prepare(manager, origin)
    # by-products of running tests are not changes
    (ws.path / "__pycache__").mkdir()
    (ws.path / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")
    (ws.path / ".pytest_cache").mkdir()
    (ws.path / ".pytest_cache" / "README.md").write_text("cache\n")
    (ws.path / "run.log").write_text("ignored by the repository's .gitignore\n")
    # nor what setup left: a setuptools project's editable install, npm's packages
    (ws.path / "app.egg-info").mkdir()
    (ws.path / "app.egg-info" / "PKG-INFO").write_text("Name: app\n")
    (ws.path / "node_modules" / "left-pad").mkdir(parents=True)
    (ws.path / "node_modules" / "left-pad" / "index.js").write_text("module.exports = 1;\n")

    result = await deliver(ws, origin)

    assert result.no_changes is True
    assert (result.commit_sha, result.pushed, result.changed_files) == (None, False, ())
    assert origin.sha(f"refs/heads/{ws.branch}") is None
    await manager.release(ws)


async def test_a_mirror_made_with_an_older_exclude_list_gets_the_current_one(
    make_manager: MakeManager, origin: Origin
) -> None:
    manager = make_manager()
    ws = await prepare(manager, origin)
    await manager.release(ws)
    exclude = ws.mirror / "info" / "exclude"
    older = "\n".join(exclude.read_text().splitlines()[:-1]) + "\n"  # as before *.egg-info/
    exclude.write_text(older)

    ws = await prepare(manager, origin, attempt=2)
    (ws.path / "app.egg-info").mkdir()
    (ws.path / "app.egg-info" / "PKG-INFO").write_text("Name: app\n")

    assert exclude.read_text().endswith("\n*.egg-info/\n")
    assert (await deliver(ws, origin)).no_changes is True
    await manager.release(ws)


async def test_commits_the_agent_made_itself_are_pushed(
    make_manager: MakeManager, origin: Origin
) -> None:
    manager = make_manager()
    ws = await prepare(manager, origin)
    (ws.path / "app.py").write_text("def answer():\n    return 42\n")
    sh(ws.path, "commit", "-q", "-am", "Claude's own commit")

    result = await deliver(ws, origin)

    assert result.commit_sha == sh(ws.path, "rev-parse", "HEAD")
    assert result.changed_files == ("app.py",)
    assert origin.sha(f"refs/heads/{ws.branch}") == result.commit_sha
    await manager.release(ws)


async def test_follow_up_run_pushes_on_top_of_the_branch(
    make_manager: MakeManager, origin: Origin
) -> None:
    manager = make_manager()
    first_tip = origin.commit("fix.txt", "attempt 1\n", branch="claude/issue-12-return-42")
    ws = await prepare(manager, origin, branch="claude/issue-12-return-42")
    (ws.path / "fix.txt").write_text("attempt 2\n")

    result = await deliver(ws, origin)

    assert sh(origin.bare, "rev-parse", f"{result.commit_sha}^") == first_tip
    assert result.changed_files == ("fix.txt",)
    await manager.release(ws)


async def test_a_retry_replaces_what_an_earlier_attempt_pushed(
    make_manager: MakeManager, origin: Origin
) -> None:
    manager = make_manager()
    first = await prepare(manager, origin, attempt=1)
    (first.path / "a.txt").write_text("attempt 1\n")
    await deliver(first, origin)
    await manager.release(first)

    second = await prepare(manager, origin, attempt=2)  # starts again from main
    assert second.start_sha == origin.sha("main")
    assert second.remote_sha is not None  # the lease: what attempt 1 pushed
    (second.path / "b.txt").write_text("attempt 2\n")
    result = await deliver(second, origin)

    assert origin.sha(f"refs/heads/{second.branch}") == result.commit_sha
    assert sh(origin.bare, "rev-parse", f"{result.commit_sha}^") == origin.sha("main")
    await manager.release(second)


async def test_a_push_by_someone_else_meanwhile_is_not_overwritten(
    make_manager: MakeManager, origin: Origin
) -> None:
    manager = make_manager()
    ws = await prepare(manager, origin)
    theirs = origin.commit("theirs.txt", "a human pushed this\n", branch=ws.branch)
    (ws.path / "ours.txt").write_text("ours\n")

    with pytest.raises(DeliveryError) as err:
        await deliver(ws, origin)

    assert err.value.category is ErrorCategory.DELIVERY_ERROR
    assert "git push" in str(err.value)
    assert origin.sha(f"refs/heads/{ws.branch}") == theirs
    await manager.release(ws)


async def test_commit_only(make_manager: MakeManager, origin: Origin) -> None:
    manager = make_manager()
    ws = await prepare(manager, origin)
    (ws.path / "x.txt").write_text("x\n")
    result = await deliver(ws, origin, push=False)
    assert result.commit_sha is not None and result.pushed is False
    assert origin.sha(f"refs/heads/{ws.branch}") is None
    await manager.release(ws)


async def test_push_with_a_token_over_https_style_remote(
    make_manager: MakeManager,
    origin: Origin,
    git_http: GitHttpServer,
    argv_log: Path,
) -> None:
    token = "ghs_secret_token_123"
    url = git_http.url("origin.git")
    manager = make_manager()
    ws = await prepare(manager, origin, repository_url=url, git_token=token)
    (ws.path / "app.py").write_text("def answer():\n    return 42\n")

    result = await deliver(ws, origin, remote_url=url, git_token=token)

    assert origin.sha(f"refs/heads/{ws.branch}") == result.commit_sha
    assert "push --quiet" in argv_log.read_text()  # the recorder saw the command
    assert token not in argv_log.read_text()
    assert token not in (ws.mirror / "config").read_text()

    # a wrong token: the error names the push, not the token
    (ws.path / "more.txt").write_text("more\n")
    with pytest.raises(DeliveryError) as err:
        await deliver(ws, origin, remote_url=url, git_token="ghs_wrong_token_456")
    message = str(err.value)
    assert "git push" in message
    assert_token_hidden(message, "ghs_wrong_token_456")
    await manager.release(ws)


def test_commit_message_format() -> None:
    assert commit_message("  Fix the thing \n", 3) == (
        "Fix the thing\n\nTask ID: 3\n\n🤖 Generated with Claude Code Cluster"
    )
    assert commit_message("", 3).startswith("Resolve task 3\n")
