"""The REST endpoints and the cross-cutting behaviour (auth, rate limits, ETags) of the fake
GitHub in :mod:`tests.fakes.github_api`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request, Response

from tests.fakes import github_payloads as payloads
from tests.fakes.github_api import (
    PRIMARY_LIMIT,
    RATE_LIMIT,
    SECONDARY_LIMIT,
    GitHubHTTPError,
)

if TYPE_CHECKING:
    from tests.fakes.github_api import FakeGitHub, FakeRepo

TOKEN_TTL = 3600  # GitHub: installation tokens "will expire after 1 hour"


def install_middleware(app: Any, fake: FakeGitHub) -> None:
    """Auth, rate limits and ETags, on every endpoint as GitHub does."""

    @app.middleware("http")
    async def github_behaviour(request: Request, call_next: Any) -> Response:
        path = request.url.path.removeprefix("/api/v3")
        with fake._lock:
            fake.requests.append(
                {
                    "method": request.method,
                    "path": path,
                    "query": dict(request.query_params),
                    "if_none_match": request.headers.get("if-none-match"),
                }
            )
        if fake.latency:
            await asyncio.sleep(fake.latency)
        if path.startswith("/app/"):  # JWT-authenticated, checked by the endpoint
            return await call_next(request)
        token = request.headers.get("authorization", "").split(" ", 1)[-1].strip()
        with fake._lock:
            if not _known(fake, token):
                return fake.error_response(GitHubHTTPError(401, "Bad credentials"))
            limits = fake._limits
            remaining = limits.remaining.setdefault(token, 5000)
            if limits.secondary:
                status, retry_after = limits.secondary.pop(0)
                headers = _limit_headers(remaining, limits.reset)
                if retry_after is not None:
                    headers["Retry-After"] = str(retry_after)
                return fake.error_response(GitHubHTTPError(status, SECONDARY_LIMIT), headers)
            if remaining <= 0:
                headers = _limit_headers(0, limits.reset)
                return fake.error_response(GitHubHTTPError(403, PRIMARY_LIMIT), headers)
        response = await call_next(request)
        body = b"".join([chunk async for chunk in response.body_iterator])
        headers = dict(response.headers)
        headers.pop("content-length", None)
        if request.method == "GET" and response.status_code == 200:
            etag = 'W/"' + hashlib.sha256(body).hexdigest() + '"'
            headers["ETag"] = etag
            if request.headers.get("if-none-match") == etag:
                # a 304 with a valid token costs nothing against the rate limit
                headers.update(_limit_headers(remaining, limits.reset))
                return Response(status_code=304, headers=headers)
        with fake._lock:
            limits.remaining[token] = remaining - 1
        headers.update(_limit_headers(remaining - 1, limits.reset))
        return Response(body, response.status_code, headers=headers)


def _known(fake: FakeGitHub, token: str) -> bool:
    if token in fake.tokens:
        return True
    info = fake.installation_tokens.get(token)
    return info is not None and info["expires"] > time.time()


def _limit_headers(remaining: int, reset: int) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(RATE_LIMIT),
        "X-RateLimit-Remaining": str(max(0, remaining)),
        "X-RateLimit-Reset": str(reset),
        "X-RateLimit-Used": str(RATE_LIMIT - max(0, remaining)),
        "X-RateLimit-Resource": "core",
        "X-GitHub-Request-Id": secrets.token_hex(8).upper(),
    }


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(data), status, headers=headers, media_type="application/json; charset=utf-8"
    )


def _paginate(request: Request, items: list[Any]) -> Response:
    """One page of ``items`` with GitHub's ``Link`` header (absent when one page holds all)."""
    query = request.query_params
    per_page = max(1, min(int(query.get("per_page", 30)), 100))
    page = max(1, int(query.get("page", 1)))
    last = max(1, -(-len(items) // per_page))
    chunk = items[(page - 1) * per_page : page * per_page]

    def url(p: int) -> str:
        return str(request.url.include_query_params(page=p))

    links = []
    if page > 1:
        links.append(f'<{url(page - 1)}>; rel="prev"')
    if page < last:
        links += [f'<{url(page + 1)}>; rel="next"', f'<{url(last)}>; rel="last"']
    if page > 1:
        links.append(f'<{url(1)}>; rel="first"')
    return _json(chunk, headers={"Link": ", ".join(links)} if links else None)


def _body(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        raise GitHubHTTPError(400, "Problems parsing JSON") from None
    return data if isinstance(data, dict) else {}


def build_router(fake: FakeGitHub) -> APIRouter:
    router = APIRouter()

    def repo_of(owner: str, name: str) -> FakeRepo:
        return fake._repo(f"{owner}/{name}")

    def public(item: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in item.items() if not k.startswith("_")}

    def login_of(request: Request) -> str:
        token = request.headers.get("authorization", "").split(" ", 1)[-1].strip()
        if token in fake.tokens:
            return fake.tokens[token]
        return str(fake.installation_tokens[token]["login"])

    @router.get("/repos/{owner}/{name}")
    def get_repo(owner: str, name: str) -> Response:
        with fake._lock:
            return _json(payloads.repository_json(fake.url, repo_of(owner, name)))

    @router.get("/repos/{owner}/{name}/collaborators/{login}/permission")
    def get_permission(owner: str, name: str, login: str) -> Response:
        with fake._lock:
            permission = fake.permission(repo_of(owner, name), login)
            return _json(
                {
                    "permission": permission,
                    "role_name": permission,
                    "user": payloads.user_json(login),
                }
            )

    @router.get("/repos/{owner}/{name}/issues")
    def list_issues(owner: str, name: str, request: Request) -> Response:
        q = request.query_params
        with fake._lock:
            items = list(repo_of(owner, name).issues.values())
            state = q.get("state", "open")
            if state != "all":
                items = [i for i in items if i["state"] == state]
            for label in filter(None, (q.get("labels") or "").split(",")):
                items = [i for i in items if label in {x["name"] for x in i["labels"]}]
            key = "_seq" if q.get("sort") == "updated" else "number"
            items.sort(key=lambda i: i.get(key, 0), reverse=q.get("direction", "desc") == "desc")
            return _paginate(request, [public(i) for i in items])

    @router.get("/repos/{owner}/{name}/issues/{number}")
    def get_issue(owner: str, name: str, number: int) -> Response:
        with fake._lock:
            return _json(public(fake._issue(repo_of(owner, name), number)))

    @router.patch("/repos/{owner}/{name}/issues/{number}")
    async def patch_issue(owner: str, name: str, number: int, request: Request) -> Response:
        data = _body(await request.body())
        with fake._lock:
            issue = fake._issue(repo_of(owner, name), number)
            for key in ("title", "body"):
                if key in data:
                    issue[key] = data[key]
            if data.get("state") == "closed":
                fake._close(issue, data.get("state_reason", "completed"))
            elif data.get("state") == "open":
                issue.update(state="open", state_reason="reopened", closed_at=None)
            fake._touch(issue)
            return _json(public(issue))

    @router.get("/repos/{owner}/{name}/issues/{number}/comments")
    def list_comments(owner: str, name: str, number: int, request: Request) -> Response:
        with fake._lock:
            repo = repo_of(owner, name)
            fake._issue(repo, number)
            return _paginate(request, list(repo.comments.get(number, [])))

    @router.post("/repos/{owner}/{name}/issues/{number}/comments")
    async def add_comment(owner: str, name: str, number: int, request: Request) -> Response:
        data = _body(await request.body())
        if not data.get("body"):
            raise GitHubHTTPError(
                422,
                "Validation Failed",
                [{"resource": "IssueComment", "code": "missing_field", "field": "body"}],
            )
        with fake._lock:
            comment = fake._add_comment(
                repo_of(owner, name), number, data["body"], login_of(request)
            )
        return _json(comment, 201, {"Location": comment["url"]})

    @router.patch("/repos/{owner}/{name}/issues/comments/{comment_id}")
    async def edit_comment(owner: str, name: str, comment_id: int, request: Request) -> Response:
        data = _body(await request.body())
        with fake._lock:
            repo = repo_of(owner, name)
            for comments in repo.comments.values():
                for comment in comments:
                    if comment["id"] == comment_id:
                        if comment["user"]["login"] != login_of(request):
                            raise GitHubHTTPError(403, "Resource not accessible by integration")
                        comment.update(body=data.get("body", ""), updated_at=fake._now())
                        fake.comment_edits.append((comment_id, comment["body"]))
                        return _json(comment)
        raise GitHubHTTPError(404, "Not Found")

    @router.post("/repos/{owner}/{name}/issues/{number}/labels")
    async def add_labels(owner: str, name: str, number: int, request: Request) -> Response:
        data = _body(await request.body())
        with fake._lock:
            labels = fake._add_labels(repo_of(owner, name), number, list(data.get("labels", [])))
            return _json(labels)

    @router.delete("/repos/{owner}/{name}/issues/{number}/labels/{label:path}")
    def remove_label(owner: str, name: str, number: int, label: str) -> Response:
        with fake._lock:
            issue = fake._issue(repo_of(owner, name), number)
            if label not in {x["name"] for x in issue["labels"]}:
                raise GitHubHTTPError(404, "Label does not exist")
            issue["labels"] = [x for x in issue["labels"] if x["name"] != label]
            fake._touch(issue)
            return _json(issue["labels"])

    @router.get("/repos/{owner}/{name}/pulls")
    def list_pulls(owner: str, name: str, request: Request) -> Response:
        q = request.query_params
        with fake._lock:
            pulls = list(repo_of(owner, name).pulls.values())
            state = q.get("state", "open")
            if state != "all":
                pulls = [p for p in pulls if p["state"] == state]
            head = q.get("head")
            if head and ":" in head:  # without owner: GitHub silently ignores the filter
                pulls = [p for p in pulls if p["head"]["label"] == head]
            if q.get("base"):
                pulls = [p for p in pulls if p["base"]["ref"] == q["base"]]
            pulls.sort(key=lambda p: p["number"], reverse=True)
            return _paginate(request, [public(p) for p in pulls])

    @router.post("/repos/{owner}/{name}/pulls")
    async def create_pull(owner: str, name: str, request: Request) -> Response:
        data = _body(await request.body())
        with fake._lock:
            repo = repo_of(owner, name)
            pr = _create_pull(fake, repo, data, login_of(request))
        opened = payloads.pull_request_payload(repo, pr, "opened")
        # GitHub delivers webhooks asynchronously, after answering the API call
        threading.Thread(target=fake._emit, args=(True, "pull_request", opened)).start()
        return _json(public(pr), 201, {"Location": pr["url"]})

    @router.get("/repos/{owner}/{name}/pulls/{number}")
    def get_pull(owner: str, name: str, number: int) -> Response:
        with fake._lock:
            pulls = repo_of(owner, name).pulls
            if number not in pulls:
                raise GitHubHTTPError(404, "Not Found")
            return _json(public(pulls[number]))

    @router.patch("/repos/{owner}/{name}/pulls/{number}")
    async def patch_pull(owner: str, name: str, number: int, request: Request) -> Response:
        data = _body(await request.body())
        with fake._lock:
            repo = repo_of(owner, name)
            if number not in repo.pulls:
                raise GitHubHTTPError(404, "Not Found")
            pr, issue = repo.pulls[number], repo.issues[number]
            for key in ("title", "body"):
                if key in data:
                    pr[key] = issue[key] = data[key]
            if "base" in data:
                pr["base"]["ref"] = data["base"]
            if data.get("state") == "closed":
                pr.update(state="closed", closed_at=fake._now())
                fake._close(issue, None)
            pr["updated_at"] = fake._now()
            return _json(public(pr))

    @router.get("/app/installations/{installation_id}")
    async def installation(installation_id: int, request: Request) -> Response:
        with fake._lock:
            fake.check_app_jwt(request.headers.get("authorization"), installation_id)
            permissions = dict(fake.installation_permissions)
        return _json({"id": installation_id, "app_id": 1, "permissions": permissions})

    @router.post("/app/installations/{installation_id}/access_tokens")
    async def access_token(installation_id: int, request: Request) -> Response:
        data = _body(await request.body())
        with fake._lock:
            fake.check_app_jwt(request.headers.get("authorization"), installation_id)
            token = "ghs_" + secrets.token_urlsafe(27)
            expires = int(time.time()) + TOKEN_TTL
            fake.installation_tokens[token] = {
                "login": "claude-cluster[bot]",
                "expires": expires,
                "installation_id": installation_id,
                "repositories": data.get("repositories"),
                "permissions": data.get("permissions"),
            }
        answer: dict[str, Any] = {
            "token": token,
            "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires)),
            "permissions": data.get("permissions") or dict(fake.installation_permissions),
            "repository_selection": "selected" if data.get("repositories") else "all",
        }
        if data.get("repositories"):
            answer["repositories"] = [{"name": r} for r in data["repositories"]]
        return _json(answer, 201)

    return router


def _create_pull(fake: FakeGitHub, repo: FakeRepo, data: dict[str, Any], user: str):
    """Validate like GitHub (the 422s) and store the PR, which is also an issue."""

    def invalid(message: str, **error: str) -> GitHubHTTPError:
        return GitHubHTTPError(
            422,
            "Validation Failed",
            [{"resource": "PullRequest", "code": "custom", "message": message, **error}],
        )

    for key in ("title", "head", "base"):
        if not data.get(key):
            raise GitHubHTTPError(
                422,
                "Validation Failed",
                [{"resource": "PullRequest", "field": key, "code": "missing_field"}],
            )
    head_owner, _, branch = data["head"].rpartition(":")
    if head_owner and head_owner.lower() != repo.owner.lower():
        raise GitHubHTTPError(
            422,
            "Validation Failed",
            [{"resource": "PullRequest", "field": "head", "code": "invalid"}],
        )
    base = data["base"]
    if branch == base or branch in repo.empty_branches:
        raise invalid(f"No commits between {base} and {branch}")
    label = f"{repo.owner}:{branch}"
    if any(p["head"]["label"] == label and p["state"] == "open" for p in repo.pulls.values()):
        raise invalid(f"A pull request already exists for {label}.")
    number = fake._take_number(repo)
    now = fake._now()
    pr = payloads.pull_json(
        fake.url,
        repo,
        number,
        title=data["title"],
        body=data.get("body"),
        head=branch,
        base=base,
        draft=bool(data.get("draft")),
        user=user,
        now=now,
    )
    repo.pulls[number] = pr
    issue = payloads.issue_json(fake.url, repo, number, data["title"], data.get("body"), now, user)
    issue["pull_request"] = payloads.pull_issue_link(fake.url, repo, number)
    repo.issues[number] = issue
    fake._touch(issue)
    return pr
