"""Saved environments: what a snapshot keeps, what it refuses to copy, when it is a miss."""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from claude_cluster.agent import envstore
from claude_cluster.agent.envstore import EnvStore, environment_key, tool_identity

KEY = "a" * 64


def venv(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "lib" / "pkg").mkdir(parents=True)
    (root / "lib" / "pkg" / "__init__.py").write_text("X = 1\n")
    script = root / "bin" / "tool"
    script.write_text("#!/bin/sh\necho tool\n")
    script.chmod(0o755)
    (root / "bin" / "python").symlink_to("/usr/bin/python3")
    (root / "bin" / "python3").symlink_to("python")
    return root


def test_a_saved_directory_comes_back_as_it_was(tmp_path: Path) -> None:
    store = EnvStore(tmp_path / "store")
    saved = store.save(".venv", KEY, venv(tmp_path / "run-1" / ".venv"))
    assert saved is not None and saved.entries == 7
    target = tmp_path / "run-2" / ".venv"
    target.parent.mkdir()
    got = store.restore(".venv", KEY, target, requires=("bin/python",))
    assert got == saved
    assert (target / "lib" / "pkg" / "__init__.py").read_text() == "X = 1\n"
    assert os.readlink(target / "bin" / "python") == "/usr/bin/python3"
    assert os.readlink(target / "bin" / "python3") == "python"
    assert stat.S_IMODE((target / "bin" / "tool").stat().st_mode) == 0o755
    # a copy, not a link: writing the run's copy leaves the store as it was
    (target / "lib" / "pkg" / "__init__.py").write_text("X = 'changed by the run'\n")
    again = tmp_path / "run-3" / ".venv"
    again.parent.mkdir()
    assert store.restore(".venv", KEY, again) is not None
    assert (again / "lib" / "pkg" / "__init__.py").read_text() == "X = 1\n"


def test_another_key_or_directory_is_a_miss(tmp_path: Path) -> None:
    store = EnvStore(tmp_path / "store")
    store.save(".venv", KEY, venv(tmp_path / "src"))
    assert store.restore(".venv", "b" * 64, tmp_path / "t1") is None
    assert store.restore("node_modules", KEY, tmp_path / "t2") is None
    assert not (tmp_path / "t1").exists() and not (tmp_path / "t2").exists()


def test_links_are_copied_as_links_never_followed(tmp_path: Path) -> None:
    """The attacker's attempt: setup leaves links to the agent's files in the venv, hoping
    the agent copies their contents into the store, to be restored into a later run."""
    secret = tmp_path / "agent.env"
    secret.write_text("TOKEN=agent-secret\n")
    (tmp_path / "agent-state").mkdir()
    (tmp_path / "agent-state" / "key").write_text("private\n")
    source = venv(tmp_path / "src")
    (source / "leak").symlink_to(secret)
    (source / "leakdir").symlink_to(tmp_path / "agent-state")
    store = EnvStore(tmp_path / "store")
    store.save(".venv", KEY, source)
    kept = [p for p in (tmp_path / "store").rglob("*") if p.is_file() and not p.is_symlink()]
    assert not any("agent-secret" in p.read_text(errors="replace") for p in kept)
    assert not any(p.read_text(errors="replace") == "private\n" for p in kept)
    target = tmp_path / "t"
    assert store.restore(".venv", KEY, target) is not None
    assert (target / "leak").is_symlink() and (target / "leakdir").is_symlink()


