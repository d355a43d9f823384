"""GitHub's JSON shapes for the fake GitHub (:mod:`tests.fakes.github_api`): REST objects
and webhook payloads, with the fields real GitHub sends (a few more than the product reads,
so parsers are tested against extra fields too).

The ``*_payload`` builders also work without a server, for unit tests::

    body = issue_labeled_payload("octo/app", 7, "claude-code")
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.fakes.github_api import FakeRepo

WEB = "https://github.com"


def sha(seed: str) -> str:
    return hashlib.sha1(seed.encode()).hexdigest()


def user_json(login: str, *, bot: bool = False) -> dict[str, Any]:
    uid = int(hashlib.sha256(login.encode()).hexdigest()[:6], 16)
    return {
        "login": login,
        "id": uid,
        "node_id": f"MDQ6VXNlcj{uid}",
        "avatar_url": f"https://avatars.githubusercontent.com/u/{uid}?v=4",
        "url": f"https://api.github.com/users/{login}",
        "html_url": f"{WEB}/{login}",
        "type": "Bot" if bot else "User",
        "site_admin": False,
    }


def repository_json(api: str, repo: FakeRepo) -> dict[str, Any]:
    full = repo.full_name
    return {
        "id": repo.id,
        "node_id": f"R_kgDO{repo.id}",
        "name": repo.name,
        "full_name": full,
        "private": repo.private,
        "owner": user_json(repo.owner),
        "html_url": f"{WEB}/{full}",
        "description": None,
        "fork": False,
        "url": f"{api}/repos/{full}",
        "clone_url": f"{WEB}/{full}.git",
        "ssh_url": f"git@github.com:{full}.git",
        "default_branch": repo.default_branch,
        "visibility": "private" if repo.private else "public",
        "has_issues": True,
        "archived": False,
        "permissions": {"admin": False, "maintain": False, "push": repo.push, "pull": True},
    }


def label_json(api: str, repo: FakeRepo, name: str) -> dict[str, Any]:
    lid = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    return {
        "id": lid,
        "node_id": f"LA_{lid}",
        "url": f"{api}/repos/{repo.full_name}/labels/{name}",
        "name": name,
        "color": "ededed",
        "default": False,
        "description": None,
    }


def issue_json(
    api: str,
    repo: FakeRepo,
    number: int,
    title: str,
    body: str | None,
    now: str,
    user: str,
    association: str = "OWNER",
) -> dict[str, Any]:
    base = f"{api}/repos/{repo.full_name}/issues/{number}"
    return {
        "url": base,
        "repository_url": f"{api}/repos/{repo.full_name}",
        "labels_url": base + "/labels{/name}",
        "comments_url": base + "/comments",
        "html_url": f"{WEB}/{repo.full_name}/issues/{number}",
        "id": 100_000 + number,
        "node_id": f"I_kwDO{number}",
        "number": number,
        "title": title,
        "user": user_json(user),
        "labels": [],
        "state": "open",
        "locked": False,
        "assignee": None,
        "assignees": [],
        "milestone": None,
        "comments": 0,
        "created_at": now,
        "updated_at": now,
        "closed_at": None,
        "author_association": association,
        "state_reason": None,
        "body": body,
        "reactions": {"url": base + "/reactions", "total_count": 0},
    }


def comment_json(
    api: str,
    repo: FakeRepo,
    number: int,
    cid: int,
    body: str,
    user: str,
    now: str,
    association: str = "OWNER",
) -> dict[str, Any]:
    return {
        "url": f"{api}/repos/{repo.full_name}/issues/comments/{cid}",
        "html_url": f"{WEB}/{repo.full_name}/issues/{number}#issuecomment-{cid}",
        "issue_url": f"{api}/repos/{repo.full_name}/issues/{number}",
        "id": cid,
        "node_id": f"IC_kwDO{cid}",
        "user": user_json(user),
        "created_at": now,
        "updated_at": now,
        "author_association": association,
        "body": body,
        "performed_via_github_app": None,
    }


def pull_json(
    api: str,
    repo: FakeRepo,
    number: int,
    *,
    title: str,
    body: str | None,
    head: str,
    base: str,
    draft: bool,
    user: str,
    now: str,
    head_repo: FakeRepo | None = None,
) -> dict[str, Any]:
    """``head_repo`` is the fork a pull request comes from (None: the repository itself)."""
    full = repo.full_name
    repo_obj = repository_json(api, repo)
    source = head_repo or repo
    return {
        "url": f"{api}/repos/{full}/pulls/{number}",
        "id": 200_000 + number,
        "node_id": f"PR_kwDO{number}",
        "html_url": f"{WEB}/{full}/pull/{number}",
        "diff_url": f"{WEB}/{full}/pull/{number}.diff",
        "patch_url": f"{WEB}/{full}/pull/{number}.patch",
        "issue_url": f"{api}/repos/{full}/issues/{number}",
        "number": number,
        "state": "open",
        "locked": False,
        "title": title,
        "user": user_json(user, bot=user.endswith("[bot]")),
        "body": body,
        "labels": [],
        "created_at": now,
        "updated_at": now,
        "closed_at": None,
        "merged_at": None,
        "merge_commit_sha": None,
        "draft": draft,
        "head": {
            "label": f"{source.owner}:{head}",
            "ref": head,
            "sha": sha(head),
            "user": user_json(source.owner),
            "repo": {**repository_json(api, source), "fork": True} if head_repo else repo_obj,
        },
        "base": {
            "label": f"{repo.owner}:{base}",
            "ref": base,
            "sha": sha(base),
            "user": user_json(repo.owner),
            "repo": repo_obj,
        },
        "author_association": "CONTRIBUTOR",
        "merged": False,
        "mergeable": None,
        "maintainer_can_modify": False,
    }


def pull_issue_link(api: str, repo: FakeRepo, number: int) -> dict[str, Any]:
    """The ``pull_request`` key that marks an issue object as a pull request."""
    return {
        "url": f"{api}/repos/{repo.full_name}/pulls/{number}",
        "html_url": f"{WEB}/{repo.full_name}/pull/{number}",
        "diff_url": f"{WEB}/{repo.full_name}/pull/{number}.diff",
        "patch_url": f"{WEB}/{repo.full_name}/pull/{number}.patch",
        "merged_at": None,
    }


def review_json(
    api: str,
    repo: FakeRepo,
    pr: dict[str, Any],
    rid: int,
    state: str,
    body: str | None,
    user: str,
    association: str = "MEMBER",
) -> dict[str, Any]:
    return {
        "id": rid,
        "node_id": f"PRR_kwDO{rid}",
        "user": user_json(user),
        "body": body,
        "commit_id": pr["head"]["sha"],
        "submitted_at": pr["updated_at"],
        "state": state.lower(),  # webhooks: lower case; the REST API says CHANGES_REQUESTED
        "html_url": f"{pr['html_url']}#pullrequestreview-{rid}",
        "pull_request_url": pr["url"],
        "author_association": association,
    }


def _public(item: dict[str, Any]) -> dict[str, Any]:
    """Drop the fake's private bookkeeping keys (``_seq``)."""
    return {k: v for k, v in item.items() if not k.startswith("_")}


