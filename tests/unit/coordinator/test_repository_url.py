from __future__ import annotations

from pathlib import Path

import pytest

from claude_cluster.coordinator.service import repository_url
from claude_cluster.errors import ConfigError

WEB = "https://github.example/"


def test_owner_name_is_a_github_clone_url_even_beside_a_same_named_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "acme" / "app").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert repository_url("acme/app", WEB) == "https://github.example/acme/app.git"


def test_local_repositories_are_fetched_as_given() -> None:
    assert repository_url("/srv/repos/app", WEB) == "/srv/repos/app"
    assert repository_url("file:///srv/repos/app", WEB) == "file:///srv/repos/app"


def test_a_relative_path_is_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="github_repository"):
        repository_url("repos/app/sub", WEB)
