"""Planning a run's setup: the contract's steps, or detected ones, and missing tools."""

from __future__ import annotations

import json
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
    assert venv.argv[1:] == ("venv", "--relocatable", "--allow-existing", ".venv")
    assert install.argv[1:] == (
        "pip", "install", "--python", ".venv/bin/python",
        "-e", ".[test,dev]", "-r", "requirements-dev.txt", "pytest",
    )  # fmt: skip
    assert plan.source == "detected: python"
    assert plan.env["UV_CACHE_DIR"] == str(tmp_path / "c" / "uv")
    assert plan.env["UV_PYTHON_DOWNLOADS"] == "never"
    # the saved venv is reused with only the project installed again (static metadata)
    (stage,) = plan.stages
    assert stage.reuse is not None and stage.reuse.directory == ".venv"
    assert {"pyproject.toml", "requirements-dev.txt", ".python-version"} <= set(stage.reuse.inputs)
    (own,) = stage.reuse.refresh
    assert own.argv[1:] == (
        "pip", "install", "--python", ".venv/bin/python", "--no-deps", "-e", ".[test,dev]",
    )  # fmt: skip
    # kept beside the repository's tool caches, not in them (a run may write those)
    assert plan.store == tmp_path / ".environments" / "c"


def test_uv_lock_means_uv_sync(tmp_path: Path) -> None:
    write(tmp_path, {"pyproject.toml": "[project]\nname='x'\n", "uv.lock": ""})
    plan = plan_setup(tmp_path, NO_CONTRACT, cache_dir=tmp_path, which=which_all)
    venv, step = plan.steps
    assert venv.argv[1:] == ("venv", "--relocatable", "--allow-existing", ".venv")
    assert step.argv[1:] == ("sync", "--frozen", "--all-extras")
    assert Path(step.argv[0]).name == "uv"
    assert Path(step.argv[0]).parent == Path(sys.executable).parent  # the agent's own uv
    # a restored venv is checked against the lock by the same sync
    reuse = plan.stages[0].reuse
    assert reuse is not None and reuse.refresh == (step,) and "uv.lock" in reuse.inputs


@pytest.mark.parametrize(
    "files",
    [
        {"setup.py": "from setuptools import setup\nsetup()\n"},
        {"pyproject.toml": "[project]\nname='x'\ndynamic=['dependencies']\n"},
        {"pyproject.toml": "[project]\nname='x'\ndependencies=['lib @ file:///src/lib']\n"},
        {"requirements.txt": "-e ./libs/lib\n"},
        {"requirements.txt": "-r ../outside.txt\n"},
    ],
)
def test_dependencies_not_known_from_the_keyed_files_are_resolved_again(
    tmp_path: Path, files: dict[str, str]
) -> None:
    write(tmp_path, files)
    plan = plan_setup(tmp_path, NO_CONTRACT, cache_dir=tmp_path, which=which_all)
    _, install = plan.steps
    reuse = plan.stages[0].reuse
    assert reuse is not None and reuse.refresh == (install,)  # the full install, on the copy


def test_included_requirement_files_are_part_of_the_key(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "requirements.txt": "-r requirements/base.txt\n",
            "requirements/base.txt": "--constraint=pins.txt\nrequests\n",
            "requirements/pins.txt": "requests==2.0\n",
        },
    )
    plan = plan_setup(tmp_path, NO_CONTRACT, cache_dir=tmp_path, which=which_all)
    reuse = plan.stages[0].reuse
    assert reuse is not None and reuse.refresh == ()  # no project of its own to install
    assert {"requirements.txt", "requirements/base.txt", "requirements/pins.txt"} <= set(
        reuse.inputs
    )


@pytest.mark.parametrize(
    ("manifest", "reused"),
    [
        ({"dependencies": {"left-pad": "^1.0.0"}}, True),
        ({"workspaces": ["packages/*"]}, False),
        ({"scripts": {"postinstall": "node gen.js"}}, False),
        ({"scripts": {"prepare": "husky install"}}, False),
        ({"devDependencies": {"lib": "file:../lib"}}, False),
    ],
)
def test_node_modules_is_reused_only_when_it_is_all_the_install_makes(
    tmp_path: Path, manifest: dict[str, object], reused: bool
) -> None:
    write(tmp_path, {"package.json": json.dumps(manifest), "package-lock.json": "{}"})
    plan = plan_setup(tmp_path, NO_CONTRACT, cache_dir=tmp_path, which=which_all)
    (stage,) = plan.stages
    assert (stage.reuse is not None) is reused
    if stage.reuse is not None:
        assert stage.reuse.refresh == ()  # nothing of npm's runs after a restore
        assert {"package.json", "package-lock.json", ".npmrc"} <= set(stage.reuse.inputs)


def test_a_contracts_setup_is_never_reused(tmp_path: Path) -> None:
    write(tmp_path, {"pyproject.toml": "[project]\nname='x'\n"})
    policy = resolve(parse_contract("setup:\n  - run: make deps\n"))
    plan = plan_setup(tmp_path, policy, cache_dir=tmp_path / "cache", which=which_none)
    assert [stage.reuse for stage in plan.stages] == [None]


def test_a_broken_pyproject_installs_without_extras(tmp_path: Path) -> None:
    write(tmp_path, {"pyproject.toml": "[project\n"})
    _, install = plan_setup(tmp_path, NO_CONTRACT, cache_dir=tmp_path, which=which_all).steps
    assert install.argv[-3:] == ("-e", ".", "pytest")
    plan = plan_setup(tmp_path, NO_CONTRACT, cache_dir=tmp_path, which=which_all)
    reuse = plan.stages[0].reuse
    assert reuse is not None and reuse.refresh == (install,)  # nothing known: resolved again


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
