"""The coordinator's GitHub loop: credentials, the client, and the work behind webhooks.

:class:`GitHubLoop` is built from the settings when ``GITHUB_REPOSITORIES`` names at least
one repository. It hands the dispatcher a token per run (:meth:`GitHubLoop.dispatch_token`:
a fresh App installation token narrowed to the repository, or the personal token), and,
once started inside the app's lifespan, owns:

- the webhook work: the route verifies a delivery and records it with its payload, answers
  at once and wakes this process's delivery worker (:meth:`GitHubLoop.wake`). The worker of
  every coordinator process claims due deliveries from the database
  (:meth:`~claude_cluster.coordinator.store.webhooks.WebhookQueries.claim_deliveries`: one
  at a time per issue or pull request, in received order, across processes), processes
  each, and stores its outcome, or schedules a retry with back-off when it failed
  (``GITHUB_DELIVERY_ATTEMPTS``, then ``error``). A claim is a lease
  (``GITHUB_DELIVERY_LEASE_SECONDS``, renewed while the work lasts), so a delivery whose
  process died is resumed by any process after it;
- the :class:`~claude_cluster.coordinator.github_comments.IssueCommenter` (an observer of
  task changes, plus the start-comment sweep);
- the polling fallback (``GITHUB_POLL_INTERVAL`` > 0), which feeds the same path as the
  webhooks, so a poll and a webhook for one issue make one task; one process of the
  cluster polls each repository, the holder of its ``cluster_leases`` row;
- metrics: every API call counts in ``claude_github_api_calls_total`` and updates
  ``claude_github_rate_limit_remaining``.

:meth:`GitHubLoop.stop` lets background work finish (bounded) before the coordinator stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import uuid
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

from claude_cluster import metrics
from claude_cluster.coordinator.config import CoordinatorSettings
from claude_cluster.coordinator.github_comments import IssueCommenter
from claude_cluster.coordinator.github_events import EventHandler, Outcome, ignored
from claude_cluster.coordinator.service import Coordinator
from claude_cluster.coordinator.store.common import utcnow
from claude_cluster.coordinator.store.webhooks import ClaimedDelivery
from claude_cluster.domain.contract import OperatorPolicy
from claude_cluster.errors import ClusterError
from claude_cluster.github import (
    GitHubApp,
    GitHubClient,
    GitHubError,
    GitHubEvent,
    Issue,
    IssueCommentEvent,
    IssuePoller,
    IssuesEvent,
    MalformedPayload,
    PersonalToken,
    PullRequestEvent,
    PullRequestReviewEvent,
    RepositoryConfig,
    RepositoryConfigs,
    load_repositories,
    parse_event,
    token_provider,
)
from claude_cluster.logging import get_logger

log = get_logger(__name__)

#: how long shutdown waits for webhook work under way before cancelling it
STOP_GRACE_SECONDS = 10.0
#: deliveries one process works on at once (each of a different issue)
DELIVERY_WORKERS = 8
#: how often an idle worker looks for deliveries that other replicas received, or whose
#: back-off or lease ran out (a delivery received here wakes it at once)
DELIVERY_POLL_SECONDS = 1.0
#: the longest back-off between two attempts at a delivery
DELIVERY_RETRY_MAX_SECONDS = 600.0
#: what each git step of a run needs on GitHub: fetching reads the repository; delivering
#: pushes the branch and opens or updates the pull request
STEP_PERMISSIONS = {
    "fetch": {"contents": "read"},
    "deliver": {"contents": "write", "pull_requests": "write"},
}


def load_watched(settings: CoordinatorSettings) -> RepositoryConfigs:
    """``GITHUB_REPOSITORIES`` with ``GITHUB_REPOSITORIES_FILE``'s overrides; the file wins
    over ``GITHUB_TRIGGER_ON_OPENED`` for the repositories (or defaults) that set it."""
    configs = load_repositories(settings.github_repositories, settings.github_repositories_file)
    if not settings.github_trigger_on_opened:
        return configs
    return RepositoryConfigs(
        cfg
        if "trigger_on_opened" in cfg.model_fields_set
        else cfg.model_copy(update={"trigger_on_opened": True})
        for cfg in configs.values()
    )


def issue_key(event: GitHubEvent, cfg: RepositoryConfig) -> str | None:
    """What orders deliveries: ``owner/repo#number`` of the issue or pull request (they
    share one number space on GitHub), or None for an event about neither."""
    number = None
    if isinstance(event, IssuesEvent | IssueCommentEvent):
        number = event.issue.number
    elif isinstance(event, PullRequestEvent | PullRequestReviewEvent):
        number = event.pull_request.number
    return None if number is None else f"{cfg.full_name.lower()}#{number}"


def retry_delay(attempt: int, base: float) -> float:
    """The back-off after failed attempt ``attempt`` (1-based): doubling, capped."""
    return float(min(DELIVERY_RETRY_MAX_SECONDS, base * 2 ** (attempt - 1)))


def process_holder() -> str:
    """Who this process is in ``cluster_leases``: host, pid and a random suffix."""
    return f"{socket.gethostname()[:100]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def record_api_call(endpoint: str, status: int, remaining: int | None) -> None:
    """The client's ``on_api_call`` hook."""
    metrics.GITHUB_API_CALLS.labels(endpoint, str(status)).inc()
    if remaining is not None:
        metrics.GITHUB_RATE_LIMIT_REMAINING.set(remaining)


