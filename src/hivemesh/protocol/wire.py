"""Messages between router and miner over the miner WebSocket.

Every frame is one JSON object with a ``type`` discriminator. Models are frozen and strict; unknown fields are
rejected, so a miner that sends garbage is caught at the edge (``decode_from_miner`` raises ``ValueError``).

Handshake::

    router -> miner  Challenge(nonce, router)
    miner  -> router Hello(node, nonce, models, capacity, ..., sig)     sig binds node to this connection's nonce
    router -> miner  Welcome(node)

One task (``reveal="on_request"``, the proof-of-inference path)::

    router -> miner  Assign(task_id, ..., sig by router)
    miner  -> router Ack(task_id, sig)
    miner  -> router Delta(task_id, index, text)*                        only when Assign.stream
    miner  -> router Precommit(task_id, digest=sha256(salt || output), usage, sig)
    router -> miner  RevealRequest(task_id)
    miner  -> router Commit(task_id, output, salt, usage, sig)

With ``reveal="immediate"`` (k = 1, validation ``none``) the miner sends Commit right after Ack and skips
Precommit. Signed messages are signed over ``signing_payload(msg, nonce)``: the message without ``sig`` plus the
connection nonce, so a message cannot be moved to another task, another node or another connection.
"""

from __future__ import annotations

from typing import Annotated, Literal, NewType

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

NodeId = NewType("NodeId", str)
TaskId = NewType("TaskId", str)

PROTOCOL_VERSION = 1

Hex = Annotated[str, Field(pattern=r"^(0x)?[0-9a-fA-F]*$", max_length=4096)]


class _Msg(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")


class ChatMessage(_Msg):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class SamplingParams(_Msg):
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = Field(default=256, ge=1, le=1_000_000)
    stop: tuple[str, ...] = ()
    seed: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


class ModelCard(_Msg):
    id: str = Field(min_length=1, max_length=200)
    engine: str = Field(max_length=64)
    context_length: int = Field(ge=1)


class Hardware(_Msg):
    cpus: int = 0
    ram_gb: int = 0
    gpu: str = ""


class Usage(_Msg):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)


FinishReason = Literal["stop", "length"]

# ---------------------------------------------------------------- router -> miner


class Challenge(_Msg):
    type: Literal["challenge"] = "challenge"
    nonce: str
    router: str
    protocol: int = PROTOCOL_VERSION


class Welcome(_Msg):
    type: Literal["welcome"] = "welcome"
    node: str
    ping_interval_s: float = 10.0


class Assign(_Msg):
    type: Literal["assign"] = "assign"
    task_id: str
    model: str
    kind: Literal["chat", "completion"]
    messages: tuple[ChatMessage, ...] = ()
    prompt: str = ""
    params: SamplingParams
    stream: bool = False
    reveal: Literal["on_request", "immediate"] = "on_request"
    deadline_ms: int = Field(ge=1)  # the precommit (or immediate commit) must arrive within this
    sig: str = ""


class RevealRequest(_Msg):
    type: Literal["reveal"] = "reveal"
    task_id: str


class Cancel(_Msg):
    type: Literal["cancel"] = "cancel"
    task_id: str
    reason: str = ""


class Ping(_Msg):
    type: Literal["ping"] = "ping"
    nonce: str


# ---------------------------------------------------------------- miner -> router


class Hello(_Msg):
    type: Literal["hello"] = "hello"
    node: str  # checksum address; must equal the address recovered from sig
    nonce: str  # the challenge nonce, echoed
    models: tuple[ModelCard, ...] = Field(max_length=64)
    capacity: int = Field(ge=1, le=4096)
    pool: int = Field(default=0, ge=0)
    hardware: Hardware = Hardware()
    version: str = Field(default="", max_length=64)
    sig: str = ""


class Ack(_Msg):
    type: Literal["ack"] = "ack"
    task_id: str
    node: str
    sig: str = ""


class Delta(_Msg):
    """A streamed piece of output. Unsigned for speed: the signed Commit covers the whole text, and the router
    checks that the streamed text equals the committed one."""

    type: Literal["delta"] = "delta"
    task_id: str
    index: int = Field(ge=0)
    text: str


class Precommit(_Msg):
    type: Literal["precommit"] = "precommit"
    task_id: str
    node: str
    digest: Hex  # sha256(salt || output), hex
    usage: Usage
    finish_reason: FinishReason
    elapsed_ms: int = Field(ge=0)
    sig: str = ""


class Commit(_Msg):
    type: Literal["commit"] = "commit"
    task_id: str
    node: str
    output: str
    salt: Hex
    usage: Usage
    finish_reason: FinishReason
    elapsed_ms: int = Field(ge=0)
    sig: str = ""


class TaskFailed(_Msg):
    type: Literal["task_failed"] = "task_failed"
    task_id: str
    message: str = Field(max_length=2000)


class Pong(_Msg):
    type: Literal["pong"] = "pong"
    nonce: str


ToMiner = Annotated[Challenge | Welcome | Assign | RevealRequest | Cancel | Ping, Field(discriminator="type")]
FromMiner = Annotated[
    Hello | Ack | Delta | Precommit | Commit | TaskFailed | Pong, Field(discriminator="type")
]
SignedFromMiner = Hello | Ack | Precommit | Commit

_to_miner: TypeAdapter[ToMiner] = TypeAdapter(ToMiner)
_from_miner: TypeAdapter[FromMiner] = TypeAdapter(FromMiner)

MAX_FRAME = 4 * 1024 * 1024


def encode(msg: _Msg) -> str:
    return orjson.dumps(msg.model_dump(mode="json")).decode()


def decode_to_miner(data: str | bytes) -> ToMiner:
    return _to_miner.validate_json(data)


def decode_from_miner(data: str | bytes) -> FromMiner:
    """Parse a frame from a miner. Raises ``ValueError`` (pydantic's ValidationError) on anything malformed."""
    if len(data) > MAX_FRAME:
        raise ValueError("frame too large")
    return _from_miner.validate_json(data)


def signing_payload(msg: _Msg, nonce: str) -> bytes:
    """The canonical bytes a signature covers: the message without ``sig``, keys sorted, plus the connection
    nonce (so a signed message is only valid on the connection it was made for)."""
    body = msg.model_dump(mode="json", exclude={"sig"})
    return b"hivemesh/1\n" + nonce.encode() + b"\n" + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
