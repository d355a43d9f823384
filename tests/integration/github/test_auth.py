"""Credentials: GitHub App installation tokens minted against the fake, and the PAT path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from claude_cluster.errors import ConfigError
from claude_cluster.github import (
    GitHubApp,
    GitHubAuthError,
    GitHubClient,
    GitHubNotFound,
    PersonalToken,
    token_provider,
)
from tests.fakes.github_api import FakeGitHub
from tests.integration.github.conftest import REPO
from tests.support.keys import rsa_keypair

APP_ID = 123456
INSTALLATION = 7890


@pytest.fixture(scope="module")
def keys() -> tuple[str, str]:
    return rsa_keypair()


async def test_app_mints_refreshes_and_uses_installation_tokens(
    fake_github: FakeGitHub, keys: tuple[str, str]
) -> None:
    private, public = keys
    fake_github.add_app(APP_ID, public, INSTALLATION)
    app = GitHubApp(APP_ID, private, INSTALLATION, base_url=fake_github.url)
    try:
        token, expires = await app.installation_token()
        assert token.startswith("ghs_")
        assert expires is not None
        assert timedelta(minutes=55) < expires - datetime.now(UTC) <= timedelta(hours=1)
        assert (await app.installation_token())[0] == token  # cached while far from expiry
        assert len(fake_github.installation_tokens) == 1

        async with GitHubClient(app, base_url=fake_github.url) as gh:  # the API accepts it
            assert (await gh.get_repo(REPO)).full_name == REPO
        assert len(fake_github.installation_tokens) == 1  # the client reused the cached one

        narrowed, _ = await app.installation_token(repositories=["octo/app"])
        assert narrowed != token
        assert fake_github.installation_tokens[narrowed]["repositories"] == ["app"]
    finally:
        await app.aclose()


async def test_app_refreshes_a_token_close_to_expiry(fake_github, keys) -> None:
    private, public = keys
    fake_github.add_app(APP_ID, public, INSTALLATION)
    # a margin longer than the token's life: every call needs a fresh token
    app = GitHubApp(APP_ID, private, INSTALLATION, base_url=fake_github.url, refresh_margin=4000)
    try:
        first, _ = await app.installation_token()
        second, _ = await app.installation_token()
        assert first != second
    finally:
        await app.aclose()


async def test_app_jwt_signed_with_another_key_is_refused(fake_github, keys) -> None:
    _, public = keys
    other_private, _ = rsa_keypair()
    fake_github.add_app(APP_ID, public, INSTALLATION)
    app = GitHubApp(APP_ID, other_private, INSTALLATION, base_url=fake_github.url)
    try:
        with pytest.raises(GitHubAuthError):
            await app.installation_token()
    finally:
        await app.aclose()


async def test_unknown_installation_is_not_found(fake_github, keys) -> None:
    private, public = keys
    fake_github.add_app(APP_ID, public, INSTALLATION)
    app = GitHubApp(APP_ID, private, 1, base_url=fake_github.url)
    try:
        with pytest.raises(GitHubNotFound):
            await app.installation_token()
    finally:
        await app.aclose()


async def test_private_key_from_a_file_or_with_escaped_newlines(tmp_path: Path, keys) -> None:
    private, _ = keys
    pem_file = tmp_path / "app.pem"
    pem_file.write_text(private)
    for value in (str(pem_file), private.replace("\n", "\\n")):
        app = GitHubApp(APP_ID, value, INSTALLATION)
        assert app.app_jwt().count(".") == 2
        assert "PRIVATE" not in repr(app)
        await app.aclose()
    with pytest.raises(ConfigError, match="GITHUB_APP_PRIVATE_KEY"):
        GitHubApp(APP_ID, str(tmp_path / "missing.pem"), INSTALLATION)


async def test_personal_token_is_handed_out_as_is() -> None:
    pat = PersonalToken("ghp_abc")
    assert await pat.installation_token() == ("ghp_abc", None)
    assert await pat.api_token() == "ghp_abc"
    assert "ghp_abc" not in repr(pat)


def test_token_provider_picks_and_names_what_is_missing(keys) -> None:
    private, _ = keys
    assert isinstance(token_provider(token="ghp_x"), PersonalToken)
    app = token_provider(token="ghp_x", app_id=1, private_key=private, installation_id=2)
    assert isinstance(app, GitHubApp)
    with pytest.raises(ConfigError, match="GITHUB_APP_INSTALLATION_ID, GITHUB_APP_PRIVATE_KEY"):
        token_provider(app_id=1)
    with pytest.raises(ConfigError, match="no GitHub credentials"):
        token_provider()
