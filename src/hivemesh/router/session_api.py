"""The Session API (``/api/v1``): sessions, their tasks with the PoUW record, prompt submission, and the
Cortensor-style router endpoints (info, status, miners) for clients written against that API."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from sqlalchemy import func, select
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hivemesh import __version__
from hivemesh.errors import InvalidRequest, NotFound, PermissionDenied
from hivemesh.protocol.openai import ChatCompletionRequest, CompletionRequest, InMessage
from hivemesh.router.openai_api import JSONResponse, OpenAIApi, parse_body, validate
from hivemesh.router.roster import roster
from hivemesh.router.sessions import to_json
from hivemesh.store import schema as s

MIN_TIMEOUT_S, MAX_TIMEOUT_S = 0.05, 3600.0
MAX_KEY_LIFETIME_S = 100 * 365 * 86400.0  # an API key's expires_in_s: beyond it, a datetime overflows


class CreateSession(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="", max_length=200)
    model: str | None = None
    redundancy: int | None = None
    quorum: int | None = None
    mode: Literal["token", "exact", "semantic", "none"] | None = None
    verifiers: int | None = None  # token mode: verifiers per answer (checked by the session rules)
    tolerance: Literal["calibrated", "exact"] | None = None  # token mode: exact = same-profile checks only
    threshold: float | None = Field(default=None, allow_inf_nan=False)
    # a miner cannot ack, generate or reveal faster than a network round trip: below MIN_TIMEOUT_S every honest
    # miner would miss its deadline and be struck for it
    ack_timeout_s: float | None = Field(default=None, ge=MIN_TIMEOUT_S, le=MAX_TIMEOUT_S, allow_inf_nan=False)
    precommit_timeout_s: float | None = Field(
        default=None, ge=MIN_TIMEOUT_S, le=MAX_TIMEOUT_S, allow_inf_nan=False
    )
    commit_timeout_s: float | None = Field(
        default=None, ge=MIN_TIMEOUT_S, le=MAX_TIMEOUT_S, allow_inf_nan=False
    )
    max_tokens: int | None = None
    sla: Literal["low", "medium", "high"] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


def _exact_amount(value: Any) -> int:
    """An amount in the smallest unit, exactly: a JSON integer of any size or a decimal string of digits."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be an integer or a string of decimal digits (in 10**-18 COR)")
    if isinstance(value, str):
        if not re.fullmatch(r"[0-9]{1,78}", value.strip()):
            raise ValueError("must be a string of decimal digits (in 10**-18 COR)")
        value = int(value.strip())
    amount = int(value)
    if amount <= 0:
        raise ValueError("must be greater than 0")
    return amount


ExactAmount = Annotated[int, BeforeValidator(_exact_amount)]


