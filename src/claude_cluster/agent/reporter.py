"""Reporting one run to the coordinator: events in batches, phase changes, the result.

Everything a run reports goes through one ordered outbox and one sender task, so the
coordinator sees it in the order it happened: the events before a phase change are sent
before it, and the result goes last, after every event. Events are numbered per run from
0 (``seq``); the coordinator stores ``(run_id, seq)`` once, so a batch whose answer got
lost is simply sent again. Failed sends are retried with back-off until they are
acknowledged; only an answer that says resending cannot help (the run is not this agent's
any more, or no longer active) ends the retrying, and then the rest is dropped with a log
line, because the coordinator has given the run up.

The outbox is bounded in memory: beyond ``memory_events`` events (or ``memory_bytes``) the
newer events go to an append-only JSON-lines file of the run in ``spill_dir``
(``<run_id>.jsonl``, mode 0600) and are read back, in order, as the older ones are
acknowledged; the file is removed once empty. A coordinator that is down for a long time
costs disk, not memory, and loses nothing. When the agent stops with reports still unsent,
they are all written to that file, and the next start of the agent sends them
(:func:`replay_spilled`): the coordinator keeps the events of its runs even after the run
ended (the result is moot by then: the coordinator has given the run up).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from claude_cluster.agent.coordinator_client import (
    CoordinatorClient,
    CoordinatorError,
    CoordinatorRejected,
    NotRegistered,
)
from claude_cluster.domain.wire import RunEvent, RunEventBatch, RunPhase, RunResult
from claude_cluster.logging import Every, get_logger

__all__ = ["ReporterConfig", "RunReporter", "replay_spilled"]

log = get_logger(__name__)

#: the coordinator takes at most this many events per request
MAX_BATCH = 500


@dataclass(frozen=True)
class ReporterConfig:
    """Timing of a :class:`RunReporter`.

    Attributes:
        flush_interval: seconds between event batches (about one request a second).
        retry_initial: first delay after a failed send.
        retry_max: longest delay between two attempts.
        memory_events: unsent events kept in memory per run; the rest spill to disk.
        memory_bytes: the same bound in bytes of JSON.
        spill_dir: where the spill files live (the agent's state directory); ``None``
            keeps everything in memory (tests of the reporter alone).
    """

    flush_interval: float = 1.0
    retry_initial: float = 0.5
    retry_max: float = 10.0
    memory_events: int = 2 * MAX_BATCH
    memory_bytes: int = 8 * 1024 * 1024
    spill_dir: Path | None = None


_spill_trouble = Every(60.0)


def _size(event: RunEvent) -> int:
    return len(event.model_dump_json()) + 1


class _EventQueue:
    """Unsent events in ``seq`` order: the oldest in memory (bounded), the newer in the
    run's spill file, and, only if that file cannot be written (disk full), in memory
    after it. Nothing is ever dropped here."""

    def __init__(self, run_id: int, config: ReporterConfig) -> None:
        self.run_id = run_id
        self.max_events = max(1, config.memory_events)
        self.max_bytes = config.memory_bytes
        self.path = config.spill_dir / f"{run_id}.jsonl" if config.spill_dir else None
        self._memory: deque[tuple[RunEvent, int]] = deque()
        self._memory_bytes = 0
        self._spilled = 0  #: events in the file not read back yet
        self._offset = 0  #: where the next of them starts
        self._writer: IO[bytes] | None = None
        self._broken = False  #: a write failed: the file takes nothing more
        self._after: deque[RunEvent] = deque()  #: what the broken file could not take

    def __len__(self) -> int:
        return len(self._memory) + self._spilled + len(self._after)

    @property
    def in_memory(self) -> int:
        return len(self._memory) + len(self._after)

    @property
    def spilled(self) -> int:
        return self._spilled

    def append(self, event: RunEvent) -> None:
        line = event.model_dump_json().encode() + b"\n"
        if self._fits(len(line)):
            self._keep(event, len(line))
        elif self._after or not self._spill(line):
            self._after.append(event)

    def first(self, count: int) -> list[RunEvent]:
        """The oldest ``count`` events (fewer if memory holds fewer), still queued."""
        self._refill()
        return [self._memory[i][0] for i in range(min(count, len(self._memory)))]

    def drop(self, count: int) -> None:
        """Forget the oldest ``count`` events: acknowledged."""
        for _ in range(count):
            _, size = self._memory.popleft()
            self._memory_bytes -= size
        self._refill()

    def head_seq(self) -> int | None:
        self._refill()
        return self._memory[0][0].seq if self._memory else None

    def clear(self) -> None:
        self._memory.clear()
        self._memory_bytes = 0
        self._after.clear()
        self._spilled = 0
        self._remove_file()

    def persist(self) -> bool:
        """Write every unsent event to the spill file, oldest first (for the next start of
        the agent); True when that worked (or nothing was left)."""
        if self.path is None or not len(self):
            return not len(self)
        events = [event for event, _ in self._memory]
        events += self._read(self._spilled)
        events += self._after
        temporary = self.path.with_suffix(".tmp")
        try:
            self._close()
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.writelines(event.model_dump_json().encode() + b"\n" for event in events)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except OSError as exc:
            log.warning("reports_not_kept", run_id=self.run_id, lost=len(events), error=str(exc))
            return False
        return True

    def adopt(self) -> int:
        """Take the spill file left by an earlier life of the agent as the queue."""
        assert self.path is not None
        with self.path.open("rb") as file:
            self._spilled = sum(1 for _ in file)
        self._offset = 0
        self._refill()
        return len(self)

    # --- inside ------------------------------------------------------------------------

    def _fits(self, size: int) -> bool:
        if self.path is None:
            return True
        return (
            not self._spilled
            and not self._after
            and len(self._memory) < self.max_events
            and (not self._memory or self._memory_bytes + size <= self.max_bytes)
        )

    def _keep(self, event: RunEvent, size: int) -> None:
        self._memory.append((event, size))
        self._memory_bytes += size

    def _spill(self, line: bytes) -> bool:
        assert self.path is not None
        if self._broken:
            return False
        try:
            if self._writer is None:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                self._writer = os.fdopen(fd, "ab", buffering=0)
            self._writer.write(line)
        except OSError as exc:
            self._broken = True  # a partial line may be there: nothing after it
            if (held := _spill_trouble.due("write")) is not None:
                log.warning(
                    "reports_spill_failed", run_id=self.run_id, error=str(exc), suppressed=held
                )
            return False
        self._spilled += 1
        return True

    def _refill(self) -> None:
        """Read spilled events back while memory has room (half of it, to read in runs)."""
        if self._spilled and len(self._memory) <= self.max_events // 2:
            room = self.max_events - len(self._memory)
            for event in self._read(min(room, self._spilled), advance=True):
                self._keep(event, _size(event))
        if not self._spilled and (self._writer is not None or self._offset):
            self._remove_file()  # read back whole: start afresh
        while not self._spilled and self._after and len(self._memory) < self.max_events:
            event = self._after.popleft()
            self._keep(event, _size(event))

    def _read(self, count: int, *, advance: bool = False) -> list[RunEvent]:
        if not count or self.path is None:
            return []
        events: list[RunEvent] = []
        offset, left = self._offset, count
        with self.path.open("rb") as file:
            file.seek(offset)
            while left:
                line = file.readline()
                if not line.endswith(b"\n"):
                    break  # the torn end of a failed write: never counted
                offset += len(line)
                left -= 1
                try:
                    events.append(RunEvent.model_validate_json(line))
                except ValueError:
                    log.warning("report_unreadable", run_id=self.run_id, offset=offset)
        if advance:
            self._offset = offset
            self._spilled -= count - left
            if left:  # the file ended early (cut by hand?): what it lacks is gone
                self._spilled = 0
        return events

    def _close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(OSError):
                self._writer.close()
            self._writer = None

    def _remove_file(self) -> None:
        self._close()
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
        self._offset = 0
        self._broken = False


@dataclass
class _Phase:
    phase: str


@dataclass
class _Result:
    result: RunResult


class RunReporter:
    """The outbox of one run. Create it, :meth:`start` it, report, then :meth:`finish`.

    Args:
        client: the coordinator client (its token may change on re-registration; every
            send uses the current one).
        run_id: the run being reported.
        config: timing.
    """

    def __init__(
        self, client: CoordinatorClient, run_id: int, config: ReporterConfig | None = None
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.config = config or ReporterConfig()
        self._next_seq = 0
        self._events = _EventQueue(run_id, self.config)
        self._control: deque[tuple[int, _Phase | _Result]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._given_up = False
        self._closing = False
        self.result_delivered = asyncio.Event()
        #: what the coordinator answered to the result, once delivered
        self.result_reply: dict[str, Any] | None = None

    @property
    def pending(self) -> int:
        """Reports not acknowledged yet."""
        return len(self._events) + len(self._control)

    @property
    def in_memory(self) -> int:
        """Unsent events held in memory (the rest are in the spill file)."""
        return self._events.in_memory

    @property
    def spilled(self) -> int:
        """Unsent events in the spill file."""
        return self._events.spilled

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._send_loop(), name=f"reporter-{self.run_id}")

    def event(
        self, kind: str, message: str = "", data: dict[str, Any] | None = None, level: str = "info"
    ) -> None:
        """Queue an event; it goes out with the next batch (never blocks)."""
        event = RunEvent(
            seq=self._next_seq,
            ts=datetime.now(UTC),
            kind=kind[:40] or "event",
            level=level,
            message=message,
            data=data or {},
        )
        self._next_seq += 1
        self._events.append(event)

    def phase(self, phase: str) -> None:
        """Queue a phase change (``in_progress`` or ``testing``), sent after earlier events."""
        self._control.append((self._next_seq, _Phase(phase)))
        self._wake.set()

    def result(self, result: RunResult) -> None:
        """Queue the result; it is sent after every event queued before it."""
        self._control.append((self._next_seq, _Result(result)))
        self._wake.set()

    async def finish(self, timeout: float | None = None) -> bool:
        """Wait until everything queued is delivered (or given up), then stop.

        Args:
            timeout: give up waiting after this many seconds (shutdown); ``None`` waits
                as long as it takes.

        Returns:
            True when everything was delivered or the coordinator refused it for good.
        """
        self._closing = True
        self._wake.set()
        done = True
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                done = False
                kept = self._events.persist()
                log.warning(
                    "reports_abandoned",
                    run_id=self.run_id,
                    pending=self.pending,
                    timeout=timeout,
                    kept_for_next_start=kept,
                )
            finally:
                if not self._task.done():
                    self._task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._task
        return done

    async def _send_loop(self) -> None:
        """Send batches about once per ``flush_interval`` until the result is delivered."""
        delay = self.config.retry_initial
        while not self._given_up:
            try:
                finished = await self._send_due()
            except CoordinatorError as exc:
                if self._permanent(exc):
                    log.warning("reports_refused", run_id=self.run_id, error=str(exc))
                    self._give_up()
                    return
                log.info(
                    "report_failed",
                    run_id=self.run_id,
                    error=str(exc),
                    pending=self.pending,
                    retry_in=round(delay, 2),
                )
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter
                delay = min(delay * 2, self.config.retry_max)
                continue
            delay = self.config.retry_initial
            if finished or (self._closing and not self.pending):
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.flush_interval)
            self._wake.clear()

    async def _send_due(self) -> bool:
        """Send what is queued, in order. Returns True once the result is acknowledged."""
        while True:
            boundary = self._control[0][0] if self._control else None
            # events numbered below the next control item go first
            while (head := self._events.head_seq()) is not None and (
                boundary is None or head < boundary
            ):
                count = MAX_BATCH if boundary is None else min(MAX_BATCH, boundary - head)
                batch = self._events.first(count)
                await self.client.post_events(self.run_id, RunEventBatch(events=batch))
                self._events.drop(len(batch))
            if not self._control:
                return False
            _, item = self._control[0]
            if isinstance(item, _Phase):
                try:
                    await self.client.post_phase(self.run_id, RunPhase(phase=item.phase))
                except CoordinatorRejected as exc:
                    # a phase the coordinator will not take (run already ended) is moot
                    log.info("phase_refused", run_id=self.run_id, phase=item.phase, error=str(exc))
                self._control.popleft()
                continue
            self.result_reply = await self.client.post_result(self.run_id, item.result)
            self._control.popleft()
            self.result_delivered.set()
            return True

    @staticmethod
    def _permanent(exc: CoordinatorError) -> bool:
        if isinstance(exc, CoordinatorRejected):
            # 409 on events means "written concurrently, resend"
            return exc.status != 409 or exc.context.get("call") != "events"
        # 404: the run does not exist; 401 (token) heals with the next registration
        return isinstance(exc, NotRegistered) and exc.status == 404

    def _give_up(self) -> None:
        self._given_up = True
        self._events.clear()
        self._control.clear()
        self.result_delivered.set()


async def replay_spilled(client: CoordinatorClient, config: ReporterConfig) -> int:
    """Send the events that earlier lives of this agent could not deliver (their spill
    files in ``config.spill_dir``), run by run, oldest run first; each file goes when its
    events are acknowledged or the coordinator refuses the run. Call it once registered.

    Returns:
        how many runs were replayed.
    """
    if config.spill_dir is None or not config.spill_dir.is_dir():
        return 0
    files = sorted(
        (path for path in config.spill_dir.glob("*.jsonl") if path.stem.isdigit()),
        key=lambda path: int(path.stem),
    )
    for path in files:
        reporter = RunReporter(client, int(path.stem), config)
        try:
            events = reporter._events.adopt()
        except OSError as exc:
            log.warning("reports_unreadable", run_id=reporter.run_id, error=str(exc))
            continue
        log.info("reports_replaying", run_id=reporter.run_id, events=events)
        reporter.start()
        if await reporter.finish():
            log.info("reports_replayed", run_id=reporter.run_id, events=events)
    return len(files)
