"""The start-up canary judges a write by where it lands on the host: a write that fails
inside is no leak, nor is one into an install under ``/tmp`` (whose path inside the
sandbox is the run's own tmp); a directory bound writable into the sandbox is. Real
bubblewrap."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_cluster.agent import sandbox as sandbox_module
from claude_cluster.agent.sandbox import Sandbox, SandboxUnavailable

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]


@pytest.fixture
def install_under_tmp() -> Iterator[tuple[Path, Path]]:
    """An agent installed under /tmp: its venv readable in the sandbox, its root forbidden."""
    with tempfile.TemporaryDirectory(dir="/tmp") as scratch:
        root = Path(scratch) / "install"
        venv = root / ".venv"
        venv.mkdir(parents=True)
        yield root, venv


async def test_a_forbidden_directory_the_sandbox_cannot_write_passes_the_canary() -> None:
    # the usual case (an agent installed under /opt): every write fails inside
    with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:  # outside /tmp
        root = Path(scratch)
        await Sandbox(enabled=True).canary(secret_files=[], forbidden_dirs=[root, root / "a"])
        assert list(root.iterdir()) == []


async def test_an_install_under_tmp_passes_the_canary(
    install_under_tmp: tuple[Path, Path],
) -> None:
    root, venv = install_under_tmp
    await Sandbox(enabled=True, readable=(venv,)).canary(secret_files=[], forbidden_dirs=[root])
    assert list(root.iterdir()) == [venv], "the canary left a file on the host"


async def test_a_forbidden_directory_bound_writable_fails_the_canary(
    install_under_tmp: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, venv = install_under_tmp
    real = sandbox_module.bwrap_argv

    def leaky(argv: Any, confinement: Any, **kwargs: Any) -> list[str]:
        args = real(argv, confinement, **kwargs)
        at = args.index("--remount-ro")
        return [*args[:at], "--bind", str(root), str(root), *args[at:]]

    monkeypatch.setattr(sandbox_module, "bwrap_argv", leaky)
    with pytest.raises(SandboxUnavailable, match=f"wrote into {root}"):
        await Sandbox(enabled=True, readable=(venv,)).canary(secret_files=[], forbidden_dirs=[root])
    assert list(root.iterdir()) == [venv], "the canary's file was not removed"
