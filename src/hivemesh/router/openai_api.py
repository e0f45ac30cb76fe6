"""The OpenAI surface: /v1/chat/completions, /v1/completions, /v1/models, /v1/embeddings.

Handlers parse, call the service, and serialise; the hivemesh verification block rides along in each response
(``hivemesh`` field, ``x-hivemesh-*`` headers; in a stream, on the last event before ``[DONE]``: the chunk that
carries ``finish_reason``, or with ``stream_options.include_usage`` the usage chunk after it).

Requests start through ``router.completions`` (the path every door shares: refusals of unserved parameters and
prompts that cannot fit, limits, reservation). A client that disconnects, mid-stream or while waiting for a
non-streamed answer, cancels its task on every miner; nothing is billed for it.

Tool calls (``router.structured``): an answer that is a call is sent as ``message.tool_calls`` with
``finish_reason: "tool_calls"``; in a stream, once the answer's first non-blank character shows it is a call, its
text is held back and the call goes out as one ``delta.tool_calls`` chunk before the finish. Logprobs are the
generator's (``router.answers``); in a stream they ride on the finish chunk, all at once.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from hivemesh.errors import HivemeshError, InvalidRequest, ModelNotFound
from hivemesh.protocol.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, model_entry
from hivemesh.protocol.wire import MAX_FRAME
from hivemesh.router.auth import Authenticator, Principal
from hivemesh.router.completions import CLIENT_GONE, Body, Completions, Started, user_error
from hivemesh.router.domain import Outcome, TaskSpec
from hivemesh.router.runner import StreamEnd
from hivemesh.router.service import RouterService
from hivemesh.router.sse import DONE, frame
from hivemesh.router.structured import looks_like_call, tool_call

M = TypeVar("M", bound=BaseModel)

MAX_BODY = 2 * MAX_FRAME  # bytes of request body read at most; larger bodies are refused with 413


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class Run(Protocol):
    """What the API reads of a running task (the voting runner and the token-mode runner alike)."""

    @property
    def spec(self) -> TaskSpec: ...

    @property
    def answer(self) -> asyncio.Future[Outcome]: ...

    @property
    def stream(self) -> asyncio.Queue[str | StreamEnd] | None: ...


def _too_large() -> InvalidRequest:
    err = InvalidRequest(
        f"The request body is larger than {MAX_BODY // 2**20} MiB, more than any miner frame can carry.",
        code="request_too_large",
    )
    err.status = 413
    return err


async def read_body(request: Request) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``MAX_BODY`` (never read whole)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY:
        raise _too_large()
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > MAX_BODY:
            raise _too_large()
        parts.append(part)
    return b"".join(parts)


def validate(model: type[M], data: Any) -> M:
    """``model`` from ``data``, or InvalidRequest naming the first offending field (never pydantic's text)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise InvalidRequest(f"Invalid value for '{param}': {msg}", param=param) from None


async def parse_body(request: Request, model: type[M]) -> M:
    raw = await read_body(request)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. The body must be valid JSON."
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return validate(model, data)


async def until_disconnect(request: Request) -> None:
    """Resolves when the HTTP client goes away (its body already read: only ``http.disconnect`` is left)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class OpenAIApi:
    def __init__(self, service: RouterService, auth: Authenticator) -> None:
        self.service = service
        self.auth = auth
        self.completions = Completions(service)

    async def principal(self, request: Request) -> Principal:
        return await self.auth.authenticate(request.headers.get("authorization"))

    # ------------------------------------------------------------------ models

    async def list_models(self, request: Request) -> Response:
        await self.principal(request)
        data = [self._model_json(mid) for mid in sorted(self.service.hub.models())]
        if self.service.embedder is not None:
            data.append(model_entry(self.service.embedder.model_id, hivemesh={"kind": "embedding"}))
        return JSONResponse({"object": "list", "data": data})

    async def get_model(self, request: Request) -> Response:
        await self.principal(request)
        mid = request.path_params["model"]
        emb = self.service.embedder
        if emb is not None and mid in (emb.model_id, "sentence-transformers/" + emb.model_id):
            return JSONResponse(model_entry(emb.model_id, hivemesh={"kind": "embedding"}))
        if mid not in self.service.hub.known_models:
            raise ModelNotFound(f"The model '{mid}' does not exist", param="model")
        return JSONResponse(self._model_json(mid))

    def _model_json(self, mid: str) -> dict[str, Any]:
        """A served model, or one served before whose miners have not come back (``miners: 0``)."""
        card = self.service.hub.models().get(mid)
        miners = self.service.hub.pool.serves(mid) if card is not None else 0
        context = card.context_length if card is not None else None
        return model_entry(mid, hivemesh={"miners": miners, "context_length": context})

    # ------------------------------------------------------------------ completions

    async def chat_completions(self, request: Request) -> Response:
        principal = await self.principal(request)
        return await self._complete(principal, request, await parse_body(request, ChatCompletionRequest))

    async def completions_route(self, request: Request) -> Response:
        principal = await self.principal(request)
        return await self._complete(principal, request, await parse_body(request, CompletionRequest))

    async def _complete(self, principal: Principal, request: Request, body: Body) -> Response:
        session_id = request.headers.get("x-hivemesh-session") or body.session_id
        started = await self.completions.start(principal, body, session_id=session_id)
        return await self.respond(started, request, include_usage=body.include_usage)

    async def respond(self, started: Started, request: Request, *, include_usage: bool) -> Response:
        """The answer as OpenAI sends it: a stream of chunks, or one body once the task has ended."""
        if started.spec.stream:
            resp = self.stream_response(started, include_usage=include_usage)
            resp.headers.update(started.limits)
            return resp
        outcome = await self.completions.answer(started, until_disconnect(request))
        return JSONResponse(
            render(outcome, started),
            headers={**outcome_headers(outcome), **started.limits},
        )

    def stream_response(self, started: Started, *, include_usage: bool) -> Response:
        run, spec, kind = started.run, started.spec, started.kind
        assert run.stream is not None
        queue = run.stream
        created = int(spec.created_at)
        cid = ("chatcmpl-" if kind == "chat" else "cmpl-") + spec.id.removeprefix("task_")
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return frame(
                {
                    "id": cid,
                    "object": obj,
                    "created": created,
                    "model": spec.model,
                    "choices": choices,
                    **extra,
                }
            )

        def piece(text: str, finish: str | None = None, first: bool = False) -> dict[str, Any]:
            if kind == "chat":
                delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {"content": text}
                return {
                    "index": 0,
                    "delta": delta if (text or first) else {},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

        async def events() -> AsyncIterator[bytes]:
            item: str | StreamEnd = ""
            held = ""  # text held back while it may be a tool call (blank so far, or starting with "{")
            started_text = False
            try:
                if kind == "chat":
                    yield chunk([piece("", first=True)])
                item = await queue.get()
                while isinstance(item, str):
                    held += item
                    if started_text or not started.tools or (held.strip() and not looks_like_call(held)):
                        yield chunk([piece(held)])  # text: from here on it streams as it comes
                        held, started_text = "", True
                    item = await queue.get()
            finally:  # not at the end: the client went away (the server stopped iterating), stop the miners
                if not isinstance(item, StreamEnd):
                    self.service.cancel(spec.id, CLIENT_GONE)
            if item.error is not None or item.outcome is None:
                err = user_error(item.error or HivemeshError("stream ended without an answer"), kind)
                yield frame(err.body())
                return
            out = item.outcome
            try:
                started.judged(out)
            except HivemeshError as exc:
                yield frame(exc.body())
                return
            call = tool_call(out.text, spec.id) if started.tools else None
            finish: str = out.finish_reason
            if call is not None:
                yield chunk(
                    [
                        {
                            "index": 0,
                            "delta": {"tool_calls": [{"index": 0, **call}]},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
                finish = "tool_calls"
            elif held:
                yield chunk([piece(held)])
            last = piece("", finish=finish)
            if (lps := started.logprobs(out)) is not None:
                last["logprobs"] = chat_logprobs(lps) if kind == "chat" else legacy_logprobs(lps)
            block = started.verification(out)
            if include_usage:  # OpenAI's contract: the usage chunk, after the finish, has no choices
                yield chunk([last])
                yield chunk([], hivemesh=block, usage=usage_json(out))
            else:  # a loop over chunk.choices[0] must not break: the verdict rides on the finish chunk
                yield chunk([last], hivemesh=block)
            yield DONE

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={
                "x-hivemesh-task-id": spec.id,
                "x-hivemesh-session-id": spec.session.id,
                "cache-control": "no-cache",
            },
        )

    # ------------------------------------------------------------------ embeddings

    async def embeddings(self, request: Request) -> Response:
        await self.principal(request)
        body = await parse_body(request, EmbeddingRequest)
        emb = self.service.embedder
        if emb is None or body.model not in (emb.model_id, "sentence-transformers/" + emb.model_id):
            raise ModelNotFound(f"The embedding model '{body.model}' does not exist", param="model")
        texts = body.texts()
        if any(not t for t in texts):
            raise InvalidRequest("input must not contain empty strings", param="input")
        vecs: np.ndarray = await emb.aembed(texts)
        if body.dimensions is not None and body.dimensions != vecs.shape[-1]:
            raise InvalidRequest(
                f"{emb.model_id} makes {vecs.shape[-1]}-dimensional embeddings; it cannot shorten them "
                f"to {body.dimensions}.",
                param="dimensions",
            )
        tokens = emb.count_tokens(texts)
        data = [
            {"object": "embedding", "index": i, "embedding": embedding_json(v, body.encoding_format)}
            for i, v in enumerate(vecs)
        ]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": emb.model_id,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )


def embedding_json(vec: np.ndarray, encoding: Literal["float", "base64"]) -> list[float] | str:
    """As OpenAI sends it: a list of floats, or base64 of the little-endian float32 bytes."""
    if encoding == "base64":
        return base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()
    floats: list[float] = vec.tolist()
    return floats


def usage_json(out: Outcome) -> dict[str, Any]:
    u = out.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "cost": out.cost / 10**18,  # in COR; exact integer (10**-18 COR) in hivemesh.cost
    }


def outcome_headers(out: Outcome) -> dict[str, str]:
    return {
        "x-hivemesh-task-id": out.task_id,
        "x-hivemesh-session-id": out.session_id,
        "x-hivemesh-verdict": out.verdict,
        "x-hivemesh-agreement": f"{out.score:.4f}",
    }


def chat_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"content": entries, "refusal": None}


def legacy_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The legacy completions shape: parallel lists, top alternatives as {token: logprob}."""
    offsets, at = [], 0
    for e in entries:
        offsets.append(at)
        at += len(e["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
        "text_offset": offsets,
    }


def render(out: Outcome, started: Started) -> dict[str, Any]:
    spec, kind = started.spec, started.kind
    tid = spec.id.removeprefix("task_")
    lps = started.logprobs(out)
    if kind == "chat":
        call = tool_call(out.text, spec.id) if started.tools else None
        message: dict[str, Any] = {"role": "assistant", "content": out.text, "refusal": None}
        if call is not None:
            message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
        choice: dict[str, Any] = {
            "index": 0,
            "message": message,
            "logprobs": None if lps is None else chat_logprobs(lps),
            "finish_reason": "tool_calls" if call is not None else out.finish_reason,
        }
        obj, cid = "chat.completion", "chatcmpl-" + tid
    else:
        choice = {
            "index": 0,
            "text": out.text,
            "logprobs": None if lps is None else legacy_logprobs(lps),
            "finish_reason": out.finish_reason,
        }
        obj, cid = "text_completion", "cmpl-" + tid
    return {
        "id": cid,
        "object": obj,
        "created": int(spec.created_at),
        "model": spec.model,
        "choices": [choice],
        "usage": usage_json(out),
        "system_fingerprint": "hivemesh",
        "hivemesh": started.verification(out),
    }
