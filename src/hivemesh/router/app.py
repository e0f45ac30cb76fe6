"""The router's ASGI application: routes, error rendering, request ids, and the service's lifespan."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from hivemesh.errors import HivemeshError
from hivemesh.router.auth import Authenticator
from hivemesh.router.client_ws import serve_client
from hivemesh.router.openai_api import JSONResponse, OpenAIApi
from hivemesh.router.openapi import document
from hivemesh.router.service import RouterService
from hivemesh.router.session_api import SessionApi

log = logging.getLogger(__name__)

_HTTP_ERRORS = {
    404: ("not_found", "invalid_request_error"),
    405: ("method_not_allowed", "invalid_request_error"),
}


def error_response(exc: HivemeshError, request_id: str | None = None) -> Response:
    headers = dict(exc.headers)
    if request_id:
        headers["x-request-id"] = request_id
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


class RequestIdMiddleware:
    """Every HTTP response carries ``x-request-id`` (the caller's, if it sent a sane one)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for k, v in scope["headers"]:
            if k == b"x-request-id" and 0 < len(v) <= 128 and v.isascii():
                rid = v
                break
        rid = rid or uuid.uuid4().hex.encode()
        scope.setdefault("state", {})["request_id"] = rid.decode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid)]
            await send(message)

        await self.app(scope, receive, send_with_id)


def build_app(
    service: RouterService, auth: Authenticator, extra_routes: list[Any] | None = None
) -> Starlette:
    api = OpenAIApi(service, auth)
    session_api = SessionApi(api)

    async def on_hivemesh_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HivemeshError)
        return error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code, typ = _HTTP_ERRORS.get(exc.status_code, ("error", "invalid_request_error"))
        err = HivemeshError(f"{request.method} {request.url.path}: {exc.detail}", code=code)
        err.status, err.type = exc.status_code, typ
        return error_response(err)

    async def on_crash(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error path=%s", request.url.path)
        return error_response(HivemeshError("The server had an error while processing your request."))

    async def miner_ws(ws: WebSocket) -> None:
        await service.hub.serve(ws)

    async def client_ws(ws: WebSocket) -> None:
        await serve_client(ws, auth, api.completions)

    spec = document()

    async def openapi(request: Request) -> Response:
        return JSONResponse(spec)

    async def health(request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "miners": len(service.hub.links),  # connected to this router
                "nodes": len(service.hub.members()),  # in the network it serves (a cluster: every router's)
                "router": service.identity.address,
            }
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.close()

    routes: list[Any] = [
        Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
        Route("/v1/completions", api.completions_route, methods=["POST"]),
        Route("/v1/models", api.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", api.get_model, methods=["GET"]),
        Route("/v1/embeddings", api.embeddings, methods=["POST"]),
        Route("/healthz", health, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        WebSocketRoute("/ws/miner", miner_ws),
        WebSocketRoute("/api/v1/ws", client_ws),
        *session_api.routes(),
        *(extra_routes or []),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            HivemeshError: on_hivemesh_error,
            HTTPException: on_http_error,
            Exception: on_crash,
        },
        lifespan=lifespan,
    )
    app.add_middleware(RequestIdMiddleware)
    app.state.service = service
    return app
