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

A router that will not keep a connection closes it with a 44xx code and a one-sentence reason (4401 a bad hello,
4402 too little stake, 4400 protocol violations, 4429 flooding, ``CLOSE_HELD_ELSEWHERE`` another router of the
cluster holds the node's one connection); a miner backs off and dials again.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal, NewType

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

NodeId = NewType("NodeId", str)
TaskId = NewType("TaskId", str)

PROTOCOL_VERSION = 1
CLOSE_HELD_ELSEWHERE = 4409  # the node is connected through another live router: one connection per node

Hex = Annotated[str, Field(pattern=r"^(0x)?[0-9a-fA-F]*$", max_length=4096)]
Id = Annotated[str, Field(min_length=1, max_length=128)]  # task ids, node addresses, nonces on the wire
MAX_TOKENS_CLAIMED = 16_384  # token ids one reveal or verify request may carry
TokenIds = Annotated[tuple[Annotated[int, Field(ge=0, lt=2**31)], ...], Field(max_length=MAX_TOKENS_CLAIMED)]


class _Msg(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")


class ChatMessage(_Msg):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


MAX_SCHEMA = 32 * 1024  # characters of JSON schema one task's output constraint may carry
MAX_TOP_LOGPROBS = 20


class Constraint(_Msg):
    """The shape an answer must have (``response_format``, ``tools``): JSON that satisfies ``json_schema``
    (JSON text), or with ``text_allowed`` also free text that does not start with ``{``. Engines compile
    it into a grammar the same way on every miner, so a verifier masks exactly what the generator masked."""

    json_schema: str = Field(min_length=2, max_length=MAX_SCHEMA)
    text_allowed: bool = False


class SamplingParams(_Msg):
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = Field(default=256, ge=1, le=1_000_000)
    stop: tuple[str, ...] = ()
    seed: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    constraint: Constraint | None = None  # generation limited to what this constraint's grammar accepts
    logprobs: int | None = Field(
        default=None, ge=0, le=MAX_TOP_LOGPROBS
    )  # report logprobs, with this many top


class ModelCard(_Msg):
    id: str = Field(min_length=1, max_length=200)
    engine: str = Field(max_length=64)
    context_length: int = Field(ge=1)
    verify: bool = False  # the engine can run token-level verification (a prefill with per-token evidence)
    tokens: bool = (
        False  # the engine reports the token ids it generated (needed to be a token-mode generator)
    )
    structured: bool = False  # the engine serves ``SamplingParams.constraint`` (and verifies with it)
    logprobs: bool = False  # the engine reports ``SamplingParams.logprobs`` in its Commit
    # The engine's numeric profile: engines with the same non-empty profile compute bit-identical logits for the
    # same tokens (same model file, same kernels; thread count and batch size do not matter), so a verifier of the
    # generator's profile checks it exactly rather than within the calibrated tolerance. "" when unknown.
    numerics: str = Field(default="", max_length=128)


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


class Verify(_Msg):
    """Check a claimed answer: one teacher-forced forward pass over prompt + ``tokens``, with the same model.

    The verifier tokenises the prompt itself (from ``messages``/``prompt``, as a generator would), so a generator
    cannot change what the tokens are checked against. ``params`` carries the sampling seed: the verifier replays
    the sampler at each position and reports, per claimed token, what it would have picked and by what margin."""

    type: Literal["verify"] = "verify"
    task_id: str
    model: str
    kind: Literal["chat", "completion"]
    messages: tuple[ChatMessage, ...] = ()
    prompt: str = ""
    params: SamplingParams
    tokens: TokenIds
    output: str  # the revealed text: the verifier checks that ``tokens`` detokenise to it
    finish_reason: FinishReason
    round: int = Field(default=0, ge=0, le=16)  # 0: first check; >= 1: escalation of a rejection
    deadline_ms: int = Field(ge=1)
    sig: str = ""


# ---------------------------------------------------------------- miner -> router


class Hello(_Msg):
    type: Literal["hello"] = "hello"
    node: Id  # checksum address; must equal the address recovered from sig
    nonce: Id  # the challenge nonce, echoed
    models: tuple[ModelCard, ...] = Field(max_length=64)
    capacity: int = Field(ge=1, le=4096)
    pool: int = Field(default=0, ge=0)
    hardware: Hardware = Hardware()
    version: str = Field(default="", max_length=64)
    sig: str = ""


class Ack(_Msg):
    type: Literal["ack"] = "ack"
    task_id: Id
    node: Id
    sig: str = ""


class Delta(_Msg):
    """A streamed piece of output. Unsigned for speed: the signed Commit covers the whole text, and the router
    checks that the streamed text equals the committed one."""

    type: Literal["delta"] = "delta"
    task_id: Id
    index: int = Field(ge=0)
    text: str


class Precommit(_Msg):
    type: Literal["precommit"] = "precommit"
    task_id: Id
    node: Id
    digest: Hex  # sha256(salt || output), hex
    usage: Usage
    finish_reason: FinishReason
    elapsed_ms: int = Field(ge=0)
    sig: str = ""


class TopLogprob(_Msg):
    token: str = Field(max_length=256)
    logprob: float


class TokenLogprob(_Msg):
    """One generated token as the generator saw it: its text, its log-probability under the distribution it was
    sampled from, and the most likely tokens there (``SamplingParams.logprobs`` of them)."""

    token: str = Field(max_length=256)
    logprob: float
    top: tuple[TopLogprob, ...] = Field(default=(), max_length=MAX_TOP_LOGPROBS)


class Commit(_Msg):
    type: Literal["commit"] = "commit"
    task_id: Id
    node: Id
    output: str
    salt: Hex
    usage: Usage
    finish_reason: FinishReason
    elapsed_ms: int = Field(ge=0)
    tokens: TokenIds = ()  # the generated token ids (token mode), bound by the precommit digest
    logprobs: tuple[TokenLogprob, ...] = Field(default=(), max_length=MAX_TOKENS_CLAIMED)  # when asked for
    sig: str = ""


BUSY = "busy"  # TaskFailed.code from a router holding a relayed node that had no room: not the miner's doing


class TaskFailed(_Msg):
    type: Literal["task_failed"] = "task_failed"
    task_id: Id
    message: str = Field(max_length=2000)
    code: str = Field(
        default="", max_length=64
    )  # the error's code (e.g. context_length_exceeded), if it has one


class Evidence(_Msg):
    """A verifier's per-token evidence for one claimed answer (columns, one entry per claimed token).

    ``picks[i]`` is the token the verifier's own logits and the task's replayable sampler select at position i;
    ``margins[i]`` (logit units, >= 0; 0 where the pick is the claimed token) is how far the claimed token's
    perturbed score falls behind the pick's; ``ranks[i]`` is the claimed token's 1-based rank among the perturbed
    scores; ``logprobs[i]`` its log-probability under the verifier's distribution. ``text_ok`` says the claimed
    tokens detokenise to the revealed output (with the stop string cut where ``finish_reason`` says so);
    ``problem`` is a code for what made the check impossible, if anything: ``"bad_token"`` (a claimed id outside
    the vocabulary: the generator's fault) or ``"context"`` (prompt + tokens exceed the verifier's context:
    nobody's fault); the columns are then empty."""

    type: Literal["evidence"] = "evidence"
    task_id: Id
    node: Id
    picks: TokenIds
    margins: tuple[float, ...] = Field(max_length=MAX_TOKENS_CLAIMED)
    ranks: tuple[Annotated[int, Field(ge=1)], ...] = Field(max_length=MAX_TOKENS_CLAIMED)
    logprobs: tuple[float, ...] = Field(max_length=MAX_TOKENS_CLAIMED)
    text_ok: bool
    prompt_tokens: int = Field(ge=0)  # the prompt's length as the verifier tokenised it
    context_length: int = Field(
        ge=1
    )  # the verifier's context: a "length" finish may end there, not at max_tokens
    problem: str = Field(default="", max_length=500)
    elapsed_ms: int = Field(ge=0)
    sig: str = ""


class Pong(_Msg):
    type: Literal["pong"] = "pong"
    nonce: Id


ToMiner = Annotated[
    Challenge | Welcome | Assign | RevealRequest | Cancel | Ping | Verify, Field(discriminator="type")
]
FromMiner = Annotated[
    Hello | Ack | Delta | Precommit | Commit | TaskFailed | Pong | Evidence, Field(discriminator="type")
]
SignedFromMiner = Hello | Ack | Precommit | Commit | Evidence

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


def commit_digest(salt: bytes, output: str, tokens: tuple[int, ...] = ()) -> str:
    """The precommit digest: ``sha256(salt || output)``, and with token ids (token mode)
    ``sha256(salt || output || 0x00 || "t1,t2,...")`` so the reveal cannot change the tokens either."""
    body = salt + output.encode()
    if tokens:
        body += b"\x00" + ",".join(map(str, tokens)).encode()
    return hashlib.sha256(body).hexdigest()


def signing_payload(msg: _Msg, nonce: str) -> bytes:
    """The canonical bytes a signature covers: the message without ``sig``, keys sorted, plus the connection
    nonce (so a signed message is only valid on the connection it was made for)."""
    body = msg.model_dump(mode="json", exclude={"sig"})
    return b"hivemesh/1\n" + nonce.encode() + b"\n" + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
