"""The network API (``/api/v1/network/...``): the calls a validator makes, each signed with its key.

Authentication (see ``hivemesh.protocol.network``): the signature must recover to the address in
``x-hivemesh-validator``, the timestamp must be within 30 s of the router's clock, the same signature is accepted
once, and the address must be one of the router's validators (``validators.txt`` in its data dir). Failures are
401 (unsigned, stale, forged, replayed) or 403 (a valid signature by a key that is not a validator), in the
OpenAI error shape. Handlers parse, call the ``Oracle``, and serialise.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hivemesh.errors import AuthenticationFailed, BadSignature, PermissionDenied
from hivemesh.identity import verify
from hivemesh.protocol.network import (
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    HEADER_VALIDATOR,
    MAX_SKEW_S,
    PREFIX,
    LeaseRequest,
    PingRequest,
    ReportRequest,
    TaskRequest,
    request_payload,
)
from hivemesh.router.openai_api import JSONResponse, parse_body
from hivemesh.router.oracle import Oracle
from hivemesh.router.service import RouterService


def _json(body: BaseModel) -> Response:
    return JSONResponse(body.model_dump(mode="json"))


class NetworkApi:
    def __init__(
        self, service: RouterService, validators: Iterable[str], *, max_missed_pings: int = 3
    ) -> None:
        self.oracle = Oracle(service, max_missed_pings=max_missed_pings)
        self.validators = frozenset(a.strip().lower() for a in validators if a.strip())
        self._seen: dict[str, float] = {}  # signature -> when it stops being acceptable anyway

    def routes(self) -> list[Route]:
        return [
            Route(f"{PREFIX}/lease", self.lease, methods=["POST"]),
            Route(f"{PREFIX}/ping", self.ping, methods=["POST"]),
            Route(f"{PREFIX}/tasks", self.tasks, methods=["POST"]),
            Route(f"{PREFIX}/reports", self.reports, methods=["POST"]),
            Route(f"{PREFIX}/pending", self.pending, methods=["GET"]),
            Route(f"{PREFIX}/nodes", self.nodes, methods=["GET"]),
        ]

    # ------------------------------------------------------------------ authentication

    async def validator(self, request: Request) -> str:
        """The calling validator's address, or raise AuthenticationFailed / PermissionDenied."""
        address = request.headers.get(HEADER_VALIDATOR)
        stamp = request.headers.get(HEADER_TIMESTAMP)
        sig = request.headers.get(HEADER_SIGNATURE)
        if not (address and stamp and sig):
            raise AuthenticationFailed(
                f"network calls must be signed by a validator ({HEADER_VALIDATOR}, {HEADER_TIMESTAMP}, "
                f"{HEADER_SIGNATURE} headers)",
                code="unsigned",
            )
        now = time.time()
        try:
            skew = abs(now - float(stamp))
        except ValueError:
            skew = float("inf")
        if not skew <= MAX_SKEW_S:
            raise AuthenticationFailed(
                f"{HEADER_TIMESTAMP} must be within {MAX_SKEW_S:g}s of the router's clock",
                code="stale_timestamp",
            )
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        payload = request_payload(request.method, path, stamp, await request.body())
        try:
            verify(payload, sig, address)
        except BadSignature as exc:
            raise AuthenticationFailed(
                f"bad validator signature: {exc.message}", code="bad_signature"
            ) from None
        if address.lower() not in self.validators:
            raise PermissionDenied(f"{address} is not a validator of this router", code="not_a_validator")
        self._seen = {s: t for s, t in self._seen.items() if t > now}
        if sig in self._seen:
            raise AuthenticationFailed("this signed request was already used (replay)", code="replayed")
        self._seen[sig] = now + 2 * MAX_SKEW_S
        return address

    async def leader(self, request: Request) -> str:
        address = await self.validator(request)
        await self.oracle.require_leader(address)
        return address

    # ------------------------------------------------------------------ handlers

    async def lease(self, request: Request) -> Response:
        address = await self.validator(request)
        body = await parse_body(request, LeaseRequest)
        return _json(await self.oracle.lease(address, body.name, body.ttl_s))

    async def ping(self, request: Request) -> Response:
        await self.leader(request)
        body = await parse_body(request, PingRequest)
        return _json(await self.oracle.ping(body.node, body.timeout_s))

    async def tasks(self, request: Request) -> Response:
        address = await self.leader(request)
        body = await parse_body(request, TaskRequest)
        return _json(await self.oracle.run_task(address, body))

    async def reports(self, request: Request) -> Response:
        address = await self.leader(request)
        body = await parse_body(request, ReportRequest)
        return _json(self.oracle.report(address, body))

    async def pending(self, request: Request) -> Response:
        await self.validator(request)
        return _json(self.oracle.nodes(pending_only=True))

    async def nodes(self, request: Request) -> Response:
        await self.validator(request)
        return _json(self.oracle.nodes())
