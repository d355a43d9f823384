"""Supervised child processes: one process group per run, line-wise output, watchdogs.

A runner hands :func:`run_process` an argv and a line handler; this module owns the rest:

* the child starts in a new session (so a new process group) with stdin on ``/dev/null``
  (the Claude CLI waits for an open stdin), stdout and stderr piped;
* stdout is delivered line by line to the handler; the handler returns ``True`` for a
  *terminal* line (Claude's ``result``), after which the child gets ``terminal_grace``
  seconds to exit on its own (the CLI is known to hang after printing its result);
* watchdogs stop the child after ``wall_timeout`` in total or ``idle_timeout`` without any
  output on stdout or stderr;
* stopping means SIGTERM to the whole group, up to ``kill_grace`` seconds for it to empty,
  then SIGKILL to the group. Tool processes the child leaves behind in its group when it
  exits are stopped the same way, and cancelling the calling task stops the group before
  re-raising :class:`asyncio.CancelledError`.

Only a descendant that leaves the group on purpose (``setsid``) can escape; containing that
takes a cgroup, which is the service manager's job (``KillMode=mixed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = [
    "LineHandler",
    "ProcessExit",
    "StderrHandler",
    "StopReason",
    "Watchdogs",
    "run_process",
    "terminate_group",
]

#: called with each stdout line (without the newline); returns True for a terminal line
LineHandler = Callable[[str], Awaitable[bool]]
#: called with each stderr line
StderrHandler = Callable[[str], Awaitable[None]]

_CHUNK = 64 * 1024
#: a "line" longer than this is handed over in pieces rather than buffered without bound
_MAX_LINE = 32 * 1024 * 1024
_STDERR_TAIL = 8 * 1024
#: after the child exits, how long a descendant still holding its pipes may keep them open
_DRAIN_SECONDS = 2.0
_POLL_SECONDS = 0.05


class StopReason(StrEnum):
    """Why the child is no longer running."""

    EXITED = "exited"  #: it exited by itself
    WALL_TIMEOUT = "wall_timeout"  #: killed: the run's total time ran out
    IDLE_TIMEOUT = "idle_timeout"  #: killed: no output for ``idle_timeout`` seconds
    AFTER_TERMINAL = (
        "after_terminal"  #: killed: still running ``terminal_grace`` after its terminal line
    )


@dataclass(frozen=True)
class Watchdogs:
    """Time limits for one child, in seconds."""

    wall_timeout: float
    idle_timeout: float
    terminal_grace: float
    kill_grace: float = 5.0


@dataclass(frozen=True)
class ProcessExit:
    """How the child ended.

    Attributes:
        exit_code: the return code; negative is the signal that ended it.
        stop_reason: whether it exited by itself or a watchdog stopped it.
        stderr_tail: the last few KB of stderr, for error messages.
        duration: seconds from start to the end of supervision.
    """

    exit_code: int | None
    stop_reason: StopReason
    stderr_tail: str
    duration: float

    @property
    def killed(self) -> bool:
        return self.stop_reason is not StopReason.EXITED


class _Activity:
    """Shared clock of the pumps: last output and the moment the terminal line came."""

    def __init__(self, now: float) -> None:
        self.last_output = now
        self.terminal_at: float | None = None
        self.terminal_seen = asyncio.Event()  # wakes the supervisor to start the grace period
        self.stderr = bytearray()


async def run_process(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    on_line: LineHandler,
    watchdogs: Watchdogs,
    on_stderr_line: StderrHandler | None = None,
) -> ProcessExit:
    """Run ``argv`` under the watchdogs and return how it ended.

    Args:
        argv: the executable and its arguments; never run through a shell.
        cwd: the working directory.
        env: the complete environment of the child (nothing is inherited).
        on_line: receives stdout lines; returning True marks the line as terminal.
        watchdogs: the time limits.
        on_stderr_line: receives stderr lines, if given.

    Raises:
        OSError: the executable could not be started.
        asyncio.CancelledError: the calling task was cancelled; the group is gone by then.
        Exception: whatever ``on_line`` raised; the group is stopped first.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group: we signal the whole tree at once
    )
    assert proc.stdout is not None and proc.stderr is not None
    activity = _Activity(started)
    stdout_task = asyncio.create_task(_pump_stdout(proc.stdout, on_line, activity, loop))
    stderr_task = asyncio.create_task(_pump_stderr(proc.stderr, on_stderr_line, activity, loop))
    exit_task = asyncio.create_task(_exited(proc))
    tasks = (stdout_task, stderr_task, exit_task)
    try:
        reason = await _supervise(exit_task, stdout_task, activity, watchdogs, started)
        if reason is not StopReason.EXITED or _group_alive(proc.pid):
            # A watchdog fired, or the child exited leaving tool processes in its group.
            await terminate_group(proc, watchdogs.kill_grace)
        # Take the output still in the pipes (a descendant holding them gets a moment).
        await asyncio.wait((stdout_task, stderr_task), timeout=_DRAIN_SECONDS)
        for pump in (stdout_task, stderr_task):
            if pump.done() and pump.exception() is not None:
                pump.result()  # re-raise a line handler's error
        return ProcessExit(
            exit_code=await _exited(proc),
            stop_reason=reason,
            stderr_tail=activity.stderr.decode(errors="replace"),
            duration=loop.time() - started,
        )
    except BaseException:
        # Cancelled, or the line handler failed: the child must not outlive us.
        await terminate_group(proc, watchdogs.kill_grace)
        raise
    finally:
        # Tool processes the child started (a dev server from Bash, ...) share its group.
        _signal_group(proc.pid, signal.SIGKILL)
        # Delivery is asynchronous: return only once the group is really gone.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_group_gone(proc, proc.pid), _DRAIN_SECONDS)
        await _finish(tasks)


