"""IssuePoller against the fake GitHub: what triggers, conditional requests, waiting."""

from __future__ import annotations

import asyncio
import random

import pytest

from claude_cluster.github import (
    ASSIGNED_LABEL,
    GitHubClient,
    Issue,
    IssuePoller,
    RepositoryConfig,
)
from tests.fakes.github_api import FakeGitHub
from tests.integration.github.conftest import REPO


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.seen: list[tuple[str, int]] = []
        self.fail = fail

    async def __call__(self, cfg: RepositoryConfig, issue: Issue) -> None:
        if self.fail:
            raise RuntimeError("database down")
        self.seen.append((cfg.full_name, issue.number))


def make_poller(client: GitHubClient, on_issue, *repos: str, clock=None, **kw) -> IssuePoller:
    configs = [RepositoryConfig(full_name=name) for name in (repos or (REPO,))]
    extra = {"clock": clock} if clock else {}
    return IssuePoller(client, configs, on_issue, rng=random.Random(7), **extra, **kw)


async def test_triggers_only_labelled_issues(fake_github: FakeGitHub, client) -> None:
    make = fake_github.create_issue
    wanted = make(REPO, "go", labels=["claude-code"], deliver=False)["number"]
    make(REPO, "plain bug", labels=["bug"], deliver=False)
    make(REPO, "held", labels=["claude-code", "on-hold"], deliver=False)
    make(REPO, "already", labels=["claude-code", ASSIGNED_LABEL], deliver=False)
    pr = await client.open_or_update_pull_request(REPO, head="x", base="main", title="t", body="")
    await client.add_labels(REPO, pr.pull_request.number, ["claude-code"])
    recorder = Recorder()
    report = await make_poller(client, recorder).run_once()
    assert recorder.seen == [(REPO, wanted)]
    assert report.triggered == [(REPO, wanted)] and not report.failed


async def test_unchanged_repository_costs_a_304_and_triggers_nothing(fake_github, client):
    number = fake_github.create_issue(REPO, "go", labels=["claude-code"], deliver=False)["number"]
    recorder = Recorder()
    poller = make_poller(client, recorder)
    await poller.run_once()
    report = await poller.run_once()
    assert report.unchanged == [REPO] and recorder.seen == [(REPO, number)]
    assert fake_github.requests[-1]["if_none_match"]
    second = fake_github.create_issue(REPO, "next", labels=["claude-code-urgent"], deliver=False)
    await poller.run_once()  # changed: every triggering issue is reported again
    assert recorder.seen[1:] == [(REPO, second["number"]), (REPO, number)]


async def test_a_failed_callback_keeps_the_issue_for_the_next_round(fake_github, client):
    fake_github.create_issue(REPO, "go", labels=["claude-code"], deliver=False)
    recorder = Recorder(fail=True)
    poller = make_poller(client, recorder)
    report = await poller.run_once()
    assert "RuntimeError: database down" in report.failed[REPO]
    recorder.fail = False
    report = await poller.run_once()  # no ETag was kept: not a 304
    assert report.triggered == [(REPO, 1)] and not report.unchanged


async def test_rate_limited_round_waits_for_retry_after(fake_github, client) -> None:
    fake_github.create_issue(REPO, "go", labels=["claude-code"], deliver=False)
    clock = Clock(1_000.0)
    poller = make_poller(client, Recorder(), clock=clock, interval=10)
    fake_github.secondary_limit(retry_after=30)
    report = await poller.run_once()
    assert report.rate_limited
    assert 30 <= poller.next_delay() <= 33  # jitter only lengthens a rate-limit wait
    calls = len(fake_github.requests)
    clock.now += 20
    assert (await poller.run_once()).rate_limited  # still waiting: GitHub is not called
    assert len(fake_github.requests) == calls
    clock.now += 11
    assert (await poller.run_once()).triggered == [(REPO, 1)]
    assert 9 <= poller.next_delay() <= 11


async def test_low_remaining_waits_for_the_reset(fake_github, client) -> None:
    import time

    fake_github.set_remaining(20, reset_in=600)
    poller = make_poller(client, Recorder(), interval=10, low_remaining=50)
    report = await poller.run_once()
    assert report.rate_limited and not report.failed
    assert client.rate_limit is not None and client.rate_limit.remaining == 19
    assert 590 <= poller.next_delay() <= 600 * 1.1 + 1
    assert client.rate_limit.reset - time.time() > 590


async def test_errors_back_off_exponentially_with_jitter_and_a_cap(fake_github, client):
    recorder = Recorder()
    poller = make_poller(client, recorder, "octo/missing", REPO, interval=100, max_backoff=500)
    fake_github.create_issue(REPO, "go", labels=["claude-code"], deliver=False)
    delays = []
    for _ in range(4):
        report = await poller.run_once()
        assert "GitHubNotFound" in report.failed["octo/missing"]
        delays.append(poller.next_delay())
    assert recorder.seen  # the healthy repository was still polled
    for delay, base in zip(delays, [200, 400, 500, 500], strict=True):
        assert base * 0.9 <= delay <= base * 1.1


async def test_run_forever_stops_at_once(fake_github, client) -> None:
    fake_github.create_issue(REPO, "go", labels=["claude-code"], deliver=False)
    recorder = Recorder()
    poller = make_poller(client, recorder, interval=3600)
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run_forever(stop))
    for _ in range(200):
        if recorder.seen:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, timeout=2)
    assert recorder.seen == [(REPO, 1)]


@pytest.mark.parametrize("interval", [0.5, 180.0])
def test_delay_between_healthy_rounds_is_the_jittered_interval(client, interval: float) -> None:
    poller = make_poller(client, Recorder(), interval=interval)
    delays = {poller.next_delay() for _ in range(20)}
    assert all(interval * 0.9 <= d <= interval * 1.1 for d in delays) and len(delays) > 1
