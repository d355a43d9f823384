"""`IssuePoller`: the fallback for repositories that send no webhooks.

Every interval it lists each repository's labelled open issues with a conditional request
(one ETag per repository, so an unchanged repository costs a 304 and no rate limit) and
calls ``on_issue`` for each issue :func:`~claude_cluster.github.repos.should_trigger`
accepts. The callback must be idempotent: the coordinator deduplicates by (repository,
issue), and a poll reports every triggering issue again whenever anything in the
repository changed.

Waiting: after a round, ``next_delay()`` is the interval; when GitHub says the rate limit
is nearly spent (< ``low_remaining``) or answers rate limited, it is the time until the
reset or ``Retry-After``; after errors it doubles from the interval per consecutive
failed round, capped at ``max_backoff``. Every wait gets ±10% jitter so several
coordinators do not poll in step.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from claude_cluster.github.client import GitHubClient
from claude_cluster.github.errors import GitHubError, GitHubRateLimited
from claude_cluster.github.models import Issue
from claude_cluster.github.repos import RepositoryConfig, should_trigger
from claude_cluster.logging import get_logger

log = get_logger(__name__)

OnIssue = Callable[[RepositoryConfig, Issue], Awaitable[None]]


@dataclass
class PollReport:
    """What one round did, for logs and tests."""

    triggered: list[tuple[str, int]] = field(default_factory=list)  #: (repo, issue number)
    unchanged: list[str] = field(default_factory=list)  #: repositories answering 304
    failed: dict[str, str] = field(default_factory=dict)  #: repository → error
    rate_limited: bool = False


class IssuePoller:
    """Polls GitHub for triggering issues.

    Args:
        client: the GitHub client.
        repositories: the repositories to poll (those without a webhook).
        on_issue: awaited for each triggering issue; raising makes the round count as
            failed for that repository, whose ETag is then not kept, so the issue comes
            back next round.
        interval: ``GITHUB_POLL_INTERVAL`` seconds between rounds.
        max_backoff: cap of the error back-off, seconds.
        low_remaining: below this many remaining calls, wait for the reset.
        rng: random source for the jitter (tests pass a seeded one).
        clock: epoch seconds (tests pass a fake one).
    """

    def __init__(
        self,
        client: GitHubClient,
        repositories: Iterable[RepositoryConfig],
        on_issue: OnIssue,
        *,
        interval: float = 180.0,
        max_backoff: float = 3600.0,
        low_remaining: int = 50,
        jitter: float = 0.1,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.repositories = tuple(repositories)
        self.on_issue = on_issue
        self.interval = interval
        self.max_backoff = max_backoff
        self.low_remaining = low_remaining
        self.jitter = jitter
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._clock = clock
        self._etags: dict[str, str] = {}
        self._failed_rounds = 0
        self._resume_at = 0.0  #: epoch seconds before which GitHub must not be called

    async def run_once(self) -> PollReport:
        """Poll every repository once (skipped entirely while a rate limit lasts)."""
        report = PollReport()
        if self._clock() < self._resume_at:
            report.rate_limited = True
            return report
        for cfg in self.repositories:
            try:
                await self._poll(cfg, report)
            except GitHubRateLimited as exc:
                # the limit is per token: stop the round, every repository would fail
                self._resume_at = self._clock() + exc.retry_after
                report.rate_limited = True
                report.failed[cfg.full_name] = str(exc)
                log.warning("github_poll_rate_limited", retry_after=exc.retry_after)
                break
            except Exception as exc:  # one bad repository must not stop the others
                report.failed[cfg.full_name] = f"{type(exc).__name__}: {exc}"
                level = log.warning if isinstance(exc, GitHubError) else log.exception
                level("github_poll_failed", repository=cfg.full_name, error=str(exc))
        limit = self.client.rate_limit
        if limit is not None and limit.remaining < self.low_remaining:
            self._resume_at = max(self._resume_at, limit.reset)
            report.rate_limited = True
        self._failed_rounds = self._failed_rounds + 1 if report.failed else 0
        return report

    async def _poll(self, cfg: RepositoryConfig, report: PollReport) -> None:
        listing = await self.client.list_labelled_open_issues(
            cfg.full_name, cfg.trigger_labels, etag=self._etags.get(cfg.full_name)
        )
        if listing.not_modified:
            report.unchanged.append(cfg.full_name)
            return
        for issue in listing.issues:
            if issue.is_pull_request:
                continue
            decision = should_trigger(cfg, issue.label_names, "poll")
            if decision.trigger:
                await self.on_issue(cfg, issue)
                report.triggered.append((cfg.full_name, issue.number))
        # kept only once every callback succeeded: otherwise a 304 would hide the issue
        if listing.etag:
            self._etags[cfg.full_name] = listing.etag

    def next_delay(self) -> float:
        """Seconds to wait before the next round (jittered)."""
        wait_for_reset = self._resume_at - self._clock()
        if wait_for_reset > 0:
            # jitter only upwards: waking before the reset would just waste a round
            return wait_for_reset * (1 + self._rng.uniform(0, self.jitter))
        base = self.interval
        if self._failed_rounds:
            base = min(self.max_backoff, self.interval * 2**self._failed_rounds)
        return base * (1 + self._rng.uniform(-self.jitter, self.jitter))

    async def run_forever(self, stop_event: asyncio.Event) -> None:
        """Poll until ``stop_event`` is set; stopping interrupts the wait at once."""
        while not stop_event.is_set():
            report = await self.run_once()
            if report.triggered or report.failed:
                log.info(
                    "github_poll_round",
                    triggered=len(report.triggered),
                    failed=len(report.failed),
                    unchanged=len(report.unchanged),
                )
            try:
                await asyncio.wait_for(stop_event.wait(), timeout=self.next_delay())
            except TimeoutError:
                continue
