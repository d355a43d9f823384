"""Branch and mirror names, and which URLs are local."""

from __future__ import annotations

import pytest

from claude_cluster.agent.mirror import is_local_url, mirror_name
from claude_cluster.agent.workspace import MAX_BRANCH_LENGTH, WorkspaceManager, branch_name


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("Fix the crash on empty input!", "claude/issue-7-fix-the-crash-on-empty-input"),
        ("Café: naïve façade", "claude/issue-7-cafe-naive-facade"),
        ("  --Already--dashed--  ", "claude/issue-7-already-dashed"),
        ("修复错误", "claude/issue-7"),  # nothing ASCII left
        ("", "claude/issue-7"),
    ],
)
def test_branch_name_slug(title: str, expected: str) -> None:
    assert branch_name("claude/", 7, title) == expected


def test_long_titles_are_cut_at_a_word_boundary_within_the_limit() -> None:
    title = "Refactor the configuration loader so that environment variables win over files"
    name = branch_name("claude/", 1234, title)
    assert len(name) <= MAX_BRANCH_LENGTH
    assert name == "claude/issue-1234-refactor-the-configuration-loader-so-that"
    assert not name.endswith("-")


def test_one_long_word_is_cut_hard() -> None:
    name = branch_name("claude/", 1, "x" * 200)
    assert len(name) == MAX_BRANCH_LENGTH
    assert name.startswith("claude/issue-1-xxx")


def test_custom_prefix() -> None:
    assert branch_name("bot/fix/", 3, "Typo") == "bot/fix/issue-3-typo"
    assert branch_name("", 3, "Typo") == "issue-3-typo"


@pytest.mark.parametrize("prefix", ["bad..prefix/", "with space/", "-dash/", "x.lock"])
def test_invalid_prefix_is_refused_at_construction(prefix: str, tmp_path: object) -> None:
    with pytest.raises(ValueError, match="branch prefix"):
        WorkspaceManager(tmp_path, branch_prefix=prefix)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("/srv/repos/app.git", True),
        ("relative/dir", True),
        ("file:///srv/repos/app.git", True),
        ("https://github.com/octo/app.git", False),
        ("ssh://git@github.com/octo/app.git", False),
        ("git@github.com:octo/app.git", False),
    ],
)
def test_is_local_url(url: str, local: bool) -> None:
    assert is_local_url(url) is local


def test_mirror_names_are_readable_safe_and_distinct() -> None:
    a = mirror_name("https://github.com/octo/app.git")
    b = mirror_name("https://gitlab.com/octo/app.git")
    assert a.startswith("github.com-octo-app-")
    assert a != b
    assert mirror_name("/srv/repos/app.git").startswith("srv-repos-app-")
    assert mirror_name("file:///srv/repos/app.git").startswith("srv-repos-app-")
    weird = mirror_name("https://x/" + "../" * 5 + "a b;c")
    assert "/" not in weird and " " not in weird and ";" not in weird
    assert mirror_name("https://user:tok@github.com/o/r.git") == mirror_name(
        "https://other:tok2@github.com/o/r.git"
    )  # credentials in a URL do not make a second mirror
