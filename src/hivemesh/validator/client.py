"""Signed calls to a router's network API (``hivemesh.protocol.network``), over httpx.

Every request carries the validator's address, a timestamp and a signature over method, path, timestamp and the
body's sha256. A refusal comes back as the ``hivemesh.errors`` exception its status stands for.
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

import httpx
import orjson
from pydantic import BaseModel

from hivemesh.errors import (
    AuthenticationFailed,
    Conflict,
    HivemeshError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    Timeout,
    UpstreamFailed,
)
from hivemesh.identity import Identity
from hivemesh.protocol.network import (
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    HEADER_VALIDATOR,
    LEADER_LEASE,
    PREFIX,
    LeaseReply,
    LeaseRequest,
    NodeList,
    PingReply,
    PingRequest,
    ReportReply,
    ReportRequest,
    TaskReply,
    TaskRequest,
    request_payload,
)

R = TypeVar("R", bound=BaseModel)

_BY_STATUS: dict[int, type[HivemeshError]] = {
    400: InvalidRequest,
    401: AuthenticationFailed,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    502: UpstreamFailed,
    503: ServiceUnavailable,
    504: Timeout,
}


def signed_headers(identity: Identity, method: str, path: str, body: bytes) -> dict[str, str]:
    stamp = f"{time.time():.3f}"
    sig = identity.sign(request_payload(method, path, stamp, body))
    return {HEADER_VALIDATOR: identity.address, HEADER_TIMESTAMP: stamp, HEADER_SIGNATURE: sig}


class RouterClient:
    def __init__(self, router_url: str, identity: Identity, *, timeout_s: float = 10.0) -> None:
        self.identity = identity
        self.timeout_s = timeout_s
        self.http = httpx.AsyncClient(base_url=router_url.rstrip("/"), timeout=timeout_s)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        reply: type[R],
        body: BaseModel | None = None,
        timeout_s: float | None = None,
    ) -> R:
        raw = orjson.dumps(body.model_dump(mode="json")) if body is not None else b""
        full = PREFIX + path
        headers = signed_headers(self.identity, method, full, raw)
        if body is not None:
            headers["content-type"] = "application/json"
        r = await self.http.request(
            method, full, content=raw, headers=headers, timeout=timeout_s or self.timeout_s
        )
        if r.status_code >= 400:
            raise _error(r)
        return reply.model_validate_json(r.content)

    async def lease(self, ttl_s: float, name: str = LEADER_LEASE) -> LeaseReply:
        return await self._call("POST", "/lease", LeaseReply, LeaseRequest(name=name, ttl_s=ttl_s))

    async def ping(self, node: str, timeout_s: float) -> PingReply:
        req = PingRequest(node=node, timeout_s=timeout_s)
        return await self._call("POST", "/ping", PingReply, req, timeout_s=timeout_s + self.timeout_s)

    async def task(self, req: TaskRequest) -> TaskReply:
        # the router waits for the task's deadlines, and a little more
        return await self._call(
            "POST", "/tasks", TaskReply, req, timeout_s=req.timeout_s * 2 + self.timeout_s
        )

    async def report(self, req: ReportRequest) -> ReportReply:
        return await self._call("POST", "/reports", ReportReply, req)

    async def nodes(self) -> NodeList:
        return await self._call("GET", "/nodes", NodeList)

    async def pending(self) -> NodeList:
        return await self._call("GET", "/pending", NodeList)


def _error(r: httpx.Response) -> HivemeshError:
    message, code = f"router answered {r.status_code}", None
    try:
        err: Any = orjson.loads(r.content)["error"]
        message, code = str(err["message"]), err.get("code")
    except (orjson.JSONDecodeError, KeyError, TypeError):
        pass
    exc = _BY_STATUS.get(r.status_code, HivemeshError)(message, code=code)
    exc.status = r.status_code
    return exc
