"""The trust gate against the fake GitHub: permissions looked up once a minute, failures
fail closed, associations and allow-listed logins decided without a call, and an ignored
trigger logged once per actor however often it is tried."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from claude_cluster.coordinator.github_trust import PERMISSION_TTL, ActorTrust
from claude_cluster.github import GitHubClient, PersonalToken, RepositoryConfig, User
from tests.fakes.github_api import FakeGitHub
from tests.integration.github.conftest import REPO

pytestmark = pytest.mark.timeout(30)

CFG = RepositoryConfig(full_name=REPO, trusted_logins=("deploy-bot[bot]",))


def permission_calls(fake: FakeGitHub) -> int:
    return sum(1 for r in fake.requests if r["path"].endswith("/permission"))


async def test_permissions_are_looked_up_cached_and_fail_closed(
    fake_github: FakeGitHub, client: GitHubClient
) -> None:
    fake_github.add_collaborator(REPO, "writer", "write")
    fake_github.add_collaborator(REPO, "triager", "triage")
    now = [1000.0]
    trust = ActorTrust(client, clock=lambda: now[0])
    assert (await trust.by_permission(CFG, User(login="writer"))).trusted
    assert not (await trust.by_permission(CFG, User(login="triager"))).trusted
    assert not (await trust.by_permission(CFG, User(login="stranger"))).trusted
    assert not (await trust.by_permission(CFG, None)).trusted
    assert (await trust.by_permission(CFG, User(login="Deploy-Bot[bot]"))).trusted  # no call
    assert permission_calls(fake_github) == 3

    # a removed collaborator keeps their cached trust for at most PERMISSION_TTL
    fake_github.repos[REPO].collaborators.pop("writer")
    assert (await trust.by_permission(CFG, User(login="writer"))).trusted
    now[0] += PERMISSION_TTL + 1
    assert not (await trust.by_permission(CFG, User(login="writer"))).trusted
    assert permission_calls(fake_github) == 4

    # GitHub refusing the lookup (bad credentials) means untrusted, and is not cached
    async with GitHubClient(PersonalToken("ghp_wrong"), base_url=fake_github.url) as bad:
        verdict = await ActorTrust(bad).by_permission(CFG, User(login="writer"))
    assert not verdict.trusted and "could not be read" in verdict.reason


def test_associations_and_logging_once(fake_github: FakeGitHub) -> None:
    trust = ActorTrust(GitHubClient(PersonalToken("unused"), base_url=fake_github.url))
    for association, trusted in [
        ("OWNER", True),
        ("MEMBER", True),
        ("COLLABORATOR", True),
        ("CONTRIBUTOR", False),
        ("FIRST_TIME_CONTRIBUTOR", False),
        ("NONE", False),
        (None, False),
    ]:
        verdict = trust.by_association(CFG, User(login="someone"), association)
        assert verdict.trusted is trusted, association
    assert trust.by_association(CFG, User(login="deploy-bot[bot]"), "NONE").trusted
    with capture_logs() as logs:
        for _ in range(5):
            trust.ignored(CFG, "issue_comment.created", "untrusted", "mallory")
        trust.ignored(CFG, "issue_comment.created", "untrusted", "eve")
    assert [entry["subject"] for entry in logs] == ["mallory", "eve"]
