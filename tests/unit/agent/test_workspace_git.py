"""The git helper: credentials in the environment only, redaction, timeouts."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import pytest

from claude_cluster.agent.git import DeliveryError, WorkspaceError, auth_env, git, redact
from claude_cluster.domain.states import ErrorCategory

TOKEN = "ghs_abcdef123456"
BASIC = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()


async def gone(pid: int, within: float = 3.0) -> bool:
    """Whether ``pid`` stops running (exits, or is a zombie nobody reaped) in time."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        await asyncio.sleep(0.05)
    return False


def test_auth_env_scopes_a_basic_header_to_the_remote_origin() -> None:
    env = auth_env("https://github.com/octo/app.git", TOKEN)
    assert env == {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.https://github.com/.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {BASIC}",
    }
    assert auth_env("http://127.0.0.1:8080/a.git", TOKEN)["GIT_CONFIG_KEY_0"] == (
        "http.http://127.0.0.1:8080/.extraHeader"
    )


@pytest.mark.parametrize(
    "url", ["/srv/app.git", "file:///srv/app.git", "git@github.com:o/r.git", "ssh://h/r"]
)
def test_no_header_where_a_token_makes_no_sense(url: str) -> None:
    assert auth_env(url, TOKEN) == {}


def test_no_header_without_a_token() -> None:
    assert auth_env("https://github.com/o/r.git", None) == {}


def test_redact_hides_tokens_their_basic_form_and_url_credentials() -> None:
    text = f"token {TOKEN}, header {BASIC}, url https://x-access-token:{TOKEN}@github.com/o/r"
    cleaned = redact(text, [TOKEN, None, ""])
    assert TOKEN not in cleaned and BASIC not in cleaned
    assert "https://***@github.com/o/r" in cleaned
    assert redact("https://user:pw@host/x") == "https://***@host/x"


async def test_git_runs_and_returns_output(tmp_path: Path) -> None:
    result = await git("init", "-q", str(tmp_path / "r"))
    assert result.returncode == 0
    out = await git("rev-parse", "--is-bare-repository", cwd=tmp_path / "r")
    assert out.stdout.strip() == "false"


async def test_failure_raises_the_requested_error_with_its_category(tmp_path: Path) -> None:
    with pytest.raises(DeliveryError) as err:
        await git("rev-parse", "HEAD", cwd=tmp_path, error=DeliveryError)
    assert err.value.category is ErrorCategory.DELIVERY_ERROR
    assert "git rev-parse HEAD exited 128" in str(err.value)
    result = await git("rev-parse", "HEAD", cwd=tmp_path, check=False)
    assert result.returncode == 128


async def test_secrets_are_redacted_from_failures(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError) as err:
        await git("ls-remote", f"https://x:{TOKEN}@127.0.0.1:9/nothing", secrets=[TOKEN])
    assert TOKEN not in str(err.value)


async def test_timeout_kills_git_and_what_it_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    # an alias runs a shell command as a child of git, in git's process group
    alias = f"alias.hang=!echo $$ > {pid_file}; exec sleep 30"
    started = time.monotonic()
    with pytest.raises(WorkspaceError, match=r"timed out after 0\.5s") as err:
        await git("-c", alias, "hang", cwd=tmp_path, timeout=0.5)
    assert time.monotonic() - started < 5
    assert err.value.category is ErrorCategory.WORKSPACE_ERROR
    assert await gone(int(pid_file.read_text()))


async def test_callers_config_env_cannot_leak_in(monkeypatch: pytest.MonkeyPatch) -> None:
    # a GIT_CONFIG_* left in the agent's environment must not add to (or shift) ours
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "user.name")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "Leaked")
    result = await git("config", "--get", "user.name", check=False)
    assert "Leaked" not in result.stdout
