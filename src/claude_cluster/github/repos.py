"""Which repositories are watched, how, and whether an issue event starts a task.

``GITHUB_REPOSITORIES`` (``owner/a,owner/b``) names the watched repositories; an optional
JSON or YAML file overrides settings per repository::

    defaults:               # applied to every repository
      trigger_on_opened: false
    repositories:
      owner/a:
        trigger_labels: [claude-code, ai]
        test_command: "uv run pytest -q"
        daily_budget_usd: 20
        contract:             # the operator's side of .claude-cluster.yml: defaults, caps
          budget_usd: 10
          network: {allow: [pypi.org, files.pythonhosted.org]}
        trusted_logins: [renovate[bot]]   # besides OWNER, MEMBER, COLLABORATOR

:func:`should_trigger` is the one rule that decides, for webhooks and polls alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from claude_cluster.domain.contract import OperatorPolicy
from claude_cluster.errors import ConfigError
from claude_cluster.github._rest import check_repo
from claude_cluster.github.trust import (
    ASSOCIATIONS,
    DEFAULT_TRUSTED_ASSOCIATIONS,
    DEFAULT_TRUSTED_PERMISSIONS,
    PERMISSIONS,
)

DEFAULT_TRIGGER_LABELS: tuple[str, ...] = (
    "claude-code",
    *(
        f"claude-code-{kind}"
        for kind in (
            "ready",
            "urgent",
            "backend",
            "frontend",
            "testing",
            "infrastructure",
            "database",
            "security",
        )
    ),
)
DEFAULT_EXCLUSION_LABELS: tuple[str, ...] = (
    "discussion",
    "design",
    "on-hold",
    "manual-only",
    "blocked",
    "wontfix",
    "duplicate",
    "invalid",
)
#: added to an issue once a task exists for it
ASSIGNED_LABEL = "claude-code-assigned"


class RepositoryConfig(BaseModel):
    """How one repository is watched."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    full_name: str
    trigger_labels: tuple[str, ...] = DEFAULT_TRIGGER_LABELS
    exclusion_labels: tuple[str, ...] = DEFAULT_EXCLUSION_LABELS
    #: an issue opened without any trigger label starts a task too
    trigger_on_opened: bool = False
    #: the repository's test command; None lets the agent detect it
    test_command: str | None = None
    #: dollars per day for this repository; None means no repository budget
    daily_budget_usd: float | None = Field(default=None, ge=0)
    #: the operator's side of the repository contract: defaults and caps (SPEC §4b)
    contract: OperatorPolicy = OperatorPolicy()
    #: ``author_association`` values whose comments, reviews and issues steer runs
    trusted_associations: tuple[str, ...] = DEFAULT_TRUSTED_ASSOCIATIONS
    #: repository permissions whose labels, edits, closes and reopens steer runs
    trusted_permissions: tuple[str, ...] = DEFAULT_TRUSTED_PERMISSIONS
    #: logins trusted whatever GitHub says of them (bots, for instance)
    trusted_logins: tuple[str, ...] = ()

    @field_validator("trusted_associations")
    @classmethod
    def _associations(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        upper = tuple(v.upper() for v in value)
        unknown = sorted(set(upper) - ASSOCIATIONS)
        if unknown:
            raise ValueError(f"unknown author_association {unknown[0]!r}")
        return upper

    @field_validator("trusted_permissions")
    @classmethod
    def _permissions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        lower = tuple(v.lower() for v in value)
        unknown = sorted(set(lower) - PERMISSIONS)
        if unknown:
            raise ValueError(f"unknown permission {unknown[0]!r}")
        return lower

    @field_validator("full_name")
    @classmethod
    def _owner_name(cls, value: str) -> str:
        return check_repo(value.strip())

    @property
    def owner(self) -> str:
        return self.full_name.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.full_name.split("/", 1)[1]


class RepositoryConfigs(Mapping[str, RepositoryConfig]):
    """Watched repositories by ``owner/name``; lookups ignore case, as GitHub does."""

    def __init__(self, configs: Iterable[RepositoryConfig]) -> None:
        self._by_key = {cfg.full_name.lower(): cfg for cfg in configs}

    def __getitem__(self, full_name: str) -> RepositoryConfig:
        return self._by_key[full_name.lower()]

    def __iter__(self) -> Iterator[str]:
        return (cfg.full_name for cfg in self._by_key.values())

    def __len__(self) -> int:
        return len(self._by_key)


def parse_repository_names(value: str) -> list[str]:
    """``"owner/a, owner/b"`` → ``["owner/a", "owner/b"]``; empty items are dropped."""
    names = [part.strip() for part in value.split(",") if part.strip()]
    for name in names:
        try:
            check_repo(name)
        except ValueError:
            raise ConfigError(f"GITHUB_REPOSITORIES: {name!r} is not owner/name") from None
    return names


def load_repositories(names: str, overrides_file: Path | None = None) -> RepositoryConfigs:
    """Build the watched repositories from ``GITHUB_REPOSITORIES`` and an overrides file.

    Raises:
        ConfigError: a malformed name, an unreadable file, an unknown setting, or an
            override for a repository that ``GITHUB_REPOSITORIES`` does not name (a typo).
    """
    listed = parse_repository_names(names)
    defaults: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    if overrides_file is not None:
        document = _read_document(overrides_file)
        defaults = dict(document.get("defaults") or {})
        overrides = {k.lower(): v for k, v in (document.get("repositories") or {}).items()}
    unknown = set(overrides) - {name.lower() for name in listed}
    if unknown:
        raise ConfigError(
            f"{overrides_file}: overrides for repositories not in GITHUB_REPOSITORIES: "
            + ", ".join(sorted(unknown))
        )
    configs = []
    for name in listed:
        settings = {**defaults, **(overrides.get(name.lower()) or {}), "full_name": name}
        try:
            configs.append(RepositoryConfig.model_validate(settings))
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(part) for part in first["loc"])
            raise ConfigError(f"repository {name}: {key}: {first['msg']}") from None
    return RepositoryConfigs(configs)


