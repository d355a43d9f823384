"""The coordinator's GitHub loop: credentials, the client, and the work behind webhooks.

:class:`GitHubLoop` is built from the settings when ``GITHUB_REPOSITORIES`` names at least
one repository. It hands the dispatcher a token per run (:meth:`GitHubLoop.dispatch_token`:
a fresh App installation token narrowed to the repository, or the personal token), and,
once started inside the app's lifespan, owns:

- the webhook work: the route verifies and records a delivery, answers at once and calls
  :meth:`GitHubLoop.submit`; the work runs as a background task here, in arrival order per
  issue or pull request, and its outcome is stored on the delivery;
- the :class:`~claude_cluster.coordinator.github_comments.IssueCommenter` (an observer of
  task changes, plus the start-comment sweep);
- the polling fallback (``GITHUB_POLL_INTERVAL`` > 0), which feeds the same path as the
  webhooks, so a poll and a webhook for one issue make one task;
- metrics: every API call counts in ``claude_github_api_calls_total`` and updates
  ``claude_github_rate_limit_remaining``.

:meth:`GitHubLoop.stop` lets background work finish (bounded) before the coordinator stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from claude_cluster import metrics
from claude_cluster.coordinator.config import CoordinatorSettings
from claude_cluster.coordinator.github_comments import IssueCommenter
from claude_cluster.coordinator.github_events import EventHandler, Outcome, ignored
from claude_cluster.coordinator.service import Coordinator
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
    PersonalToken,
    PullRequestEvent,
    PullRequestReviewEvent,
    RepositoryConfig,
    RepositoryConfigs,
    load_repositories,
    token_provider,
)
from claude_cluster.logging import get_logger

log = get_logger(__name__)

#: how long shutdown waits for webhook work under way before cancelling it
STOP_GRACE_SECONDS = 10.0
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
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}

    def config_for(self, repository: str | None) -> RepositoryConfig | None:
        """The watched repository's configuration (case-insensitive), or None."""
        return self.repositories.get(repository) if repository else None

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
        """Attach to the coordinator: the progress comments, the poller."""
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
        if self.settings.github_poll_interval > 0:
            poller = IssuePoller(
                self.client,
                self.repositories.values(),
                self._on_polled_issue,
                interval=self.settings.github_poll_interval,
            )
            self._spawn(poller.run_forever(self._stop))
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
        """Stop the loops; let webhook work finish for a grace period, then cancel it."""
        self._stop.set()
        if self._jobs:
            _done, pending = await asyncio.wait(set(self._jobs), timeout=STOP_GRACE_SECONDS)
            for job in pending:
                job.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
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

    # --- webhook work -----------------------------------------------------------------

    def submit(self, event: GitHubEvent, cfg: RepositoryConfig) -> None:
        """Handle a recorded delivery after the response; its outcome goes on the row."""
        self._spawn(self._process(event, cfg))

    async def _process(self, event: GitHubEvent, cfg: RepositoryConfig) -> None:
        assert self._coordinator is not None
        repo = self._coordinator.repo
        bound = log.bind(delivery=event.delivery_id, event=event.event, repository=cfg.full_name)
        try:
            async with self._lock_for(event, cfg):
                outcome = await self.handle(event, cfg)
        except (ClusterError, GitHubError) as exc:
            outcome = Outcome("error", f"{type(exc).__name__}: {exc}")
            bound.warning("github_event_failed", error=str(exc))
        except Exception as exc:
            outcome = Outcome("error", f"{type(exc).__name__}: {exc}")
            bound.exception("github_event_crashed")
        bound.info("github_event", status=outcome.status, reason=outcome.reason)
        try:
            await repo.finish_delivery(
                event.delivery_id, outcome.status, outcome.reason[:2000], outcome.task_id
            )
        except Exception:
            bound.exception("github_delivery_not_recorded")

    def _lock_for(self, event: GitHubEvent, cfg: RepositoryConfig) -> asyncio.Lock:
        """One event at a time per issue or pull request, in arrival order (a ``closed``
        right after ``labeled`` must see the task that ``labeled`` created). Issues and
        pull requests share one number space on GitHub, so the number is the key."""
        number = 0
        if isinstance(event, IssuesEvent | IssueCommentEvent):
            number = event.issue.number
        elif isinstance(event, PullRequestEvent | PullRequestReviewEvent):
            number = event.pull_request.number
        return self._locks.setdefault((cfg.full_name, number), asyncio.Lock())

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

    async def _on_polled_issue(self, cfg: RepositoryConfig, issue: Issue) -> None:
        assert self.handler is not None
        lock = self._locks.setdefault((cfg.full_name, issue.number), asyncio.Lock())
        async with lock:
            outcome = await self.handler.start_task(cfg, issue, source="poll")
        if outcome.status == "processed":
            log.info("github_poll_task", repository=cfg.full_name, issue=issue.number)
