"""The Engine seam: everything a miner needs from an inference back-end, in two methods.

An engine turns a ``GenerationRequest`` into an async stream of ``Piece`` (text as it is generated) ending with
exactly one ``Finished`` (finish reason and exact token usage). Engines know nothing of the network.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from hivemesh.protocol.wire import ChatMessage, ModelCard, SamplingParams, Usage


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
