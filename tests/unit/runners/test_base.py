"""The runner interface helpers, the registry and the claude runner's command line."""

from __future__ import annotations

from pathlib import Path

import pytest

import claude_cluster.runners as runners
from claude_cluster.errors import ConfigError
from claude_cluster.runners.aider import AiderRunner
from claude_cluster.runners.base import clip, get_runner, runner_names, scrubbed_env
from claude_cluster.runners.claude_code import ClaudeCodeRunner, find_claude_cli
from claude_cluster.runners.codex import CodexRunner
from claude_cluster.runners.command import CommandRunner
from tests.unit.runners.helpers import make_spec

AGENT_ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "HOME": "/root",
    "ANTHROPIC_API_KEY": "sk-agent-own",
    "ANTHROPIC_BASE_URL": "https://example.invalid",
    "CLAUDECODE": "1",
    "CLAUDE_CONFIG_DIR": "/root/.claude",
    "GITHUB_TOKEN": "ghp_x",
    "REGISTRATION_TOKEN": "secret",
    "HTTPS_PROXY": "http://proxy:3128",
}


def test_the_package_exports_what_it_names() -> None:
    assert sorted(runners.__all__) == sorted(n for n in runners.__all__ if hasattr(runners, n))
    assert {"Runner", "RunSpec", "RunnerEvent", "RunnerOutcome", "get_runner"} <= set(
        runners.__all__
    )


def test_scrubbed_env_keeps_only_the_allow_list_then_adds_defaults_and_the_spec(
    tmp_path: Path,
) -> None:
    spec = make_spec(tmp_path, env={"ANTHROPIC_API_KEY": "sk-task", "TASK_ID": "9"})
    env = scrubbed_env(spec, {"QUIET": "1", "TASK_ID": "default"}, base=AGENT_ENV)
    assert env == {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HTTPS_PROXY": "http://proxy:3128",
        "HOME": str(tmp_path / "home"),
        "QUIET": "1",
        "ANTHROPIC_API_KEY": "sk-task",  # only because the spec passed it
        "TASK_ID": "9",  # the spec wins over runner defaults
    }


@pytest.mark.parametrize(
    ("name", "config", "cls"),
    [
        ("claude", {"cli_path": "/opt/claude"}, ClaudeCodeRunner),
        ("codex", {}, CodexRunner),
        ("aider", {"extra_args": ["--model", "x"]}, AiderRunner),
        ("command", {"command": "./agent.sh --fast"}, CommandRunner),
    ],
)
def test_get_runner_builds_each_runner(name: str, config: dict[str, object], cls: type) -> None:
    runner = get_runner(name, **config)
    assert isinstance(runner, cls)
    assert runner.name == name
    assert name in runner_names()


def test_get_runner_rejects_unknown_names_and_settings() -> None:
    with pytest.raises(ConfigError, match="AGENT_RUNNER='gpt'"):
        get_runner("gpt")
    with pytest.raises(ConfigError, match="claude"):
        get_runner("claude", colour="blue")


def test_claude_argv(tmp_path: Path) -> None:
    runner = ClaudeCodeRunner(extra_args=["--append-system-prompt", "Be brief."])
    spec = make_spec(
        tmp_path,
        prompt="--help is not a flag here",
        model="claude-sonnet-4-5",
        max_turns=30,
        budget_usd=2.5,
        resume_session_id="-abc",
    )
    assert runner.argv("/bin/claude", spec) == [
        "/bin/claude",
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--permission-mode",
        "bypassPermissions",
        "--model",
        "claude-sonnet-4-5",
        "--max-turns",
        "30",
        "--max-budget-usd",
        "2.5",
        "--resume=-abc",
        "--append-system-prompt",
        "Be brief.",
        "--",
        "--help is not a flag here",
    ]
    minimal = ClaudeCodeRunner(permission_mode="acceptEdits").argv("claude", make_spec(tmp_path))
    assert minimal == [
        "claude", "-p", "--output-format", "stream-json", "--verbose",
        "--permission-mode", "acceptEdits", "--", "Fix the bug.",
    ]  # fmt: skip


@pytest.mark.parametrize(("euid", "sandbox"), [(0, "1"), (1000, None)])
def test_claude_env_sets_the_sandbox_switch_only_for_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, euid: int, sandbox: str | None
) -> None:
    monkeypatch.setattr("os.geteuid", lambda: euid)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-agent-own")
    env = ClaudeCodeRunner().env(make_spec(tmp_path, env={"ANTHROPIC_BASE_URL": "http://x"}))
    assert env.get("IS_SANDBOX") == sandbox
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert env["ANTHROPIC_BASE_URL"] == "http://x"
    assert "ANTHROPIC_API_KEY" not in env


def test_find_claude_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundled = find_claude_cli()
    assert bundled is not None and bundled.endswith("_bundled/claude")  # the SDK is installed
    assert find_claude_cli(str(tmp_path / "missing")) is None  # an explicit path is not replaced
    own = tmp_path / "claude"
    own.write_text("#!/bin/sh\n")
    own.chmod(0o755)
    assert find_claude_cli(str(own)) == str(own)


def test_clip() -> None:
    assert clip("short", 10) == "short"
    assert clip("x" * 25, 10) == "xxxxxxxxxx… [15 more characters]"
