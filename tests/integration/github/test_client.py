"""GitHubClient against the fake GitHub over real HTTP."""

from __future__ import annotations

import pytest

from claude_cluster.github import (
    GitHubAuthError,
    GitHubClient,
    GitHubNotFound,
    GitHubRateLimited,
    NoCommitsBetween,
    PersonalToken,
)
from tests.fakes.github_api import FakeGitHub
from tests.integration.github.conftest import REPO, TOKEN


async def test_get_repo_on_github_and_on_enterprise_paths(fake_github: FakeGitHub) -> None:
    for base in (fake_github.url, fake_github.ghes_url + "/"):
        async with GitHubClient(PersonalToken(TOKEN), base_url=base) as gh:
            repo = await gh.get_repo(REPO)
            assert (repo.full_name, repo.default_branch) == (REPO, "main")
            assert repo.clone_url == "https://github.com/octo/app.git"
    assert fake_github.requests[-1]["path"] == "/repos/octo/app"


async def test_unknown_token_and_unknown_repo(fake_github: FakeGitHub, client) -> None:
    async with GitHubClient(PersonalToken("ghp_wrong"), base_url=fake_github.url) as gh:
        with pytest.raises(GitHubAuthError):
            await gh.get_repo(REPO)
    with pytest.raises(GitHubNotFound):
        await client.get_repo("octo/missing")


async def test_listing_follows_pagination_past_100_issues(fake_github: FakeGitHub, client):
    fake_github.create_issues(REPO, 230, labels=["claude-code"])
    fake_github.create_issues(REPO, 5, labels=["bug"])
    listing = await client.list_labelled_open_issues(REPO, ["claude-code"])
    assert len(listing.issues) == 230
    assert {i.number for i in listing.issues} == set(range(1, 231))
    pages = [r["query"].get("page") for r in fake_github.requests if r["path"].endswith("/issues")]
    assert pages == [None, "2", "3"]  # the first request, then the Link rel="next" URLs
    assert fake_github.requests[0]["query"]["labels"] == "claude-code"


async def test_several_labels_mean_any_of_them(fake_github: FakeGitHub, client) -> None:
    fake_github.create_issue(REPO, "a", labels=["claude-code"], deliver=False)
    fake_github.create_issue(REPO, "b", labels=["claude-code-urgent", "bug"], deliver=False)
    fake_github.create_issue(REPO, "c", labels=["bug"], deliver=False)
    listing = await client.list_labelled_open_issues(REPO, ["claude-code", "claude-code-urgent"])
    assert sorted(i.title for i in listing.issues) == ["a", "b"]
    assert "labels" not in fake_github.requests[-1]["query"]  # GitHub would AND them


async def test_etag_makes_an_unchanged_listing_a_free_304(fake_github: FakeGitHub, client):
    issue = fake_github.create_issue(REPO, "a", labels=["claude-code"], deliver=False)
    first = await client.list_labelled_open_issues(REPO, ["claude-code"])
    assert first.etag and not first.not_modified
    remaining = client.rate_limit.remaining
    again = await client.list_labelled_open_issues(REPO, ["claude-code"], etag=first.etag)
    assert again.not_modified and again.issues == ()
    assert client.rate_limit.remaining == remaining  # a 304 costs nothing
    assert fake_github.requests[-1]["if_none_match"] == first.etag
    fake_github.label_issue(REPO, issue["number"], "bug", deliver=False)
    changed = await client.list_labelled_open_issues(REPO, ["claude-code"], etag=first.etag)
    assert not changed.not_modified and changed.issues[0].label_names == ("claude-code", "bug")


async def test_pull_requests_in_issue_listings_are_marked(fake_github, client) -> None:
    result = await client.open_or_update_pull_request(
        REPO, head="feature", base="main", title="t", body="b"
    )
    await client.add_labels(REPO, result.pull_request.number, ["claude-code"])
    listing = await client.list_labelled_open_issues(REPO, ["claude-code"])
    assert [i.is_pull_request for i in listing.issues] == [True]


async def test_rate_limit_headers_and_metrics_hook(fake_github: FakeGitHub) -> None:
    calls: list[tuple[str, int, int | None]] = []
    async with GitHubClient(
        PersonalToken(TOKEN), base_url=fake_github.url, on_api_call=lambda *a: calls.append(a)
    ) as gh:
        await gh.get_repo(REPO)
        with pytest.raises(GitHubNotFound):
            await gh.get_issue(REPO, 99)
        assert gh.rate_limit is not None and gh.rate_limit.limit == 5000
    assert calls == [
        ("GET /repos/{owner}/{repo}", 200, 4999),
        ("GET /repos/{owner}/{repo}/issues/{number}", 404, 4998),
    ]


