"""Fencing at delivery, agent side (SPEC §5): no push without the coordinator's word.

Before every push and pull request the run asks the coordinator whether it still holds
its task (:func:`confirm`). A refusal discards the result; no answer keeps it and asks
again with back-off until the run's wall time runs out, then discards it
(:func:`discard`: nothing is pushed, the events and a metric say why).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from claude_cluster import metrics
from claude_cluster.agent.coordinator_client import CoordinatorError, CoordinatorRejected
from claude_cluster.agent.run_context import RunContext
from claude_cluster.domain.states import ErrorCategory
from claude_cluster.domain.wire import DeliveryConfirmation, RunResult
from claude_cluster.logging import get_logger

__all__ = ["CONFIRM_RETRY_FIRST", "CONFIRM_RETRY_MAX", "DeliveryConfirmer", "confirm", "discard"]

#: the fencing check before a delivery: ``run_id → confirmation`` (raises
#: :class:`CoordinatorRejected` when the run no longer holds its task)
DeliveryConfirmer = Callable[[int], Awaitable[DeliveryConfirmation]]

#: back-off between confirmation attempts while the coordinator does not answer
CONFIRM_RETRY_FIRST = 1.0
CONFIRM_RETRY_MAX = 15.0

log = get_logger(__name__)


async def confirm(
    ctx: RunContext, confirmer: DeliveryConfirmer | None
) -> DeliveryConfirmation | RunResult | None:
    """The fencing check before a delivery (SPEC §5 Fencing at delivery).

    Returns the confirmation (``progress.deliver_by`` set: the delivery must be over by
    then), ``None`` when this runner has no coordinator to ask, or the result of a
    discarded delivery: the coordinator refused (the run no longer holds its task:
    someone else has it), or it did not answer before the run's wall time ran out.
    While it does not answer, the result is kept and the question asked again with
    back-off."""
    if confirmer is None:
        return None
    request, reporter, progress = ctx.request, ctx.reporter, ctx.progress
    loop = asyncio.get_running_loop()
    delay = CONFIRM_RETRY_FIRST
    waiting_said = False
    while True:
        asked = loop.time()
        try:
            confirmation = await confirmer(request.run_id)
        except CoordinatorRejected as exc:
            return discard(ctx, "refused", str(exc))
        except CoordinatorError as exc:
            left = progress.deadline - loop.time()
            if left <= 0:
                return discard(
                    ctx,
                    "unconfirmed",
                    f"no confirmation before the run's wall time ran out: {exc}",
                )
            if not waiting_said:
                waiting_said = True
                reporter.event(
                    "delivery_waiting",
                    "the coordinator did not confirm the delivery; the result is kept "
                    f"and the confirmation asked for again until the wall time ({left:.0f}"
                    " s) runs out",
                    {"error": str(exc)},
                    level="warning",
                )
            log.warning(
                "delivery_unconfirmed", run_id=request.run_id, error=str(exc),
                retry_in=delay, wall_time_left=round(left, 1),
            )  # fmt: skip
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, CONFIRM_RETRY_MAX)
            continue
        progress.deliver_by = asked + confirmation.deliver_within_seconds
        reporter.event(
            "delivery_confirmed",
            f"the coordinator confirmed that run {request.run_id} still holds the task",
            {"deliver_within_seconds": confirmation.deliver_within_seconds},
        )
        return confirmation


def discard(ctx: RunContext, reason: str, detail: str) -> RunResult:
    """Give up a delivery: nothing is pushed, and the record says why."""
    request = ctx.request
    message = f"the result was discarded, nothing was delivered: {detail}"
    ctx.reporter.event(
        "delivery_discarded", message, {"reason": reason, "detail": detail}, level="warning"
    )
    log.warning(
        "delivery_discarded", run_id=request.run_id, task_id=request.task_id,
        reason=reason, detail=detail,
    )  # fmt: skip
    metrics.AGENT_DELIVERIES_DISCARDED.labels(ctx.config.agent_id, reason).inc()
    return ctx.progress.result(succeeded=False, category=ErrorCategory.LOST, message=message)
