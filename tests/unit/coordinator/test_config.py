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


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TLS_CERT_FILE": "{cert}"}, "TLS_CERT_FILE and TLS_KEY_FILE must be set together"),
        ({"TLS_KEY_FILE": "{key}"}, "TLS_CERT_FILE and TLS_KEY_FILE must be set together"),
        (
            {"TLS_CERT_FILE": "{cert}", "TLS_KEY_FILE": "/nonexistent/key.pem"},
            "TLS_KEY_FILE: /nonexistent/key.pem is not a readable file",
        ),
        ({"TLS_CA_FILE": "{key}x"}, "TLS_CA_FILE"),
        ({"TLS_CA_FILE": "{garbage}"}, "TLS_CA_FILE"),
    ],
    ids=["cert-without-key", "key-without-cert", "missing-key", "missing-ca", "ca-not-pem"],
)
def test_tls_files_are_checked_and_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object, env: dict[str, str], named: str
) -> None:
    from pathlib import Path

    from tests.support.tls import TestCA

    base = Path(str(tmp_path))
    ca = TestCA(base / "pki")
    leaf = ca.issue("coordinator")
    (base / "garbage.pem").write_text("not a certificate")
    paths = {"cert": leaf.cert, "key": leaf.key, "garbage": base / "garbage.pem"}
    for name, value in {**GOOD, **env}.items():
        monkeypatch.setenv(name, value.format(**paths))
    with pytest.raises(ConfigError, match=named):
        load(CoordinatorSettings)


def test_tls_files_load_and_empty_values_mean_plain_http(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    from pathlib import Path

    from tests.support.tls import TestCA

    ca = TestCA(Path(str(tmp_path)) / "pki")
    leaf = ca.issue("coordinator")
    for name, value in GOOD.items():
        monkeypatch.setenv(name, value)
    for name in ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CA_FILE"):
        monkeypatch.setenv(name, "")
    assert not load(CoordinatorSettings).serves_tls
    monkeypatch.setenv("TLS_CERT_FILE", str(leaf.cert))
    monkeypatch.setenv("TLS_KEY_FILE", str(leaf.key))
    monkeypatch.setenv("TLS_CA_FILE", str(ca.cert))
    settings = load(CoordinatorSettings)
    assert settings.serves_tls and settings.tls_ca_file == ca.cert
