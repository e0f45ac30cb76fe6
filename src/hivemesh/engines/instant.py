"""An engine that answers at once, deterministically: for benchmarks of the network itself and for tests.

The output is a function of the request (model, prompt/messages, seed, max_tokens) only, so honest miners
running it agree exactly, like greedy decoding of a real model.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

from hivemesh.engines.base import Event, Finished, GenerationRequest, Piece, Progress
from hivemesh.protocol.wire import ModelCard, Usage

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")


class InstantEngine:
    name = "instant"

    def __init__(
        self, model: str = "instant-echo", *, capacity: int = 256, tokens: int = 8, token_delay_s: float = 0.0
    ) -> None:
        self.model = model
        self.capacity = capacity
        self.tokens = tokens
        self.token_delay_s = token_delay_s  # simulate a generation speed (tests of failover, benchmarks)

    def models(self) -> list[ModelCard]:
        return [ModelCard(id=self.model, engine=self.name, context_length=8192)]

    async def start(self, progress: Progress | None = None) -> None:
        if progress:
            progress(self.model, 1.0)

    async def close(self) -> None:
        return None

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        text_in = request.prompt or "\n".join(m.content for m in request.messages)
        h = hashlib.sha256(f"{request.model}|{request.params.seed}|{text_in}".encode()).digest()
        n = min(self.tokens, request.params.max_tokens)
        for i in range(n):
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
            yield Piece(("" if i == 0 else " ") + WORDS[h[i % len(h)] % len(WORDS)])
        prompt_tokens = max(1, len(text_in.split()))
        yield Finished(
            "length" if n < self.tokens else "stop", Usage(prompt_tokens=prompt_tokens, completion_tokens=n)
        )
