"""The coordinator's settings: the seed's variable names plus what the design adds."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator

from claude_cluster.config import is_placeholder, settings_config
from claude_cluster.tls import TlsSettings

DEFAULT_DATA_DIR = Path(".data")


class CoordinatorSettings(TlsSettings):
    model_config = settings_config()

    app_name: str = "Claude Code Coordinator"
    debug: bool = False
    host: str = "0.0.0.0"  # noqa: S104 - the coordinator serves the LAN by design
    port: int = Field(default=8080, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)

    #: embedded default: a SQLite file in DATA_DIR; production: postgresql://...
    database_url: str = ""
    data_dir: Path = DEFAULT_DATA_DIR
    database_pool_size: int = Field(default=10, ge=1)
    database_max_overflow: int = Field(default=20, ge=0)
    #: empty = in-process event bus (one coordinator process)
    redis_url: str = ""

    secret_key: str = ""
    admin_token: str = ""
    agent_registration_token: str = ""

    #: how long a dashboard sign-in lasts (hours)
    dashboard_session_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    #: mark session cookies Secure even when the request arrived over plain HTTP (behind a
    #: TLS-terminating proxy)
    force_secure_cookies: bool = False
    #: bearer token /metrics requires; empty = /metrics is open
    metrics_token: SecretStr | None = None

    #: webhook deliveries older than this are deleted by the housekeeping job
    webhook_retention_days: float = Field(default=30.0, gt=0)
    #: events of tasks that ended longer ago than this are deleted; unset = kept forever
    task_event_retention_days: float | None = Field(default=None, gt=0)
    #: seconds between housekeeping passes
    housekeeping_interval: float = Field(default=3600.0, gt=0)

    max_agents: int = Field(default=10, ge=1)
    agent_heartbeat_timeout: float = Field(default=300.0, gt=0)
    run_lease_seconds: float = Field(default=30.0, gt=0)
    #: how long a run has to push and open its pull request after its delivery was
    #: confirmed; the run is not presumed lost before this plus a lease has passed
    delivery_window_seconds: float = Field(default=300.0, gt=0)
    heartbeat_interval: float = Field(default=10.0, gt=0)
    max_concurrent_tasks: int = Field(default=50, ge=1)
    task_timeout: float = Field(default=3600.0, gt=0)
    task_retry_attempts: int = Field(default=3, ge=0)
    retry_base_seconds: float = Field(default=10.0, ge=0)
    retry_max_seconds: float = Field(default=300.0, ge=0)
    sweep_interval: float = Field(default=2.0, gt=0)
    agent_call_timeout: float = Field(default=10.0, gt=0)
    #: how long a failed push keeps an agent out of the candidate list
    agent_cooldown_seconds: float = Field(default=15.0, ge=0)

    github_web_url: str = "https://github.com"
    #: REST API root; ``https://HOST/api/v3`` for GitHub Enterprise Server
    github_api_url: str = "https://api.github.com"
    #: personal access token (used when the GITHUB_APP_* variables are not all set)
    github_token: SecretStr | None = None
    github_app_id: str | None = None
    #: the App's private key: PEM text (``\\n`` accepted) or a path to a PEM file
    github_app_private_key: SecretStr | None = None
    github_app_installation_id: int | None = None
    #: HMAC secret of ``POST /webhook/github``; empty refuses every delivery
    github_webhook_secret: SecretStr | None = None
    #: watched repositories, ``owner/a,owner/b``; empty turns the GitHub loop off
    github_repositories: str = ""
    #: JSON or YAML per-repository overrides (labels, test command, daily budget)
    github_repositories_file: Path | None = None
    #: seconds between polls of the watched repositories; 0 = webhooks only
    github_poll_interval: float = Field(default=0.0, ge=0)
    #: an issue opened without a trigger label starts a task too (default for every repo)
    github_trigger_on_opened: bool = False
    #: seconds between two edits of one task's progress comment (GitHub's secondary limits)
    github_progress_interval: float = Field(default=10.0, ge=0)
    #: seconds a worker holds a webhook delivery it processes (renewed while it works); a
    #: claim whose process died is taken again after this
    github_delivery_lease_seconds: float = Field(default=60.0, gt=0)
    #: attempts at a webhook delivery whose processing fails before it is given up (error)
    github_delivery_attempts: int = Field(default=5, ge=1)
    #: back-off after a failed attempt: doubles per attempt, capped at 10 minutes
    github_delivery_retry_seconds: float = Field(default=5.0, ge=0)

    log_level: str = "INFO"
    #: json (machines, files), console (one readable line per event) or color
    log_format: Literal["json", "console", "color"] = "json"
    log_file: Path | None = None
    metrics_port: int | None = None  # kept for the seed; metrics are served on PORT at /metrics

    @model_validator(mode="after")
    def _secrets_and_store(self) -> Self:
        if not self.debug:
            for name in ("secret_key", "admin_token", "agent_registration_token"):
                if is_placeholder(getattr(self, name)):
                    raise ValueError(
                        f"{name.upper()} is unset or a placeholder; set a real secret "
                        "(or DEBUG=true for a throwaway setup)"
                    )
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'coordinator.db').resolve()}"
        if not self.database_url.startswith(("sqlite", "postgresql", "postgres")):
            raise ValueError("DATABASE_URL must be a sqlite:/// or postgresql:// URL")
        return self

    @property
    def github_enabled(self) -> bool:
        """The GitHub loop runs when at least one repository is watched."""
        return bool(self.github_repositories.strip())

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
