"""Shared helpers for the deployment tests (deploy/ and its scripts)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
ANSIBLE_DIR = DEPLOY / "ansible"
SCRIPTS = ANSIBLE_DIR / "scripts"
TESTHOSTS = DEPLOY / "testhosts" / "testhosts.sh"
HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent


def tool_env(**extra: str) -> dict[str, str]:
    """The environment for Ansible and the scripts: this venv's tools first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["ANSIBLE_CONFIG"] = str(ANSIBLE_DIR / "ansible.cfg")
    env.setdefault("ANSIBLE_FORCE_COLOR", "0")
    env.setdefault("ANSIBLE_NOCOLOR", "1")
    env.update(extra)
    return env


def run(
    cmd: list[str] | str,
    *,
    cwd: Path = ANSIBLE_DIR,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing stdout+stderr as text."""
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=env or tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        shell=isinstance(cmd, str),
        check=False,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"{cmd} exited {proc.returncode}:\n{proc.stdout[-6000:]}")
    return proc


def venv_tool(name: str) -> str:
    """A tool from this venv (ansible-lint, yamllint, shellcheck...), or skip."""
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (uv sync --all-groups installs it)")
    return found


def system_tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (apt-get install {package})")
    return found
