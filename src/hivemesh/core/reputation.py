"""Node reputation: counters, scores, levels, quarantine and SLA tiers (pure functions).

Counters are kept per node and per hour bucket; ``sum_window`` adds the buckets of the rolling window and
``scores`` turns the sum into ratios. Each ratio has a Bayesian prior of ``prior`` pseudo-trials at the neutral
value ``NEUTRAL = 0.5``::

    ratio(hits, trials) = (hits + prior * 0.5) / (trials + prior)

so a node with no history scores 0.5 everywhere (neither trusted nor condemned) and moves toward its observed rate
as trials accumulate (after ``prior`` trials, halfway). The ratios:

* ``precommit = ratio(precommitted_on_time, assigned)``: tasks given that were precommitted before the deadline.
* ``commit = ratio(valid_reveals, max(precommitted_on_time, committed))``: commit requests answered with a valid
  reveal. The ``max`` counts both the precommits that never got a commit and immediate commits (no precommit).
* ``agreement = ratio(in_consensus, in_consensus + dissents)``: validated reveals that were in the winning group.
* ``total = (0.3 * precommit + 0.3 * commit + 0.4 * agreement) * 0.25 ** bad_reveals``: the blend in ``WEIGHTS``;
  a bad reveal (output that does not match its precommit: proven cheating) is a hard penalty, each one in the window
  cutting the total to a quarter, so one is enough to fall below the quarantine line.
* ``tokens_per_s = tokens / (gen_ms / 1000)``, 0.0 without generation time (not a ratio, not clamped).

Levels 0..10: ``apply_outcome`` moves a node up one level after ``rule.streak`` consecutive successes while its
success rate over the attempts at this level is at least ``rule.min_success_rate`` (the rule for the current level,
``DEFAULT_LEVEL_RULES``), and down one level after ``down_after`` consecutive failures. Level 10 is the top, 0 the
bottom. Moving resets the level's counters. ``LevelState.streak`` is signed: +n is a run of n successes, -n a run of
n failures.

``SLA_TIERS`` maps a session's tier to the lowest level and tokens/s a node needs to serve it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Final

__all__ = [
    "DEFAULT_LEVEL_RULES",
    "MAX_LEVEL",
    "NEUTRAL",
    "SLA_TIERS",
    "WEIGHTS",
    "Counters",
    "LevelRule",
    "LevelState",
    "Scores",
    "Weights",
    "apply_outcome",
    "fits_tier",
    "is_quarantined",
    "scores",
    "sum_window",
]

NEUTRAL: Final = 0.5
MAX_LEVEL: Final = 10


@dataclass(frozen=True, slots=True)
class Counters:
    """What one node did in one hour bucket, or summed over a window. Every field counts events."""

    assigned: int = 0  # tasks assigned to the node
    acked: int = 0  # acks received before the ack deadline
    precommitted_on_time: int = 0  # precommits received before the precommit deadline
    committed: int = 0  # commits (reveals) received, valid or not
    valid_reveals: int = 0  # reveals that matched their precommit (every well-formed immediate commit)
    in_consensus: int = 0  # validated reveals inside the winning group
    dissents: int = 0  # validated reveals outside the winning group
    timeouts: int = 0  # deadlines missed (ack, precommit or commit)
    bad_reveals: int = 0  # reveals that did not match their precommit
    tokens: int = 0  # completion tokens generated
    gen_ms: int = 0  # wall time spent generating them
    ttft_ms_total: int = 0  # summed time to first token
    ttft_samples: int = 0  # streamed tasks that reported a first token

    def __add__(self, other: object) -> Counters:
        if not isinstance(other, Counters):
            return NotImplemented
        return Counters(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(Counters)))

    @property
    def mean_ttft_ms(self) -> float:
        """Mean time to first token, 0.0 without samples."""
        return self.ttft_ms_total / self.ttft_samples if self.ttft_samples else 0.0


@dataclass(frozen=True, slots=True)
class Scores:
    precommit: float  # in [0, 1]
    commit: float  # in [0, 1]
    agreement: float  # in [0, 1]
    total: float  # in [0, 1]
    tokens_per_s: float  # >= 0


@dataclass(frozen=True, slots=True)
class Weights:
    """The blend of the total score; the three weights sum to 1."""

    precommit: float = 0.3
    commit: float = 0.3
    agreement: float = 0.4
    bad_reveal_factor: float = 0.25  # the total is multiplied by this once per bad reveal in the window


WEIGHTS: Final = Weights()


def _ratio(hits: int, trials: int, prior: int) -> float:
    if trials + prior <= 0:
        return NEUTRAL
    value = (hits + prior * NEUTRAL) / (trials + prior)
    return min(1.0, max(0.0, value))


def scores(c: Counters, *, prior: int = 5, weights: Weights = WEIGHTS) -> Scores:
    """The scores of a node from its window counters; see the module docstring for the formulas."""
    if prior < 0:
        raise ValueError(f"prior must be >= 0, got {prior}")
    precommit = _ratio(c.precommitted_on_time, c.assigned, prior)
    commit = _ratio(c.valid_reveals, max(c.precommitted_on_time, c.committed), prior)
    agreement = _ratio(c.in_consensus, c.in_consensus + c.dissents, prior)
    blend = weights.precommit * precommit + weights.commit * commit + weights.agreement * agreement
    total = blend * weights.bad_reveal_factor ** max(0, c.bad_reveals)
    tokens_per_s = c.tokens * 1000.0 / c.gen_ms if c.gen_ms > 0 else 0.0
    return Scores(precommit, commit, agreement, min(1.0, max(0.0, total)), tokens_per_s)


def sum_window(buckets: Iterable[Counters]) -> Counters:
    """The field-wise sum of the buckets (``Counters()`` for none)."""
    total = Counters()
    for b in buckets:
        total = total + b
    return total


@dataclass(frozen=True, slots=True)
class LevelRule:
    """What it takes to move from this level up to the next."""

    streak: int  # consecutive successes needed
    min_success_rate: float  # successes / attempts at this level, at least


@dataclass(frozen=True, slots=True)
class LevelState:
    level: int = 0  # 0..MAX_LEVEL
    streak: int = 0  # +n: n successes in a row, -n: n failures in a row
    successes: int = 0  # at this level
    attempts: int = 0  # at this level


DEFAULT_LEVEL_RULES: Final[tuple[LevelRule, ...]] = (
    LevelRule(streak=3, min_success_rate=0.50),  # 0 -> 1: a new node shows it works at all
    LevelRule(streak=5, min_success_rate=0.60),  # 1 -> 2
    LevelRule(streak=8, min_success_rate=0.70),  # 2 -> 3: "medium" tier starts at 2
    LevelRule(streak=10, min_success_rate=0.75),  # 3 -> 4
    LevelRule(streak=15, min_success_rate=0.80),  # 4 -> 5
    LevelRule(streak=20, min_success_rate=0.85),  # 5 -> 6: "high" tier starts at 5
    LevelRule(streak=25, min_success_rate=0.90),  # 6 -> 7
    LevelRule(streak=30, min_success_rate=0.92),  # 7 -> 8
    LevelRule(streak=40, min_success_rate=0.95),  # 8 -> 9
    LevelRule(streak=50, min_success_rate=0.97),  # 9 -> 10
)


def apply_outcome(
    state: LevelState,
    success: bool,
    rules: Sequence[LevelRule] = DEFAULT_LEVEL_RULES,
    *,
    down_after: int = 2,
) -> LevelState:
    """The level state after one more task outcome; see the module docstring for the rule."""
    if down_after < 1:
        raise ValueError(f"down_after must be >= 1, got {down_after}")
    top = min(MAX_LEVEL, len(rules))
    level = min(top, max(0, state.level))
    attempts = state.attempts + 1
    if success:
        streak = state.streak + 1 if state.streak > 0 else 1
        successes = state.successes + 1
        if level < top:
            rule = rules[level]
            if streak >= rule.streak and successes / attempts >= rule.min_success_rate:
                return LevelState(level=level + 1)
        return LevelState(level, streak, successes, attempts)
    streak = state.streak - 1 if state.streak < 0 else -1
    if -streak >= down_after and level > 0:
        return LevelState(level=level - 1)
    return LevelState(level, streak, state.successes, attempts)


def is_quarantined(
    s: Scores,
    *,
    min_total: float = 0.5,
    min_precommit: float = 0.6,
    min_samples: int = 5,
    assigned: int,
) -> bool:
    """True when a node with at least ``min_samples`` assigned tasks in the window scores below either line."""
    if assigned < min_samples:
        return False
    return s.total < min_total or s.precommit < min_precommit


SLA_TIERS: Final[dict[str, tuple[int, float]]] = {
    "low": (0, 0.0),  # any node that is not quarantined
    "medium": (2, 5.0),  # level >= 2 and >= 5 tokens/s (a small model on a few CPU cores)
    "high": (5, 20.0),  # level >= 5 and >= 20 tokens/s (a GPU, or a tiny model on a fast CPU)
}
"""tier -> (minimum level, minimum tokens/s over the window)."""


def fits_tier(tier: str, *, level: int, tokens_per_s: float) -> bool:
    """Whether a node at ``level`` with ``tokens_per_s`` may serve a session of ``tier``."""
    try:
        min_level, min_tps = SLA_TIERS[tier]
    except KeyError:
        raise ValueError(f"unknown SLA tier {tier!r}; expected one of {sorted(SLA_TIERS)}") from None
    return level >= min_level and tokens_per_s >= min_tps