def _read_document(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read repository overrides {path}: {exc.strerror}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        document = _parse_yaml(path, text)
    else:
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"repository overrides {path} are not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"repository overrides {path} must be a mapping")
    return document


def _parse_yaml(path: Path, text: str) -> Any:
    try:
        import yaml  # only YAML override files need it
    except ImportError:
        raise ConfigError(f"{path}: YAML overrides need PyYAML; use JSON instead") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"repository overrides {path} are not YAML: {exc}") from None


@dataclass(frozen=True)
class Decision:
    trigger: bool
    reason: str


def should_trigger(
    repo_cfg: RepositoryConfig,
    labels: Iterable[str],
    action: str,
    label_name: str | None = None,
) -> Decision:
    """Whether an issue in this state starts a task.

    Args:
        repo_cfg: the repository's watch configuration.
        labels: every label now on the issue.
        action: the ``issues`` webhook action, or ``"poll"`` for the polling fallback.
        label_name: for ``labeled``, the label that was just added.

    A ``labeled`` event with a trigger label is a person asking, so it triggers even when
    the issue already carries ``claude-code-assigned`` (the coordinator's deduplication
    keeps it to one live task). A poll cannot tell a new request from an old one, so it
    skips assigned issues.
    """
    present = set(labels)
    excluded = sorted(present.intersection(repo_cfg.exclusion_labels))
    if excluded:
        return Decision(False, f"excluded by label {excluded[0]!r}")
    triggers = sorted(present.intersection(repo_cfg.trigger_labels))
    if action == "labeled":
        if label_name in repo_cfg.trigger_labels:
            return Decision(True, f"labelled {label_name!r}")
        return Decision(False, f"label {label_name!r} is not a trigger label")
    if action in ("opened", "reopened", "poll"):
        if action == "poll" and ASSIGNED_LABEL in present:
            return Decision(False, f"already {ASSIGNED_LABEL!r}")
        if triggers:
            return Decision(True, f"{action} with label {triggers[0]!r}")
        if action == "opened" and repo_cfg.trigger_on_opened:
            return Decision(True, "opened, and this repository triggers on opened")
        return Decision(False, "no trigger label")
    return Decision(False, f"action {action!r} does not start a task")


def has_trigger_label(repo_cfg: RepositoryConfig, labels: Iterable[str]) -> bool:
    """Whether any trigger label remains (``unlabeled`` of the last one cancels a queued task)."""
    return bool(set(labels).intersection(repo_cfg.trigger_labels))
