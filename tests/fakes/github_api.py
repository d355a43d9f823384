"""A fake GitHub: the REST subset the cluster uses, over real HTTP on 127.0.0.1, plus
signed webhook deliveries with GitHub's headers.

It copies what matters of GitHub's behaviour: JSON shapes, status codes, ``Location`` on
201, pagination (``per_page``/``page`` and the ``Link`` header), rate-limit headers on
every answer (and switches to answer 403/429 rate limited), ``ETag`` with 304 on
``If-None-Match`` (a 304 costs no rate limit), error bodies ``{"message",
"documentation_url", "status"}`` including the 422s for an existing PR and for a branch
without commits, a ``head`` without ``owner:`` silently ignored when listing PRs, 401 "Bad
credentials" for unknown tokens, and GitHub App installation tokens minted against an
RS256 JWT. The API is served both at the root (like api.github.com) and under
``/api/v3`` (like GitHub Enterprise Server).

Usage in an end-to-end test::

    from tests.fakes.github_api import FakeGitHub

    with FakeGitHub() as gh:                       # starts the server thread
        token = gh.add_token("ghp_test")           # a PAT the coordinator will use
        gh.add_repo("octo/app")
        gh.set_hook("http://127.0.0.1:8080/webhook/github", secret=b"s3cret")
        # coordinator settings: GITHUB_API_URL=gh.url, GITHUB_TOKEN=token, ...
        issue = gh.create_issue("octo/app", "Crash on empty input", deliver=False)
        gh.label_issue("octo/app", issue["number"], "claude-code")  # sends issues.labeled
        ...                                         # the coordinator opens a PR
        pr = gh.pull_requests("octo/app")[0]
        gh.submit_review("octo/app", pr["number"], "changes_requested", "Add a test")
        gh.merge_pull_request("octo/app", pr["number"])  # sends pull_request.closed merged
        assert gh.issue("octo/app", issue["number"])["state"] == "closed"

Actions (``create_issue``, ``label_issue``, ``comment``, ``submit_review``,
``merge_pull_request``, ...) change the state and, when a hook is set, deliver the matching
webhook synchronously from the calling thread: run the receiving server outside the test's
event loop (a thread or a process), or pass ``deliver=False`` and use ``adeliver``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import uvicorn
from fastapi import APIRouter, FastAPI, Request, Response

from tests.fakes import github_payloads as payloads

DOCS = "https://docs.github.com/rest"
PRIMARY_LIMIT = "API rate limit exceeded for user ID 1."
SECONDARY_LIMIT = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
)
RATE_LIMIT = 5000


class GitHubHTTPError(Exception):
    def __init__(self, status: int, message: str, errors: list[dict[str, Any]] | None = None):
        self.status, self.message, self.errors = status, message, errors


@dataclass
class Delivery:
    id: str
    url: str
    event: str
    body: bytes
    headers: dict[str, str]
    secret: bytes
    status_code: int | None = None  #: None: the receiver could not be reached
    response_text: str = ""


@dataclass
class FakeRepo:
    owner: str
    name: str
    id: int
    default_branch: str = "main"
    private: bool = False
    issues: dict[int, dict[str, Any]] = field(default_factory=dict)  # PRs are issues too
    pulls: dict[int, dict[str, Any]] = field(default_factory=dict)
    comments: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    reviews: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    next_number: int = 1
    empty_branches: set[str] = field(default_factory=set)
    #: whether the token's user may push (``permissions.push`` of GET /repos/{owner}/{repo})
    push: bool = True
    collaborators: dict[str, str] = field(default_factory=dict)  # login (lower) -> permission

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


@dataclass
class _Limiter:
    remaining: dict[str, int] = field(default_factory=dict)
    reset: int = field(default_factory=lambda: int(time.time()) + 3600)
    secondary: list[tuple[int, int | None]] = field(default_factory=list)  # (status, retry)


class FakeGitHub:
    """In-memory GitHub behind a real HTTP server. Thread-safe: the server thread and the
    test share ``self._lock``."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.tokens: dict[str, str] = {}  # token -> login
        self.installation_tokens: dict[str, dict[str, Any]] = {}  # token -> info
        self.apps: dict[str, str] = {}  # app id -> public key PEM
        self.members: dict[str, set[str]] = {}  # organisation (lower) -> member logins (lower)
        self.installations: dict[int, str] = {}  # installation id -> app id
        #: what every installation was granted (GET /app/installations/{id})
        self.installation_permissions: dict[str, str] = {
            "contents": "write",
            "issues": "write",
            "pull_requests": "write",
            "metadata": "read",
        }
        self.requests: list[dict[str, Any]] = []  # method, path, query, if_none_match
        self.deliveries: list[Delivery] = []
        #: every comment edit, in order: (comment id, new body)
        self.comment_edits: list[tuple[int, str]] = []
        self.hook: tuple[str, bytes] | None = None
        #: seconds every API call takes (a slow GitHub)
        self.latency = 0.0
        self.hook_id = 42_000_001
        self._limits = _Limiter()
        self._lock = threading.RLock()
        self._ids = 1000
        self._clock = 0  # orders updated_at even within one second
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # --- lifecycle --------------------------------------------------------------------
    def start(self) -> FakeGitHub:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(self._app(), log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake GitHub did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def ghes_url(self) -> str:
        """The same API under GitHub Enterprise Server's ``/api/v3`` prefix."""
        return self.url + "/api/v3"

    # --- setup --------------------------------------------------------------------------
    def add_token(self, token: str, login: str = "octocat") -> str:
        with self._lock:
            self.tokens[token] = login
        return token

    def add_repo(self, full_name: str, *, default_branch: str = "main", private: bool = False):
        owner, name = full_name.split("/")
        with self._lock:
            repo = FakeRepo(owner, name, self._next_id(), default_branch, private)
            self.repos[full_name.lower()] = repo
        return payloads.repository_json(self.url, repo)

    def add_collaborator(self, repo: str, login: str, permission: str = "write") -> None:
        """``login`` becomes a collaborator (author_association COLLABORATOR) with
        ``permission``: admin, maintain, write, triage or read."""
        with self._lock:
            self._repo(repo).collaborators[login.lower()] = permission

    def add_member(self, organisation: str, login: str) -> None:
        """``login`` joins the organisation that owns repositories (MEMBER, read)."""
        with self._lock:
            self.members.setdefault(organisation.lower(), set()).add(login.lower())

    def association(self, repo: str | FakeRepo, login: str) -> str:
        """``author_association`` as GitHub computes it for ``login`` on ``repo``."""
        with self._lock:
            r = repo if isinstance(repo, FakeRepo) else self._repo(repo)
            if login.lower() == r.owner.lower():
                return "OWNER"
            if login.lower() in self.members.get(r.owner.lower(), set()):
                return "MEMBER"
            if login.lower() in r.collaborators:
                return "COLLABORATOR"
            return "NONE"

    def permission(self, repo: str | FakeRepo, login: str) -> str:
        """What ``GET .../collaborators/{login}/permission`` answers."""
        with self._lock:
            r = repo if isinstance(repo, FakeRepo) else self._repo(repo)
            if login.lower() == r.owner.lower():
                return "admin"
            if login.lower() in r.collaborators:
                return r.collaborators[login.lower()]
            if login.lower() in self.members.get(r.owner.lower(), set()) or not r.private:
                return "read"
            return "none"

    def add_app(self, app_id: int | str, public_key_pem: str, installation_id: int) -> None:
        with self._lock:
            self.apps[str(app_id)] = public_key_pem
            self.installations[installation_id] = str(app_id)

    def set_hook(self, url: str | None, secret: bytes = b"") -> None:
        """Where actions deliver their webhooks (None: nowhere)."""
        self.hook = (url, secret) if url else None

    def mark_branch_empty(self, repo: str, branch: str) -> None:
        """Opening a PR from ``branch`` answers 422 "No commits between"."""
        with self._lock:
            self._repo(repo).empty_branches.add(branch)

    # --- rate-limit switches ------------------------------------------------------------
    def set_remaining(self, remaining: int, *, reset_in: int = 3600) -> None:
        """Every token has ``remaining`` calls left; 0 makes calls answer 403 rate limited."""
        with self._lock:
            for token in [*self.tokens, *self.installation_tokens]:
                self._limits.remaining[token] = remaining
            self._limits.reset = int(time.time()) + reset_in

    def secondary_limit(self, *, retry_after: int | None = 60, status: int = 403, times: int = 1):
        """The next ``times`` calls answer a secondary rate limit."""
        with self._lock:
            self._limits.secondary.extend([(status, retry_after)] * times)

    # --- reading state (tests) ----------------------------------------------------------
    def issue(self, repo: str, number: int) -> dict[str, Any]:
        with self._lock:
            return json.loads(json.dumps(self._repo(repo).issues[number]))

    def comments(self, repo: str, number: int) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._repo(repo).comments.get(number, []))

    def pull_requests(self, repo: str) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(json.dumps(p)) for p in self._repo(repo).pulls.values()]

    def labels(self, repo: str, number: int) -> list[str]:
        return [label["name"] for label in self.issue(repo, number)["labels"]]

    # --- actions (tests) that emit webhooks ---------------------------------------------
    def create_issue(
        self,
        repo: str,
        title: str,
        body: str | None = "",
        *,
        labels=(),
        user="octocat",
        deliver: bool = True,
    ) -> dict[str, Any]:
        with self._lock:
            r = self._repo(repo)
            number = self._take_number(r)
            issue = payloads.issue_json(
                self.url, r, number, title, body, self._now(), user, self.association(r, user)
            )
            issue["labels"] = [payloads.label_json(self.url, r, name) for name in labels]
            r.issues[number] = issue
            self._touch(issue)  # orders it for sort=updated
        self._emit(deliver, "issues", self._issues_payload(r, issue, "opened", user))
        return issue

    def create_issues(self, repo: str, count: int, *, labels=(), title="Issue") -> None:
        """Many issues at once, without webhooks (pagination tests)."""
        for i in range(count):
            self.create_issue(repo, f"{title} {i + 1}", labels=labels, deliver=False)

    def label_issue(self, repo: str, number: int, label: str, *, sender="octocat", deliver=True):
        with self._lock:
            r = self._repo(repo)
            self._add_labels(r, number, [label])
            issue = r.issues[number]
        extra = {"label": payloads.label_json(self.url, r, label)}
        self._emit(deliver, "issues", self._issues_payload(r, issue, "labeled", sender, extra))
        return issue

    def unlabel_issue(self, repo: str, number: int, label: str, *, sender="octocat", deliver=True):
        with self._lock:
            r = self._repo(repo)
            issue = r.issues[number]
            issue["labels"] = [x for x in issue["labels"] if x["name"] != label]
            self._touch(issue)
        extra = {"label": payloads.label_json(self.url, r, label)}
        self._emit(deliver, "issues", self._issues_payload(r, issue, "unlabeled", sender, extra))
        return issue

    def edit_issue(
        self, repo: str, number: int, *, title=None, body=None, sender="octocat", deliver=True
    ):
        with self._lock:
            r = self._repo(repo)
            issue = r.issues[number]
            changes = {}
            for key, value in (("title", title), ("body", body)):
                if value is not None:
                    changes[key] = {"from": issue[key]}
                    issue[key] = value
            self._touch(issue)
        extra = {"changes": changes}
        self._emit(deliver, "issues", self._issues_payload(r, issue, "edited", sender, extra))
        return issue

    def close_issue(
        self, repo: str, number: int, *, reason="completed", sender="octocat", deliver=True
    ):
        with self._lock:
            r = self._repo(repo)
            issue = r.issues[number]
            self._close(issue, reason)
        self._emit(deliver, "issues", self._issues_payload(r, issue, "closed", sender))
        return issue

    def comment(self, repo: str, number: int, body: str, *, user="octocat", deliver=True):
        """A person comments on an issue or PR (sends issue_comment.created)."""
        with self._lock:
            r = self._repo(repo)
            comment = self._add_comment(r, number, body, user)
            issue = r.issues[number]
        payload = payloads.issue_comment_payload(self.url, r, issue, comment, user)
        self._emit(deliver, "issue_comment", payload)
        return comment

    def submit_review(
        self,
        repo: str,
        number: int,
        state: str = "changes_requested",
        body: str | None = None,
        *,
        user: str = "reviewer",
        deliver: bool = True,
    ) -> dict[str, Any]:
        """``state``: approved, changes_requested or commented (sends pull_request_review)."""
        with self._lock:
            r = self._repo(repo)
            pr = r.pulls[number]
            review = payloads.review_json(
                self.url, r, pr, self._next_id(), state, body, user, self.association(r, user)
            )
            r.reviews.setdefault(number, []).append(review)
        payload = payloads.review_payload(self.url, r, pr, review, user)
        self._emit(deliver, "pull_request_review", payload)
        return review

    def merge_pull_request(self, repo: str, number: int, *, deliver: bool = True):
        with self._lock:
            r = self._repo(repo)
            pr = r.pulls[number]
            now = self._now()
            pr.update(state="closed", merged=True, merged_at=now, closed_at=now, updated_at=now)
            pr["merge_commit_sha"] = hashlib.sha1(str(number).encode()).hexdigest()
            self._close(r.issues[number], "completed")
            r.issues[number]["pull_request"]["merged_at"] = now
        self._emit(deliver, "pull_request", payloads.pull_request_payload(r, pr, "closed"))
        return pr

    def close_pull_request(self, repo: str, number: int, *, deliver: bool = True):
        with self._lock:
            r = self._repo(repo)
            pr = r.pulls[number]
            pr.update(state="closed", closed_at=self._now(), updated_at=self._now())
            self._close(r.issues[number], None)
        self._emit(deliver, "pull_request", payloads.pull_request_payload(r, pr, "closed"))
        return pr

    def open_fork_pull_request(
        self,
        repo: str,
        fork_owner: str,
        branch: str,
        *,
        body: str | None = None,
        number: int | None = None,
        deliver: bool = True,
    ) -> dict[str, Any]:
        """``fork_owner`` opens a pull request from their fork's ``branch`` (head label
        ``fork_owner:branch``, head repository the fork). ``number`` forces the number
        (an attacker cannot choose it on GitHub; tests use it to try the worst case)."""
        with self._lock:
            r = self._repo(repo)
            fork = FakeRepo(fork_owner, r.name, self._next_id(), r.default_branch)
            number = number if number is not None else self._take_number(r)
            now = self._now()
            pr = payloads.pull_json(
                self.url,
                r,
                number,
                title="From a fork",
                body=body,
                head=branch,
                base=r.default_branch,
                draft=False,
                user=fork_owner,
                now=now,
                head_repo=fork,
            )
            r.pulls[number] = pr
        self._emit(deliver, "pull_request", payloads.pull_request_payload(r, pr, "opened"))
        return pr

    def close_pull_request_as(
        self, repo: str, number: int, sender: str, *, deliver: bool = True
    ) -> dict[str, Any]:
        """``sender`` closes the pull request without merging it."""
        with self._lock:
            r = self._repo(repo)
            pr = r.pulls[number]
            pr.update(state="closed", closed_at=self._now(), updated_at=self._now())
        payload = payloads.pull_request_payload(r, pr, "closed", sender=sender)
        self._emit(deliver, "pull_request", payload)
        return pr

    def push_to_pull_request(self, repo: str, number: int, *, deliver: bool = True):
        """A new commit on the PR's branch (sends pull_request.synchronize)."""
        with self._lock:
            r = self._repo(repo)
            pr = r.pulls[number]
            before = pr["head"]["sha"]
            pr["head"]["sha"] = payloads.sha(f"{before}+1")
        extra = {"before": before, "after": pr["head"]["sha"]}
        self._emit(
            deliver, "pull_request", payloads.pull_request_payload(r, pr, "synchronize", extra)
        )
        return pr

    def ping(self, *, deliver: bool = True) -> dict[str, Any]:
        url = self.hook[0] if self.hook else "http://127.0.0.1/"
        payload = payloads.ping_payload(self.hook_id, url)
        self._emit(deliver, "ping", payload)
        return payload

    # --- webhook deliveries -------------------------------------------------------------
    def deliver(
        self,
        url: str,
        event: str,
        payload: dict[str, Any],
        secret: bytes,
        *,
        delivery_id: str | None = None,
    ) -> Delivery:
        """POST one delivery with GitHub's headers; returns it with the receiver's answer."""
        delivery = self._prepare(url, event, payload, secret, delivery_id)
        try:
            answer = httpx.post(url, content=delivery.body, headers=delivery.headers, timeout=10)
            delivery.status_code, delivery.response_text = answer.status_code, answer.text
        except httpx.HTTPError as exc:
            delivery.response_text = repr(exc)
        return delivery

    async def adeliver(
        self,
        url: str,
        event: str,
        payload: dict[str, Any],
        secret: bytes,
        *,
        delivery_id: str | None = None,
    ) -> Delivery:
        """:meth:`deliver` for a receiver running in the caller's event loop."""
        delivery = self._prepare(url, event, payload, secret, delivery_id)
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.post(url, content=delivery.body, headers=delivery.headers)
        delivery.status_code, delivery.response_text = answer.status_code, answer.text
        return delivery

    def redeliver(self, delivery_id: str) -> Delivery:
        """Send a recorded delivery again: same GUID and body, as GitHub's "Redeliver"."""
        original = next(d for d in self.deliveries if d.id == delivery_id)
        payload = json.loads(original.body)
        return self.deliver(
            original.url, original.event, payload, original.secret, delivery_id=original.id
        )

    def _prepare(self, url, event, payload, secret, delivery_id) -> Delivery:
        body = json.dumps(payload).encode()
        guid = delivery_id or str(uuid.uuid4())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/eea6a71",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": guid,
            "X-GitHub-Hook-ID": str(self.hook_id),
            "X-GitHub-Hook-Installation-Target-Type": "repository",
            "X-GitHub-Hook-Installation-Target-ID": str(payload.get("repository", {}).get("id", 0)),
            "X-Hub-Signature": "sha1=" + hmac.new(secret, body, hashlib.sha1).hexdigest(),
            "X-Hub-Signature-256": "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest(),
        }
        delivery = Delivery(guid, url, event, body, headers, secret)
        with self._lock:
            self.deliveries.append(delivery)
        return delivery

    def _emit(self, deliver: bool, event: str, payload: dict[str, Any]) -> None:
        if deliver and self.hook is not None:
            url, secret = self.hook
            self.deliver(url, event, payload, secret)

    # --- state helpers (hold the lock) --------------------------------------------------
    def _repo(self, full_name: str) -> FakeRepo:
        try:
            return self.repos[full_name.lower()]
        except KeyError:
            raise GitHubHTTPError(404, "Not Found") from None

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def _take_number(self, repo: FakeRepo) -> int:
        number = repo.next_number
        repo.next_number += 1
        return number

    def _now(self) -> str:
        self._clock += 1
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def _touch(self, item: dict[str, Any]) -> None:
        item["updated_at"] = self._now()
        item["_seq"] = self._clock

    def _close(self, issue: dict[str, Any], reason: str | None) -> None:
        issue.update(state="closed", state_reason=reason, closed_at=self._now())
        self._touch(issue)

    def _add_labels(self, repo: FakeRepo, number: int, names: list[str]) -> list[dict]:
        issue = self._issue(repo, number)
        have = {label["name"] for label in issue["labels"]}
        for name in names:
            if name not in have:
                issue["labels"].append(payloads.label_json(self.url, repo, name))
                have.add(name)
        self._touch(issue)
        if number in repo.pulls:
            repo.pulls[number]["labels"] = issue["labels"]
        return issue["labels"]

    def _add_comment(self, repo: FakeRepo, number: int, body: str, user: str) -> dict:
        issue = self._issue(repo, number)
        comment = payloads.comment_json(
            self.url,
            repo,
            number,
            self._next_id(),
            body,
            user,
            self._now(),
            self.association(repo, user),
        )
        repo.comments.setdefault(number, []).append(comment)
        issue["comments"] += 1
        self._touch(issue)
        return comment

    def _issue(self, repo: FakeRepo, number: int) -> dict[str, Any]:
        if number not in repo.issues:
            raise GitHubHTTPError(404, "Not Found")
        return repo.issues[number]

    def _issues_payload(self, repo, issue, action, sender, extra=None) -> dict[str, Any]:
        return payloads.issues_payload(self.url, repo, issue, action, sender, extra or {})

    # --- the HTTP app -------------------------------------------------------------------
    def _app(self) -> FastAPI:
        # imported here: the routes module imports this one
        from tests.fakes.github_routes import build_router, install_middleware

        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        install_middleware(app, self)
        router: APIRouter = build_router(self)
        app.include_router(router)
        app.include_router(router, prefix="/api/v3")

        @app.exception_handler(GitHubHTTPError)
        async def _error(request: Request, exc: GitHubHTTPError) -> Response:
            return self.error_response(exc)

        return app

    def error_response(self, exc: GitHubHTTPError, headers: dict[str, str] | None = None):
        body: dict[str, Any] = {"message": exc.message, "documentation_url": DOCS}
        if exc.errors:
            body["errors"] = exc.errors
        body["status"] = str(exc.status)
        return Response(
            json.dumps(body),
            exc.status,
            headers=headers,
            media_type="application/json; charset=utf-8",
        )

    def check_app_jwt(self, authorization: str | None, installation_id: int) -> str:
        """The app id of a valid App JWT for ``installation_id``; raises 401/404."""
        token = (authorization or "").removeprefix("Bearer ").strip()
        try:
            app_id = str(jwt.decode(token, options={"verify_signature": False})["iss"])
            key = self.apps[app_id]
            claims = jwt.decode(token, key, algorithms=["RS256"], options={"require": ["exp"]})
        except (jwt.PyJWTError, KeyError):
            raise GitHubHTTPError(401, "A JSON web token could not be decoded") from None
        if claims["exp"] - claims.get("iat", 0) > 660:  # 10 minutes + backdating
            raise GitHubHTTPError(401, "'Expiration time' claim ('exp') is too far in the future")
        if self.installations.get(installation_id) != app_id:
            raise GitHubHTTPError(404, "Not Found")
        return app_id
