"""Reporting one run to the coordinator: events in batches, phase changes, the result.

Everything a run reports goes through one ordered outbox and one sender task, so the
coordinator sees it in the order it happened: the events before a phase change are sent
before it, and the result goes last, after every event. Events are numbered per run from
0 (``seq``); the coordinator stores ``(run_id, seq)`` once, so a batch whose answer got
lost is simply sent again. Failed sends are retried with back-off until they are
acknowledged; only an answer that says resending cannot help (the run is not this agent's
any more, or no longer active) ends the retrying, and then the rest is dropped with a log
line, because the coordinator has given the run up.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from claude_cluster.agent.coordinator_client import (
    CoordinatorClient,
    CoordinatorError,
    CoordinatorRejected,
    NotRegistered,
)
from claude_cluster.domain.wire import RunEvent, RunEventBatch, RunPhase, RunResult
from claude_cluster.logging import get_logger

__all__ = ["ReporterConfig", "RunReporter"]

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
    """

    flush_interval: float = 1.0
    retry_initial: float = 0.5
    retry_max: float = 10.0


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
        self._events: deque[RunEvent] = deque()
        self._control: deque[tuple[int, _Phase | _Result]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._given_up = False
        self.result_delivered = asyncio.Event()
        #: what the coordinator answered to the result, once delivered
        self.result_reply: dict[str, Any] | None = None

    @property
    def pending(self) -> int:
        """Reports not acknowledged yet."""
        return len(self._events) + len(self._control)

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
        self._wake.set()
        done = True
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                done = False
                log.warning(
                    "reports_abandoned", run_id=self.run_id, pending=self.pending, timeout=timeout
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
            if finished:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.flush_interval)
            self._wake.clear()

    async def _send_due(self) -> bool:
        """Send what is queued, in order. Returns True once the result is acknowledged."""
        while True:
            boundary = self._control[0][0] if self._control else None
            # events numbered below the next control item go first
            while self._events and (boundary is None or self._events[0].seq < boundary):
                count = min(MAX_BATCH, len(self._events))
                if boundary is not None:
                    count = min(count, boundary - self._events[0].seq)
                batch = [self._events[i] for i in range(count)]
                await self.client.post_events(self.run_id, RunEventBatch(events=batch))
                for _ in batch:
                    self._events.popleft()
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
