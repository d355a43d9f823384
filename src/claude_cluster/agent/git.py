"""Running git: one async helper, credentials kept out of argv, URLs and config, and the
errors the agent's git work raises.

    ClusterError
    └── GitError                 a git command failed or timed out
        ├── WorkspaceError       fetching the repository or making the worktree failed
        └── DeliveryError        committing or pushing the result failed

Every git call goes through :func:`git`: no shell, its own process group (so a timeout
kills the helpers git spawns too, such as ``git-remote-https`` or ``ssh``), a fixed
locale so messages can be matched, and never an interactive prompt. A token for
``https`` remotes travels only as an ``http.<origin>.extraHeader`` in the
``GIT_CONFIG_COUNT`` environment of that one process: it is not in argv (visible to every
user through ``/proc``), not in ``.git/config`` and not in a URL that may be logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from claude_cluster import metrics
from claude_cluster.domain.states import ErrorCategory
from claude_cluster.errors import ClusterError

__all__ = [
    "DeliveryError",
    "GitError",
    "GitResult",
    "WorkspaceError",
    "auth_env",
    "git",
    "redact",
]

REDACTED = "***"
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
#: how long a killed git gets between SIGTERM and SIGKILL
_KILL_GRACE = 2.0


class GitError(ClusterError):
    """git failed: {detail}"""

    category: ClassVar[ErrorCategory] = ErrorCategory.WORKSPACE_ERROR

    def __init__(self, message: str | None = None, **context: Any) -> None:
        context.setdefault("command", "")
        context.setdefault("detail", "")
        super().__init__(message, **context)


class WorkspaceError(GitError):
    """Could not prepare the workspace: {detail}"""

    category = ErrorCategory.WORKSPACE_ERROR


class DeliveryError(GitError):
    """Could not deliver the branch: {detail}"""

    category = ErrorCategory.DELIVERY_ERROR


@dataclass(frozen=True, slots=True)
class GitResult:
    """What a finished git command printed."""

    returncode: int
    stdout: str
    stderr: str


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Hide credentials in ``text``.

    Args:
        text: Any text that may end up in a log, an error or an API response.
        secrets: Literal values to hide, e.g. a token. Their Basic-auth form (as sent by
            :func:`auth_env`) is hidden too.

    Returns:
        ``text`` with each secret and the user-info part of any URL replaced by ``***``.
    """
    for secret in secrets:
        if not secret:
            continue
        for form in (secret, _basic_credentials(secret)):
            text = text.replace(form, REDACTED)
    return _URL_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)


def auth_env(remote_url: str, token: str | None) -> dict[str, str]:
    """Environment that makes git authenticate to ``remote_url`` with ``token``.

    The header is scoped to the remote's origin (``http.https://host/.extraHeader``) so a
    redirect or a submodule on another host never receives it. Local and ssh remotes need
    no token; for them (or without a token) the result is empty.

    Args:
        remote_url: The URL git will talk to.
        token: A GitHub token (installation or personal), or ``None``.

    Returns:
        ``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_0``/``GIT_CONFIG_VALUE_0`` or nothing.
    """
    parts = urlsplit(remote_url)
    if not token or parts.scheme not in ("http", "https"):
        return {}
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": f"http.{parts.scheme}://{host}{port}/.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {_basic_credentials(token)}",
    }


def _basic_credentials(token: str) -> str:
    # GitHub accepts any user name with a token as password; x-access-token is the
    # documented one for installation tokens and works for personal tokens too.
    return base64.b64encode(f"x-access-token:{token}".encode()).decode()


def _base_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_CONFIG_")}
    env.update(
        {
            "LC_ALL": "C",  # messages we match on are the English ones
            "GIT_TERMINAL_PROMPT": "0",  # fail instead of waiting for a password
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "GCM_INTERACTIVE": "never",
        }
    )
    if extra:
        env.update(extra)
    return env


#: the agent id ``claude_git_operations_total`` is counted under (one agent per process)
_metrics_agent_id = ""


def count_operations_as(agent_id: str) -> None:
    """Count every later git command in ``claude_git_operations_total`` for ``agent_id``."""
    global _metrics_agent_id
    _metrics_agent_id = agent_id


def operation_of(args: Sequence[str]) -> str:
    """The git subcommand of ``args`` (``fetch`` for ``-c k=v fetch origin``)."""
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("-c", "-C", "--git-dir", "--work-tree"):
            skip = True
        elif not arg.startswith("-"):
            return arg
    return "git"


async def git(
    *args: str,
    cwd: Path | None = None,
    timeout: float = 600,
    env: Mapping[str, str] | None = None,
    secrets: Sequence[str | None] = (),
    check: bool = True,
    error: type[GitError] = WorkspaceError,
) -> GitResult:
    """Run ``git <args>`` and return its output.

    Args:
        *args: git's arguments (``"fetch", "--prune", "origin"``).
        cwd: Directory to run in.
        timeout: Seconds before the command (and everything it started) is killed.
        env: Variables added to the agent's environment, e.g. from :func:`auth_env`.
        secrets: Values to redact from the error text if the command fails.
        check: Raise on a non-zero exit status (otherwise the caller inspects
            :attr:`GitResult.returncode`).
        error: The :class:`GitError` subclass to raise, so that callers get the category
            of the phase they are in.

    Raises:
        GitError: (as ``error``) the command failed, timed out or git is missing.
    """
    all_secrets = [*secrets, *_env_secrets(env)]
    command = "git " + redact(" ".join(args[:2]), all_secrets)
    try:
        proc = await asyncio.create_subprocess_exec(
            "git",
            *args,
            cwd=cwd,
            env=_base_env(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        raise error(command=command, detail=f"cannot start git: {exc}") from exc
    if _metrics_agent_id:
        metrics.GIT_OPERATIONS.labels(_metrics_agent_id, operation_of(args)).inc()
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        await _kill_group(proc)
        raise error(command=command, detail=f"{command} timed out after {timeout:g}s") from None
    except asyncio.CancelledError:
        await _kill_group(proc)
        raise
    result = GitResult(
        proc.returncode if proc.returncode is not None else -1,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
    )
    if check and result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip())[-2000:]
        raise error(
            command=command,
            detail=redact(f"{command} exited {result.returncode}: {detail}", all_secrets),
        )
    return result


def _env_secrets(env: Mapping[str, str] | None) -> list[str]:
    if not env:
        return []
    value = env.get("GIT_CONFIG_VALUE_0", "")
    return [value.removeprefix("Authorization: Basic ")] if value else []


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the process group, SIGKILL it if still there after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.wait_for(proc.wait(), _KILL_GRACE)
            break
        except TimeoutError:
            continue
    # git has exited; whatever it started (remote helpers, ssh) goes with it
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
