"""The project's exceptions. Each docstring doubles as the default message.

    ClusterError
    ├── ConfigError              a setting is missing or malformed (names the variable)
    ├── NotFound                 an id that does not exist (API: 404)
    ├── Conflict                 the request contradicts the current state (API: 409)
    │   ├── IllegalTransition    a task status change the state machine forbids
    │   └── IllegalRunTransition a run status change the run machine forbids
    ├── Unauthorized             missing or wrong credentials (API: 401)
    ├── Forbidden                valid credentials, wrong principal (API: 403)
    └── AgentCallError           the coordinator could not hand a run to an agent

Only ``coordinator/api`` maps these to HTTP responses and only ``cli`` maps them to exit
codes; everything else raises them.
"""

from __future__ import annotations

from typing import Any


class ClusterError(Exception):
    """claude-cluster failed."""

    def __init__(self, message: str | None = None, **context: Any) -> None:
        self.context = context
        super().__init__(message or (self.__doc__ or "").strip().format(**context))

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(ClusterError):
    """Invalid configuration."""


class NotFound(ClusterError):
    """{kind} {id} not found."""


class Conflict(ClusterError):
    """The request conflicts with the current state."""


class IllegalTransition(Conflict):
    """Cannot move a task from {current} to {target}."""


class IllegalRunTransition(Conflict):
    """Cannot move a run from {current} to {target}."""


class Unauthorized(ClusterError):
    """Missing or invalid bearer token."""


class Forbidden(ClusterError):
    """This token may not act on that resource."""


class AgentCallError(ClusterError):
    """Agent {agent_id} did not accept run {run_id}: {reason}."""
