"""The agent daemon's settings: the seed's variable names, both spellings where it has two.

Read only through :func:`load_agent_settings` (or :func:`claude_cluster.config.load`), which
turns a bad or missing value into a :class:`~claude_cluster.errors.ConfigError` naming the
variable. Lists (``SPECIALTIES``, ``CAPABILITIES``) are comma separated; a JSON list works
too.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from claude_cluster.agent.ca_bundle import check_extra_ca
from claude_cluster.config import is_placeholder, load, settings_config
from claude_cluster.tls import TlsSettings

__all__ = ["AgentSettings", "load_agent_settings"]

#: variables that carry credentials: passed to the runner, never logged
SECRET_FIELDS = frozenset(
    {"registration_token", "agent_secret", "anthropic_api_key", "claude_code_oauth_token"}
)
_RUNNERS = ("claude", "codex", "aider", "command")


def _alias(*names: str) -> Any:
    return AliasChoices(*names)


CommaList = Annotated[list[str], NoDecode]


class AgentSettings(TlsSettings):
    """Everything the agent daemon reads from its environment (or ``.env`` file).

    Where the seed used two names for one setting both are accepted: ``AGENT_SPECIALTY`` /
    ``SPECIALTIES``, ``AGENT_HOST`` / ``HOST``, ``AGENT_PORT`` / ``PORT``, ``TASK_TIMEOUT``
    (seconds) / ``TASK_TIMEOUT_MINUTES``.
    """

    model_config = SettingsConfigDict(**settings_config(), populate_by_name=True)

    # --- identity ---------------------------------------------------------------------
    agent_id: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$", max_length=128)
    agent_name: str = ""
    specialties: CommaList = Field(
        default_factory=lambda: ["general"],
        validation_alias=_alias("AGENT_SPECIALTY", "SPECIALTIES", "AGENT_SPECIALTIES"),
    )
    capabilities: CommaList = Field(default_factory=list)

    # --- network ----------------------------------------------------------------------
    host: str = Field(default="0.0.0.0", validation_alias=_alias("AGENT_HOST", "HOST"))  # noqa: S104 - reachable by the coordinator
    port: int = Field(default=8081, ge=1, le=65535, validation_alias=_alias("AGENT_PORT", "PORT"))
    #: what the coordinator uses to reach us; default: the address that routes to it
    ip_address: str = ""
    #: full base URL override (behind NAT or a proxy)
    agent_url: str | None = None
    coordinator_url: str
    registration_token: str
    #: the bearer secret the coordinator must present; generated per start when unset
    agent_secret: str = ""

    # --- runs -------------------------------------------------------------------------
    workspace_path: Path = Path("/opt/agent/workspace")
    #: where the agent keeps its own token (0700; default ``WORKSPACE_PATH/state``)
    state_dir: Path = Field(default=Path(), validation_alias=_alias("AGENT_STATE_DIR", "STATE_DIR"))
    max_concurrent_tasks: int = Field(default=3, ge=1, le=256)
    task_timeout: float = Field(default=3600.0, gt=0)
    task_timeout_minutes: float | None = Field(default=None, gt=0)
    stall_timeout: float = Field(default=300.0, gt=0)
    result_grace: float = Field(default=10.0, gt=0)
    heartbeat_interval: float = Field(default=10.0, gt=0)
    git_user_name: str = "Claude Code Cluster"
    git_user_email: str = "claude-cluster@localhost"
    branch_prefix: str = "claude/"
    max_fix_rounds: int = Field(default=2, ge=0, le=10)
    test_timeout: float = Field(default=900.0, gt=0)
    #: confine every process of a run (bubblewrap + the gateway); off only when set so
    run_sandbox: bool = True
    #: hosts every run may reach through the gateway besides the model API (comma list;
    #: ``host``, ``*.domain``, optionally ``:port``; without a port only 443)
    run_egress_allow: CommaList = Field(default_factory=list)
    #: a PEM file of CA certificates the runs' tools trust besides the system roots (a
    #: private package index's CA); bound read-only into every run's sandbox
    run_ca_bundle: Path | None = None
    #: paths a run may not change; refused at delivery (``dir/**`` = all below ``dir``)
    protected_paths: CommaList = Field(default_factory=lambda: [".github/workflows/**"])
    workspace_cleanup_days: float = Field(default=7.0, gt=0)
    #: the agent is not ready (takes no work) with less free space under WORKSPACE_PATH
    workspace_min_free_gb: float = Field(default=1.0, ge=0)
    #: seconds between rechecks of the agent's readiness (runner, credential, sandbox,
    #: workspace); a failing check stops its work, a passing one resumes it
    ready_check_interval: float = Field(default=60.0, gt=0)
    workspace_max_size_gb: float = Field(default=100.0, gt=0)

    # --- the runner -------------------------------------------------------------------
    agent_runner: str = "claude"
    agent_command: str | None = None
    claude_model: str | None = None
    claude_code_cli_path: str | None = None
    claude_max_turns: int | None = Field(default=None, ge=1)
    anthropic_api_key: str | None = None
    claude_code_oauth_token: str | None = None
    anthropic_base_url: str | None = None
    github_api_url: str = "https://api.github.com"

    # --- host facts (detected when unset) ---------------------------------------------
    cpu_cores: int | None = Field(default=None, ge=1)
    memory_gb: float | None = Field(default=None, gt=0)
    disk_gb: float | None = Field(default=None, gt=0)

    log_level: str = "INFO"
    #: json (machines, files), console (one readable line per event) or color
    log_format: Literal["json", "console", "color"] = "json"
    log_file: Path | None = None
    debug: bool = False

    @field_validator(
        "specialties", "capabilities", "run_egress_allow", "protected_paths", mode="before"
    )
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("run_ca_bundle", mode="before")
    @classmethod
    def _empty_ca_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("run_ca_bundle")
    @classmethod
    def _pem_certificates(cls, value: Path | None) -> Path | None:
        if value is not None:
            check_extra_ca(value)
        return value

    @field_validator("agent_runner")
    @classmethod
    def _known_runner(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in _RUNNERS:
            raise ValueError(f"must be one of {', '.join(_RUNNERS)}")
        return value

    @field_validator("coordinator_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).hostname:
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if not self.debug and is_placeholder(self.registration_token):
            raise ValueError(
                "REGISTRATION_TOKEN is unset or a placeholder; set the coordinator's "
                "AGENT_REGISTRATION_TOKEN (or DEBUG=true for a throwaway setup)"
            )
        if self.agent_secret and len(self.agent_secret) < 16:
            raise ValueError("AGENT_SECRET must be at least 16 characters")
        if self.agent_runner == "command" and not self.agent_command:
            raise ValueError("AGENT_COMMAND is required when AGENT_RUNNER=command")
        if self.task_timeout_minutes is not None and "task_timeout" not in self.model_fields_set:
            self.task_timeout = self.task_timeout_minutes * 60
        hostname = socket.gethostname()
        self.agent_id = self.agent_id or _safe_id(hostname)
        self.agent_name = self.agent_name or self.agent_id
        self.agent_secret = self.agent_secret or secrets.token_urlsafe(32)
        self.ip_address = self.ip_address or _primary_address(self.coordinator_url)
        self.workspace_path = self.workspace_path.expanduser()
        if "state_dir" not in self.model_fields_set:
            self.state_dir = self.workspace_path / "state"
        self.state_dir = self.state_dir.expanduser()
        self.cpu_cores = self.cpu_cores or os.cpu_count() or 1
        self.memory_gb = self.memory_gb or _memory_gb()
        self.disk_gb = self.disk_gb or _disk_gb(self.workspace_path)
        return self

    @property
    def url(self) -> str:
        """The base URL the coordinator calls us on."""
        scheme = "https" if self.serves_tls else "http"
        return (self.agent_url or f"{scheme}://{self.ip_address}:{self.port}").rstrip("/")

    def public_configuration(self) -> dict[str, Any]:
        """The settings worth showing to the coordinator: no credentials."""
        shown = ("agent_runner", "claude_model", "max_fix_rounds", "task_timeout", "branch_prefix")
        values = {name: getattr(self, name) for name in shown}
        values["sandbox"] = "on" if self.run_sandbox else "off"
        return values


def load_agent_settings(env_file: Path | None = None, **overrides: Any) -> AgentSettings:
    """Build the settings from the environment and ``env_file`` (default ``.env``).

    Raises:
        ConfigError: a variable is missing or invalid; the message names it.
    """
    if env_file is not None:
        overrides.setdefault("_env_file", str(env_file))
    return load(AgentSettings, **overrides)


def _safe_id(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in name).strip("-.")
    return (cleaned or "agent")[:128]


def _primary_address(coordinator_url: str) -> str:
    """The local address of the route to the coordinator (no packet is sent)."""
    host = urlsplit(coordinator_url).hostname or "127.0.0.1"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((host, 9))
            address = str(sock.getsockname()[0])
    except OSError:
        return "127.0.0.1"
    return address if address != "0.0.0.0" else "127.0.0.1"  # noqa: S104


def _memory_gb() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * size / 2**30, 1) if pages > 0 and size > 0 else None


def _disk_gb(path: Path) -> float | None:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return round(shutil.disk_usage(probe).total / 2**30, 1)
    except OSError:
        return None
