"""The HTTP layer's own guarantees, with httpx's MockTransport (no network)."""

from __future__ import annotations

import httpx
import pytest

import claude_cluster.github as github
from claude_cluster.github import GitHubClient, GitHubUnavailable, PersonalToken
from claude_cluster.github._rest import check_repo, parse_link_header

API = "https://ghe.example.com/api/v3"


def client_with(handler, calls=None) -> GitHubClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    hook = (lambda *a: calls.append(a)) if calls is not None else None
    return GitHubClient(PersonalToken("ghp_secret"), base_url=API, http=http, on_api_call=hook)


async def test_sends_githubs_headers_and_the_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"full_name": "o/r", "default_branch": "trunk"})

    repo = await client_with(handler).get_repo("o/r")
    assert repo.default_branch == "trunk"
    (request,) = seen
    assert str(request.url) == API + "/repos/o/r"
    assert request.headers["authorization"] == "Bearer ghp_secret"
    assert request.headers["accept"] == "application/vnd.github+json"
    assert request.headers["x-github-api-version"] == "2022-11-28"


async def test_a_link_off_the_api_host_never_gets_the_token() -> None:
    requested: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requested.append(str(request.url))
        link = '<https://evil.example.net/steal?page=2>; rel="next"'
        return httpx.Response(200, json=[], headers={"Link": link})

    with pytest.raises(GitHubUnavailable, match="refusing to follow"):
        await client_with(handler).list_labelled_open_issues("o/r")
    assert len(requested) == 1


async def test_unreachable_github_is_retryable_and_counted() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    calls: list[tuple] = []
    with pytest.raises(GitHubUnavailable) as caught:
        await client_with(handler, calls).get_repo("o/r")
    assert caught.value.retryable
    assert calls == [("GET /repos/{owner}/{repo}", 0, None)]


async def test_a_failing_metrics_hook_does_not_fail_the_call() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"full_name": "o/r"})

    def hook(*args: object) -> None:
        raise ValueError("metrics broke")

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    gh = GitHubClient(PersonalToken("t"), base_url=API, http=http, on_api_call=hook)
    assert (await gh.get_repo("o/r")).full_name == "o/r"


@pytest.mark.parametrize("name", ["o", "o/r/x", "../r", "o/..", "o/r?x=1", "o r/x", ""])
def test_repository_names_that_could_escape_the_url_path(name: str) -> None:
    with pytest.raises(ValueError, match="owner/name"):
        check_repo(name)


def test_link_header() -> None:
    value = '<https://a/x?page=2>; rel="next", <https://a/x?page=5>; rel="last"'
    assert parse_link_header(value) == {"next": "https://a/x?page=2", "last": "https://a/x?page=5"}
    assert parse_link_header(None) == {}


def test_all_is_complete() -> None:
    public = {name for name in vars(github) if not name.startswith("_")}
    modules = {
        "auth",
        "client",
        "errors",
        "models",
        "poller",
        "pr",
        "progress",
        "repos",
        "trust",
        "webhooks",
    }
    assert set(github.__all__) == public - modules
