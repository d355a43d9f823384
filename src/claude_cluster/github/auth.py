"""Credentials for GitHub: a personal access token or a GitHub App installation.

Both hand out two things: the token the coordinator's own API calls use
(:meth:`TokenProvider.api_token`) and a short-lived token handed to an agent for one push
and pull request (:meth:`TokenProvider.installation_token`). With an App that is a real
installation token (GitHub: "will expire after 1 hour"), minted with an RS256 JWT and
refreshed before it expires; with a personal token it is the token itself, with no expiry.

Tokens are never logged and never appear in ``repr``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import httpx

from claude_cluster.errors import ConfigError
from claude_cluster.github.errors import GitHubUnavailable, error_for_response

DEFAULT_API_URL = "https://api.github.com"
#: refresh an installation token this long before GitHub expires it
DEFAULT_REFRESH_MARGIN = 300.0
#: GitHub refuses app JWTs valid for more than 10 minutes; stay under it
_JWT_LIFETIME = 540
#: backdate ``iat`` for clock drift between us and GitHub, as GitHub's docs advise
_JWT_BACKDATE = 60

API_HEADERS = {
    "Accept": "application/vnd.github+json",
    "X-GitHub-Api-Version": "2022-11-28",
    "User-Agent": "claude-cluster",
}


class TokenProvider(Protocol):
    """Where GitHub tokens come from."""

    async def api_token(self) -> str:
        """The token for the coordinator's own API calls."""
        ...

    async def installation_token(
        self, *, repositories: Iterable[str] = (), permissions: Mapping[str, str] | None = None
    ) -> tuple[str, datetime | None]:
        """A token for an agent's push and pull request, and when it expires (None: never)."""
        ...


class PersonalToken:
    """A personal access token (``GITHUB_TOKEN``): used as is, never expires."""

    def __init__(self, token: str) -> None:
        if not token.strip():
            raise ConfigError("GITHUB_TOKEN is empty")
        self._token = token.strip()

    def __repr__(self) -> str:
        return "PersonalToken(***)"

    async def api_token(self) -> str:
        return self._token

    async def installation_token(
        self, *, repositories: Iterable[str] = (), permissions: Mapping[str, str] | None = None
    ) -> tuple[str, datetime | None]:
        # A PAT cannot be narrowed to a repository; it is handed over as it is.
        return self._token, None


