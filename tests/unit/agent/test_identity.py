"""The agent's token file: private, atomic, and refused when others can read it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from claude_cluster.agent.identity import TokenFile
from claude_cluster.errors import ConfigError


def test_saved_private_and_replaced(tmp_path: Path) -> None:
    tokens = TokenFile(tmp_path / "state")
    assert tokens.load() is None
    tokens.save("first-token")
    assert tokens.load() == "first-token"
    assert tokens.path.stat().st_mode & 0o777 == 0o600
    assert tokens.path.parent.stat().st_mode & 0o777 == 0o700
    tokens.save("second-token")
    assert tokens.load() == "second-token"
    assert sorted(p.name for p in tokens.path.parent.iterdir()) == ["agent-token"]


def test_a_token_others_can_read_is_refused(tmp_path: Path) -> None:
    tokens = TokenFile(tmp_path)
    tokens.save("secret")
    os.chmod(tokens.path, 0o644)
    with pytest.raises(ConfigError, match=r"readable by others.*chmod 600"):
        tokens.load()