def issues_payload(
    api: str,
    repo: FakeRepo,
    issue: dict[str, Any],
    action: str,
    sender: str,
    extra: dict[str, Any],
) -> dict[str, Any]:
    return {
        "action": action,
        "issue": _public(issue),
        **extra,
        "repository": repository_json(api, repo),
        "sender": user_json(sender),
    }


def issue_comment_payload(
    api: str, repo: FakeRepo, issue: dict[str, Any], comment: dict[str, Any], sender: str
) -> dict[str, Any]:
    return {
        "action": "created",
        "issue": _public(issue),
        "comment": comment,
        "repository": repository_json(api, repo),
        "sender": user_json(sender),
    }


def pull_request_payload(
    repo: FakeRepo,
    pr: dict[str, Any],
    action: str,
    extra: dict[str, Any] | None = None,
    sender: str | None = None,
) -> dict[str, Any]:
    return {
        "action": action,
        "number": pr["number"],
        "pull_request": _public(pr),
        **(extra or {}),
        "repository": pr["base"]["repo"],
        "sender": user_json(sender or repo.owner),
    }


def review_payload(
    api: str, repo: FakeRepo, pr: dict[str, Any], review: dict[str, Any], sender: str
) -> dict[str, Any]:
    return {
        "action": "submitted",
        "review": review,
        "pull_request": _public(pr),
        "repository": repository_json(api, repo),
        "sender": user_json(sender),
    }


