"""An engine in front of an OpenAI-compatible server a node operator already runs (vLLM, SGLang, Ollama,
llama-server). Streams its SSE output; usage comes from the server's final usage chunk."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from hivemesh.engines.base import Event, Finished, GenerationRequest, Piece, Progress
from hivemesh.errors import ServiceUnavailable, UpstreamFailed
from hivemesh.protocol.wire import ModelCard, Usage


class UpstreamEngine:
    name = "openai-upstream"

    def __init__(
        self, base_url: str, *, model: str | None = None, capacity: int = 8, api_key: str = "none"
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
        )
        self._models: list[ModelCard] = []

    def models(self) -> list[ModelCard]:
        return self._models

    async def start(self, progress: Progress | None = None) -> None:
        try:
            r = await self._client.get("/models")
            r.raise_for_status()
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(f"upstream {self.base_url} unreachable: {exc}") from None
        ids = [m["id"] for m in r.json().get("data", [])]
        if self.model:
            ids = [self.model]
        if not ids:
            raise ServiceUnavailable(f"upstream {self.base_url} serves no model")
        self._models = [ModelCard(id=i, engine=self.name, context_length=4096) for i in ids]
        if progress:
            progress(ids[0], 1.0)

    async def close(self) -> None:
        await self._client.aclose()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        p = request.params
        body: dict[str, Any] = {
            "model": request.model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": p.temperature,
            "top_p": p.top_p,
            "max_tokens": p.max_tokens,
            "seed": p.seed,
            "presence_penalty": p.presence_penalty,
            "frequency_penalty": p.frequency_penalty,
        }
        if p.stop:
            body["stop"] = list(p.stop)
        if request.kind == "chat":
            path = "/chat/completions"
            body["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
        else:
            path = "/completions"
            body["prompt"] = request.prompt
        finish = "stop"
        usage = None
        async with self._client.stream("POST", path, json=body) as r:
            if r.status_code >= 400:
                raise UpstreamFailed(f"upstream answered {r.status_code}: {(await r.aread())[:300]!r}")
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
                    text = (
                        (ch.get("delta") or {}).get("content") if request.kind == "chat" else ch.get("text")
                    )
                    if text:
                        yield Piece(text)
                    if ch.get("finish_reason"):
                        finish = "length" if ch["finish_reason"] == "length" else "stop"
        if usage is None:
            raise UpstreamFailed("upstream sent no usage (it must support stream_options.include_usage)")
        yield Finished(
            finish,  # type: ignore[arg-type]
            Usage(
                prompt_tokens=usage.get("prompt_tokens", 0),
                completion_tokens=usage.get("completion_tokens", 0),
            ),
        )
