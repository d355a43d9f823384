"""``POST /webhook/github`` and ``GET /webhook/health``: open, authenticated by signature.

The route does only what must happen before GitHub gets its answer (GitHub waits 10 s at
most): cap the body, verify the HMAC-SHA256 signature over the raw bytes, parse, record the
``X-GitHub-Delivery`` id with the payload in one transaction, and wake the GitHub loop's
delivery worker, which does the work after the response, from the database (so a crash
loses nothing: any process resumes it). A redelivery of a delivery not processed yet is a
nudge (202 ``pending``); of a processed one, a no-op (200 ``duplicate``). Every accepted
delivery is recorded in ``webhook_deliveries`` with what became of it and counted in
``claude_github_webhooks_total{event_type}``.

Refused deliveries (unsigned, wrong signature, oversize, malformed) are never stored:
anyone on the internet can send them, so a row each would let them fill the database.
They are counted in ``claude_github_webhooks_total{event_type="refused"}`` and logged at
most once a minute per status (with how many were held back), and they never occupy the
``X-GitHub-Delivery`` they claim.
"""

from __future__ import annotations

import functools
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from claude_cluster import metrics
from claude_cluster.coordinator.api.deps import CoordinatorDep
from claude_cluster.coordinator.github_loop import GitHubLoop, issue_key
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
    record = functools.partial(
        repo.record_delivery, event.delivery_id, event.event[:50], event.action, name
    )
    cfg = loop.config_for(name)
    if isinstance(event, PingEvent):
        if await record(status="processed", reason="ping") != "new":
            return _answer(200, "duplicate", "this delivery was received before")
        return JSONResponse({"status": "pong", "zen": event.zen})
    reason = None
    if isinstance(event, UnhandledEvent):
        reason = event.reason
    elif cfg is None:
        reason = f"repository {name} is not watched (GITHUB_REPOSITORIES)"
    if reason is not None:
        if await record(status="ignored", reason=reason) != "new":
            return _answer(200, "duplicate", "this delivery was received before")
        return _answer(200, "ignored", reason)
    assert cfg is not None
    # the body verified and parsed as UTF-8 JSON above, so it decodes
    recorded = await record(
        payload=body.decode("utf-8", errors="replace"), issue_key=issue_key(event, cfg)
    )
    if recorded == "done":
        return _answer(200, "duplicate", "this delivery was processed before")
    loop.wake()
    if recorded == "pending":
        return _answer(
            202, "pending", "this delivery is not processed yet", delivery_id=event.delivery_id
        )
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
