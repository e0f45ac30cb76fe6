"""An engine in front of an OpenAI-compatible server a node operator already runs (vLLM, SGLang, Ollama,
llama-server, llama-cpp-python's server). Streams its SSE output.

Usage, in order of preference:

- the server's own usage chunk (``stream_options.include_usage``: vLLM, SGLang, llama-server, Ollama);
- for a server that sends none in streams (llama-cpp-python's): completion tokens are **counted from the streamed
  chunks**, one per content-bearing chunk (such servers send one chunk per generated token; a token that decodes
  to no text yet, part of a multi-byte character, is not counted), and prompt tokens come from a **non-stream
  request with ``max_tokens: 1``** for the same prompt, whose ``usage.prompt_tokens`` is the server's exact count (cheap: a server that keeps its KV cache,
  as llama-cpp-python does, re-evaluates one token); if that request fails, prompt tokens are an **estimate**,
  one token per ``ESTIMATE_BYTES_PER_TOKEN`` bytes of UTF-8 text, rounded up, and a warning is logged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from hivemesh.engines.base import Event, Finished, GenerationRequest, Piece, Progress
from hivemesh.errors import ContextTooLong, InvalidRequest, ServiceUnavailable, UpstreamFailed
from hivemesh.protocol.wire import ModelCard, Usage

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = (
    4096  # when the server does not say (vLLM says ``max_model_len``, llama-server ``meta.n_ctx``)
)
ESTIMATE_BYTES_PER_TOKEN = 4  # English text with a BPE vocabulary: about four bytes per token
SEED_SPACE = 2**31  # every server takes a non-negative int32 seed (llama.cpp reads 2**32-1 as "random")


def _context_of(entry: dict[str, Any]) -> int:
    meta = entry.get("meta") or {}
    for value in (
        entry.get("max_model_len"),
        entry.get("context_length"),
        meta.get("n_ctx"),
        meta.get("n_ctx_train"),
    ):
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_CONTEXT


def _is_context_error(status: int, text: str) -> bool:
    low = text.lower()
    return status == 400 and "context" in low and any(w in low for w in ("length", "window", "exceed"))


class UpstreamEngine:
    name = "openai-upstream"

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        capacity: int = 8,
        api_key: str = "none",
        transport: httpx.AsyncBaseTransport | None = None,  # tests: httpx.MockTransport
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.model = model
        self.capacity = capacity
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(600, connect=10),
            transport=transport,
        )
        self._models: list[ModelCard] = []

    def models(self) -> list[ModelCard]:
        return self._models

    async def start(self, progress: Progress | None = None) -> None:
        try:
            r = await self._client.get("/models")
            r.raise_for_status()
            entries = [e for e in r.json().get("data", []) if isinstance(e, dict) and e.get("id")]
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            raise ServiceUnavailable(f"upstream {self.base_url} unreachable: {exc}") from None
        if self.model:
            entries = [e for e in entries if e["id"] == self.model] or [{"id": self.model}]
        if not entries:
            raise ServiceUnavailable(f"upstream {self.base_url} serves no model")
        self._models = [
            ModelCard(id=str(e["id"]), engine=self.name, context_length=_context_of(e)) for e in entries
        ]
        if progress:
            progress(self._models[0].id, 1.0)

    async def close(self) -> None:
        await self._client.aclose()

    def _body(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        p = request.params
        body: dict[str, Any] = {
            "model": request.model,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "max_tokens": p.max_tokens,
            "seed": p.seed % SEED_SPACE,
            "presence_penalty": p.presence_penalty,
            "frequency_penalty": p.frequency_penalty,
        }
        if p.stop:
            body["stop"] = list(p.stop)
        if request.kind == "chat":
            body["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
            return "/chat/completions", body
        body["prompt"] = request.prompt
        return "/completions", body

    def _refused(self, status: int, text: str) -> Exception:
        if _is_context_error(status, text):
            ctx = next((c.context_length for c in self._models), DEFAULT_CONTEXT)
            detail = text[:300].replace("(", "").replace(")", "")
            return ContextTooLong(
                f"This model's maximum context length is {ctx} tokens; the upstream server refused the prompt: "
                f"{detail}",
                param="messages",
            )
        return UpstreamFailed(f"upstream answered {status}: {text[:300]}")

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        if request.params.constraint is not None or request.params.logprobs is not None:
            # not advertised (ModelCard.structured/logprobs), so the router does not send them; never ignore them
            raise InvalidRequest(
                "this miner's upstream engine serves neither output constraints nor logprobs",
                param="response_format" if request.params.constraint is not None else "logprobs",
            )
        path, body = self._body(request)
        body |= {"stream": True, "stream_options": {"include_usage": True}}
        finish = "stop"
        usage: dict[str, Any] | None = None
        chunks = 0  # content-bearing chunks: one per generated token on servers that send no usage
        try:
            async with self._client.stream("POST", path, json=body) as r:
                if r.status_code >= 400:
                    raise self._refused(r.status_code, (await r.aread()).decode(errors="replace"))
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    obj = orjson.loads(data)
                    if obj.get("usage"):
                        usage = obj["usage"]
                    for ch in obj.get("choices") or []:
                        delta = ch.get("delta") or {}
                        text = delta.get("content") if request.kind == "chat" else ch.get("text")
                        if text:
                            chunks += 1
                            yield Piece(text)
                        if ch.get("finish_reason"):
                            finish = "length" if ch["finish_reason"] == "length" else "stop"
        except httpx.HTTPError as exc:
            raise UpstreamFailed(f"upstream {self.base_url} failed: {exc!r}") from None
        except orjson.JSONDecodeError:
            raise UpstreamFailed("upstream sent a stream event that is not JSON") from None
        if usage is not None:
            counted = Usage(
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
            )
        else:
            counted = Usage(prompt_tokens=await self._prompt_tokens(request), completion_tokens=chunks)
        yield Finished(finish, counted)  # type: ignore[arg-type]

    async def _prompt_tokens(self, request: GenerationRequest) -> int:
        """The server's exact prompt count from a one-token non-stream request, or an estimate (module docstring)."""
        path, body = self._body(request)
        body |= {"stream": False, "max_tokens": 1}
        try:
            r = await self._client.post(path, json=body)
            r.raise_for_status()
            return int(r.json()["usage"]["prompt_tokens"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            text = request.prompt + "".join(m.content for m in request.messages)
            estimate = math.ceil(len(text.encode()) / ESTIMATE_BYTES_PER_TOKEN)
            log.warning("upstream gave no prompt usage, estimating tokens=%d error=%r", estimate, exc)
            return estimate