class GitHubApp:
    """A GitHub App installation: mints and caches installation tokens.

    Args:
        app_id: the App's id (or client id); the JWT's ``iss``.
        private_key: the App's private key, PEM text (literal ``\\n`` are accepted, as
            environment variables often carry them) or a path to a PEM file.
        installation_id: the installation on the account that owns the repositories.
        base_url: the REST API root (GitHub Enterprise: ``https://HOST/api/v3``).
        http: an httpx client to reuse; one is created (and closed by :meth:`aclose`)
            otherwise.
        refresh_margin: seconds before expiry at which a cached token is replaced.
    """

    def __init__(
        self,
        app_id: int | str,
        private_key: str,
        installation_id: int,
        *,
        base_url: str = DEFAULT_API_URL,
        http: httpx.AsyncClient | None = None,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN,
    ) -> None:
        self.app_id = str(app_id)
        self.installation_id = int(installation_id)
        self._private_key = load_private_key(private_key)
        self._base_url = base_url.rstrip("/")
        self._http = http or httpx.AsyncClient(timeout=30.0)
        self._owns_http = http is None
        self._refresh_margin = refresh_margin
        #: (repositories, permissions) → (token, expiry)
        self._cache: dict[
            tuple[frozenset[str], tuple[tuple[str, str], ...]], tuple[str, datetime]
        ] = {}
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"GitHubApp(app_id={self.app_id}, installation_id={self.installation_id})"

    def app_jwt(self, now: float | None = None) -> str:
        """A JWT that authenticates as the App itself (RS256, valid 9 minutes)."""
        import jwt  # pyjwt[crypto]: only the App path needs it

        issued = int(time.time() if now is None else now) - _JWT_BACKDATE
        claims = {"iat": issued, "exp": issued + _JWT_BACKDATE + _JWT_LIFETIME, "iss": self.app_id}
        return jwt.encode(claims, self._private_key, algorithm="RS256")

    async def api_token(self) -> str:
        token, _ = await self.installation_token()
        return token

    async def installation_token(
        self, *, repositories: Iterable[str] = (), permissions: Mapping[str, str] | None = None
    ) -> tuple[str, datetime | None]:
        """An installation token valid for at least ``refresh_margin`` more seconds.

        Args:
            repositories: repository names (``name`` or ``owner/name``) to narrow the
                token to; empty means every repository of the installation.
            permissions: GitHub App permissions to narrow the token to (``{"contents":
                "write"}``); None means every permission of the installation.
        """
        names = frozenset(name.rsplit("/", 1)[-1] for name in repositories)
        narrowed = tuple(sorted((permissions or {}).items()))
        key = (names, narrowed)
        async with self._lock:  # one refresh at a time, the others reuse its result
            cached = self._cache.get(key)
            if cached and cached[1].timestamp() - time.time() > self._refresh_margin:
                return cached
            fresh = await self._mint(sorted(names), dict(narrowed))
            self._cache[key] = fresh
            return fresh

    async def installation_permissions(self) -> dict[str, str]:
        """What the installation was granted (``{"contents": "write", ...}``)."""
        url = f"{self._base_url}/app/installations/{self.installation_id}"
        headers = {**API_HEADERS, "Authorization": f"Bearer {self.app_jwt()}"}
        try:
            response = await self._http.get(url, headers=headers)
        except httpx.HTTPError as exc:
            raise GitHubUnavailable(status=0, detail=type(exc).__name__) from exc
        data = response.json() if response.content else {}
        if response.status_code != 200:
            raise error_for_response(response.status_code, response.headers, data)
        return {str(k): str(v) for k, v in (data.get("permissions") or {}).items()}

    async def _mint(
        self, repositories: list[str], permissions: dict[str, str]
    ) -> tuple[str, datetime]:
        url = f"{self._base_url}/app/installations/{self.installation_id}/access_tokens"
        headers = {**API_HEADERS, "Authorization": f"Bearer {self.app_jwt()}"}
        body: dict[str, object] = {}
        if repositories:
            body["repositories"] = repositories
        if permissions:
            body["permissions"] = permissions
        try:
            response = await self._http.post(url, headers=headers, json=body or None)
        except httpx.HTTPError as exc:
            raise GitHubUnavailable(status=0, detail=type(exc).__name__) from exc
        data = response.json() if response.content else {}
        if response.status_code != 201:
            raise error_for_response(response.status_code, response.headers, data)
        expires_at = datetime.fromisoformat(str(data["expires_at"])).astimezone(UTC)
        return str(data["token"]), expires_at

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()


def load_private_key(value: str) -> str:
    """PEM text from the value itself or from the file it names."""
    text = value.strip().replace("\\n", "\n")
    if not text.startswith("-----BEGIN"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError("GITHUB_APP_PRIVATE_KEY is neither PEM text nor a readable file")
        text = path.read_text(encoding="utf-8").strip()
    return text + "\n"


def token_provider(
    *,
    token: str | None = None,
    app_id: int | str | None = None,
    private_key: str | None = None,
    installation_id: int | None = None,
    base_url: str = DEFAULT_API_URL,
) -> PersonalToken | GitHubApp:
    """Pick the credentials from settings: a complete App configuration wins over a token.

    Raises:
        ConfigError: naming the missing variables when neither is complete.
    """
    app_parts = {
        "GITHUB_APP_ID": app_id,
        "GITHUB_APP_PRIVATE_KEY": private_key,
        "GITHUB_APP_INSTALLATION_ID": installation_id,
    }
    given = {name for name, v in app_parts.items() if v not in (None, "")}
    if given and given != set(app_parts):
        missing = ", ".join(sorted(set(app_parts) - given))
        raise ConfigError(f"GitHub App configuration is incomplete: set {missing}")
    if given:
        assert app_id is not None and private_key and installation_id is not None
        return GitHubApp(app_id, private_key, installation_id, base_url=base_url)
    if token:
        return PersonalToken(token)
    raise ConfigError("no GitHub credentials: set GITHUB_TOKEN or the GITHUB_APP_* variables")
