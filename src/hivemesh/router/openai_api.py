"""The OpenAI surface: /v1/chat/completions, /v1/completions, /v1/models, /v1/embeddings.

Handlers parse, call the service, and serialise; the hivemesh verification block rides along in each response
(``hivemesh`` field, ``x-hivemesh-*`` headers; in a stream, on the last event before ``[DONE]``: the chunk that
carries ``finish_reason``, or with ``stream_options.include_usage`` the usage chunk after it).

Before any miner is involved a request is refused (400) when it sets an OpenAI parameter the network does not
serve, or when its prompt provably cannot fit: the router has no tokenizer, so it uses a lower bound on the
prompt's token count, ``utf8_bytes // MAX_TOKEN_BYTES``, sound as long as no token of the model's vocabulary spans
more than ``MAX_TOKEN_BYTES`` bytes of text (SmolLM2's longest token is 32 bytes; 128 leaves room for vocabularies
with long runs of whitespace or punctuation as single tokens), and refuses when that bound alone reaches the
largest context any connected miner advertises for the model (``max_tokens`` is not added: engines shorten the
answer to the room left, so only a prompt that leaves no room at all is certain to fail); and when the prompt
could not travel in one miner frame (``wire.MAX_FRAME``). Prompts between the bound and the real limit reach a
miner, whose own context error comes back as the same 400 (``context_length_exceeded``), not as a miner failure.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from hivemesh.errors import (
    ContextTooLong,
    HivemeshError,
    InvalidRequest,
    ModelNotFound,
    NoMinerAvailable,
)
from hivemesh.protocol.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, model_entry
from hivemesh.protocol.wire import MAX_FRAME, ChatMessage, SamplingParams
from hivemesh.router.auth import Authenticator, Principal
from hivemesh.router.domain import Outcome, SessionSpec, TaskSpec
from hivemesh.router.runner import StreamEnd
from hivemesh.router.service import RouterService, new_task_id
from hivemesh.router.sse import DONE, frame

Kind = Literal["chat", "completion"]
M = TypeVar("M", bound=BaseModel)

MAX_BODY = 2 * MAX_FRAME  # bytes of request body read at most; larger bodies are refused with 413
PROMPT_FRAME_BUDGET = MAX_FRAME // 2  # JSON bytes of prompt + stops: the rest of a frame carries the answer
MAX_TOKEN_BYTES = 128  # no vocabulary token spans more text than this (see the module docstring)


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


def user_error(exc: HivemeshError, kind: Kind) -> HivemeshError:
    """A miner's context-length refusal is the user's 400, not a miner failure (502, which clients retry)."""
    if isinstance(exc, ContextTooLong):  # the runners raise it when a miner refuses the prompt's length
        return ContextTooLong(exc.message, param="messages" if kind == "chat" else "prompt")
    return exc


async def answer_of(run: Run) -> Outcome:
    try:
        return await run.answer
    except HivemeshError as exc:
        raise user_error(exc, run.spec.kind) from None


class OpenAIApi:
    def __init__(self, service: RouterService, auth: Authenticator) -> None:
        self.service = service
        self.auth = auth

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
        if mid not in self.service.hub.models():
            raise ModelNotFound(f"The model '{mid}' does not exist", param="model")
        return JSONResponse(self._model_json(mid))

    def _model_json(self, mid: str) -> dict[str, Any]:
        card = self.service.hub.models()[mid]
        miners = len(self.service.hub.serving(mid))
        return model_entry(mid, hivemesh={"miners": miners, "context_length": card.context_length})

    # ------------------------------------------------------------------ completions

    async def chat_completions(self, request: Request) -> Response:
        principal = await self.principal(request)
        body = await parse_body(request, ChatCompletionRequest)
        messages = tuple(ChatMessage(role=m.role, content=m.text()) for m in body.messages)
        return await self._complete(principal, request, body, "chat", messages=messages)

    async def completions(self, request: Request) -> Response:
        principal = await self.principal(request)
        body = await parse_body(request, CompletionRequest)
        return await self._complete(principal, request, body, "completion", prompt=body.text())

    async def _complete(
        self,
        principal: Principal,
        request: Request,
        body: ChatCompletionRequest | CompletionRequest,
        kind: Kind,
        *,
        messages: tuple[ChatMessage, ...] = (),
        prompt: str = "",
    ) -> Response:
        session_id = request.headers.get("x-hivemesh-session") or body.session_id
        sessions = self.service.sessions
        if session_id:
            session = await sessions.get(session_id, owner=principal.owner)
            if not session.active:
                raise InvalidRequest(f"session {session_id!r} is deactivated", param="session_id")
        else:
            session = await sessions.default_for(principal.owner)
        spec = self.build_spec(session, body, kind, messages=messages, prompt=prompt)
        limits = self.rate_limit(principal, spec)
        run = await self.service.submit(spec, stream=body.stream, default_session=not session_id)
        if body.stream:
            resp = self.stream_response(run, spec, kind, include_usage=body.include_usage)
            resp.headers.update(limits)
            return resp
        outcome = await answer_of(run)
        return JSONResponse(render(outcome, spec, kind), headers={**outcome_headers(outcome), **limits})

    def rate_limit(self, principal: Principal, spec: TaskSpec) -> dict[str, str]:
        """Enforce the key's requests/min and tokens/min (429 with retry-after); the x-ratelimit-* headers."""
        if principal.key_id is None or (principal.rpm is None and principal.tpm is None):
            return {}
        tokens = (
            spec.params.max_tokens + len(spec.prompt) // 4 + sum(len(m.content) for m in spec.messages) // 4
        )
        state = self.service.limiter.check(
            principal.key_id, principal.rpm, principal.tpm, tokens, time.monotonic()
        )
        return state.headers()

    def build_spec(
        self,
        session: SessionSpec,
        body: ChatCompletionRequest | CompletionRequest,
        kind: Kind,
        *,
        messages: tuple[ChatMessage, ...] = (),
        prompt: str = "",
    ) -> TaskSpec:
        models = self.service.hub.models()
        if body.model not in models:
            if body.model in self.service.hub.known_models:
                raise NoMinerAvailable(f"no connected miner serves '{body.model}' right now", retry_after=5)
            raise ModelNotFound(
                f"The model '{body.model}' does not exist or no miner serves it", param="model"
            )
        if session.model and session.model != body.model:
            raise InvalidRequest(f"session {session.id} is for model {session.model!r}", param="model")
        if refused := body.unserved():
            raise InvalidRequest(refused[1], param=refused[0])
        self.check_fits(body, messages=messages, prompt=prompt)
        limit = body.token_limit()
        seed = body.engine_seed()
        params = SamplingParams(
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            max_tokens=min(limit or session.max_tokens, session.max_tokens),
            stop=body.stops(),
            seed=secrets.randbits(31) if seed is None else seed,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
        )
        return TaskSpec(
            id=new_task_id(),
            session=session,
            model=body.model,
            kind=kind,
            params=params,
            messages=messages,
            prompt=prompt,
            stream=body.stream,
            created_at=time.time(),
        )

    def check_fits(
        self,
        body: ChatCompletionRequest | CompletionRequest,
        *,
        messages: tuple[ChatMessage, ...] = (),
        prompt: str = "",
    ) -> None:
        """Refuse a prompt that provably cannot fit the model's context, or a miner frame (module docstring)."""
        param = "messages" if messages else "prompt"
        texts = [m.content for m in messages] if messages else [prompt]
        framed = len(orjson.dumps([*texts, *body.stops()]))
        if framed > PROMPT_FRAME_BUDGET:
            raise ContextTooLong(
                f"This request's prompt is {framed} bytes; the network carries at most "
                f"{PROMPT_FRAME_BUDGET} bytes of prompt per task. Please reduce the length of the messages.",
                param=param,
            )
        context = max(
            (
                c.context_length
                for ln in self.service.hub.serving(body.model)
                for c in ln.cards
                if c.id == body.model
            ),
            default=0,
        )
        at_least = sum(len(t.encode()) for t in texts) // MAX_TOKEN_BYTES
        if context and at_least >= context:
            raise ContextTooLong(
                f"This model's maximum context length is {context} tokens. However, your prompt has at least "
                f"{at_least} tokens. Please reduce the length of the {param}.",
                param=param,
            )

    def stream_response(self, run: Run, spec: TaskSpec, kind: Kind, *, include_usage: bool) -> Response:
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
            if kind == "chat":
                yield chunk([piece("", first=True)])
            while True:
                item = await queue.get()
                if isinstance(item, str):
                    yield chunk([piece(item)])
                    continue
                assert isinstance(item, StreamEnd)
                if item.error is not None or item.outcome is None:
                    err = user_error(item.error or HivemeshError("stream ended without an answer"), kind)
                    yield frame(err.body())
                    return
                out = item.outcome
                if include_usage:  # OpenAI's contract: the usage chunk, after the finish, has no choices
                    yield chunk([piece("", finish=out.finish_reason)])
                    yield chunk([], hivemesh=out.verification(), usage=usage_json(out))
                else:  # a loop over chunk.choices[0] must not break: the verdict rides on the finish chunk
                    yield chunk([piece("", finish=out.finish_reason)], hivemesh=out.verification())
                yield DONE
                return

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


def render(out: Outcome, spec: TaskSpec, kind: Kind) -> dict[str, Any]:
    tid = spec.id.removeprefix("task_")
    if kind == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": out.text, "refusal": None},
            "logprobs": None,
            "finish_reason": out.finish_reason,
        }
        obj, cid = "chat.completion", "chatcmpl-" + tid
    else:
        choice = {"index": 0, "text": out.text, "logprobs": None, "finish_reason": out.finish_reason}
        obj, cid = "text_completion", "cmpl-" + tid
    return {
        "id": cid,
        "object": obj,
        "created": int(spec.created_at),
        "model": spec.model,
        "choices": [choice],
        "usage": usage_json(out),
        "system_fingerprint": "hivemesh",
        "hivemesh": out.verification(),
    }