def test_a_linked_directory_is_not_saved(tmp_path: Path) -> None:
    """A repository whose ``node_modules`` is a link to somewhere else on the agent."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "file").write_text("agent data\n")
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "node_modules").symlink_to(tmp_path / "elsewhere")
    store = EnvStore(tmp_path / "store")
    assert store.save("node_modules", KEY, tmp_path / "repo" / "node_modules") is None
    assert not (tmp_path / "store").exists()


def test_fifos_are_left_out_and_special_bits_dropped(tmp_path: Path) -> None:
    """A FIFO would hang a naive copy (open blocks until a writer comes); a set-user-ID
    file would carry its bit into every later run."""
    source = venv(tmp_path / "src")
    os.mkfifo(source / "pipe")
    setuid = source / "bin" / "su-tool"
    setuid.write_text("#!/bin/sh\n")
    setuid.chmod(0o4755)
    store = EnvStore(tmp_path / "store")
    done: list[object] = []
    worker = threading.Thread(target=lambda: done.append(store.save(".venv", KEY, source)))
    worker.start()
    worker.join(timeout=10)
    assert done, "saving hung on the FIFO"
    target = tmp_path / "t"
    assert store.restore(".venv", KEY, target) is not None
    assert not (target / "pipe").exists()
    assert stat.S_IMODE((target / "bin" / "su-tool").stat().st_mode) == 0o755


def test_an_existing_target_is_never_overwritten(tmp_path: Path) -> None:
    store = EnvStore(tmp_path / "store")
    store.save(".venv", KEY, venv(tmp_path / "src"))
    target = tmp_path / "t"
    target.mkdir()
    (target / "mine").write_text("the repository's own\n")
    assert store.restore(".venv", KEY, target) is None
    assert [p.name for p in target.iterdir()] == ["mine"]


def test_a_snapshot_that_does_not_match_its_record_is_a_miss(tmp_path: Path) -> None:
    """Another agent process pruning it mid-copy, or a disk that lost files."""
    store = EnvStore(tmp_path / "store")
    store.save(".venv", KEY, venv(tmp_path / "src"))
    (snapshot,) = (tmp_path / "store").glob("venv-*")
    (snapshot / "tree" / "lib" / "pkg" / "__init__.py").unlink()
    target = tmp_path / "t"
    assert store.restore(".venv", KEY, target) is None
    assert not target.exists()  # nothing half-restored is left behind


def test_a_required_path_that_no_longer_resolves_is_a_miss(tmp_path: Path) -> None:
    source = venv(tmp_path / "src")
    (source / "bin" / "python").unlink()
    (source / "bin" / "python").symlink_to(tmp_path / "uninstalled-python3.9")
    store = EnvStore(tmp_path / "store")
    store.save(".venv", KEY, source)
    assert store.restore(".venv", KEY, tmp_path / "t", requires=("bin/python",)) is None
    assert not (tmp_path / "t").exists()


def test_old_snapshots_expire_and_few_are_kept(tmp_path: Path) -> None:
    store = EnvStore(tmp_path / "store", keep=2, max_age=3600)
    for n, key in enumerate(("1" * 64, "2" * 64, "3" * 64)):
        store.save(".venv", key, venv(tmp_path / f"src{n}"))
        time.sleep(0.02)  # distinct use times
    kept = sorted(p.name for p in (tmp_path / "store").iterdir())
    assert kept == ["venv-" + "2" * 64, "venv-" + "3" * 64]  # the least recently used went
    meta = tmp_path / "store" / ("venv-" + "2" * 64) / "meta.json"
    record = json.loads(meta.read_text())
    meta.write_text(json.dumps({**record, "created": record["created"] - 7200}))
    assert store.restore(".venv", "2" * 64, tmp_path / "t") is None
    assert not (tmp_path / "store" / ("venv-" + "2" * 64)).exists()


def test_the_key_follows_every_input(tmp_path: Path) -> None:
    def key(files: list[str], argv: tuple[str, ...] = ("npm", "ci"), node: str = "n:1:1") -> str:
        return environment_key(tmp_path, files, argv=[argv], tools={"node": node})

    (tmp_path / "package.json").write_text("{}")
    both = ["package.json", "package-lock.json"]
    absent = key(both)
    assert absent == key(list(reversed(both)))
    (tmp_path / "package-lock.json").write_text("")
    assert key(both) != absent  # an empty file is not an absent one
    empty = key(both)
    (tmp_path / "package-lock.json").write_text("{ }")
    assert key(both) != empty
    assert key(both, argv=("npm", "install")) != key(both)
    assert key(both, node="n:2:2") != key(both)


def test_a_tool_is_known_by_where_it_really_is_and_its_build(tmp_path: Path) -> None:
    tool = tmp_path / "node-20"
    tool.write_text("v20")
    link = tmp_path / "node"
    link.symlink_to(tool)
    first = tool_identity(str(link))
    assert first.startswith(f"{tool}:3:")
    tool.write_text("v22.1")  # upgraded in place
    assert tool_identity(str(link)) != first
    assert tool_identity(None) == "absent"
    assert tool_identity(str(tmp_path / "gone")).startswith("absent:")


def test_a_failed_save_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = venv(tmp_path / "src")
    copied: list[str] = []
    real = envstore._copy_file

    def fills_the_disk(src: str, dst: str) -> int | None:
        if copied:
            raise OSError(errno.ENOSPC, "No space left on device")
        copied.append(src)
        return real(src, dst)

    monkeypatch.setattr(envstore, "_copy_file", fills_the_disk)
    store = EnvStore(tmp_path / "store")
    with pytest.raises(OSError, match="No space left"):
        store.save(".venv", KEY, source)
    assert list((tmp_path / "store").iterdir()) == []
    monkeypatch.undo()
    assert store.restore(".venv", KEY, tmp_path / "t") is None
