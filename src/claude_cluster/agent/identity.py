"""The agent's own token, kept across restarts in its state directory.

The coordinator's registration token enrols a new agent id only; registering the same id
again needs the token the coordinator issued to this agent. :class:`TokenFile` keeps that
token in ``<AGENT_STATE_DIR>/agent-token``: the directory 0700, the file 0600, written
atomically (a crash leaves the old token or the new one, never half of one).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from claude_cluster.errors import ConfigError

FILE_NAME = "agent-token"


class TokenFile:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME

    def load(self) -> str | None:
        """The saved token, or None when there is none yet.

        Raises:
            ConfigError: the file exists but cannot be read, or others may read it.
        """
        try:
            mode = self.path.stat().st_mode
            text = self.path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read the agent token {self.path}: {exc.strerror}") from None
        if mode & 0o077:
            raise ConfigError(
                f"the agent token {self.path} is readable by others (mode {mode & 0o777:o}); "
                f"run `chmod 600 {self.path}`"
            )
        return text or None

    def save(self, token: str) -> None:
        """Replace the saved token (0600, atomically)."""
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        temporary = directory / f".{FILE_NAME}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, token.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
