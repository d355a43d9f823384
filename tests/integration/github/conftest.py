"""A fresh fake GitHub per test (real HTTP on loopback) and a client logged in to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from claude_cluster.github import GitHubClient, PersonalToken
from tests.fakes.github_api import FakeGitHub

TOKEN = "ghp_integration_test_token"
REPO = "octo/app"


@pytest.fixture
def fake_github() -> Iterator[FakeGitHub]:
    with FakeGitHub() as fake:
        fake.add_token(TOKEN, login="octocat")
        fake.add_repo(REPO)
        yield fake


@pytest.fixture
async def client(fake_github: FakeGitHub) -> AsyncIterator[GitHubClient]:
    async with GitHubClient(PersonalToken(TOKEN), base_url=fake_github.url) as gh:
        yield gh
