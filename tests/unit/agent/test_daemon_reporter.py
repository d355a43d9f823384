"""RunReporter against a scripted coordinator: order, numbering, batching, retries."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from claude_cluster.agent.coordinator_client import CoordinatorClient
from claude_cluster.agent.reporter import MAX_BATCH, ReporterConfig, RunReporter, replay_spilled
from claude_cluster.domain.wire import RunResult

pytestmark = pytest.mark.timeout(20)
FAST = ReporterConfig(flush_interval=0.01, retry_initial=0.01, retry_max=0.02)


class FakeCoordinator:
    """Stores events once per seq, like the real one; ``fail`` decides per request."""

    def __init__(self, fail: Callable[[str, int], int | None] = lambda path, n: None) -> None:
        self.fail = fail
        self.calls: list[tuple[str, Any]] = []
        self.events: dict[int, dict[str, Any]] = {}
        self.results: list[dict[str, Any]] = []
        self._n = 0

    def handler(self, request: httpx.Request) -> httpx.Response:
        self._n += 1
        kind = request.url.path.rsplit("/", 1)[1]
        body = json.loads(request.content)
        self.calls.append((kind, body))
        status = self.fail(kind, self._n)
        if status == 0:  # processed, then the answer is lost
            self._store(kind, body)
            raise httpx.ReadError("lost", request=request)
        if status:
            return httpx.Response(status, json={"detail": "scripted"})
        self._store(kind, body)
        return httpx.Response(200, json={"ok": True})

    def _store(self, kind: str, body: dict[str, Any]) -> None:
        if kind == "events":
            for event in body["events"]:
                self.events.setdefault(event["seq"], event)
        elif kind == "result":
            self.results.append(body)

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls]


def reporter(fake: FakeCoordinator, config: ReporterConfig = FAST) -> RunReporter:
    client = CoordinatorClient(
        "http://coordinator", registration_token="x", transport=httpx.MockTransport(fake.handler)
    )
    client.token = "agent-token"
    return RunReporter(client, 5, config)


async def test_events_phase_and_result_arrive_in_order() -> None:
    fake = FakeCoordinator()
    rep = reporter(fake)
    rep.event("phase", "one")
    rep.event("assistant_text", "two")
    rep.phase("testing")
    rep.event("tests", "three")
    rep.result(RunResult(succeeded=True, cost_usd=1.5))
    rep.start()
    assert await rep.finish(timeout=5)
    assert fake.kinds() == ["events", "phase", "events", "result"]
    assert [e["seq"] for e in fake.calls[0][1]["events"]] == [0, 1]
    assert fake.calls[1][1] == {"phase": "testing"}
    assert fake.results[0]["cost_usd"] == 1.5 and rep.result_delivered.is_set()


async def test_big_backlogs_go_in_batches() -> None:
    fake = FakeCoordinator()
    rep = reporter(fake)
    for i in range(MAX_BATCH + 10):
        rep.event("output", str(i))
    rep.result(RunResult(succeeded=True))
    rep.start()
    assert await rep.finish(timeout=5)
    sizes = [len(body["events"]) for kind, body in fake.calls if kind == "events"]
    assert sizes == [MAX_BATCH, 10] and sorted(fake.events) == list(range(MAX_BATCH + 10))


async def test_failures_are_retried_and_nothing_is_stored_twice() -> None:
    # every call fails once: 503, connection lost after processing, 429, ...
    script = {1: 503, 2: 0, 4: 429, 6: 0, 8: 0}
    fake = FakeCoordinator(lambda kind, n: script.get(n))
    rep = reporter(fake)
    rep.start()
    for i in range(5):
        rep.event("output", str(i))
    rep.phase("testing")
    rep.result(RunResult(succeeded=False, error_category="tests_failed"))
    assert await rep.finish(timeout=5)
    assert sorted(fake.events) == [0, 1, 2, 3, 4]
    assert len(fake.results) >= 1 and fake.kinds()[-1] == "result"


async def test_events_written_concurrently_are_resent() -> None:
    fake = FakeCoordinator(lambda kind, n: 409 if n == 1 else None)
    rep = reporter(fake)
    rep.event("output", "x")
    rep.result(RunResult(succeeded=True))
    rep.start()
    assert await rep.finish(timeout=5)
    assert fake.kinds() == ["events", "events", "result"] and 0 in fake.events


async def test_a_refused_phase_is_skipped_but_the_result_still_goes() -> None:
    fake = FakeCoordinator(lambda kind, n: 409 if kind == "phase" else None)
    rep = reporter(fake)
    rep.phase("testing")
    rep.result(RunResult(succeeded=True))
    rep.start()
    assert await rep.finish(timeout=5)
    assert fake.kinds() == ["phase", "result"]


@pytest.mark.parametrize("status", [403, 404, 422])
async def test_a_run_the_coordinator_refuses_is_given_up(status: int) -> None:
    fake = FakeCoordinator(lambda kind, n: status)
    rep = reporter(fake)
    rep.event("output", "x")
    rep.result(RunResult(succeeded=True))
    rep.start()
    assert await rep.finish(timeout=5)
    assert fake.kinds() == ["events"] and rep.pending == 0


async def test_finish_gives_up_waiting_at_the_timeout() -> None:
    fake = FakeCoordinator(lambda kind, n: 503)
    rep = reporter(fake)
    rep.event("output", "x")
    rep.start()
    assert not await rep.finish(timeout=0.2)
    assert rep.pending == 1


async def test_a_backlog_beyond_memory_spills_and_goes_out_in_order(tmp_path: Path) -> None:
    down = True
    fake = FakeCoordinator(lambda kind, n: 503 if down else None)
    rep = reporter(fake, replace(FAST, memory_events=7, spill_dir=tmp_path))
    rep.start()
    for i in range(50):
        rep.event("output", str(i))
        assert rep.in_memory <= 7
    rep.phase("testing")
    rep.event("output", "50")
    rep.result(RunResult(succeeded=True))
    assert rep.spilled == 44 and (tmp_path / "5.jsonl").stat().st_mode & 0o777 == 0o600
    down = False
    assert await rep.finish(timeout=5)
    assert [int(fake.events[seq]["message"]) for seq in sorted(fake.events)] == list(range(51))
    kinds = fake.kinds()
    assert kinds.index("phase") < kinds.index("result") and kinds[-1] == "result"
    assert not (tmp_path / "5.jsonl").exists()


async def test_a_spill_dir_that_cannot_be_written_keeps_reports_in_memory(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    down = True
    fake = FakeCoordinator(lambda kind, n: 503 if down else None)
    rep = reporter(fake, replace(FAST, memory_events=3, spill_dir=blocked))
    rep.start()
    for i in range(10):
        rep.event("output", str(i))
    rep.result(RunResult(succeeded=True))
    assert rep.in_memory == 10  # nothing lost, if not bounded while the disk refuses
    down = False
    assert await rep.finish(timeout=5)
    assert sorted(fake.events) == list(range(10))


async def test_reports_abandoned_at_a_stop_are_replayed_by_the_next_start(tmp_path: Path) -> None:
    config = replace(FAST, memory_events=4, spill_dir=tmp_path)
    rep = reporter(FakeCoordinator(lambda kind, n: 503), config)
    rep.start()
    for i in range(12):
        rep.event("output", str(i))
    rep.result(RunResult(succeeded=False, error_category="lost"))
    assert not await rep.finish(timeout=0.2)
    assert (tmp_path / "5.jsonl").stat().st_mode & 0o777 == 0o600

    fake = FakeCoordinator()
    client = CoordinatorClient(
        "http://coordinator", registration_token="x", transport=httpx.MockTransport(fake.handler)
    )
    client.token = "agent-token"
    assert await replay_spilled(client, config) == 1
    assert [int(fake.events[seq]["message"]) for seq in sorted(fake.events)] == list(range(12))
    assert fake.kinds() == ["events"] * 3 and not (tmp_path / "5.jsonl").exists()
