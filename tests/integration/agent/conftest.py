"""Real git repositories for the agent's workspace, verify and deliver tests.

The agent tier runs its coordinator on PostgreSQL only (production's store): these tests
are about agent processes (death, fencing, readiness, TLS, drains), and the store's two
backends are each proven by tests/integration/coordinator; running every agent scenario
twice cost minutes of the suite's budget.

``origin`` is a bare repository with a ``main`` branch (and a ``feature`` branch), the
way a remote looks; ``GitHttpServer`` serves bare repositories over smart HTTP through
``git http-backend`` and insists on a token, so credentials travel the same way as with
GitHub.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from claude_cluster.agent.workspace import Workspace, WorkspaceManager
from tests.conftest import fresh_pg_database

MakeManager = Callable[..., WorkspaceManager]
IDENTITY = ("-c", "user.name=Test Person", "-c", "user.email=test@example.invalid")


def sh(cwd: Path, *args: str, check: bool = True) -> str:
    """Run git synchronously (test set-up and assertions) and return its stdout."""
    result = subprocess.run(
        ["git", *IDENTITY, *args], cwd=cwd, capture_output=True, text=True, timeout=30
    )
    if check and result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {result.stderr}")
    return result.stdout.strip()


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated, empty PostgreSQL database (see the module's docstring)."""
    with fresh_pg_database(request) as url:
        yield url


@pytest.fixture(autouse=True)
def _isolated_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No global or system git config: the code must not depend on the host's identity."""
    empty = tmp_path / "empty.gitconfig"
    empty.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


@dataclass
class Origin:
    """A bare "remote" and a clone to push to it from."""

    bare: Path
    work: Path

    @property
    def url(self) -> str:
        return str(self.bare)

    def commit(self, path: str, content: str, *, branch: str = "main", message: str = "") -> str:
        """Commit ``content`` to ``path`` on ``branch`` and push it; return the sha."""
        sh(self.work, "checkout", "-q", "-B", branch, f"origin/{branch}", check=False)
        file = self.work / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(content)
        sh(self.work, "add", path)
        sh(self.work, "commit", "-q", "-m", message or f"change {path}")
        sh(self.work, "push", "-q", "origin", f"HEAD:refs/heads/{branch}")
        sh(self.work, "fetch", "-q", "origin")
        return sh(self.work, "rev-parse", "HEAD")

    def sha(self, ref: str) -> str | None:
        out = sh(self.bare, "rev-parse", "--verify", "-q", ref, check=False)
        return out or None


def make_origin(root: Path) -> Origin:
    bare, work = root / "origin.git", root / "origin-work"
    sh(root, "init", "-q", "--bare", "-b", "main", str(bare))
    sh(root, "clone", "-q", str(bare), str(work))
    sh(work, "checkout", "-q", "-b", "main")
    (work / ".gitignore").write_text("*.log\n")
    (work / "app.py").write_text("def answer():\n    return 41\n")
    sh(work, "add", ".")
    sh(work, "commit", "-q", "-m", "initial")
    sh(work, "push", "-q", "origin", "main")
    sh(work, "checkout", "-q", "-b", "feature")
    (work / "feature.txt").write_text("feature work\n")
    sh(work, "add", ".")
    sh(work, "commit", "-q", "-m", "feature")
    sh(work, "push", "-q", "origin", "feature")
    sh(work, "checkout", "-q", "main")
    return Origin(bare, work)


@pytest.fixture
def origin(tmp_path: Path) -> Origin:
    return make_origin(tmp_path)


@pytest.fixture
def make_manager(tmp_path: Path) -> MakeManager:
    def make(**options: object) -> WorkspaceManager:
        return WorkspaceManager(tmp_path / "workspace", git_timeout=30, **options)  # type: ignore[arg-type]

    return make


async def prepare_workspace(manager: WorkspaceManager, origin: Origin, **kw: object) -> Workspace:
    """``manager.prepare`` for attempt 1 of task 7 (issue 12 of ``origin``); ``kw`` overrides."""
    args: dict[str, object] = {
        "task_id": 7,
        "attempt": 1,
        "repository_url": origin.url,
        "issue_number": 12,
        "title": "Make answer() return 42",
    }
    args.update(kw)
    return await manager.prepare(**args)  # type: ignore[arg-type]


def basic_credentials(token: str) -> str:
    """What git sends for ``token`` in ``Authorization: Basic ...``."""
    return base64.b64encode(f"x-access-token:{token}".encode()).decode()


def assert_token_hidden(message: str, token: str) -> None:
    """``message`` (an error) shows ``token`` neither as it is nor as Basic credentials."""
    assert token not in message
    assert basic_credentials(token) not in message


class GitHttpServer:
    """Smart-HTTP git server (``git http-backend``) on loopback requiring one token.

    Requests without ``Authorization: Basic base64(x-access-token:<token>)`` get a 401.
    The headers of every request are kept in ``seen_authorization``.
    """

    def __init__(self, root: Path, token: str) -> None:
        self.root = root
        self.expected = "Basic " + basic_credentials(token)
        self.seen_authorization: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._handle(self)

            def do_POST(self) -> None:
                server._handle(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def url(self, repo: str) -> str:
        return f"{self.base_url}/{repo}"

    def __enter__(self) -> GitHttpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        auth = request.headers.get("Authorization")
        self.seen_authorization.append(auth)
        if auth != self.expected:
            request.send_response(401)
            request.send_header("WWW-Authenticate", 'Basic realm="git"')
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        path, _, query = request.path.partition("?")
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        env = {
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REMOTE_USER": "x-access-token",  # enables receive-pack (push)
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": request.command,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_GIT_PROTOCOL": request.headers.get("Git-Protocol", ""),
            "GIT_CONFIG_NOSYSTEM": "1",
        }
        if request.headers.get("Content-Encoding") == "gzip":
            env["HTTP_CONTENT_ENCODING"] = "gzip"
        result = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, timeout=30
        )
        head, _, payload = result.stdout.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(": ")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value))
        request.send_response(status)
        for name, value in headers:
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        request.wfile.write(payload)


@pytest.fixture
def argv_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put a ``git`` on PATH that appends its argv to the returned file, then runs git."""
    real_git = shutil.which("git")
    bin_dir, log = tmp_path / "bin", tmp_path / "argv.log"
    bin_dir.mkdir()
    (bin_dir / "git").write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {real_git} "$@"\n')
    (bin_dir / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    log.write_text("")
    return log


@pytest.fixture
def git_http(tmp_path: Path, origin: Origin) -> Iterator[GitHttpServer]:
    """``origin`` served at ``<base_url>/origin.git``, token ``ghs_secret_token_123``."""
    with GitHttpServer(origin.bare.parent, "ghs_secret_token_123") as server:
        yield server
