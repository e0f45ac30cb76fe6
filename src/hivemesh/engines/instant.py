"""An engine that answers at once, deterministically: for benchmarks of the network itself and for tests.

The output is a function of the request (model, prompt/messages, seed, max_tokens) only, so honest miners
running it agree exactly, like greedy decoding of a real model. Its vocabulary is ``WORDS`` (token id = index,
``EOS`` = len(WORDS)), so it takes part in token-level verification like a real engine: it reports the token ids
it generated and verifies a claim by replaying the request (evidence with margin 0 where the claim matches, a
large margin where it does not).

With an output constraint (``response_format``, ``tools``) it answers a small JSON value that satisfies the
constraint's schema (``grammar.schema_example``), one token per character (ids from ``CHARS``), so tests of the
API's structured output run without a model; with ``logprobs`` every token has log-probability 0.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator

from hivemesh.engines.base import (
    Event,
    Finished,
    GenerationRequest,
    Piece,
    Progress,
    TokenChecks,
    VerifyRequest,
)
from hivemesh.engines.grammar import schema_example
from hivemesh.protocol.wire import ModelCard, TokenLogprob, TopLogprob, Usage

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")
EOS = len(WORDS)
CHARS = EOS + 1  # token id of character c in a structured answer: CHARS + ord(c)
CONTEXT = 8192
MISMATCH_MARGIN = 100.0  # the margin an instant verifier reports for a token it would not have picked


class InstantEngine:
    name = "instant"

    def __init__(
        self,
        model: str = "instant-echo",
        *,
        capacity: int = 256,
        tokens: int = 8,
        token_delay_s: float = 0.0,
        numerics: str = "",
    ) -> None:
        self.model = model
        self.numerics = (
            numerics  # the ModelCard's numeric profile to advertise (tests of exact-only sessions)
        )
        self.capacity = capacity
        self.tokens = tokens
        self.token_delay_s = token_delay_s  # simulate a generation speed (tests of failover, benchmarks)

    def models(self) -> list[ModelCard]:
        return [
            ModelCard(
                id=self.model,
                engine=self.name,
                context_length=CONTEXT,
                verify=True,
                tokens=True,
                structured=True,
                logprobs=True,
                numerics=self.numerics,
            )
        ]

    async def start(self, progress: Progress | None = None) -> None:
        if progress:
            progress(self.model, 1.0)

    async def close(self) -> None:
        return None

    def _answer(self, request: GenerationRequest) -> tuple[list[int], int]:
        """The token ids this request produces and the prompt's length in tokens. The answer is ``tokens`` words
        and then EOS; like a real model's, the EOS counts against ``max_tokens`` (a claim never holds more ids than
        ``max_tokens``), so an answer cut at ``max_tokens`` ends without it, with finish "length"."""
        text_in = request.prompt or "\n".join(m.content for m in request.messages)
        prompt_tokens = max(1, len(text_in.split()))
        if (c := request.params.constraint) is not None:
            value = json.dumps(schema_example(json.loads(c.json_schema)), ensure_ascii=False)
            ids = [CHARS + ord(ch) for ch in value][: request.params.max_tokens]
            return ([*ids, EOS] if len(value) < request.params.max_tokens else ids), prompt_tokens
        h = hashlib.sha256(f"{request.model}|{request.params.seed}|{text_in}".encode()).digest()
        n = min(self.tokens, request.params.max_tokens)
        ids = [h[i % len(h)] % len(WORDS) for i in range(n)]
        complete = self.tokens < request.params.max_tokens
        return ([*ids, EOS] if complete else ids), prompt_tokens

    @staticmethod
    def _piece(i: int, token: int) -> str:
        if token >= CHARS:
            return chr(token - CHARS)
        return ("" if i == 0 else " ") + WORDS[token]

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        ids, prompt_tokens = self._answer(request)
        words = [t for t in ids if t != EOS]
        for i, t in enumerate(words):
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
            yield Piece(self._piece(i, t))
        top = request.params.logprobs
        logprobs = (
            ()
            if top is None
            else tuple(
                TokenLogprob(
                    token=self._piece(i, t),
                    logprob=0.0,
                    top=(TopLogprob(token=self._piece(i, t), logprob=0.0),) if top else (),
                )
                for i, t in enumerate(words)
            )
        )
        yield Finished(
            "stop" if ids[-1:] == [EOS] else "length",
            Usage(prompt_tokens=prompt_tokens, completion_tokens=len(words)),
            tokens=tuple(ids),
            logprobs=logprobs,
        )

    async def verify(self, request: VerifyRequest) -> TokenChecks:
        expected, prompt_tokens = self._answer(request.request)
        claimed = request.tokens
        if any(not 0 <= t < CHARS + 0x110000 for t in claimed):
            return TokenChecks((), (), (), (), False, prompt_tokens, CONTEXT, problem="bad_token")
        # After the expected answer ends, the "model" would stop: EOS is its pick there.
        picks = tuple(expected[i] if i < len(expected) else EOS for i in range(len(claimed)))
        same = [p == c for p, c in zip(picks, claimed, strict=True)]
        words = [t for t in claimed if t != EOS]
        text_ok = request.output == "".join(self._piece(i, t) for i, t in enumerate(words))
        text_ok = text_ok and EOS not in claimed[:-1]
        return TokenChecks(
            picks=picks,
            margins=tuple(0.0 if ok else MISMATCH_MARGIN for ok in same),
            ranks=tuple(1 if ok else 2 for ok in same),
            logprobs=tuple(0.0 if ok else -MISMATCH_MARGIN for ok in same),
            text_ok=text_ok,
            prompt_tokens=prompt_tokens,
            context_length=CONTEXT,
        )
