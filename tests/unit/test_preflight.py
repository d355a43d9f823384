"""What `up` checks before starting: credentials per runner, ports."""

from __future__ import annotations

import socket
from pathlib import Path

from claude_cluster.cli.preflight import credential_problem, port_problems


def test_each_runner_names_the_credential_it_lacks(tmp_path: Path) -> None:
    home = tmp_path
    assert "ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN" in (
        credential_problem("claude", {}, home) or ""
    )
    assert credential_problem("claude", {"CLAUDE_CODE_OAUTH_TOKEN": "t"}, home) is None
    assert "OPENAI_API_KEY" in (credential_problem("codex", {}, home) or "")
    assert credential_problem("aider", {"OPENAI_API_KEY": "k"}, home) is None
    assert "AGENT_COMMAND" in (credential_problem("command", {}, home) or "")
    assert credential_problem("command", {"AGENT_COMMAND": "make fix"}, home) is None
    assert "use one of" in (credential_problem("rm -rf /", {}, home) or "")
    (home / ".claude").mkdir()
    (home / ".claude" / ".credentials.json").write_text("{}")
    assert credential_problem("claude", {}, home) is None  # a logged-in CLI


def test_taken_and_overlapping_ports_are_named() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        problems = port_problems(port, port + 1, 0)
        assert problems and f"port {port} (the coordinator) is taken" in problems[0]
        agent = port_problems(port + 2, port, 1)
        assert any("agent local-1" in p and "--agent-port" in p for p in agent)
    overlap = port_problems(50_002, 50_001, 3)
    assert any("falls among the agents' ports" in p for p in overlap)
