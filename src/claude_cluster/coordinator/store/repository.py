"""Every query of the coordinator, behind one facade. Each public method is one transaction,
so a request that fails halfway changes nothing.

The dispatcher and reconciler decide *when*; the store decides nothing about policy beyond
what a transaction must guarantee: a task is claimed once (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite, and a partial unique index on active runs behind
both), an agent slot is taken by a conditional update, and a run is finished once.

:class:`Repository` combines one query mixin per noun; each lives in its own module:

- ``tasks``: creation, lookup, listing, changes, cancelling, status from outside a run;
- ``feedback``: review feedback and the follow-up runs it queues;
- ``events``: a task's event log and once-only marks;
- ``agents``: registration, heartbeats, draining, lookups;
- ``claims``: claiming ready tasks for the best agents;
- ``runs``: the agent's acceptance and reports, what runs cost;
- ``leases``: expired runs and agents, timed-out runs;
- ``run_end``: the steps every run ending shares;
- ``overview``: the dashboard's reads (queue by priority, active runs, cost, search);
- ``queue_status``, ``webhooks``, ``tokens``: the queue's status, deliveries, API tokens;
- ``cluster``: cluster-wide leases (one poller per repository) and once-marks;
- ``common``: the clock, conflict retries and :class:`~.common.StoreBase`.

Lock order everywhere is run → task → agent.
"""

from __future__ import annotations

from sqlalchemy import select

from claude_cluster.coordinator.store.agents import AgentQueries
from claude_cluster.coordinator.store.claims import Claim, ClaimQueries
from claude_cluster.coordinator.store.cluster import ClusterQueries
from claude_cluster.coordinator.store.common import retry_conflicts, utcnow
from claude_cluster.coordinator.store.events import EventQueries
from claude_cluster.coordinator.store.feedback import FeedbackQueries
from claude_cluster.coordinator.store.leases import LeaseQueries
from claude_cluster.coordinator.store.overview import OverviewQueries
from claude_cluster.coordinator.store.queue_status import QueueQueries, QueueStatus
from claude_cluster.coordinator.store.run_end import RunEnd
from claude_cluster.coordinator.store.runs import RunQueries
from claude_cluster.coordinator.store.tasks import NewTask, TaskQueries
from claude_cluster.coordinator.store.tokens import TokenQueries
from claude_cluster.coordinator.store.webhooks import WebhookQueries

__all__ = [
    "Claim",
    "NewTask",
    "QueueStatus",
    "Repository",
    "RunEnd",
    "retry_conflicts",
    "utcnow",
]


class Repository(
    TaskQueries,
    FeedbackQueries,
    EventQueries,
    AgentQueries,
    ClaimQueries,
    RunQueries,
    LeaseQueries,
    QueueQueries,
    OverviewQueries,
    WebhookQueries,
    ClusterQueries,
    TokenQueries,
):
    """The coordinator's one handle on the database: ``Repository(sessions, postgres=...)``."""

    async def ping(self) -> None:
        async with self._sessions() as s:
            await s.execute(select(1))
