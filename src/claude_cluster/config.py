"""Settings shared by every process: the placeholder-secret rule and the error that names
the bad variable. Each process has its own typed settings object
(:class:`claude_cluster.coordinator.config.CoordinatorSettings`,
:class:`claude_cluster.agent.config.AgentSettings`), read only through :func:`load`.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from claude_cluster.errors import ConfigError

#: values that mean "nobody set this": refused for secrets unless DEBUG=true
PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "changethis", "change-me", "secret", "password", "your-secret-key", "xxx"}
)

S = TypeVar("S", bound=BaseSettings)


def settings_config(env_file: str | None = ".env") -> SettingsConfigDict:
    return SettingsConfigDict(
        env_file=env_file, env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )


def is_placeholder(value: str | None) -> bool:
    return value is None or value.strip().lower() in PLACEHOLDER_SECRETS


def load(cls: type[S], **overrides: Any) -> S:
    """Build ``cls`` from the environment, turning validation errors into a
    :class:`ConfigError` whose message names each bad variable."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = str(err["loc"][0]).upper() if err["loc"] else "settings"
            problems.append(f"{name}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
