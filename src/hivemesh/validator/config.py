"""The validator's settings: one frozen object, built by the CLI (or a test) and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field

from hivemesh.validator.checks import STANDARD, CheckSet, Limits


@dataclass(frozen=True, slots=True)
class ValidatorConfig:
    lease_ttl_s: float = (
        5.0  # leadership lasts this long unless renewed; a stopped leader is replaced after it
    )
    renew_every_s: float = 1.5  # how often the lease is renewed (and a follower asks for it)
    ping_every_s: float = 10.0  # L1: every online node is pinged this often
    ping_timeout_s: float = 5.0  # a pong later than this is a missed ping
    l2_every_s: float = 120.0  # L2: a capability round over every online node this often
    l2_checks_per_round: int = 3  # checks drawn at random from the set for each node in a round
    canary_every_s: float = 20.0  # between rounds, canaries go out this often ...
    canary_share: float = 0.34  # ... each time to this share of the online nodes (at least one)
    pending_every_s: float = 2.0  # how often nodes that (re)joined are looked for and re-validated
    task_timeout_s: float = 60.0  # a network task's precommit deadline
    request_timeout_s: float = 10.0  # HTTP timeout of calls that are not network tasks
    checks: CheckSet = STANDARD  # the prompts and predicates of L2 rounds and canaries
    limits: Limits = field(default_factory=Limits)  # speed and latency a passing answer must also meet
