"""The network API (``/api/v1/network/...``): what a validator (oracle) and a router say to each other.

A validator signs every call with its own key; the router checks the signature and that the address is one of
its allowed validators::

    x-hivemesh-validator: 0xAbC...               the validator's address
    x-hivemesh-timestamp: 1732300000.123          unix seconds; the router refuses a skew over MAX_SKEW_S
    x-hivemesh-signature: 0x...                   identity signature over request_payload(...)

Calls that act on nodes (ping, tasks, reports) are accepted only from the holder of the live ``LEADER_LEASE``,
so several validators never double-count. Bodies are strict: a validator and a router speak the same version.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from hivemesh.protocol.wire import ChatMessage, Usage

PREFIX = "/api/v1/network"
HEADER_VALIDATOR = "x-hivemesh-validator"
HEADER_TIMESTAMP = "x-hivemesh-timestamp"
HEADER_SIGNATURE = "x-hivemesh-signature"
MAX_SKEW_S = 30.0  # a signed call older or newer than this is refused
LEADER_LEASE = "oracle"  # the lease whose holder may act on nodes

TaskKind = Literal["l2", "canary"]


def request_payload(method: str, path: str, timestamp: str, body: bytes) -> bytes:
    """The bytes a validator signs: ``method\\npath\\ntimestamp\\nsha256(body)`` (path with its query string)."""
    return f"{method.upper()}\n{path}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LeaseRequest(_Body):
    name: str = Field(default=LEADER_LEASE, min_length=1, max_length=64)
    ttl_s: float = Field(ge=0.0, le=60.0)  # 0 gives the lease up


class LeaseReply(_Body):
    granted: bool
    holder: str | None
    expires_at: float  # router's unix time


class PingRequest(_Body):
    node: str
    timeout_s: float = Field(default=5.0, gt=0.0, le=30.0)


class PingReply(_Body):
    ok: bool
    rtt_ms: float | None = None
    misses: int = 0  # consecutive missed pings of this node (0 after a pong)
    offline: bool = False  # this miss took it past the limit: the router cut its connection


class TaskRequest(_Body):
    node: str
    model: str
    kind: TaskKind
    messages: tuple[ChatMessage, ...] = ()
    prompt: str | None = None
    max_tokens: int = Field(default=32, ge=1, le=4096)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    seed: int | None = None
    stream: bool = True
    timeout_s: float = Field(default=60.0, gt=0.0, le=600.0)  # the precommit deadline of this task


class TaskReply(_Body):
    task_id: str
    output: str | None  # None when the node did not complete the task
    usage: Usage | None = None
    elapsed_ms: int | None = None
    tokens_per_s: float | None = None
    ttft_ms: int | None = None
    error: str | None = None  # why the node did not complete it


class ReportRequest(_Body):
    node: str
    task_id: str
    kind: TaskKind
    success: bool
    detail: str = Field(default="", max_length=2000)


class ReportReply(_Body):
    node: str
    level: int
    quarantined: bool
    validated: bool


class NodeInfo(_Body):
    node: str
    models: tuple[str, ...]
    validated: bool  # passed a validator's check since it (re)joined
    level: int
    quarantined: bool
    connected_at: float


class NodeList(_Body):
    data: tuple[NodeInfo, ...]