class Amount(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: ExactAmount  # in the smallest unit (10**-18 COR); JSON integer of any size, or decimal string


class AdminDeposit(Amount):
    account: str = Field(pattern=r"^0x[0-9a-fA-F]{40}$")


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    account: str = Field(pattern=r"^0x[0-9a-fA-F]{40}$")
    name: str = Field(default="", max_length=200)
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    budget: ExactAmount | None = None  # spending cap of the key, in 10**-18 COR (402 budget_exceeded past it)
    expires_in_s: float | None = Field(default=None, gt=0, le=MAX_KEY_LIFETIME_S, allow_inf_nan=False)


class SubmitPrompt(BaseModel):
    model_config = ConfigDict(extra="ignore")
    session_id: str | None = None
    model: str | None = None
    prompt: str | None = None
    messages: list[InMessage] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    wait: bool = True  # false: answer 202 with the task id at once; poll the task
    # passed on as sent, validated by the OpenAI request models (chat only, except logprobs and hivemesh)
    tools: Any = None
    tool_choice: Any = None
    response_format: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    hivemesh: Any = None

    def passed(self, *names: str) -> dict[str, Any]:
        return {n: v for n in names if (v := getattr(self, n)) is not None}


M = TypeVar("M", bound=BaseModel)


async def parse_exact(request: Request, model: type[M]) -> M:
    """Like ``parse_body``, for bodies carrying amounts: integers of any size survive (a JSON number beyond 64
    bits is kept exact; orjson would refuse it)."""
    try:
        data = json.loads(await request.body())
    except (ValueError, RecursionError):
        raise InvalidRequest(
            "We could not parse the JSON body of your request. The body must be valid JSON."
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise InvalidRequest(f"Invalid value for '{param}': {err['msg']}", param=param) from None


def task_json(
    row: dict[str, Any],
    events: list[dict[str, Any]] | None = None,
    assignments: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row["id"],
        "object": "task",
        "session_id": row["session_id"],
        "model": row["model"],
        "kind": row["kind"],
        "phase": row["phase"],
        "verdict": row["verdict"],
        "answer": row["answer"],
        "finish_reason": row["finish_reason"],
        "usage": None
        if row["prompt_tokens"] is None
        else {"prompt_tokens": row["prompt_tokens"], "completion_tokens": row["completion_tokens"]},
        "seed": (row["request"].get("params") or {}).get("seed"),  # the user's sampling seed
        "shuffle_seed": str(row["seed"]),  # the router's own seed for the miner draw (audit, replay)
        "candidates": row["candidates"],  # the nodes the draw read, in order
        "draw": row.get("draw"),  # its audit: seed, eligible count and set digest (core.pool_index.DrawAudit)
        "hivemesh": row["result"],
        "error": row["error"],
        "created_at": row["created_at"],
        "finished_at": row["finished_at"],
    }
    if events is not None:
        out["history"] = [
            {"phase": e["phase"], "at": e["ts"], "node": e["node"], **(e["detail"] or {})} for e in events
        ]
    if assignments is not None:
        out["miners"] = [
            {
                "node": a["node"],
                "slot": a["slot"],
                "status": a["status"],
                "assigned_at": a["assigned_at"],
                "acked_at": a["acked_at"],
                "precommit_at": a["precommit_at"],
                "commit_at": a["commit_at"],
                "precommit": a["digest"],
                "output": a["output"],
                "in_consensus": a["in_consensus"],
                "elapsed_ms": a["elapsed_ms"],
                "ttft_ms": a["ttft_ms"],
                "reason": a["reason"],
                "role": a.get("role"),
                "evidence": a.get("evidence"),
            }
            for a in assignments
        ]
    return out


class SessionApi:
    def __init__(self, api: OpenAIApi) -> None:
        self.api = api
        self.service = api.service

    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/info", self.info, methods=["GET"]),
            Route("/api/v1/status", self.status, methods=["GET"]),
            Route("/api/v1/miners", self.miners, methods=["GET"]),
            Route("/api/v1/sessions", self.create_session, methods=["POST"]),
            Route("/api/v1/sessions", self.list_sessions, methods=["GET"]),
            Route("/api/v1/sessions/{session_id}", self.get_session, methods=["GET"]),
            Route("/api/v1/sessions/{session_id}", self.deactivate, methods=["DELETE"]),
            Route("/api/v1/sessions/{session_id}/deactivate", self.deactivate, methods=["POST"]),
            Route("/api/v1/sessions/{session_id}/tasks", self.list_tasks, methods=["GET"]),
            Route("/api/v1/tasks/{session_id}", self.list_tasks, methods=["GET"]),
            Route("/api/v1/tasks/{session_id}/{task_id}", self.get_task, methods=["GET"]),
            Route("/api/v1/sessions/{session_id}/deposit", self.deposit, methods=["POST"]),
            Route("/api/v1/accounts/{address}", self.account, methods=["GET"]),
            Route("/api/v1/admin/keys", self.create_key, methods=["POST"]),
            Route("/api/v1/admin/deposits", self.admin_deposit, methods=["POST"]),
            Route("/api/v1/completions", self.submit, methods=["POST"]),
            Route("/api/v1/completions/{session_id}", self.submit, methods=["POST"]),
        ]

    # ------------------------------------------------------------------ router info

    async def info(self, request: Request) -> Response:
        svc = self.service
        return JSONResponse(
            {
                "name": "hivemesh",
                "version": __version__,
                "router": svc.identity.address,
                "models": sorted(svc.hub.models()),
                "defaults": to_json(svc.sessions.template("")) | {"id": None, "owner": None},
                "started_at": svc.started_at,
            }
        )

    async def status(self, request: Request) -> Response:
        svc = self.service
        counts = await svc.store.fetch_all(select(s.tasks.c.phase, func.count()).group_by(s.tasks.c.phase))
        nodes = roster(svc.hub, svc.identity.address)  # the network's nodes (in a cluster: every router's)
        return JSONResponse(
            {
                "miners": len(nodes),
                "capacity": sum(p.link.capacity for p in nodes),
                "inflight": sum(p.inflight for p in nodes),
                "local_miners": len(svc.hub.links),  # connected to this router
                "queue_depth": svc.scheduler.depth,
                "tasks_by_phase": {r["phase"]: r["count_1"] for r in counts},
                "uptime_s": round(time.time() - svc.started_at, 1),
            }
        )

    async def miners(self, request: Request) -> Response:
        """Every node of the network once, with the router holding its connection (``router.roster``): in a
        cluster any router answers for all of them, not just its own connections."""
        hub = self.service.hub
        data = [
            {
                "node": p.link.node,
                "router": p.router,
                "models": sorted(p.link.models),
                "capacity": p.link.capacity,
                "inflight": p.inflight,
                "pool": p.link.pool,
                "hardware": p.link.hardware.model_dump(),
                "version": p.link.version,
                "connected_at": p.link.connected_at,
                "score": hub.score(p.link.node),
                "tasks_finished": p.link.finished,
            }
            for p in roster(hub, self.service.identity.address)
        ]
        return JSONResponse({"object": "list", "data": data})

    # ------------------------------------------------------------------ sessions

    async def create_session(self, request: Request) -> Response:
        principal = await self.api.principal(request)
        body = await parse_body(request, CreateSession)
        fields = {k: v for k, v in body.model_dump(exclude={"metadata"}).items() if v is not None}
        if body.model is not None and body.model not in self.service.hub.known_models:
            raise NotFound(
                f"The model '{body.model}' does not exist or no miner serves it",
                param="model",
                code="model_not_found",
            )
        spec = await self.service.sessions.create(principal.owner, meta=body.metadata, **fields)
        return JSONResponse(to_json(spec), status_code=201)

    async def list_sessions(self, request: Request) -> Response:
        principal = await self.api.principal(request)
        specs = await self.service.sessions.list(principal.owner)
        return JSONResponse({"object": "list", "data": [to_json(x) for x in specs]})

    async def get_session(self, request: Request) -> Response:
        principal = await self.api.principal(request)
        spec = await self.service.sessions.get(request.path_params["session_id"], owner=principal.owner)
        return JSONResponse(to_json(spec) | {"queue_depth": self.service.queue_depth(spec.id)})

    async def deactivate(self, request: Request) -> Response:
        principal = await self.api.principal(request)
        spec = await self.service.sessions.deactivate(
            request.path_params["session_id"], owner=principal.owner
        )
        return JSONResponse(to_json(spec))

    # ------------------------------------------------------------------ money

    def _ledger(self) -> Any:
        if self.service.ledger is None:
            raise NotFound("this router runs without a ledger")
        return self.service.ledger

    async def deposit(self, request: Request) -> Response:
        """Move funds from the caller's account into a session's escrow."""
        principal = await self.api.principal(request)
        body = await parse_exact(request, Amount)
        spec = await self.service.sessions.get(request.path_params["session_id"], owner=principal.owner)
        ledger = self._ledger()
        await ledger.fund_session(spec.id, principal.owner, body.amount, reason="deposit via the Session API")
        return JSONResponse({"session_id": spec.id, "escrow": str(await ledger.escrow_balance(spec.id))})

    async def account(self, request: Request) -> Response:
        principal = await self.api.principal(request)
        address = request.path_params["address"]
        if not re.fullmatch(r"0x[0-9a-fA-F]{40}", address):
            raise InvalidRequest("address must be a 0x-prefixed 20-byte hex address", param="address")
        if not principal.admin and principal.owner.lower() != address.lower():
            # someone else's account: answered as if it did not exist (no balance, stake or earnings leak)
            raise NotFound(f"No account {address!r} for this API key.", param="address")
        view = await self._ledger().account(address)
        return JSONResponse(
            {
                "object": "account",
                "address": view.address,
                "balance": str(view.balance),
                "staked": str(view.staked),
                "unstaking": str(view.unstaking.amount),
                "unstaking_available_at": view.unstaking.available_at.isoformat()
                if view.unstaking.available_at
                else None,
                "earned": str(view.earned),
                "pool": view.pool,
                "unit": "1e-18 COR",
            }
        )

    async def create_key(self, request: Request) -> Response:
        principal = await self.api.principal(request)
        if not principal.admin:
            raise PermissionDenied("creating API keys needs the router's admin key")
        body = await parse_exact(request, CreateKey)
        expires = datetime.now(UTC) + timedelta(seconds=body.expires_in_s) if body.expires_in_s else None
        key_id, secret = await self._ledger().create_key(
            body.account, name=body.name, rpm=body.rpm, tpm=body.tpm, budget=body.budget, expires_at=expires
        )
        return JSONResponse(
            {
                "key_id": key_id,
                "secret": secret,
                "account": body.account,
                "budget": None if body.budget is None else str(body.budget),
            },
            status_code=201,
        )

    async def admin_deposit(self, request: Request) -> Response:
        principal = await self.api.principal(request)
        if not principal.admin:
            raise PermissionDenied("deposits from outside need the router's admin key")
        body = await parse_exact(request, AdminDeposit)
        ledger = self._ledger()
        await ledger.deposit(body.account, body.amount, reason="admin deposit")
        return JSONResponse({"account": body.account, "balance": str(await ledger.balance(body.account))})

    # ------------------------------------------------------------------ tasks

    async def list_tasks(self, request: Request) -> Response:
        principal = await self.api.principal(request)
        sid = request.path_params["session_id"]
        await self.service.sessions.get(sid, owner=principal.owner)
        try:
            limit = min(int(request.query_params.get("limit", "100")), 1000)
        except ValueError:
            raise InvalidRequest("limit must be an integer", param="limit") from None
        rows = await self.service.store.fetch_all(
            select(s.tasks)
            .where(s.tasks.c.session_id == sid)
            .order_by(s.tasks.c.created_at.desc())
            .limit(limit)
        )
        return JSONResponse({"object": "list", "data": [task_json(r) for r in rows]})

    async def get_task(self, request: Request) -> Response:
        principal = await self.api.principal(request)
        sid, tid = request.path_params["session_id"], request.path_params["task_id"]
        await self.service.sessions.get(sid, owner=principal.owner)
        store = self.service.store
        row = await store.get_task(tid)
        if row is None or row["session_id"] != sid:
            raise NotFound(f"task {tid!r} not found in session {sid!r}", param="task_id")
        return JSONResponse(task_json(row, await store.task_events(tid), await store.task_assignments(tid)))

    async def submit(self, request: Request) -> Response:
        principal = await self.api.principal(request)
        body = await parse_body(request, SubmitPrompt)
        sid = request.path_params.get("session_id") or body.session_id
        if not sid:
            raise InvalidRequest("session_id is required", param="session_id")
        session = await self.service.sessions.get(sid, owner=principal.owner)
        model = body.model or session.model or next(iter(sorted(self.service.hub.models())), None)
        if model is None:
            raise NotFound("no model given and no miner is connected", param="model", code="model_not_found")
        common = {
            "model": model,
            "max_tokens": body.max_tokens,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "stop": body.stop,
            "seed": body.seed,
            "stream": body.stream and body.wait,
        }
        common |= body.passed("logprobs", "hivemesh")
        chat_only = body.passed("tools", "tool_choice", "response_format", "top_logprobs")
        req: ChatCompletionRequest | CompletionRequest
        if body.messages:
            req = validate(ChatCompletionRequest, {**common, **chat_only, "messages": body.messages})
        elif body.prompt is not None:
            if chat_only:
                param = next(iter(chat_only))
                raise InvalidRequest(f"'{param}' needs messages (a chat task), not a prompt", param=param)
            req = validate(CompletionRequest, {**common, "prompt": body.prompt})
        else:
            raise InvalidRequest("give a prompt or messages", param="prompt")
        started = await self.api.completions.start(principal, req, session_id=sid, durable=not body.wait)
        if not body.wait:
            return JSONResponse(
                {"id": started.spec.id, "object": "task", "session_id": sid, "phase": "queued"},
                status_code=202,
                headers=started.limits,
            )
        return await self.api.respond(started, request, include_usage=True)
