"""``claude-cluster repo check`` as a person runs it: a real process on real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def repo_check(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "claude_cluster", "repo", "check", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_valid_contract_prints_the_plan(tmp_path: Path) -> None:
    (tmp_path / ".claude-cluster.yml").write_text(
        "setup:\n  - name: deps\n    run: uv sync\n    timeout: 120\n"
        "test: uv run pytest -q\nnetwork: {allow: [pypi.org, evil.example.com]}\n"
        "when_tests_fail: draft\n"
    )
    done = repo_check(".", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "contract: .claude-cluster.yml" in lines
    assert "  - deps  (timeout 120 s)" in lines
    assert "tests: uv run pytest -q" in lines
    assert "network: the model API, pypi.org" in lines
    assert "when tests fail: draft; when untested: draft" in lines
    assert "note: network.allow: not in the operator's allowlist: evil.example.com" in lines


def test_without_a_contract_it_says_what_would_be_detected(tmp_path: Path) -> None:
    (tmp_path / "go.mod").write_text("module example.com/x\n")
    done = repo_check(str(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "contract: none (defaults apply)" in done.stdout
    assert "tests: none declared; detected: go test -v ./..." in done.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    done = repo_check(str(empty), cwd=tmp_path)
    assert "none declared and none detected: the run would be untested" in done.stdout


def test_an_invalid_contract_names_key_and_line_and_exits_1(tmp_path: Path) -> None:
    (tmp_path / ".github").mkdir()
    (tmp_path / ".github" / "claude-cluster.yml").write_text("test: x\nbudget_usd: free\n")
    done = repo_check(".", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert "invalid contract: line 2, key 'budget_usd'" in done.stderr


def test_operator_caps_from_the_repositories_file(tmp_path: Path) -> None:
    (tmp_path / ".claude-cluster.yml").write_text("budget_usd: 50\n")
    operator = tmp_path / "repos.json"
    operator.write_text(
        json.dumps({"repositories": {"acme/app": {"contract": {"budget_usd": 10}}}})
    )
    done = repo_check(
        ".",
        "--repositories-file",
        str(operator),
        "--repository",
        "acme/app",
        "--json",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["budget_usd"] == 10
    assert plan["notes"] == ["budget_usd: 50 asked, capped to the operator's 10"]
    done = repo_check(".", "--repositories-file", str(operator), cwd=tmp_path)
    assert done.returncode == 2
    assert "--repository owner/name" in done.stderr
    operator.write_text(json.dumps({"repositories": {"acme/app": {"contract": {"runner": "x"}}}}))
    done = repo_check(
        ".", "--repositories-file", str(operator), "--repository", "acme/app", cwd=tmp_path
    )
    assert done.returncode == 2
    assert "repository acme/app: contract.runner" in done.stderr