def ping_payload(hook_id: int, url: str) -> dict[str, Any]:
    return {
        "zen": "Keep it logically awesome.",
        "hook_id": hook_id,
        "hook": {
            "type": "Repository",
            "id": hook_id,
            "name": "web",
            "active": True,
            "events": ["*"],
            "config": {"content_type": "json", "url": url, "insecure_ssl": "0"},
        },
    }


# --- stand-alone builders for unit tests (no server) ------------------------------------
def _standalone(full_name: str, default_branch: str = "main") -> FakeRepo:
    from tests.fakes.github_api import FakeRepo

    owner, name = full_name.split("/")
    return FakeRepo(owner, name, 1296269, default_branch)


API = "https://api.github.com"


def issue_labeled_payload(
    full_name: str, number: int, label: str, *, labels: tuple[str, ...] = (), title="Bug"
) -> dict[str, Any]:
    """``issues.labeled``: ``label`` was just added; ``labels`` are the others on it."""
    repo = _standalone(full_name)
    issue = issue_json(API, repo, number, title, "It breaks.", "2026-01-05T10:00:00Z", "octocat")
    issue["labels"] = [label_json(API, repo, n) for n in (*labels, label)]
    extra = {"label": label_json(API, repo, label)}
    return issues_payload(API, repo, issue, "labeled", "octocat", extra)


def pull_request_event_payload(
    full_name: str,
    number: int,
    *,
    action: str = "opened",
    merged: bool = False,
    head: str = "claude/issue-1-fix",
    body: str | None = "Closes #1\n\nTask ID: 1",
) -> dict[str, Any]:
    """``pull_request.<action>``; ``merged=True`` with ``action="closed"`` is a merge."""
    repo = _standalone(full_name)
    pr = pull_json(
        API,
        repo,
        number,
        title="Fix",
        body=body,
        head=head,
        base="main",
        draft=False,
        user="claude-cluster[bot]",
        now="2026-01-05T10:00:00Z",
    )
    if action == "closed":
        pr.update(state="closed", closed_at="2026-01-05T11:00:00Z")
        if merged:
            pr.update(merged=True, merged_at="2026-01-05T11:00:00Z", merge_commit_sha=sha("m"))
    return pull_request_payload(repo, pr, action)


def review_submitted_payload(
    full_name: str,
    number: int,
    *,
    state: str = "changes_requested",
    body: str | None = None,
    head: str = "claude/issue-1-fix",
) -> dict[str, Any]:
    repo = _standalone(full_name)
    pr = pull_request_event_payload(full_name, number, head=head)["pull_request"]
    review = review_json(API, repo, pr, 80, state, body, "reviewer")
    return review_payload(API, repo, pr, review, "reviewer")


def pr_comment_payload(full_name: str, number: int, body: str) -> dict[str, Any]:
    """``issue_comment.created`` on a pull request (its issue has ``pull_request``)."""
    repo = _standalone(full_name)
    issue = issue_json(API, repo, number, "Fix", "Closes #1", "2026-01-05T10:00:00Z", "octocat")
    issue["pull_request"] = pull_issue_link(API, repo, number)
    comment = comment_json(API, repo, number, 9001, body, "octocat", "2026-01-05T10:05:00Z")
    return issue_comment_payload(API, repo, issue, comment, "octocat")