async def test_exhausted_rate_limit_is_a_typed_error(fake_github: FakeGitHub, client) -> None:
    fake_github.set_remaining(0, reset_in=90)
    with pytest.raises(GitHubRateLimited) as caught:
        await client.get_repo(REPO)
    assert not caught.value.secondary
    assert 80 <= caught.value.retry_after <= 92
    assert client.rate_limit.remaining == 0


@pytest.mark.parametrize(("status", "retry_after", "wait"), [(403, 7, 7), (429, None, 60)])
async def test_secondary_rate_limit(fake_github, client, status, retry_after, wait) -> None:
    fake_github.secondary_limit(retry_after=retry_after, status=status)
    with pytest.raises(GitHubRateLimited) as caught:
        await client.get_repo(REPO)
    assert caught.value.secondary and caught.value.retry_after == wait
    assert (await client.get_repo(REPO)).full_name == REPO  # only the next call was limited


async def test_labels_comments_and_closing(fake_github: FakeGitHub, client) -> None:
    number = fake_github.create_issue(REPO, "a", labels=["claude-code"], deliver=False)["number"]
    labels = await client.add_labels(REPO, number, ["claude-code-assigned", "a b/c"])
    assert labels == ("claude-code", "claude-code-assigned", "a b/c")
    await client.remove_label(REPO, number, "a b/c")  # URL-encoded name
    await client.remove_label(REPO, number, "never-there")  # 404 from GitHub: fine
    assert fake_github.labels(REPO, number) == ["claude-code", "claude-code-assigned"]
    comment = await client.comment(REPO, number, "Started")
    assert comment.body == "Started" and comment.user.login == "octocat"
    assert fake_github.comments(REPO, number)[0]["body"] == "Started"
    closed = await client.close_issue(REPO, number)
    assert (closed.state, closed.state_reason) == ("closed", "completed")


async def test_issue_with_its_most_recent_comments(fake_github: FakeGitHub, client) -> None:
    number = fake_github.create_issue(REPO, "long thread", deliver=False)["number"]
    for i in range(150):
        fake_github.comment(REPO, number, f"comment {i + 1}", deliver=False)
    details = await client.get_issue(REPO, number, recent_comments=10)
    assert details.issue.comments == 150
    assert [c.body for c in details.comments] == [f"comment {i}" for i in range(141, 151)]
    short = await client.get_issue(
        REPO, fake_github.create_issue(REPO, "x", deliver=False)["number"]
    )
    assert short.comments == ()


async def test_open_then_update_the_same_pull_request(fake_github: FakeGitHub, client) -> None:
    first = await client.open_or_update_pull_request(
        REPO, head="claude/issue-1-fix", base="main", title="Fix", body="v1", draft=True
    )
    assert first.created and first.pull_request.draft
    assert first.pull_request.head.label == "octo:claude/issue-1-fix"
    second = await client.open_or_update_pull_request(
        REPO, head="claude/issue-1-fix", base="main", title="Fix (2)", body="v2"
    )
    assert not second.created
    assert second.pull_request.number == first.pull_request.number
    assert fake_github.pull_requests(REPO)[0]["body"] == "v2"
    assert len(fake_github.pull_requests(REPO)) == 1


async def test_find_pull_request_always_sends_the_owner(fake_github: FakeGitHub, client):
    for head in ("one", "two"):
        await client.open_or_update_pull_request(REPO, head=head, base="main", title=head, body="")
    found = await client.find_pull_request(REPO, "two")
    assert found is not None and found.title == "two"
    assert fake_github.requests[-1]["query"]["head"] == "octo:two"
    assert await client.find_pull_request(REPO, "three") is None


async def test_no_commits_between_is_a_typed_error(fake_github: FakeGitHub, client) -> None:
    fake_github.mark_branch_empty(REPO, "claude/issue-2-empty")
    with pytest.raises(NoCommitsBetween, match="No commits between main and claude/issue-2"):
        await client.open_or_update_pull_request(
            REPO, head="claude/issue-2-empty", base="main", title="t", body="b"
        )


async def test_closed_pull_request_is_not_reused(fake_github: FakeGitHub, client) -> None:
    first = await client.open_or_update_pull_request(
        REPO, head="b", base="main", title="t", body=""
    )
    fake_github.close_pull_request(REPO, first.pull_request.number, deliver=False)
    second = await client.open_or_update_pull_request(
        REPO, head="b", base="main", title="t", body=""
    )
    assert second.created and second.pull_request.number != first.pull_request.number
