"""The Engine seam: everything a miner needs from an inference back-end, in two methods.

An engine turns a ``GenerationRequest`` into an async stream of ``Piece`` (text as it is generated) ending with
exactly one ``Finished`` (finish reason and exact token usage). Engines know nothing of the network.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from hivemesh.protocol.wire import ChatMessage, ModelCard, SamplingParams, TokenLogprob, Usage


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    model: str
    kind: Literal["chat", "completion"]
    params: SamplingParams
    messages: tuple[ChatMessage, ...] = ()
    prompt: str = ""


@dataclass(frozen=True, slots=True)
class Piece:
    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    finish_reason: Literal["stop", "length"]
    usage: Usage
    # The generated token ids, in order, for engines that can tell (``ModelCard.tokens``); ends with the
    # end-of-generation token when the model itself stopped, so a verifier checks that choice too.
    tokens: tuple[int, ...] = ()
    # One entry per generated token (the end-of-generation token excluded) when ``params.logprobs`` asked for it.
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class VerifyRequest:
    """A claimed answer to check: the request that produced it and the claimed tokens and text."""

    request: GenerationRequest
    tokens: tuple[int, ...]
    output: str
    finish_reason: Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class TokenChecks:
    """Per-token evidence, one entry per claimed token (see ``protocol.wire.Evidence`` for each column)."""

    picks: tuple[int, ...]
    margins: tuple[float, ...]
    ranks: tuple[int, ...]
    logprobs: tuple[float, ...]
    text_ok: bool
    prompt_tokens: int
    context_length: int
    problem: str = ""  # "" | "bad_token" | "context" (then the columns are empty)


Event = Piece | Finished
Progress = Callable[[str, float], None]  # (what, fraction done in [0, 1])


@runtime_checkable
class Engine(Protocol):
    name: str
    capacity: int  # how many generations it runs at once

    def models(self) -> list[ModelCard]: ...

    async def start(self, progress: Progress | None = None) -> None: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[Event]: ...

    async def close(self) -> None: ...


@runtime_checkable
class Verifier(Protocol):
    """An engine that can check a claimed answer with one forward pass (advertised as ``ModelCard.verify``)."""

    async def verify(self, request: VerifyRequest) -> TokenChecks: ...