async def terminate_group(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM the process group of ``proc``, wait up to ``grace`` s for it to empty, SIGKILL it."""
    pgid = proc.pid  # the child is a session leader, so its pid is the group id
    try:
        _signal_group(pgid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_group_gone(proc, pgid), grace)
    finally:
        # Runs even if we are cancelled again while waiting: nothing may survive.
        _signal_group(pgid, signal.SIGKILL)


async def _supervise(
    exit_task: asyncio.Task[int],
    stdout_task: asyncio.Task[None],
    activity: _Activity,
    limits: Watchdogs,
    started: float,
) -> StopReason:
    """Wait for the child to finish or for the first watchdog to fire."""
    loop = asyncio.get_running_loop()
    terminal_seen = asyncio.create_task(activity.terminal_seen.wait())
    try:
        return await _watch(exit_task, stdout_task, terminal_seen, activity, limits, started, loop)
    finally:
        terminal_seen.cancel()


async def _watch(
    exit_task: asyncio.Task[int],
    stdout_task: asyncio.Task[None],
    terminal_seen: asyncio.Task[Any],
    activity: _Activity,
    limits: Watchdogs,
    started: float,
    loop: asyncio.AbstractEventLoop,
) -> StopReason:
    while True:
        deadlines = {
            StopReason.WALL_TIMEOUT: started + limits.wall_timeout,
            StopReason.IDLE_TIMEOUT: activity.last_output + limits.idle_timeout,
        }
        if activity.terminal_at is not None:
            deadlines[StopReason.AFTER_TERMINAL] = activity.terminal_at + limits.terminal_grace
        reason, deadline = min(deadlines.items(), key=lambda item: item[1])
        remaining = deadline - loop.time()
        if remaining <= 0:
            return reason
        waiting = {t for t in (exit_task, stdout_task, terminal_seen) if not t.done()}
        await asyncio.wait(waiting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        if stdout_task.done() and stdout_task.exception() is not None:
            stdout_task.result()  # re-raise the line handler's error
        if exit_task.done():
            return StopReason.EXITED


async def _pump_stdout(
    stream: asyncio.StreamReader,
    on_line: LineHandler,
    activity: _Activity,
    loop: asyncio.AbstractEventLoop,
) -> None:
    async for line in _lines(stream, activity, loop):
        if await on_line(line) and activity.terminal_at is None:
            activity.terminal_at = loop.time()
            activity.terminal_seen.set()


async def _pump_stderr(
    stream: asyncio.StreamReader,
    on_line: StderrHandler | None,
    activity: _Activity,
    loop: asyncio.AbstractEventLoop,
) -> None:
    async for line in _lines(stream, activity, loop):
        activity.stderr += line.encode() + b"\n"
        del activity.stderr[:-_STDERR_TAIL]
        if on_line is not None:
            await on_line(line)


async def _lines(
    stream: asyncio.StreamReader, activity: _Activity, loop: asyncio.AbstractEventLoop
) -> AsyncIterator[str]:
    """Yield non-empty lines, decoded leniently, noting each chunk as activity.

    Reads chunks rather than ``readline`` so a huge line (a tool result holding a whole
    file) cannot hit the stream reader's buffer limit.
    """
    pending = b""
    while chunk := await stream.read(_CHUNK):
        activity.last_output = loop.time()
        pending += chunk
        *complete, pending = pending.split(b"\n")
        if len(pending) > _MAX_LINE:
            complete.append(pending)
            pending = b""
        for raw in complete:
            line = raw.rstrip(b"\r").decode(errors="replace")
            if line:
                yield line
    if pending.strip():
        yield pending.decode(errors="replace")


async def _exited(proc: asyncio.subprocess.Process) -> int:
    """The child's return code as soon as it is reaped.

    ``Process.wait()`` also waits for stdout and stderr to close, which a grandchild that
    inherited them can delay for ever; the return code is set on exit.
    """
    while proc.returncode is None:
        await asyncio.sleep(_POLL_SECONDS)
    return proc.returncode


async def _group_gone(proc: asyncio.subprocess.Process, pgid: int) -> None:
    await _exited(proc)
    while _group_alive(pgid):
        await asyncio.sleep(_POLL_SECONDS)


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies do not count)."""
    proc_root = Path("/proc")
    if not proc_root.is_dir():  # not Linux: ask the kernel, zombies included
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for stat in proc_root.glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after ')'
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # it exited while we looked
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _finish(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Let the pumps see EOF (the group is dead, so the pipes close), then drop them."""
    _, pending = await asyncio.wait(tasks, timeout=_DRAIN_SECONDS)
    for task in pending:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    del results  # errors were raised already by the supervisor, or do not matter after a kill
