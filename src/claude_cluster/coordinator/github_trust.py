"""The GitHub loop's gate: is the actor of an event trusted to steer runs?

:class:`ActorTrust` applies a repository's trust rule (:mod:`claude_cluster.github.trust`)
to an event's actor. By ``author_association`` when the payload carries it (comments,
reviews, an issue's author), else by the actor's repository permission, looked up on
GitHub and kept for :data:`PERMISSION_TTL` seconds (a lookup that fails counts as
untrusted: the gate fails closed).

An ignored trigger is counted in ``claude_github_triggers_ignored_total`` every time and
logged once per repository, actor and event type (bounded memory), and never answered
with a comment: an outsider must not be able to make the cluster write on GitHub.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from claude_cluster import metrics
from claude_cluster.github import GitHubClient, GitHubError, RepositoryConfig, User
from claude_cluster.github.trust import (
    Verdict,
    is_listed,
    judge_association,
    judge_permission,
)
from claude_cluster.logging import get_logger

log = get_logger(__name__)

#: seconds a looked-up permission is believed (a removed collaborator loses trust by then)
PERMISSION_TTL = 60.0
#: (repository, login, event) triples remembered as logged; the oldest are forgotten
LOGGED_MAX = 4096


class ActorTrust:
    def __init__(
        self, github: GitHubClient, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.github = github
        self._clock = clock
        self._permissions: dict[tuple[str, str], tuple[str, float]] = {}
        self._logged: OrderedDict[tuple[str, str, str], None] = OrderedDict()

    def by_association(
        self, cfg: RepositoryConfig, user: User | None, association: str | None
    ) -> Verdict:
        """The author of a comment, review or issue, by its ``author_association``."""
        return judge_association(
            user.login if user else None,
            association,
            trusted_associations=cfg.trusted_associations,
            trusted_logins=cfg.trusted_logins,
        )

    async def by_permission(self, cfg: RepositoryConfig, user: User | None) -> Verdict:
        """The sender of an event whose payload does not say how it relates to the
        repository (labelled, edited, closed, reopened, unlabelled)."""
        login = user.login if user else None
        if not login or is_listed(login, cfg.trusted_logins):  # a listed login needs no lookup
            return self._judge(cfg, login, None)
        key = (cfg.full_name.lower(), login.lower())
        cached = self._permissions.get(key)
        now = self._clock()
        if cached is not None and cached[1] > now:
            return self._judge(cfg, login, cached[0])
        try:
            permission = await self.github.permission(cfg.full_name, login)
        except GitHubError as exc:
            return Verdict(False, f"@{login}'s permission could not be read ({exc})")
        self._permissions[key] = (permission, now + PERMISSION_TTL)
        return self._judge(cfg, login, permission)

    @staticmethod
    def _judge(cfg: RepositoryConfig, login: str | None, permission: str | None) -> Verdict:
        return judge_permission(
            login,
            permission,
            trusted_permissions=cfg.trusted_permissions,
            trusted_logins=cfg.trusted_logins,
        )

    def ignored(self, cfg: RepositoryConfig, event_type: str, reason: str, subject: str) -> None:
        """Count an ignored trigger; log it the first time for this subject (the actor, or
        what was wrong with a pull request) and event type."""
        metrics.GITHUB_TRIGGERS_IGNORED.labels(event_type, reason).inc()
        key = (cfg.full_name.lower(), subject.lower(), event_type)
        if key in self._logged:
            return
        self._logged[key] = None
        if len(self._logged) > LOGGED_MAX:
            self._logged.popitem(last=False)
        log.warning(
            "github_trigger_ignored",
            repository=cfg.full_name,
            subject=subject,
            event_type=event_type,
            reason=reason,
        )
