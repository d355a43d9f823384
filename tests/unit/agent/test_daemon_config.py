"""AgentSettings: the seed's names (both spellings), comma lists, errors naming variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from claude_cluster.agent.config import AgentSettings, load_agent_settings
from claude_cluster.agent.daemon import runner_env
from claude_cluster.errors import ConfigError

REQUIRED = {"COORDINATOR_URL": "http://10.0.0.1:8080/", "REGISTRATION_TOKEN": "r" * 24}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(__import__("os").environ):
        if name.upper() in {f.upper() for f in AgentSettings.model_fields} | {
            "AGENT_HOST", "AGENT_PORT", "HOST", "PORT", "AGENT_SPECIALTY", "SPECIALTIES",
        }:  # fmt: skip
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> AgentSettings:
    for name, value in {**REQUIRED, **env}.items():
        monkeypatch.setenv(name, value)
    return load_agent_settings()


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch)
    assert (s.host, s.port, s.max_concurrent_tasks, s.heartbeat_interval) == (
        "0.0.0.0",
        8081,
        3,
        10,
    )
    assert (s.task_timeout, s.stall_timeout, s.result_grace, s.max_fix_rounds) == (3600, 300, 10, 2)
    assert (s.branch_prefix, s.agent_runner, s.workspace_cleanup_days) == ("claude/", "claude", 7)
    assert s.coordinator_url == "http://10.0.0.1:8080"
    assert s.specialties == ["general"] and s.agent_id and s.agent_name == s.agent_id
    assert len(s.agent_secret) >= 32 and s.cpu_cores and s.cpu_cores >= 1
    assert s.ip_address  # the address that routes to the coordinator
    assert s.url == f"http://{s.ip_address}:8081"


@pytest.mark.parametrize(
    ("env", "field", "value"),
    [
        ({"AGENT_PORT": "9001"}, "port", 9001),
        ({"PORT": "9002"}, "port", 9002),
        ({"AGENT_HOST": "127.0.0.1"}, "host", "127.0.0.1"),
        ({"HOST": "10.1.1.1"}, "host", "10.1.1.1"),
        ({"AGENT_SPECIALTY": "backend, testing"}, "specialties", ["backend", "testing"]),
        ({"SPECIALTIES": "frontend"}, "specialties", ["frontend"]),
        ({"SPECIALTIES": '["devops", "database"]'}, "specialties", ["devops", "database"]),
        ({"CAPABILITIES": "python,docker"}, "capabilities", ["python", "docker"]),
        ({"TASK_TIMEOUT_MINUTES": "2"}, "task_timeout", 120),
        ({"TASK_TIMEOUT": "90", "TASK_TIMEOUT_MINUTES": "2"}, "task_timeout", 90),
        ({"AGENT_RUNNER": "Command", "AGENT_COMMAND": "./run"}, "agent_runner", "command"),
        ({"AGENT_URL": "https://agent-7.lan/"}, "url", "https://agent-7.lan"),
    ],
)
def test_the_seeds_names(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], field: str, value: object
) -> None:
    assert getattr(settings(monkeypatch, **env), field) == value


def test_agent_port_wins_over_port(monkeypatch: pytest.MonkeyPatch) -> None:
    # `claude-cluster up` hands agents the coordinator's PORT as well
    assert settings(monkeypatch, PORT="8080", AGENT_PORT="8085").port == 8085


@pytest.mark.parametrize("missing", ["COORDINATOR_URL", "REGISTRATION_TOKEN"])
def test_a_missing_required_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    for name, value in REQUIRED.items():
        if name != missing:
            monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=missing):
        load_agent_settings()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"REGISTRATION_TOKEN": "changeme"}, "REGISTRATION_TOKEN"),
        ({"AGENT_PORT": "eighty"}, "AGENT_PORT"),
        ({"AGENT_RUNNER": "gpt"}, "AGENT_RUNNER"),
        ({"AGENT_RUNNER": "command"}, "AGENT_COMMAND"),
        ({"COORDINATOR_URL": "coordinator:8080"}, "COORDINATOR_URL"),
        ({"AGENT_SECRET": "short"}, "AGENT_SECRET"),
        ({"MAX_CONCURRENT_TASKS": "0"}, "MAX_CONCURRENT_TASKS"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        settings(monkeypatch, **env)


def test_a_placeholder_token_is_fine_with_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings(monkeypatch, REGISTRATION_TOKEN="changeme", DEBUG="true").debug


def test_env_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_file = tmp_path / "agent.env"
    env_file.write_text(
        "COORDINATOR_URL=http://c:8080\nREGISTRATION_TOKEN=" + "t" * 20 + "\nAGENT_ID=a-7\n"
    )
    s = load_agent_settings(env_file)
    assert (s.agent_id, s.coordinator_url) == ("a-7", "http://c:8080")


def test_only_credentials_reach_the_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch, ANTHROPIC_API_KEY="sk-1", ANTHROPIC_BASE_URL="http://fake")
    assert runner_env(s) == {"ANTHROPIC_API_KEY": "sk-1", "ANTHROPIC_BASE_URL": "http://fake"}
    shown = s.public_configuration()
    assert "sk-1" not in str(shown) and s.registration_token not in str(shown)


def test_a_tls_certificate_makes_the_agent_serve_https(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tests.support.tls import TestCA

    ca = TestCA(tmp_path / "pki")
    leaf = ca.issue("agent")
    s = settings(
        monkeypatch,
        COORDINATOR_URL="https://10.0.0.1:8080",
        IP_ADDRESS="10.0.0.2",
        TLS_CERT_FILE=str(leaf.cert),
        TLS_KEY_FILE=str(leaf.key),
        TLS_CA_FILE=str(ca.cert),
    )
    assert s.url == "https://10.0.0.2:8081"
    assert s.tls_ca_file == ca.cert
    with pytest.raises(ConfigError, match="TLS_CERT_FILE and TLS_KEY_FILE must be set together"):
        settings(monkeypatch, TLS_KEY_FILE="", TLS_CERT_FILE=str(leaf.cert))
