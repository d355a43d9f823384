"""Planning a run's setup: the contract's steps, or detected ones, and missing tools."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from claude_cluster.agent.provision import plan_setup
from claude_cluster.domain.contract import parse_contract, resolve

NO_CONTRACT = resolve(None)


def which_all(tool: str) -> str | None:
    return f"/usr/bin/{tool}"


def which_none(tool: str) -> str | None:
    return None


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_contracts_setup_wins_and_runs_as_bash_scripts(tmp_path: Path) -> None:
    write(tmp_path, {"pyproject.toml": "[project]\nname='x'\n"})
    policy = resolve(parse_contract("setup:\n  - run: make deps\n    timeout: 30\n"))
    plan = plan_setup(tmp_path, policy, cache_dir=tmp_path / "cache", which=which_none)
    assert plan.source == "contract"
    (step,) = plan.steps
    assert step.argv == ("bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", "make deps")
    assert (step.name, step.timeout, plan.missing) == ("make deps", 30, ())


def test_python_project_with_test_extras(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "pyproject.toml": "[project]\nname='x'\n[project.optional-dependencies]\n"
            "docs=['sphinx']\ntest=['hypothesis']\ndev=['ruff']\n",
            "requirements-dev.txt": "black\n",
        },
    )
    plan = plan_setup(tmp_path, NO_CONTRACT, cache_dir=tmp_path / "c", which=which_all)
    venv, install = plan.steps
    assert venv.argv[1:] == ("venv", "--allow-existing", ".venv")
    assert install.argv[1:] == (
        "pip", "install", "--python", ".venv/bin/python",
        "-e", ".[test,dev]", "-r", "requirements-dev.txt", "pytest",
    )  # fmt: skip
    assert plan.source == "detected: python"
    assert plan.env["UV_CACHE_DIR"] == str(tmp_path / "c" / "uv")
    assert plan.env["UV_PYTHON_DOWNLOADS"] == "never"


def test_uv_lock_means_uv_sync(tmp_path: Path) -> None:
    write(tmp_path, {"pyproject.toml": "[project]\nname='x'\n", "uv.lock": ""})
    (step,) = plan_setup(tmp_path, NO_CONTRACT, cache_dir=tmp_path, which=which_all).steps
    assert step.argv[1:] == ("sync", "--frozen", "--all-extras")
    assert Path(step.argv[0]).name == "uv"
    assert Path(step.argv[0]).parent == Path(sys.executable).parent  # the agent's own uv


def test_a_broken_pyproject_installs_without_extras(tmp_path: Path) -> None:
    write(tmp_path, {"pyproject.toml": "[project\n"})
    _, install = plan_setup(tmp_path, NO_CONTRACT, cache_dir=tmp_path, which=which_all).steps
    assert install.argv[-3:] == ("-e", ".", "pytest")


@pytest.mark.parametrize(
    ("files", "argv"),
    [
        (
            {"package.json": "{}", "package-lock.json": "{}"},
            ("npm", "ci", "--no-audit", "--no-fund", "--prefer-offline"),
        ),
        (
            {"package.json": "{}"},
            ("npm", "install", "--no-package-lock", "--no-audit", "--no-fund", "--prefer-offline"),
        ),
        ({"package.json": "{}", "yarn.lock": ""}, ("yarn", "install", "--frozen-lockfile")),
        ({"go.mod": "module x\n"}, ("go", "mod", "download")),
        ({"Cargo.toml": "[package]\n"}, ("cargo", "fetch")),
    ],
)
def test_node_go_and_rust(tmp_path: Path, files: dict[str, str], argv: tuple[str, ...]) -> None:
    write(tmp_path, files)
    (step,) = plan_setup(tmp_path, NO_CONTRACT, cache_dir=tmp_path, which=which_all).steps
    assert step.argv == argv


def test_missing_tools_are_named(tmp_path: Path) -> None:
    write(tmp_path, {"package.json": "{}", "go.mod": "module x\n", "Cargo.toml": ""})
    plan = plan_setup(tmp_path, NO_CONTRACT, cache_dir=tmp_path, which=which_none)
    assert plan.steps == ()
    assert plan.source == "detected: node, go, rust"
    assert plan.missing == (
        "npm is not installed on this agent (the repository has package.json)",
        "go is not installed on this agent (the repository has go.mod)",
        "cargo is not installed on this agent (the repository has Cargo.toml)",
    )


def test_nothing_to_set_up(tmp_path: Path) -> None:
    write(tmp_path, {"README.md": "hello\n"})
    plan = plan_setup(tmp_path, NO_CONTRACT, cache_dir=tmp_path, which=which_all)
    assert (plan.source, plan.steps, plan.missing) == ("none", (), ())