class GitHubLoop:
    """The GitHub side of one coordinator process.

    Raises:
        ConfigError: bad repository names or overrides, or no usable credentials.
    """

    def __init__(self, settings: CoordinatorSettings) -> None:
        self.settings = settings
        self.repositories = load_watched(settings)
        secret = settings.github_webhook_secret
        self.webhook_secret = secret.get_secret_value().encode() if secret else b""
        key = settings.github_app_private_key
        token = settings.github_token
        self.auth: PersonalToken | GitHubApp = token_provider(
            token=token.get_secret_value() if token else None,
            app_id=settings.github_app_id,
            private_key=key.get_secret_value() if key else None,
            installation_id=settings.github_app_installation_id,
            base_url=settings.github_api_url,
        )
        self.client: GitHubClient | None = None
        self.handler: EventHandler | None = None
        self.commenter: IssueCommenter | None = None
        self._coordinator: Coordinator | None = None
        self._stop = asyncio.Event()
        self._jobs: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        #: deliveries being processed here: id → (attempt, job)
        self._working: dict[str, tuple[int, asyncio.Task[None]]] = {}
        self.holder = process_holder()

    def config_for(self, repository: str | None) -> RepositoryConfig | None:
        """The watched repository's configuration (case-insensitive), or None."""
        return self.repositories.get(repository) if repository else None

    def operator_contract(self, repository: str) -> OperatorPolicy | None:
        """The dispatcher's ContractProvider: the ``contract:`` of a watched repository
        (its own, else the file's ``defaults``), which travels with each of its runs; None
        for any other repository (a task on a local path)."""
        cfg = self.config_for(repository)
        return cfg.contract if cfg is not None else None

    async def dispatch_token(self, repository: str, purpose: str = "deliver") -> str | None:
        """The dispatcher's TokenProvider: a token for one run's push and pull request.

        An App mints an installation token narrowed to the repository and to what the step
        needs (:data:`STEP_PERMISSIONS`; about an hour, then useless), and a personal token is
        never sent when an App is configured; in personal-token mode the token is handed as
        it is (logged at start-up). None (no pull request, push without credentials) when
        GitHub cannot mint one: the run still delivers its branch.
        """
        try:
            token, _expires = await self.auth.installation_token(
                repositories=[repository], permissions=STEP_PERMISSIONS[purpose]
            )
        except GitHubError as exc:
            log.warning("github_token_failed", repository=repository, error=str(exc))
            return None
        return token

    # --- lifecycle --------------------------------------------------------------------

    async def start(self, coordinator: Coordinator) -> None:
        """Attach to the coordinator: the progress comments, the delivery worker, the
        pollers."""
        self._coordinator = coordinator
        self.client = GitHubClient(
            self.auth, base_url=self.settings.github_api_url, on_api_call=record_api_call
        )
        self.handler = EventHandler(coordinator, self.client, self.repositories)
        self.commenter = IssueCommenter(
            coordinator,
            self.client,
            self.repositories,
            interval=self.settings.github_progress_interval,
        )
        coordinator.observers.append(self.commenter)
        self._spawn(self._deliveries_forever())
        if self.settings.github_poll_interval > 0:
            for cfg in self.repositories.values():
                self._spawn(self._poll_forever(cfg))
        if isinstance(self.auth, PersonalToken):
            log.warning(
                "github_token_sent_to_agents",
                detail="GITHUB_TOKEN is a personal access token: every agent receives it "
                "with its runs, with all its scopes on every repository it reaches; "
                "configure a GitHub App (GITHUB_APP_*) for tokens narrowed to one repository",
            )
        log.info(
            "github_loop_started",
            repositories=len(self.repositories),
            polling=self.settings.github_poll_interval,
            webhooks=bool(self.webhook_secret),
        )

    async def stop(self) -> None:
        """Stop the loops; let webhook work finish for a grace period, then cancel it and
        give its deliveries back (due again at once, for whichever process runs next)."""
        self._stop.set()
        self._wake.set()
        working = dict(self._working)
        jobs = set(self._jobs) | {job for _attempt, job in working.values()}
        if jobs:
            _done, pending = await asyncio.wait(jobs, timeout=STOP_GRACE_SECONDS)
            for job in pending:
                job.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if self._coordinator is not None:
                for delivery_id, (attempt, job) in working.items():
                    if job in pending:
                        with contextlib.suppress(Exception):
                            await self._coordinator.repo.release_delivery(delivery_id, attempt)
        if self.commenter is not None:
            # the final state of a task reaches its issue before the coordinator stops
            try:
                await asyncio.wait_for(self.commenter.settle(), STOP_GRACE_SECONDS)
            except TimeoutError:
                log.warning("github_progress_unsent")
        if self._coordinator is not None and self.commenter in self._coordinator.observers:
            self._coordinator.observers.remove(self.commenter)
        if self.client is not None:
            await self.client.aclose()
        if isinstance(self.auth, GitHubApp):
            await self.auth.aclose()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        job = asyncio.ensure_future(coro)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less when the loop stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), max(0.0, seconds))

    # --- webhook work -----------------------------------------------------------------

    def wake(self) -> None:
        """A delivery was recorded (or redelivered before it was processed): look now."""
        self._wake.set()

    async def _deliveries_forever(self) -> None:
        """Claim due deliveries and process them, up to :data:`DELIVERY_WORKERS` at once."""
        assert self._coordinator is not None
        repo = self._coordinator.repo
        lease = self.settings.github_delivery_lease_seconds
        while not self._stop.is_set():
            self._wake.clear()
            free = DELIVERY_WORKERS - len(self._working)
            claimed: list[ClaimedDelivery] = []
            if free > 0:
                try:
                    claimed = await repo.claim_deliveries(free, lease)
                except Exception:  # the database is away: the next look tries again
                    log.exception("github_delivery_claim_failed")
            for delivery in claimed:
                job = asyncio.ensure_future(self._work(delivery))
                self._working[delivery.id] = (delivery.attempt, job)
                job.add_done_callback(functools.partial(self._done_working, delivery.id))
            if claimed and len(claimed) < free:
                continue  # more may be due
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), DELIVERY_POLL_SECONDS)

    def _done_working(self, delivery_id: str, _job: object = None) -> None:
        self._working.pop(delivery_id, None)
        self._wake.set()  # a slot is free, and the issue's next delivery may be due

    async def _work(self, delivery: ClaimedDelivery) -> None:
        """Process one claimed delivery and record what became of it."""
        assert self._coordinator is not None
        repo = self._coordinator.repo
        settings = self.settings
        bound = log.bind(delivery=delivery.id, event=delivery.event, attempt=delivery.attempt)
        renewer = asyncio.ensure_future(self._renew(delivery))
        try:
            try:
                outcome = await self._process(delivery)
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"[:2000]
                if isinstance(exc, ClusterError | GitHubError):
                    bound.warning("github_event_failed", error=str(exc))
                else:
                    bound.exception("github_event_crashed")
                if delivery.attempt >= settings.github_delivery_attempts:
                    metrics.GITHUB_DELIVERIES.labels("error").inc()
                    await repo.finish_delivery(
                        delivery.id, "error", reason, attempt=delivery.attempt
                    )
                    bound.warning("github_delivery_given_up", reason=reason)
                    return
                delay = retry_delay(delivery.attempt, settings.github_delivery_retry_seconds)
                retry_at = utcnow() + timedelta(seconds=delay)
                await repo.retry_delivery(delivery.id, delivery.attempt, reason, retry_at)
                metrics.GITHUB_DELIVERIES.labels("retried").inc()
                return
            bound.info("github_event", status=outcome.status, reason=outcome.reason)
            metrics.GITHUB_DELIVERIES.labels(outcome.status).inc()
            if not await repo.finish_delivery(
                delivery.id,
                outcome.status,
                outcome.reason[:2000],
                outcome.task_id,
                attempt=delivery.attempt,
            ):
                bound.warning("github_delivery_claim_lost")
        except asyncio.CancelledError:
            raise
        except Exception:  # the database is away: the lease runs out and it is retried
            bound.exception("github_delivery_not_recorded")
        finally:
            renewer.cancel()

    async def _renew(self, delivery: ClaimedDelivery) -> None:
        """Keep the claim while the work lasts."""
        assert self._coordinator is not None
        lease = self.settings.github_delivery_lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            try:
                if not await self._coordinator.repo.renew_delivery(
                    delivery.id, delivery.attempt, lease
                ):
                    log.warning("github_delivery_claim_lost", delivery=delivery.id)
                    return
            except Exception:
                log.exception("github_delivery_renew_failed", delivery=delivery.id)

    async def _process(self, delivery: ClaimedDelivery) -> Outcome:
        """The delivery's event, parsed again from the stored payload, handled."""
        try:
            event = parse_event(delivery.event, delivery.id, delivery.payload.encode())
        except MalformedPayload as exc:  # cannot happen for what the route verified
            return Outcome("error", f"stored payload unreadable: {exc}")
        cfg = self.config_for(event.repository_name)
        if cfg is None:
            return ignored(f"repository {event.repository_name} is not watched")
        return await self.handle(event, cfg)

    async def handle(self, event: GitHubEvent, cfg: RepositoryConfig) -> Outcome:
        """Route one event to its handler."""
        handler = self.handler
        assert handler is not None, "start() first"
        if isinstance(event, IssuesEvent):
            return await handler.on_issues(cfg, event)
        if isinstance(event, PullRequestEvent):
            return await handler.on_pull_request(cfg, event)
        if isinstance(event, PullRequestReviewEvent):
            return await handler.on_review(cfg, event)
        if isinstance(event, IssueCommentEvent):
            return await handler.on_comment(cfg, event)
        return ignored(f"{event.event} needs nothing")

    # --- polling ----------------------------------------------------------------------

    async def _poll_forever(self, cfg: RepositoryConfig) -> None:
        """Poll ``cfg`` while this process holds its poller lease (one process of the
        cluster does); the others check every while whether the lease ran out."""
        assert self._coordinator is not None and self.client is not None
        repo = self._coordinator.repo
        interval = self.settings.github_poll_interval
        poller = IssuePoller(self.client, [cfg], self._on_polled_issue, interval=interval)
        name = f"github_poller:{cfg.full_name.lower()}"
        # the poller's lease is as long as a run's (RUN_LEASE_SECONDS), renewed every third
        # of it; another process takes it over when it runs out (at once when its holder
        # stops and gives it up)
        lease = self.settings.run_lease_seconds
        check = min(interval, lease / 3)
        holding = False
        next_round = 0.0
        clock = asyncio.get_running_loop().time
        try:
            while not self._stop.is_set():
                try:
                    took = await repo.hold_lease(name, self.holder, lease)
                except Exception:
                    log.exception("github_poller_lease_failed", repository=cfg.full_name)
                    took = False
                if took and not holding:
                    log.info("github_poller_taken", repository=cfg.full_name, holder=self.holder)
                    next_round = 0.0
                holding = took
                if holding and clock() >= next_round:
                    report = await poller.run_once()
                    if report.triggered or report.failed:
                        log.info(
                            "github_poll_round",
                            repository=cfg.full_name,
                            triggered=len(report.triggered),
                            failed=len(report.failed),
                            unchanged=len(report.unchanged),
                        )
                    next_round = clock() + poller.next_delay()
                wait = min(check, next_round - clock()) if holding else check
                await self._sleep(wait)
        finally:
            if holding:
                with contextlib.suppress(Exception):
                    await repo.release_lease(name, self.holder)

    async def _on_polled_issue(self, cfg: RepositoryConfig, issue: Issue) -> None:
        assert self.handler is not None
        outcome = await self.handler.start_task(cfg, issue, source="poll")
        if outcome.status == "processed":
            log.info("github_poll_task", repository=cfg.full_name, issue=issue.number)
