"""The HTTP layer under :class:`~claude_cluster.github.client.GitHubClient`, on githubkit.

One method, :meth:`RestTransport.request`, sends every call through githubkit's async
``GitHub.arequest``: githubkit sets the base URL (GitHub Enterprise included), GitHub's
``Accept`` header, redirects and timeouts; this layer adds the API version header and the
token (from our :class:`~claude_cluster.github.auth.TokenProvider`, so a GitHub App's
installation token is refreshed by our own code, which also hands tokens to agents),
records the rate-limit headers, reports the call to the metrics hook, and turns every
non-2xx/304 answer into a typed error.

githubkit is configured so that it does not get in the way of what callers decide:

- ``auto_retry=False``: this layer never retries; a caller that gets a retryable error
  decides when to come back (the poller sleeps until the reset, a run is requeued).
- ``http_cache=False``: conditional requests are ours. With githubkit's (hishel) cache a
  ``304`` would come back as the cached ``200``, and the poller could no longer tell
  "nothing changed" (which costs no rate limit) from a fresh listing.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from githubkit import GitHub
from githubkit.auth.base import BaseAuthStrategy
from githubkit.exception import RequestError, RequestFailed

from claude_cluster.github.auth import API_HEADERS, TokenProvider
from claude_cluster.github.errors import GitHubUnavailable, error_for_response
from claude_cluster.logging import get_logger

log = get_logger(__name__)

#: ``on_api_call(endpoint, status, remaining)``: endpoint is a route template such as
#: ``GET /repos/{owner}/{repo}/issues`` (bounded cardinality, fit for a metric label);
#: status is 0 when GitHub could not be reached.
OnApiCall = Callable[[str, int, int | None], None]

_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="([^"]+)"')
_REPO = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


def check_repo(full_name: str) -> str:
    """Refuse anything but ``owner/name``: the value goes into URL paths."""
    if not _REPO.match(full_name) or ".." in full_name:
        raise ValueError(f"not an owner/name repository: {full_name!r}")
    return full_name


def parse_link_header(value: str | None) -> dict[str, str]:
    """``Link: <url>; rel="next", <url>; rel="last"`` → ``{"next": url, "last": url}``."""
    return {rel: url for url, rel in _LINK.findall(value or "")}


@dataclass(frozen=True)
class RateLimit:
    """The ``X-RateLimit-*`` headers of the latest answer."""

    limit: int
    remaining: int
    reset: float  #: epoch seconds at which ``remaining`` is restored
    resource: str = "core"

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimit | None:
        try:
            return cls(
                limit=int(headers["x-ratelimit-limit"]),
                remaining=int(headers["x-ratelimit-remaining"]),
                reset=float(headers["x-ratelimit-reset"]),
                resource=headers.get("x-ratelimit-resource", "core"),
            )
        except (KeyError, ValueError):
            return None


@dataclass(frozen=True)
class RestResponse:
    status: int
    data: Any  #: decoded JSON; None for 204 and 304
    headers: httpx.Headers

    @property
    def not_modified(self) -> bool:
        return self.status == 304

    @property
    def etag(self) -> str | None:
        etag = self.headers.get("etag")
        return str(etag) if etag else None

    @property
    def links(self) -> dict[str, str]:
        return parse_link_header(self.headers.get("link"))


class _ProviderAuth(httpx.Auth):
    """Bearer token from our provider, fetched per request (an App token may rotate)."""

    def __init__(self, provider: TokenProvider) -> None:
        self._provider = provider

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, Any, None]:
        raise RuntimeError("the GitHub client is async only")

    async def async_auth_flow(self, request: httpx.Request) -> AsyncIterator[httpx.Request]:  # type: ignore[override]
        request.headers["Authorization"] = f"Bearer {await self._provider.api_token()}"
        yield request


class _ProviderStrategy(BaseAuthStrategy):
    def __init__(self, provider: TokenProvider) -> None:
        self._flow = _ProviderAuth(provider)

    def get_auth_flow(self, github: Any) -> httpx.Auth:
        return self._flow


class _SharedTransport(httpx.AsyncBaseTransport):
    """One connection pool for every request: githubkit builds (and closes) an httpx
    client per request outside ``async with``, and closing a client closes its transport;
    this wrapper keeps the pool open until :meth:`RestTransport.aclose`."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        return None


class RestTransport:
    """Sends requests to the GitHub REST API with one token provider.

    Args:
        auth: where the bearer token comes from.
        base_url: API root, ``https://api.github.com`` or ``https://HOST/api/v3``.
        http: an httpx client whose transport to reuse (closed by the caller; tests pass
            one with a ``MockTransport``); a connection pool is created otherwise.
        on_api_call: metrics hook called after every request; its errors are logged and
            swallowed so metrics can never break a call.
    """

    def __init__(
        self,
        auth: TokenProvider,
        *,
        base_url: str,
        http: httpx.AsyncClient | None = None,
        on_api_call: OnApiCall | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # githubkit takes a transport, not a client: borrow the given client's
        inner = http._transport if http is not None else httpx.AsyncHTTPTransport()
        self._transport = inner
        self._owns_transport = http is None
        self._github = GitHub(
            _ProviderStrategy(auth),
            base_url=self.base_url + "/",
            user_agent=API_HEADERS["User-Agent"],
            timeout=timeout,
            follow_redirects=True,  # a renamed repository answers 301 (GET) or 307 (writes)
            async_transport=_SharedTransport(inner),
            http_cache=False,
            auto_retry=False,
        )
        self._on_api_call = on_api_call
        self.rate_limit: RateLimit | None = None

    async def aclose(self) -> None:
        if self._owns_transport:
            await self._transport.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        endpoint: str,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        etag: str | None = None,
    ) -> RestResponse:
        """Send one request; ``path`` is relative to the base URL or an absolute ``Link`` URL.

        Raises:
            GitHubError: a subclass naming what went wrong for every status but 2xx/304.
        """
        url = path if path.startswith(("http://", "https://")) else self.base_url + path
        if not url.startswith(self.base_url + "/"):
            # a Link header pointing elsewhere must not receive our token
            raise GitHubUnavailable(status=0, detail=f"refusing to follow {url!r} off the API")
        headers = dict(API_HEADERS)
        if etag:
            headers["If-None-Match"] = etag
        try:
            answer = await self._github.arequest(
                method, url, params=dict(params) if params else None, json=json, headers=headers
            )
            response = answer.raw_response
        except RequestFailed as exc:
            response = exc.response.raw_response
        except RequestError as exc:
            self._report(endpoint, 0, None)
            cause = exc.__cause__ or exc
            raise GitHubUnavailable(
                status=0, detail=f"{type(cause).__name__} on {endpoint}"
            ) from exc
        limit = RateLimit.from_headers(response.headers)
        if limit is not None:
            self.rate_limit = limit
        self._report(endpoint, response.status_code, limit.remaining if limit else None)
        data = _decode(response)
        if not (200 <= response.status_code < 300 or response.status_code == 304):
            log.info("github_call_failed", endpoint=endpoint, status=response.status_code)
            raise error_for_response(response.status_code, response.headers, data)
        return RestResponse(response.status_code, data, response.headers)

    def _report(self, endpoint: str, status: int, remaining: int | None) -> None:
        if self._on_api_call is None:
            return
        try:
            self._on_api_call(endpoint, status, remaining)
        except Exception:  # a metrics hook must never fail a GitHub call
            log.exception("github_metrics_hook_failed", endpoint=endpoint)


def _decode(response: httpx.Response) -> Any:
    if response.status_code in (204, 304) or not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text
