"""``POST /webhook/github`` and ``GET /webhook/health``: open, authenticated by signature.

The route does only what must happen before GitHub gets its answer (GitHub waits 10 s at
most): cap the body, verify the HMAC-SHA256 signature over the raw bytes, parse, record the
``X-GitHub-Delivery`` id (a redelivery is then a no-op) and hand the event to the GitHub
loop, which does the work after the response. Every accepted delivery is recorded in
``webhook_deliveries`` with what became of it and counted in
``claude_github_webhooks_total{event_type}``.

Refused deliveries (unsigned, wrong signature, oversize, malformed) are never stored:
anyone on the internet can send them, so a row each would let them fill the database.
They are counted in ``claude_github_webhooks_total{event_type="refused"}`` and logged at
most once a minute per status (with how many were held back), and they never occupy the
``X-GitHub-Delivery`` they claim.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from claude_cluster import metrics
from claude_cluster.coordinator.api.deps import CoordinatorDep
from claude_cluster.coordinator.github_loop import GitHubLoop
from claude_cluster.coordinator.service import Coordinator
from claude_cluster.github import (
    InvalidSignature,
    MalformedPayload,
    MissingSignature,
    PingEvent,
    UnhandledEvent,
    parse_event,
    verify_signature,
)
from claude_cluster.github.webhooks import MAX_PAYLOAD_BYTES, SIGNATURE_HEADER
from claude_cluster.logging import Every, get_logger

router = APIRouter(prefix="/webhook", tags=["webhooks"])
log = get_logger(__name__)
#: refused deliveries: one log line per status a minute
_REFUSALS_LOGGED = Every(60.0)

#: event types counted under their own name; anything else is "other" (bounded labels)
_COUNTED = frozenset({"issues", "issue_comment", "pull_request", "pull_request_review", "ping"})


class _TooLarge(Exception):
    pass


@router.get("/health")
async def webhook_health() -> dict[str, str]:
    return {"status": "healthy", "service": "github-webhook"}


@router.post("/github")
async def github_webhook(request: Request, coordinator: CoordinatorDep) -> JSONResponse:
    """Receive one delivery; 202 when accepted for work, 200 for ping, duplicates and
    ignored events, 400/401/413 for refused ones, 503 when GitHub is not configured."""
    loop: GitHubLoop | None = getattr(request.app.state, "github", None)
    event_name = request.headers.get("x-github-event")
    if loop is None or not loop.webhook_secret:
        return await _refuse(
            coordinator, event_name, 503, "webhooks are not configured (GITHUB_WEBHOOK_SECRET)"
        )
    try:
        body = await _read_capped(request)
    except _TooLarge:
        return await _refuse(coordinator, event_name, 413, "payload over 25 MB")
    try:
        verify_signature(loop.webhook_secret, body, request.headers.get(SIGNATURE_HEADER))
    except MissingSignature as exc:
        return await _refuse(coordinator, event_name, 400, str(exc))
    except InvalidSignature as exc:
        return await _refuse(coordinator, event_name, 401, str(exc))
    delivery_id = request.headers.get("x-github-delivery")
    try:
        event = parse_event(event_name, delivery_id, body)
    except MalformedPayload as exc:
        return await _refuse(coordinator, event_name, 400, str(exc))
    if len(event.delivery_id) > 100:  # GitHub's are GUIDs (36 characters)
        return await _refuse(coordinator, event_name, 400, "X-GitHub-Delivery is too long")
    metrics.GITHUB_WEBHOOKS.labels(event.event if event.event in _COUNTED else "other").inc()
    repo = coordinator.repo
    name = event.repository_name
    if not await repo.record_delivery(event.delivery_id, event.event[:50], event.action, name):
        return _answer(200, "duplicate", "this delivery was received before")
    if isinstance(event, PingEvent):
        await repo.finish_delivery(event.delivery_id, "processed", "ping")
        return JSONResponse({"status": "pong", "zen": event.zen})
    if isinstance(event, UnhandledEvent):
        await repo.finish_delivery(event.delivery_id, "ignored", event.reason)
        return _answer(200, "ignored", event.reason)
    cfg = loop.config_for(name)
    if cfg is None:
        reason = f"repository {name} is not watched (GITHUB_REPOSITORIES)"
        await repo.finish_delivery(event.delivery_id, "ignored", reason)
        return _answer(200, "ignored", reason)
    loop.submit(event, cfg)
    return _answer(202, "accepted", None, delivery_id=event.delivery_id)


async def _read_capped(request: Request) -> bytes:
    """The raw body, refusing more than GitHub ever sends before reading it all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_PAYLOAD_BYTES:
        raise _TooLarge()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_PAYLOAD_BYTES:
            raise _TooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


async def _refuse(
    coordinator: Coordinator, event_name: str | None, status: int, reason: str
) -> JSONResponse:
    metrics.GITHUB_WEBHOOKS.labels("refused").inc()
    held = _REFUSALS_LOGGED.due(str(status))
    if held is not None:
        log.warning(
            "github_webhook_refused",
            status=status,
            reason=reason[:200],
            event_type=(event_name or "?")[:50],
            held_back=held,
        )
    return JSONResponse({"detail": reason}, status_code=status)


def _answer(status: int, state: str, reason: str | None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"status": state, **extra}
    if reason:
        body["reason"] = reason
    return JSONResponse(body, status_code=status)
