"""The FastAPI application: wiring, lifespan, error mapping, request metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from claude_cluster import __version__, metrics
from claude_cluster.coordinator.agent_client import AgentClient
from claude_cluster.coordinator.api.guards import BodyLimit, NulFreeUrl, SecurityHeaders
from claude_cluster.coordinator.api.routes import (
    agents,
    dashboard,
    dashboard_actions,
    dashboard_live,
    dashboard_pages,
    health,
    queue,
    runs,
    tasks,
    tokens,
    webhooks,
)
from claude_cluster.coordinator.bus import make_bus
from claude_cluster.coordinator.config import CoordinatorSettings
from claude_cluster.coordinator.dispatcher import TokenProvider, no_contract, no_token
from claude_cluster.coordinator.github_loop import GitHubLoop
from claude_cluster.coordinator.service import Coordinator
from claude_cluster.coordinator.store.db import create_engine, sessionmaker
from claude_cluster.coordinator.store.repository import Repository
from claude_cluster.errors import (
    ClusterError,
    ConfigError,
    Conflict,
    Forbidden,
    IllegalTransition,
    NotFound,
    Unauthorized,
)
from claude_cluster.logging import get_logger
from claude_cluster.tls import client_verify

log = get_logger(__name__)

_STATUS: list[tuple[type[ClusterError], int]] = [
    (NotFound, 404),
    (Conflict, 409),
    (Unauthorized, 401),
    (Forbidden, 403),
    (ConfigError, 422),
]


class RequestMetrics:
    """Count and time requests by route template. A plain ASGI middleware: Starlette's
    BaseHTTPMiddleware costs a task and a stream per request on the hottest paths."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            metrics.HTTP_REQUESTS.labels(scope["method"], endpoint, str(status)).inc()
            metrics.HTTP_DURATION.labels(endpoint).observe(time.perf_counter() - started)


def create_app(
    settings: CoordinatorSettings,
    *,
    token_provider: TokenProvider = no_token,
    setup: Callable[[FastAPI, Coordinator], Awaitable[None]] | None = None,
) -> FastAPI:
    """Build the app. ``setup`` runs inside the lifespan once the coordinator exists.

    With ``GITHUB_REPOSITORIES`` set, the GitHub loop is built here (a configuration error
    surfaces now, not at the first webhook), hands out the run tokens unless
    ``token_provider`` is given, and starts and stops with the coordinator.
    """
    github = GitHubLoop(settings) if settings.github_enabled else None
    if github is not None and token_provider is no_token:
        token_provider = github.dispatch_token

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(
            settings.database_url,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
        )
        repo = Repository(sessionmaker(engine), postgres=engine.dialect.name == "postgresql")
        bus = make_bus(settings.redis_url)
        await bus.start()
        client = AgentClient(
            timeout=settings.agent_call_timeout, verify=client_verify(settings.tls_ca_file)
        )
        coordinator = Coordinator(
            settings,
            repo,
            bus,
            client,
            token_provider=token_provider,
            operator_contract=github.operator_contract if github is not None else no_contract,
        )
        app.state.coordinator = coordinator
        app.state.github = github
        if github is not None:
            await github.start(coordinator)
        if setup is not None:
            await setup(app, coordinator)
        stop = asyncio.Event()
        runner = asyncio.create_task(coordinator.run(stop))
        log.info("coordinator_started", database=engine.dialect.name, version=__version__)
        try:
            yield
        finally:
            if github is not None:  # its work still needs the coordinator: stop it first
                await github.stop()
            stop.set()
            await runner
            await client.close()
            await bus.close()
            await engine.dispose()
            log.info("coordinator_stopped")

    app = FastAPI(title=settings.app_name, version=__version__, lifespan=lifespan)
    for router in (
        health.router,
        tasks.router,
        agents.router,
        runs.router,
        queue.router,
        tokens.router,
        webhooks.router,
        dashboard.router,
        dashboard_pages.router,
        dashboard_live.router,
        dashboard_actions.router,
    ):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")

    @app.exception_handler(ClusterError)
    async def _cluster_error(_: Request, exc: ClusterError) -> JSONResponse:
        code = next((c for kind, c in _STATUS if isinstance(exc, kind)), 500)
        body: dict[str, object] = {"detail": exc.message}
        if isinstance(exc, IllegalTransition):
            body["current_status"] = exc.context.get("current")
        headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
        return JSONResponse(body, status_code=code, headers=headers)

    app.add_middleware(BodyLimit)
    app.add_middleware(NulFreeUrl)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestMetrics)
    return app
