"""The supervised child process: lines, watchdogs and process-group kills."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from claude_cluster.process import ProcessExit, StopReason, Watchdogs, run_process

FAST = Watchdogs(wall_timeout=10, idle_timeout=5, terminal_grace=5, kill_grace=1)


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def _env() -> dict[str, str]:
    return {"PATH": os.environ["PATH"]}


def _alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for a reaper."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


async def _run(
    code: str, limits: Watchdogs = FAST, terminal: str | None = None, cwd: Path | None = None
) -> tuple[ProcessExit, list[str]]:
    """Run Python ``code`` as the child; ``terminal`` names the line that ends the run."""
    lines: list[str] = []

    async def on_line(line: str) -> bool:
        lines.append(line)
        return line == terminal

    argv = _python(code)
    cwd = cwd or Path.cwd()
    return await run_process(argv, cwd=cwd, env=_env(), on_line=on_line, watchdogs=limits), lines


async def _wait_for_file(path: Path, timeout: float = 5) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        await asyncio.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


async def test_delivers_lines_and_exit_code() -> None:
    result, lines = await _run(
        "print('one'); print(); print('two', flush=True); import sys; sys.exit(3)"
    )
    assert lines == ["one", "two"]
    assert result.exit_code == 3
    assert result.stop_reason is StopReason.EXITED
    assert not result.killed


async def test_keeps_a_tail_of_stderr() -> None:
    result, _ = await _run("import sys; sys.stderr.write('x' * 20000 + '\\nboom\\n')")
    assert result.stderr_tail.endswith("boom\n")
    assert len(result.stderr_tail) <= 8 * 1024


async def test_a_long_line_arrives_whole() -> None:
    _, lines = await _run("print('a' * 300_000 + 'z')")
    assert lines == ["a" * 300_000 + "z"]


async def test_stdin_is_closed_and_env_is_not_inherited(tmp_path: Path) -> None:
    os.environ["CLAUDE_CLUSTER_TEST_LEAK"] = "secret"
    try:
        _, lines = await _run(
            "import os, sys; print(repr(sys.stdin.read())); "
            "print(os.environ.get('CLAUDE_CLUSTER_TEST_LEAK')); print(os.getcwd())",
            cwd=tmp_path,
        )
    finally:
        del os.environ["CLAUDE_CLUSTER_TEST_LEAK"]
    assert lines == ["''", "None", str(tmp_path)]


async def test_idle_watchdog_stops_a_silent_child() -> None:
    limits = Watchdogs(wall_timeout=10, idle_timeout=0.5, terminal_grace=5, kill_grace=1)
    started = time.monotonic()
    result, lines = await _run("import time; print('hello', flush=True); time.sleep(30)", limits)
    assert result.stop_reason is StopReason.IDLE_TIMEOUT
    assert lines == ["hello"]
    assert result.exit_code == -15  # SIGTERM was enough
    assert time.monotonic() - started < 3


async def test_wall_watchdog_stops_a_chatty_child() -> None:
    limits = Watchdogs(wall_timeout=1.0, idle_timeout=0.5, terminal_grace=5, kill_grace=1)
    code = "import time\nwhile True:\n    print('tick', flush=True); time.sleep(0.05)"
    started = time.monotonic()
    result, lines = await _run(code, limits)
    assert result.stop_reason is StopReason.WALL_TIMEOUT  # output kept the idle watchdog quiet
    assert len(lines) > 5
    assert time.monotonic() - started < 3


async def test_terminal_line_starts_the_grace_period() -> None:
    limits = Watchdogs(wall_timeout=10, idle_timeout=10, terminal_grace=0.3, kill_grace=1)
    code = "import time; print('working'); print('RESULT', flush=True); time.sleep(30)"
    started = time.monotonic()
    result, lines = await _run(code, limits, terminal="RESULT")
    assert result.stop_reason is StopReason.AFTER_TERMINAL
    assert lines == ["working", "RESULT"]
    assert time.monotonic() - started < 3


async def test_sigkill_follows_an_ignored_sigterm() -> None:
    limits = Watchdogs(wall_timeout=10, idle_timeout=0.3, terminal_grace=5, kill_grace=0.3)
    code = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print('ready', flush=True)
        time.sleep(30)
    """
    result, _ = await _run(code, limits)
    assert result.stop_reason is StopReason.IDLE_TIMEOUT
    assert result.exit_code == -9


# A child that starts a grandchild; both ignore SIGTERM and write their pids to a file.
_FAMILY = """
    import os, signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grandchild = subprocess.Popen([sys.executable, "-c",
        "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
    with open(sys.argv[1], "w") as f:
        f.write(f"{os.getpid()} {grandchild.pid}\\n")
    print("spawned", flush=True)
    time.sleep(60)
"""


async def test_cancelling_kills_the_whole_group(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"

    async def never_terminal(line: str) -> bool:
        return False

    argv = [*_python(_FAMILY), str(pids_file)]
    limits = Watchdogs(wall_timeout=60, idle_timeout=60, terminal_grace=60, kill_grace=0.5)
    task = asyncio.create_task(
        run_process(argv, cwd=tmp_path, env=_env(), on_line=never_terminal, watchdogs=limits)
    )
    pids = [int(p) for p in (await _wait_for_file(pids_file)).split()]
    assert all(_alive(pid) for pid in pids)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not any(_alive(pid) for pid in pids)


async def test_a_leftover_grandchild_dies_with_a_normal_exit(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    code = """
        import subprocess, sys
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                      stdout=subprocess.DEVNULL)
        open(sys.argv[1], "w").write(f"{grandchild.pid}\\n")
    """

    async def on_line(line: str) -> bool:
        return False

    result = await run_process(
        [*_python(code), str(pids_file)], cwd=tmp_path, env=_env(), on_line=on_line, watchdogs=FAST
    )
    assert result.stop_reason is StopReason.EXITED
    assert not _alive(int(pids_file.read_text()))


async def test_a_failing_line_handler_stops_the_child_and_raises(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"

    async def explode(line: str) -> bool:
        raise RuntimeError("sink broke")

    with pytest.raises(RuntimeError, match="sink broke"):
        await run_process(
            [*_python(_FAMILY), str(pids_file)],
            cwd=tmp_path,
            env=_env(),
            on_line=explode,
            watchdogs=Watchdogs(wall_timeout=10, idle_timeout=10, terminal_grace=5, kill_grace=0.3),
        )
    pids = [int(p) for p in pids_file.read_text().split()]
    assert not any(_alive(pid) for pid in pids)


async def test_a_missing_executable_raises_oserror(tmp_path: Path) -> None:
    async def on_line(line: str) -> bool:
        return False

    with pytest.raises(FileNotFoundError):
        await run_process(
            [str(tmp_path / "nope")], cwd=tmp_path, env=_env(), on_line=on_line, watchdogs=FAST
        )
