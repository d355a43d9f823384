"""Watched-repository configuration and the trigger rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from claude_cluster.errors import ConfigError
from claude_cluster.github import (
    ASSIGNED_LABEL,
    DEFAULT_EXCLUSION_LABELS,
    DEFAULT_TRIGGER_LABELS,
    RepositoryConfig,
    has_trigger_label,
    load_repositories,
    parse_repository_names,
    should_trigger,
)

CFG = RepositoryConfig(full_name="octo/app")


def test_defaults_are_the_seeds_labels() -> None:
    assert DEFAULT_TRIGGER_LABELS[0] == "claude-code"
    assert "claude-code-security" in DEFAULT_TRIGGER_LABELS and len(DEFAULT_TRIGGER_LABELS) == 9
    assert set(DEFAULT_EXCLUSION_LABELS) == {
        "discussion",
        "design",
        "on-hold",
        "manual-only",
        "blocked",
        "wontfix",
        "duplicate",
        "invalid",
    }
    assert (CFG.owner, CFG.name, CFG.trigger_on_opened) == ("octo", "app", False)


def test_parse_names() -> None:
    assert parse_repository_names(" octo/a, octo/b ,,") == ["octo/a", "octo/b"]
    assert parse_repository_names("") == []
    with pytest.raises(ConfigError, match="'octo' is not owner/name"):
        parse_repository_names("octo")
    with pytest.raises(ConfigError):
        parse_repository_names("octo/../etc")


def test_load_without_overrides() -> None:
    repos = load_repositories("octo/a,Octo/B")
    assert list(repos) == ["octo/a", "Octo/B"]
    assert repos["octo/b"].full_name == "Octo/B"  # GitHub names ignore case
    assert repos["octo/a"].trigger_labels == DEFAULT_TRIGGER_LABELS


def test_load_yaml_overrides(tmp_path: Path) -> None:
    file = tmp_path / "repos.yaml"
    file.write_text(
        "defaults:\n  trigger_on_opened: true\n"
        "repositories:\n  octo/a:\n    trigger_labels: [ai]\n    test_command: make test\n"
        "    daily_budget_usd: 12.5\n"
    )
    repos = load_repositories("octo/a,octo/b", file)
    a, b = repos["octo/a"], repos["octo/b"]
    assert (a.trigger_labels, a.test_command, a.daily_budget_usd) == (("ai",), "make test", 12.5)
    assert a.trigger_on_opened and b.trigger_on_opened
    assert b.trigger_labels == DEFAULT_TRIGGER_LABELS


def test_load_json_overrides(tmp_path: Path) -> None:
    file = tmp_path / "repos.json"
    file.write_text(json.dumps({"repositories": {"OCTO/A": {"exclusion_labels": []}}}))
    assert load_repositories("octo/a", file)["octo/a"].exclusion_labels == ()


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ('{"repositories": {"octo/typo": {}}}', ".json", "not in GITHUB_REPOSITORIES: octo/typo"),
        ('{"repositories": {"octo/a": {"colour": 1}}}', ".json", "colour"),
        ('{"repositories": {"octo/a": {"daily_budget_usd": -1}}}', ".json", "daily_budget_usd"),
        ("{not json", ".json", "not JSON"),
        ("a: [", ".yaml", "not YAML"),
        ("[1, 2]", ".json", "must be a mapping"),
    ],
)
def test_bad_override_files(tmp_path: Path, content: str, suffix: str, message: str) -> None:
    file = tmp_path / f"repos{suffix}"
    file.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_repositories("octo/a", file)


def test_missing_override_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_repositories("octo/a", tmp_path / "absent.json")


@pytest.mark.parametrize(
    ("labels", "action", "label", "trigger", "reason"),
    [
        (["claude-code"], "labeled", "claude-code", True, "labelled 'claude-code'"),
        (["claude-code-urgent"], "labeled", "claude-code-urgent", True, "labelled"),
        (["bug", "claude-code"], "labeled", "bug", False, "'bug' is not a trigger label"),
        (
            ["claude-code", "on-hold"],
            "labeled",
            "claude-code",
            False,
            "excluded by label 'on-hold'",
        ),
        (["claude-code", ASSIGNED_LABEL], "labeled", "claude-code", True, "labelled"),
        (["claude-code"], "opened", None, True, "opened with label 'claude-code'"),
        (["bug"], "opened", None, False, "no trigger label"),
        (["claude-code"], "reopened", None, True, "reopened with label"),
        (["claude-code"], "poll", None, True, "poll with label"),
        (["claude-code", ASSIGNED_LABEL], "poll", None, False, "already 'claude-code-assigned'"),
        (["claude-code", "wontfix"], "poll", None, False, "excluded by label 'wontfix'"),
        (["claude-code"], "edited", None, False, "action 'edited' does not start a task"),
        (["claude-code"], "closed", None, False, "does not start a task"),
    ],
)
def test_should_trigger(labels, action, label, trigger, reason) -> None:
    decision = should_trigger(CFG, labels, action, label)
    assert decision.trigger is trigger
    assert reason in decision.reason


def test_trigger_on_opened_without_labels() -> None:
    cfg = RepositoryConfig(full_name="octo/app", trigger_on_opened=True)
    assert should_trigger(cfg, [], "opened").trigger
    assert not should_trigger(cfg, [], "poll").trigger  # a poll still needs a label
    assert not should_trigger(cfg, ["design"], "opened").trigger


def test_has_trigger_label() -> None:
    assert has_trigger_label(CFG, ["bug", "claude-code-backend"])
    assert not has_trigger_label(CFG, ["bug", ASSIGNED_LABEL])


def test_trust_settings_are_checked(tmp_path: Path) -> None:
    assert CFG.trusted_associations == ("OWNER", "MEMBER", "COLLABORATOR")
    assert CFG.trusted_permissions == ("admin", "maintain", "write")
    custom = RepositoryConfig(
        full_name="octo/app", trusted_associations=("owner",), trusted_permissions=("ADMIN",)
    )
    assert (custom.trusted_associations, custom.trusted_permissions) == (("OWNER",), ("admin",))
    path = tmp_path / "repos.json"
    path.write_text('{"repositories": {"octo/app": {"trusted_associations": ["FRIEND"]}}}')
    with pytest.raises(ConfigError, match=r"trusted_associations.*FRIEND"):
        load_repositories("octo/app", path)
    path.write_text('{"defaults": {"trusted_permissions": ["push"]}}')
    with pytest.raises(ConfigError, match=r"trusted_permissions.*push"):
        load_repositories("octo/app", path)
