"""Who is looking at the dashboard and whether they may act.

:func:`may_act` is the one place that decides whether a caller may press a button
(cancel, retry, requeue, drain). Today every signed-in caller is an admin; a viewer role
plugs in here, and the pages show viewers the actions disabled.
"""

from __future__ import annotations

from dataclasses import dataclass

from claude_cluster.coordinator.api.deps import Principal


def may_act(principal: Principal) -> bool:
    """May this principal change anything through the dashboard?"""
    return principal.kind == "admin"


@dataclass(frozen=True)
class DashboardUser:
    principal: Principal
    #: the session cookie's value; empty for a caller that sent a bearer token
    session: str = ""

    @property
    def may_act(self) -> bool:
        return may_act(self.principal)

    @property
    def name(self) -> str:
        return self.principal.kind
