from __future__ import annotations

import pytest

from claude_cluster.config import load
from claude_cluster.coordinator.config import CoordinatorSettings
from claude_cluster.errors import ConfigError

GOOD = {
    "SECRET_KEY": "s3cr3t-key-for-tests",
    "ADMIN_TOKEN": "admin-token-for-tests",
    "AGENT_REGISTRATION_TOKEN": "registration-token-for-tests",
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for name in (*GOOD, "DEBUG", "DATABASE_URL", "PORT", "WORKERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(str(tmp_path))  # no stray .env


def test_seed_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        **GOOD,
        "PORT": "9000",
        "MAX_CONCURRENT_TASKS": "7",
        "DATABASE_URL": "postgresql://u:p@db/c",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load(CoordinatorSettings)
    assert (settings.port, settings.max_concurrent_tasks) == (9000, 7)
    assert settings.database_url == "postgresql://u:p@db/c"


def test_embedded_default_is_sqlite_in_the_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in GOOD.items():
        monkeypatch.setenv(name, value)
    settings = load(CoordinatorSettings)
    assert settings.is_sqlite
    assert settings.database_url.endswith("/.data/coordinator.db")


@pytest.mark.parametrize("name", list(GOOD))
def test_placeholder_secrets_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    for key, value in GOOD.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(name, "changeme")
    with pytest.raises(ConfigError, match=name):
        load(CoordinatorSettings)
    monkeypatch.setenv("DEBUG", "true")
    assert load(CoordinatorSettings).debug


def test_malformed_values_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in GOOD.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PORT", "eighty")
    with pytest.raises(ConfigError, match="PORT"):
        load(CoordinatorSettings)
    monkeypatch.setenv("PORT", "8080")
    monkeypatch.setenv("DATABASE_URL", "mysql://x")
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        load(CoordinatorSettings)
