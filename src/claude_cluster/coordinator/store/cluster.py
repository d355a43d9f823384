"""Work one coordinator process does for the whole cluster, and what happens once.

- **Cluster leases** (``cluster_leases``): a named lease held by one process at a time
  (a repository's poller). :meth:`ClusterQueries.hold_lease` takes it when it is free or
  expired and renews it for its holder; it is a conditional update or an insert, so two
  processes never both hold it.
- **Once-marks** (``once_marks``): :meth:`ClusterQueries.mark_once_cluster` inserts a key;
  only the first insert succeeds, whichever replica or restart makes it.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from claude_cluster.coordinator.store.common import StoreBase, retry_conflicts, utcnow
from claude_cluster.coordinator.store.tables import ClusterLease, OnceMark


class ClusterQueries(StoreBase):
    @retry_conflicts
    async def hold_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take or renew the lease ``name`` for ``seconds``: True when ``holder`` holds it."""
        now = utcnow()
        until = now + timedelta(seconds=seconds)
        async with self._tx() as s:
            result = await s.execute(
                update(ClusterLease)
                .where(
                    ClusterLease.name == name,
                    or_(ClusterLease.holder == holder, ClusterLease.expires_at <= now),
                )
                .values(holder=holder, expires_at=until)
            )
            if getattr(result, "rowcount", 0):
                return True
        try:
            async with self._tx() as s:
                s.add(ClusterLease(name=name, holder=holder, expires_at=until))
            return True
        except IntegrityError:  # someone else holds it
            return False

    @retry_conflicts
    async def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up (a stopping process), so another may take it at once."""
        async with self._tx() as s:
            await s.execute(
                delete(ClusterLease).where(ClusterLease.name == name, ClusterLease.holder == holder)
            )

    async def lease_holder(self, name: str) -> str | None:
        """Who holds the lease ``name`` (expired or not), or None."""
        async with self._sessions() as s:
            return await s.scalar(select(ClusterLease.holder).where(ClusterLease.name == name))

    async def mark_once_cluster(self, key: str) -> bool:
        """Claim ``key`` cluster-wide: True the first time, False ever after."""
        try:
            async with self._tx() as s:
                s.add(OnceMark(key=key[:500], created_at=utcnow()))
            return True
        except IntegrityError:
            return False

    @retry_conflicts
    async def forget_once_cluster(self, key: str) -> None:
        """Give ``key`` back (what it claimed did not happen), so a retry may claim it."""
        async with self._tx() as s:
            await s.execute(delete(OnceMark).where(OnceMark.key == key[:500]))
