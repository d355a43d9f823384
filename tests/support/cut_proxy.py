"""A reverse proxy a test can cut: an agent's road to the coordinator, as a real HTTP
server on loopback in front of the real coordinator.

``cut = True`` answers every request 503 at once (the agent's client takes it as "no
answer", like a refused connection); ``blocked`` cuts only the paths that contain one of
its fragments (e.g. the heartbeat), for an asymmetric partition.
"""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.servers import AsyncServer

_HOP = {"host", "content-length", "connection", "transfer-encoding"}


class CutProxy:
    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.cut = False
        self.blocked: tuple[str, ...] = ()
        #: (method, path, status) of every request, in order
        self.seen: list[tuple[str, str, int]] = []
        app = Starlette(
            routes=[
                Route(
                    "/{path:path}",
                    self._forward,
                    methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
                )
            ]
        )
        self._server = AsyncServer(app)
        self._http = httpx.AsyncClient(base_url=self.target, timeout=30)

    @property
    def url(self) -> str:
        return self._server.url

    async def __aenter__(self) -> CutProxy:
        await self._server.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._server.__aexit__()
        await self._http.aclose()

    async def _forward(self, request: Request) -> Response:
        path = request.url.path
        if self.cut or any(fragment in path for fragment in self.blocked):
            self.seen.append((request.method, path, 503))
            return Response("cut by the test", status_code=503)
        answer = await self._http.request(
            request.method,
            path,
            params=request.query_params,
            content=await request.body(),
            headers={k: v for k, v in request.headers.items() if k.lower() not in _HOP},
        )
        self.seen.append((request.method, path, answer.status_code))
        headers = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
        headers.pop("content-encoding", None)
        return Response(answer.content, status_code=answer.status_code, headers=headers)
