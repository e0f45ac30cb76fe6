"""The OpenAI surface: /v1/chat/completions, /v1/completions, /v1/models, /v1/embeddings.

Handlers parse, call the service, and serialise; the hivemesh verification block rides along in each response
(``hivemesh`` field, ``x-hivemesh-*`` headers; in a stream, as the last event before ``[DONE]``).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any, Literal, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from hivemesh.errors import HivemeshError, InvalidRequest, ModelNotFound, NoMinerAvailable
from hivemesh.protocol.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, model_entry
from hivemesh.protocol.wire import ChatMessage, SamplingParams
from hivemesh.router.auth import Authenticator, Principal
from hivemesh.router.domain import Outcome, SessionSpec, TaskSpec
from hivemesh.router.runner import StreamEnd, TaskRun
from hivemesh.router.service import RouterService, new_task_id
from hivemesh.router.sse import DONE, frame

Kind = Literal["chat", "completion"]
M = TypeVar("M", bound=BaseModel)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


async def parse_body(request: Request, model: type[M]) -> M:
    raw = await request.body()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
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
        outcome = await run.answer
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
        limit = body.token_limit()
        params = SamplingParams(
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            max_tokens=min(limit or session.max_tokens, session.max_tokens),
            stop=body.stops(),
            seed=secrets.randbits(31) if body.seed is None else body.seed,
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

    def stream_response(self, run: TaskRun, spec: TaskSpec, kind: Kind, *, include_usage: bool) -> Response:
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
                    err = item.error or HivemeshError("stream ended without an answer")
                    yield frame(err.body())
                    return
                out = item.outcome
                yield chunk([piece("", finish=out.finish_reason)])
                tail: dict[str, Any] = {"hivemesh": out.verification()}
                if include_usage:
                    tail["usage"] = usage_json(out)
                yield chunk([], **tail)
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
        tokens = emb.count_tokens(texts)
        data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vecs)]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": emb.model_id,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )


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
