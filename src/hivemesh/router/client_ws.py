"""The client WebSocket API, ``/api/v1/ws``: many tasks on one socket, each named by an id the client chooses.

Authenticate with ``Authorization: Bearer <key>`` on the upgrade request, or with a first message
``{"type": "auth", "api_key": "<key>"}`` (within ``AUTH_TIMEOUT_S``). Then, one JSON object per text frame::

    client -> router
      {"type": "submit", "id": "q1", "body": {<chat or completion body, as on the REST routes>},
       "kind": "chat" | "completion" (default: chat when the body has messages), "session_id": "..." (optional)}
      {"type": "cancel", "id": "q1"}
    router -> client
      {"type": "ready", "owner": "0x..."}
      {"type": "accepted", "id": "q1", "task_id": "task_...", "session_id": "...", "model": "..."}
      {"type": "phase", "id": "q1", "task_id": ..., "phase": "assigned" | "precommitted" | ..., "node": ..., "at": ...}
      {"type": "token", "id": "q1", "text": "..."}
      {"type": "result", "id": "q1", "verdict": "...", "response": {<the REST response body, hivemesh block included>}}
      {"type": "error", "id": "q1" | null, "status": 400, "error": {<OpenAI error body>}}

A task starts through the same path as the REST routes (``router.completions``), so its validation, errors and
limits are the same; every task streams (tokens as they come). Each task ends with one ``result`` or one ``error``.
Bounds: a message is at most ``MAX_MESSAGE`` bytes (larger ones close the socket with 1009), at most
``MAX_INFLIGHT`` tasks run per socket (more are refused, 429). Closing the socket cancels its unfinished tasks on
every miner, as a disconnecting HTTP client does; nothing unfinished is billed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from hivemesh.errors import AuthenticationFailed, HivemeshError, InvalidRequest, RateLimited
from hivemesh.protocol.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    WsAuth,
    WsCancel,
    WsMessage,
    WsSubmit,
)
from hivemesh.router.auth import Authenticator, Principal
from hivemesh.router.completions import (
    CLIENT_GONE,
    PROMPT_FRAME_BUDGET,
    Body,
    Completions,
    Started,
    user_error,
)
from hivemesh.router.openai_api import render, validate
from hivemesh.router.runner import StreamEnd
from hivemesh.router.token_run import Run

log = logging.getLogger(__name__)

MAX_MESSAGE = PROMPT_FRAME_BUDGET + 64 * 1024  # bytes of one client message: a largest prompt and its body
MAX_INFLIGHT = 16  # unfinished tasks per socket
AUTH_TIMEOUT_S = 10.0  # to send the auth message when the upgrade carried no key
CANCELLED = "cancelled by the client"
_MESSAGE: TypeAdapter[WsAuth | WsSubmit | WsCancel] = TypeAdapter(WsMessage)


def error_message(tid: str | None, exc: HivemeshError) -> dict[str, Any]:
    return {"type": "error", "id": tid, "status": exc.status, "error": exc.body()["error"]}


def watch_phases(run: Run, emit: Callable[[str, str | None, dict[str, Any]], None]) -> None:
    """Call ``emit(phase, node, detail)`` for each event the run has recorded and records from now on."""
    run.record.watch(emit)


class ClientSocket:
    """One client's socket: reads its messages, runs its tasks, writes their events through one outbox."""

    def __init__(self, ws: WebSocket, completions: Completions, principal: Principal) -> None:
        self.ws = ws
        self.completions = completions
        self.principal = principal
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.tasks: dict[str, asyncio.Task[None]] = {}  # client id -> the coroutine serving it
        self.task_ids: dict[str, str] = {}  # client id -> router task id, once accepted

    def send(self, msg: dict[str, Any]) -> None:
        self.outbox.put_nowait(msg)

    async def serve(self) -> None:
        self.send({"type": "ready", "owner": self.principal.owner})
        writer = asyncio.create_task(self._write(), name="client-ws-writer")
        try:
            while True:
                raw = await self.ws.receive_text()
                if len(raw) > MAX_MESSAGE:
                    await self.ws.close(1009, f"messages are limited to {MAX_MESSAGE} bytes")
                    return
                self._on_message(raw)
        except WebSocketDisconnect:
            pass
        finally:
            for cid, task in list(self.tasks.items()):
                if (tid := self.task_ids.get(cid)) is not None:
                    self.completions.cancel(tid, CLIENT_GONE)
                task.cancel()  # one still starting is cancelled once it has started (``_run``)
            for task in list(self.tasks.values()):
                with contextlib.suppress(BaseException):
                    await task
            writer.cancel()
            with contextlib.suppress(BaseException):
                await writer

    async def _write(self) -> None:
        while True:
            msg = await self.outbox.get()
            await self.ws.send_text(orjson.dumps(msg).decode())

    def _on_message(self, raw: str) -> None:
        try:
            msg = _MESSAGE.validate_json(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            param = ".".join(str(p) for p in err["loc"]) or None
            self.send(error_message(None, InvalidRequest(f"Invalid message: {err['msg']}", param=param)))
            return
        if isinstance(msg, WsCancel):
            if (tid := self.task_ids.get(msg.id)) is not None:
                self.completions.cancel(tid, CANCELLED)
            elif (task := self.tasks.get(msg.id)) is not None:
                task.cancel(CANCELLED)  # not accepted yet: its run is cancelled as soon as it starts
            return
        if isinstance(msg, WsAuth):
            self.send(error_message(None, InvalidRequest("already authenticated", param="type")))
            return
        if msg.id in self.tasks:
            self.send(error_message(msg.id, InvalidRequest(f"task id {msg.id!r} is in flight", param="id")))
            return
        if len(self.tasks) >= MAX_INFLIGHT:
            self.send(
                error_message(msg.id, RateLimited(f"at most {MAX_INFLIGHT} tasks in flight per socket"))
            )
            return
        task = asyncio.create_task(self._run(msg), name=f"client-ws-{msg.id}")
        self.tasks[msg.id] = task
        task.add_done_callback(lambda _: (self.tasks.pop(msg.id, None), self.task_ids.pop(msg.id, None)))

    async def _run(self, msg: WsSubmit) -> None:
        cid = msg.id
        try:
            body = self._body(msg)
            starting = asyncio.ensure_future(
                self.completions.start(self.principal, body, session_id=msg.session_id)
            )
            # shielded: a submission cut short would leave its reservation held; it finishes, then is cancelled
            started = await asyncio.shield(starting)
        except HivemeshError as exc:
            self.send(error_message(cid, exc))
            return
        except asyncio.CancelledError:
            starting.add_done_callback(self._cancel_when_started)
            self.send(error_message(cid, HivemeshError(CANCELLED, code="cancelled")))
            raise
        await self._relay(cid, started)

    def _cancel_when_started(self, starting: asyncio.Future[Started]) -> None:
        if not starting.cancelled() and starting.exception() is None:
            self.completions.cancel(starting.result().spec.id, CANCELLED)

    def _body(self, msg: WsSubmit) -> Body:
        kind = msg.kind or ("chat" if "messages" in msg.body else "completion")
        data = {**msg.body, "stream": True}  # the socket always streams: tokens as they come
        if kind == "chat":
            return validate(ChatCompletionRequest, data)
        return validate(CompletionRequest, data)

    async def _relay(self, cid: str, started: Started) -> None:
        spec, run = started.spec, started.run
        self.task_ids[cid] = spec.id

        def phase(name: str, node: str | None, detail: dict[str, Any]) -> None:
            self.send(
                {"type": "phase", "id": cid, "task_id": spec.id, "phase": name, "node": node}
                | {"at": time.time()}
                | {k: v for k, v in detail.items() if k not in ("type", "id", "task_id", "phase", "node")}
            )

        self.send(
            {
                "type": "accepted",
                "id": cid,
                "task_id": spec.id,
                "session_id": spec.session.id,
                "model": spec.model,
            }
        )
        watch_phases(run, phase)
        assert run.stream is not None
        item: str | StreamEnd = await run.stream.get()
        while isinstance(item, str):
            self.send({"type": "token", "id": cid, "text": item})
            item = await run.stream.get()
        if item.error is not None or item.outcome is None:
            err = user_error(item.error or HivemeshError("the task ended without an answer"), spec.kind)
            self.send(error_message(cid, err))
            return
        out = item.outcome
        try:
            started.judged(out)  # disagreement_policy "fail": an answer that is not verified is an error
        except HivemeshError as exc:
            self.send(error_message(cid, exc))
            return
        self.send({"type": "result", "id": cid, "verdict": out.verdict, "response": render(out, started)})


async def authenticate(ws: WebSocket, auth: Authenticator) -> Principal | None:
    """The caller's principal (from the upgrade's header or the first message), or None once the socket is
    closed with 4401 and an error message saying why."""
    header = ws.headers.get("authorization")
    await ws.accept()
    try:
        if header is None:
            raw = await asyncio.wait_for(ws.receive_text(), AUTH_TIMEOUT_S)
            if len(raw) > MAX_MESSAGE:
                raise AuthenticationFailed("the first message must be {'type': 'auth', 'api_key': ...}")
            try:
                first = _MESSAGE.validate_json(raw)
            except ValidationError:
                first = None
            if not isinstance(first, WsAuth):
                raise AuthenticationFailed(
                    "Authenticate first: send Authorization: Bearer <key> with the upgrade, or a first message "
                    "{'type': 'auth', 'api_key': '<key>'}."
                )
            header = f"Bearer {first.api_key}"
        return await auth.authenticate(header)
    except (TimeoutError, WebSocketDisconnect):
        with contextlib.suppress(Exception):
            await ws.close(4401, "no authentication")
        return None
    except HivemeshError as exc:
        with contextlib.suppress(Exception):
            await ws.send_text(orjson.dumps(error_message(None, exc)).decode())
            await ws.close(4401, exc.message[:120])
        return None


async def serve_client(ws: WebSocket, auth: Authenticator, completions: Completions) -> None:
    principal = await authenticate(ws, auth)
    if principal is None:
        return
    await ClientSocket(ws, completions, principal).serve()
