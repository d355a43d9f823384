"""Registering with the coordinator on start, retrying while it is down.

The coordinator may start after its agents (a host reboots, a deployment rolls): the agent
keeps trying with exponential back-off and jitter, and logs each failure with when it will
try again. Only an answer that no retry can change (a wrong registration token, an invalid
registration) stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass

from claude_cluster.agent.coordinator_client import (
    CoordinatorClient,
    CoordinatorError,
    Registered,
)
from claude_cluster.domain.wire import AgentRegistration
from claude_cluster.logging import get_logger

__all__ = ["Backoff", "RegistrationConfig", "register"]

log = get_logger(__name__)


@dataclass(frozen=True)
class RegistrationConfig:
    """Back-off of the registration retries.

    Attributes:
        initial_delay: seconds before the second attempt.
        max_delay: the longest wait between two attempts.
        multiplier: growth of the delay per failure.
        jitter: the delay varies by ± this fraction, so a rack of agents does not retry
            in lock step.
    """

    initial_delay: float = 1.0
    max_delay: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.2


class Backoff:
    """Exponential back-off with jitter: ``next()`` gives the next delay in seconds."""

    def __init__(self, config: RegistrationConfig) -> None:
        self.config = config
        self._delay = config.initial_delay

    def next(self) -> float:
        delay = self._delay
        self._delay = min(self._delay * self.config.multiplier, self.config.max_delay)
        spread = delay * self.config.jitter
        return max(0.0, delay + random.uniform(-spread, spread))  # noqa: S311 - not crypto

    def reset(self) -> None:
        self._delay = self.config.initial_delay


async def register(
    client: CoordinatorClient,
    registration: AgentRegistration,
    *,
    config: RegistrationConfig | None = None,
    stop: asyncio.Event | None = None,
) -> Registered | None:
    """Register until it works; ``None`` when ``stop`` is set first.

    Raises:
        CoordinatorRejected: the coordinator refused the registration for good (wrong
            ``REGISTRATION_TOKEN``, invalid fields); retrying cannot help.
    """
    backoff = Backoff(config or RegistrationConfig())
    stop = stop or asyncio.Event()
    first_try = time.monotonic()
    attempts = 0
    while not stop.is_set():
        attempts += 1
        try:
            registered = await client.register(registration)
        except CoordinatorError as exc:
            if not exc.retryable and exc.status != 409:
                log.error("registration_refused", agent_id=registration.id, error=str(exc))
                raise
            delay = backoff.next()
            log.warning(
                f"registration failed; will try again in {delay:.1f} s",
                agent_id=registration.id,
                coordinator=client.base_url,
                error=str(exc),
                attempts=attempts,
                waiting_for=round(time.monotonic() - first_try, 1),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            continue
        log.info(
            "agent_registered",
            agent_id=registered.agent_id,
            created=registered.created,
            attempts=attempts,
            heartbeat_interval=registered.heartbeat_interval,
            lease_seconds=registered.lease_seconds,
        )
        return registered
    return None
