"""`GitHubClient`: the REST calls the product makes, and nothing else.

Every method raises a :mod:`claude_cluster.github.errors` type on failure; the ones that
GitHub answers with an error in normal operation are handled here by name: a missing
label on removal is fine, and "A pull request already exists" means find it and update it.

Example::

    async with GitHubClient(PersonalToken(token), base_url=api_url) as gh:
        repo = await gh.get_repo("octo/app")
        listing = await gh.list_labelled_open_issues("octo/app", ["claude-code"])
        pr = await gh.open_or_update_pull_request(
            "octo/app", head="claude/issue-7-fix", base=repo.default_branch,
            title="...", body="...",
        )
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from claude_cluster.github._rest import OnApiCall, RateLimit, RestTransport, check_repo
from claude_cluster.github.auth import DEFAULT_API_URL, TokenProvider
from claude_cluster.github.errors import GitHubNotFound, PullRequestExists
from claude_cluster.github.models import Issue, IssueComment, PullRequest, Repository

#: GitHub's maximum page size
MAX_PER_PAGE = 100
#: stop following ``Link: rel="next"`` after this many pages (10,000 issues)
MAX_PAGES = 100
ISSUES = "/repos/{owner}/{repo}/issues"
ISSUE = "/repos/{owner}/{repo}/issues/{number}"
PULLS = "/repos/{owner}/{repo}/pulls"


@dataclass(frozen=True)
class IssueListing:
    """One conditional listing: ``not_modified`` means "same as the ETag you sent"."""

    issues: tuple[Issue, ...]
    etag: str | None
    not_modified: bool = False


@dataclass(frozen=True)
class IssueDetails:
    issue: Issue
    comments: tuple[IssueComment, ...]  #: the most recent ones, oldest first


@dataclass(frozen=True)
class PullRequestResult:
    pull_request: PullRequest
    created: bool  #: False when an open PR for the branch existed and was updated


class GitHubClient:
    """Async client for the GitHub REST subset the cluster needs.

    Args:
        auth: a :class:`~claude_cluster.github.auth.TokenProvider` (PAT or App).
        base_url: ``GITHUB_API_URL``; ``https://HOST/api/v3`` for GitHub Enterprise Server.
        on_api_call: ``(endpoint, status, remaining)`` after each call, for metrics.
        http: an httpx client to reuse; by default the client makes and closes its own.
    """

    def __init__(
        self,
        auth: TokenProvider,
        *,
        base_url: str = DEFAULT_API_URL,
        on_api_call: OnApiCall | None = None,
        http: httpx.AsyncClient | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.auth = auth
        self._rest = RestTransport(
            auth, base_url=base_url, http=http, on_api_call=on_api_call, timeout=timeout
        )

    async def __aenter__(self) -> GitHubClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._rest.aclose()

    @property
    def rate_limit(self) -> RateLimit | None:
        """The rate-limit headers of the latest answer (None before the first call)."""
        return self._rest.rate_limit

    async def get_repo(self, repo: str) -> Repository:
        """The repository: ``default_branch``, ``clone_url``, ``private``."""
        response = await self._rest.request(
            "GET", f"/repos/{check_repo(repo)}", endpoint="GET /repos/{owner}/{repo}"
        )
        return Repository.model_validate(response.data)

    async def list_labelled_open_issues(
        self, repo: str, labels: Sequence[str] = (), *, etag: str | None = None
    ) -> IssueListing:
        """Open issues (and pull requests: see ``Issue.is_pull_request``) carrying at least
        one of ``labels`` (all open issues when empty), most recently updated first.

        GitHub's ``labels`` filter means "has all of them", so a single label is filtered by
        GitHub and several are filtered here. Sorting by ``updated`` puts every change on
        the first page, so the first page's ETag answers "did anything change?": with
        ``etag`` set, a 304 returns ``not_modified`` without fetching further pages (and a
        304 does not count against the rate limit).
        """
        params: dict[str, str | int] = {
            "state": "open",
            "sort": "updated",
            "direction": "desc",
            "per_page": MAX_PER_PAGE,
        }
        if len(labels) == 1:
            params["labels"] = labels[0]
        first = await self._rest.request(
            "GET",
            f"/repos/{check_repo(repo)}/issues",
            endpoint="GET " + ISSUES,
            params=params,
            etag=etag,
        )
        if first.not_modified:
            return IssueListing((), etag, not_modified=True)
        items = await self._all_pages(first, "GET " + ISSUES)
        wanted = set(labels)
        issues = tuple(
            issue
            for issue in (Issue.model_validate(item) for item in items)
            if not wanted or wanted.intersection(issue.label_names)
        )
        return IssueListing(issues, first.etag)

    async def get_issue(self, repo: str, number: int, *, recent_comments: int = 10) -> IssueDetails:
        """The issue and its last ``recent_comments`` comments (at most 100)."""
        path = f"/repos/{check_repo(repo)}/issues/{int(number)}"
        response = await self._rest.request("GET", path, endpoint="GET " + ISSUE)
        issue = Issue.model_validate(response.data)
        wanted = max(0, min(recent_comments, MAX_PER_PAGE))
        if not wanted or not issue.comments:
            return IssueDetails(issue, ())
        # Comments come oldest first; read the last page (and the one before when the last
        # is short) instead of walking every page of a long thread.
        last_page = -(-issue.comments // MAX_PER_PAGE)
        pages = [last_page - 1, last_page] if issue.comments % MAX_PER_PAGE else [last_page]
        comments: list[IssueComment] = []
        for page in (p for p in pages if p >= 1):
            answer = await self._rest.request(
                "GET",
                path + "/comments",
                endpoint="GET " + ISSUE + "/comments",
                params={"per_page": MAX_PER_PAGE, "page": page},
            )
            comments.extend(IssueComment.model_validate(c) for c in answer.data)
        return IssueDetails(issue, tuple(comments[-wanted:]))

    async def permission(self, repo: str, login: str) -> str:
        """``login``'s permission on ``repo``: admin, maintain, write, triage, read or none.

        A login GitHub does not know (404) has none.
        """
        path = f"/repos/{check_repo(repo)}/collaborators/{quote(login, safe='')}/permission"
        try:
            response = await self._rest.request(
                "GET", path, endpoint="GET /repos/{owner}/{repo}/collaborators/{user}/permission"
            )
        except GitHubNotFound:
            return "none"
        return str(response.data.get("permission") or "none")

    async def add_labels(self, repo: str, number: int, labels: Iterable[str]) -> tuple[str, ...]:
        """Add labels (created on the repository if new); returns every label now on it."""
        response = await self._rest.request(
            "POST",
            f"/repos/{check_repo(repo)}/issues/{int(number)}/labels",
            endpoint="POST " + ISSUE + "/labels",
            json={"labels": list(labels)},
        )
        return tuple(str(label["name"]) for label in response.data)

    async def remove_label(self, repo: str, number: int, label: str) -> None:
        """Remove a label; a label that is not there is not an error."""
        path = f"/repos/{check_repo(repo)}/issues/{int(number)}/labels/{quote(label, safe='')}"
        try:
            await self._rest.request("DELETE", path, endpoint="DELETE " + ISSUE + "/labels/{name}")
        except GitHubNotFound:
            pass  # GitHub answers 404 when the label is absent: the wanted state already holds

    async def comment(self, repo: str, number: int, body: str) -> IssueComment:
        """Comment on an issue or pull request."""
        response = await self._rest.request(
            "POST",
            f"/repos/{check_repo(repo)}/issues/{int(number)}/comments",
            endpoint="POST " + ISSUE + "/comments",
            json={"body": body},
        )
        return IssueComment.model_validate(response.data)

    async def edit_comment(self, repo: str, comment_id: int, body: str) -> IssueComment:
        """Replace the body of an issue or pull request comment."""
        response = await self._rest.request(
            "PATCH",
            f"/repos/{check_repo(repo)}/issues/comments/{int(comment_id)}",
            endpoint="PATCH /repos/{owner}/{repo}/issues/comments/{id}",
            json={"body": body},
        )
        return IssueComment.model_validate(response.data)

    async def close_issue(self, repo: str, number: int, *, reason: str = "completed") -> Issue:
        """Close an issue with ``state_reason`` ``completed`` or ``not_planned``."""
        response = await self._rest.request(
            "PATCH",
            f"/repos/{check_repo(repo)}/issues/{int(number)}",
            endpoint="PATCH " + ISSUE,
            json={"state": "closed", "state_reason": reason},
        )
        return Issue.model_validate(response.data)

    async def find_pull_request(
        self, repo: str, head_branch: str, *, state: str = "open"
    ) -> PullRequest | None:
        """The pull request from ``head_branch`` of this repository, if any.

        GitHub silently ignores a ``head`` without ``owner:`` and returns every PR, so the
        owner is always added (and the answer checked against the branch anyway).
        """
        owner = check_repo(repo).split("/", 1)[0]
        head = head_branch if ":" in head_branch else f"{owner}:{head_branch}"
        response = await self._rest.request(
            "GET",
            f"/repos/{repo}/pulls",
            endpoint="GET " + PULLS,
            params={"head": head, "state": state, "per_page": MAX_PER_PAGE},
        )
        for item in response.data:
            pr = PullRequest.model_validate(item)
            if pr.head.label == head or (not pr.head.label and pr.head.ref == head_branch):
                return pr
        return None

    async def update_pull_request(self, repo: str, number: int, **fields: Any) -> PullRequest:
        """PATCH a pull request: ``title``, ``body``, ``state``, ``base``."""
        response = await self._rest.request(
            "PATCH",
            f"/repos/{check_repo(repo)}/pulls/{int(number)}",
            endpoint="PATCH " + PULLS + "/{number}",
            json=fields,
        )
        return PullRequest.model_validate(response.data)

    async def open_or_update_pull_request(
        self, repo: str, *, head: str, base: str, title: str, body: str, draft: bool = False
    ) -> PullRequestResult:
        """Open a pull request from ``head`` into ``base``, or update the open one.

        A follow-up run pushes to the same branch, so "A pull request already exists" is
        the normal case then: the existing PR gets the new title and body.

        Raises:
            NoCommitsBetween: the branch has nothing over ``base``.
        """
        payload = {"title": title, "head": head, "base": base, "body": body, "draft": draft}
        try:
            response = await self._rest.request(
                "POST", f"/repos/{check_repo(repo)}/pulls", endpoint="POST " + PULLS, json=payload
            )
        except PullRequestExists:
            existing = await self.find_pull_request(repo, head)
            if existing is None:  # it was closed between the two calls
                raise
            updated = await self.update_pull_request(repo, existing.number, title=title, body=body)
            return PullRequestResult(updated, created=False)
        return PullRequestResult(PullRequest.model_validate(response.data), created=True)

    async def _all_pages(self, first: Any, endpoint: str) -> list[Any]:
        """The items of ``first`` and of every page its ``Link: rel="next"`` leads to."""
        items: list[Any] = list(first.data)
        next_url = first.links.get("next")
        for _ in range(MAX_PAGES - 1):
            if not next_url:
                break
            page = await self._rest.request("GET", next_url, endpoint=endpoint)
            items.extend(page.data)
            next_url = page.links.get("next")
        return items
