"""Which model credential each runner's CLI needs: what ``claude-cluster up`` checks before
it starts (``cli/preflight.py``) and what an agent checks before it takes work
(``agent/readiness.py``). Each caller words its own fix."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

#: the runner → the variables any one of which gives it a model account, and the file a
#: logged-in CLI keeps instead (relative to $HOME)
CREDENTIALS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "claude": (("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"), ".claude/.credentials.json"),
    "codex": (("OPENAI_API_KEY",), ".codex/auth.json"),
    "aider": (("ANTHROPIC_API_KEY", "OPENAI_API_KEY"), None),
    "command": ((), None),
}


def has_credential(runner: str, env: Mapping[str, str | None], home: Path) -> bool:
    """Whether ``runner`` has a model credential: one of its variables set in ``env``, or
    its logged-in CLI's file under ``home``. A runner that needs none (or is unknown) has
    one."""
    names, login_file = CREDENTIALS.get(runner, ((), None))
    if not names or any(env.get(name) for name in names):
        return True
    return bool(login_file and (home / login_file).is_file())
