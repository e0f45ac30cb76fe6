"""A sampler that a verifier can replay exactly: the Gumbel-max trick with counter-based noise.

Sampling from ``softmax(z / T)`` equals taking ``argmax_i (z_i / T + g_i)`` with ``g_i = -log(-log u_i)`` and
``u_i`` uniform. Here ``u_i`` is a hash of (seed, position, token id) (splitmix64), so the token a generator must
emit at a completion position is a deterministic function of the logits, the request's seed and the position; a
verifier that teacher-forces the claimed tokens replays it on its own logits.

At completion position ``position`` (0-based), given the raw logits row ``logits`` and the completion tokens
before it (``history``):

1. Penalties: ``z = logits - presence * [count > 0] - frequency * count`` over the history's token counts.
2. Greedy (``temperature < GREEDY_BELOW``): the pick is ``argmax z`` (ties: the lowest id). No noise, no filters.
3. Otherwise the candidates are filtered deterministically, in this order: the ``top_k`` largest ``z`` (every
   token tied with the k-th is kept); those with ``p_i >= min_p * p_max`` under ``p = softmax(z / T)`` over the
   candidates; the smallest prefix of the candidates sorted by ``p`` (ties: lowest id) whose mass reaches
   ``top_p``. The pick is the candidate with the largest ``score_i = z_i / T + g_i`` (ties: the lowest id).

``check`` is the verifier's view of a claimed token (``TokenCheck``): the pick, the claimed token's margin (logit
units: ``z_pick - z_claimed`` when greedy; 0.0 when the claim is the pick; otherwise, over every candidate j that
outscores the claim, the largest ``min(T * (score_j - score_claimed), z_j - threshold)``: j must lose its lead or
fall out of the candidate set, whichever is nearer, since noise at the filters' boundary changes the set; for a
claimed token outside the set, at least how far its ``z`` is below the set's entry threshold), its
1-based rank among the perturbed scores (candidates first, then the other tokens by ``z``) and its log-probability
under ``softmax(z / T)`` over the whole vocabulary (``T = 1`` when greedy).

Output grammars (``response_format``, ``tools``): before step 1, every token the grammar forbids at this position
gets the logit ``MASKED`` (``masked``). It can then never be picked, never survives the ``min_p`` filter, and a
claimed forbidden token has a margin near ``-MASKED``: a ``token_mismatch`` that anyone applying the same grammar
can recheck. Without a grammar nothing changes.

Pure numpy, no I/O. One row costs a partition of the vocabulary and a log-sum-exp (tens of microseconds for a
49k vocabulary); noise is drawn only for the candidates and the claimed token.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from hivemesh.protocol.wire import SamplingParams

TOP_K: Final = 40
MIN_P: Final = 0.05
GREEDY_BELOW: Final = 1e-5  # temperatures below this are greedy
MASKED: Final = -1e30  # the logit of a token an output grammar forbids (finite: evidence stays valid JSON)

_MASK: Final = (1 << 64) - 1
_GOLDEN: Final = 0x9E3779B97F4A7C15

Logits = npt.NDArray[np.floating]


@dataclass(frozen=True, slots=True)
class Sampler:
    temperature: float
    top_p: float = 1.0
    top_k: int = TOP_K
    min_p: float = MIN_P
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = 0  # any Python int; reduced mod 2**64

    @classmethod
    def of(cls, params: SamplingParams) -> Sampler:
        return cls(
            temperature=params.temperature,
            top_p=params.top_p,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            seed=params.seed % (1 << 64),
        )

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @property
    def penalised(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


@dataclass(frozen=True, slots=True)
class TokenCheck:
    pick: int
    margin: float
    rank: int
    logprob: float


# ---------------------------------------------------------------- noise


def _splitmix64_scalar(x: int) -> int:
    x = (x + _GOLDEN) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _splitmix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    with np.errstate(over="ignore"):
        x = x + np.uint64(_GOLDEN)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def gumbel(seed: int, position: int, ids: npt.NDArray[np.integer]) -> npt.NDArray[np.float64]:
    """The Gumbel noise of tokens ``ids`` at ``position``: a function of (seed, position, id) only."""
    key = _splitmix64_scalar((seed % (1 << 64)) ^ _splitmix64_scalar(position % (1 << 64)))
    h = _splitmix64(np.uint64(key) ^ ids.astype(np.uint64))
    u = ((h >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53))  # in (0, 1), never 0 or 1
    out: npt.NDArray[np.float64] = -np.log(-np.log(u))
    return out


# ---------------------------------------------------------------- per row


def _penalise(logits: Logits, sampler: Sampler, counts: Counter[int] | None) -> npt.NDArray[np.float32]:
    z = np.asarray(logits, dtype=np.float32)
    if not sampler.penalised or not counts:
        return z
    z = z.copy()
    ids = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
    n = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
    z[ids] -= np.float32(sampler.presence_penalty) + np.float32(sampler.frequency_penalty) * n
    return z


def _log_softmax_at(z: npt.NDArray[np.float32], token: int, inv_t: float) -> float:
    m = float(z.max())
    s = float(np.exp((z - np.float32(m)) * np.float32(inv_t), dtype=np.float32).sum(dtype=np.float64))
    return (float(z[token]) - m) * inv_t - float(np.log(s))


@dataclass(frozen=True, slots=True)
class _Candidates:
    ids: npt.NDArray[np.int64]  # ascending
    z: npt.NDArray[np.float64]
    threshold: float  # a token whose z is below this is outside the set


def _candidates(z: npt.NDArray[np.float32], sampler: Sampler) -> _Candidates:
    t = sampler.temperature
    k = min(max(sampler.top_k, 1), z.shape[0]) if sampler.top_k > 0 else z.shape[0]
    if k < z.shape[0]:
        kth = float(np.partition(z, z.shape[0] - k)[z.shape[0] - k])
        ids = np.flatnonzero(z >= np.float32(kth))
    else:
        kth = -np.inf
        ids = np.arange(z.shape[0])
    zc = z[ids].astype(np.float64)
    zmax = float(zc.max())
    threshold = kth
    if sampler.min_p > 0.0:
        floor = zmax + t * float(
            np.log(sampler.min_p)
        )  # p_i >= min_p * p_max  <=>  z_i >= z_max + T log min_p
        keep = zc >= floor
        ids, zc, threshold = ids[keep], zc[keep], max(threshold, floor)
    if sampler.top_p < 1.0 and ids.shape[0] > 1:
        order = np.lexsort((ids, -zc))  # by probability descending, ties: lowest id
        p = np.exp((zc[order] - zmax) / t)
        cum = np.cumsum(p / p.sum())
        n = min(int(np.searchsorted(cum, sampler.top_p)) + 1, ids.shape[0])
        if n < ids.shape[0]:
            kept = np.sort(order[:n])
            ids, zc = ids[kept], zc[kept]
            threshold = max(threshold, float(zc.min()))
    return _Candidates(ids, zc, threshold)


def _pick_row(z: npt.NDArray[np.float32], sampler: Sampler, position: int) -> tuple[int, _Candidates | None]:
    if sampler.greedy:
        return int(np.argmax(z)), None
    c = _candidates(z, sampler)
    scores = c.z / sampler.temperature + gumbel(sampler.seed, position, c.ids)
    return int(c.ids[int(np.argmax(scores))]), c


def _check_row(z: npt.NDArray[np.float32], claimed: int, sampler: Sampler, position: int) -> TokenCheck:
    t = sampler.temperature
    zc = float(z[claimed])
    if sampler.greedy:
        pick = int(np.argmax(z))
        rank = 1 + int(np.count_nonzero(z > z[claimed])) + int(np.count_nonzero(z[:claimed] == z[claimed]))
        return TokenCheck(pick, max(0.0, float(z[pick]) - zc), rank, _log_softmax_at(z, claimed, 1.0))
    c = _candidates(z, sampler)
    scores = c.z / t + gumbel(sampler.seed, position, c.ids)
    best = int(np.argmax(scores))
    pick = int(c.ids[best])
    logprob = _log_softmax_at(z, claimed, 1.0 / t)
    if claimed == pick:
        return TokenCheck(pick, 0.0, 1, logprob)
    slot = int(np.searchsorted(c.ids, claimed))
    inside = slot < c.ids.shape[0] and int(c.ids[slot]) == claimed
    if inside:
        sc = float(scores[slot])
        rank = 1 + int(np.count_nonzero(scores > sc)) + int(np.count_nonzero(scores[:slot] == sc))
        return TokenCheck(pick, _beaten_by(c, scores, sc, t), rank, logprob)
    sc = zc / t + float(gumbel(sampler.seed, position, np.array([claimed]))[0])
    margin = max(_beaten_by(c, scores, sc, t), c.threshold - zc)
    outside_above = int(np.count_nonzero(z > z[claimed])) - int(np.count_nonzero(c.z > zc))
    return TokenCheck(pick, margin, c.ids.shape[0] + 1 + outside_above, logprob)


def _beaten_by(c: _Candidates, scores: npt.NDArray[np.float64], claimed_score: float, t: float) -> float:
    """How far (logits) the claimed token is from winning: every candidate that outscores it must either lose
    its lead or drop out of the candidate set, whichever is nearer (a candidate barely above the filters'
    threshold may be outside the generator's set under hardware noise, its Gumbel draw notwithstanding)."""
    above = scores > claimed_score
    if not above.any():
        return 0.0
    cost = np.minimum(t * (scores[above] - claimed_score), c.z[above] - c.threshold)
    return max(0.0, float(cost.max()))


# ---------------------------------------------------------------- public


def masked(logits: Logits, allowed: npt.NDArray[np.bool_]) -> npt.NDArray[np.float32]:
    """The row an output grammar leaves: tokens not ``allowed`` at this position get ``MASKED``."""
    return np.where(allowed, np.asarray(logits, dtype=np.float32), np.float32(MASKED))


def _counts(history: Iterable[int]) -> Counter[int]:
    return Counter(history)


def pick(logits: Logits, sampler: Sampler, position: int, history: Sequence[int] = ()) -> int:
    """The token a generator must emit at completion position ``position`` given the raw logits row."""
    z = _penalise(logits, sampler, _counts(history) if sampler.penalised else None)
    return _pick_row(z, sampler, position)[0]


def check(
    logits: Logits, claimed: int, sampler: Sampler, position: int, history: Sequence[int] = ()
) -> TokenCheck:
    """The verifier's view of ``claimed`` at ``position``, on its own logits row (see the module docstring)."""
    if not 0 <= claimed < logits.shape[-1]:
        raise ValueError(f"token {claimed} outside the vocabulary")
    z = _penalise(logits, sampler, _counts(history) if sampler.penalised else None)
    return _check_row(z, claimed, sampler, position)


def check_all(rows: Logits, claimed: Sequence[int], sampler: Sampler) -> list[TokenCheck]:
    """``check`` at every position of a teacher-forced pass: ``rows[i]`` predicts ``claimed[i]``, the history
    being ``claimed[:i]``."""
    if rows.shape[0] != len(claimed):
        raise ValueError(f"{rows.shape[0]} logits rows for {len(claimed)} tokens")
    replay = History()
    return [replay.check(rows[i], tok, sampler) for i, tok in enumerate(claimed)]


class History:
    """The completion so far, position after position: a generator ``pick``s each token, a verifier ``check``s
    each claimed one; penalty counts are kept incrementally, so a whole completion costs linear time."""

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.position = 0

    def pick(self, logits: Logits, sampler: Sampler) -> int:
        tok = _pick_row(_penalise(logits, sampler, self.counts), sampler, self.position)[0]
        self._advance(tok)
        return tok

    def check(self, logits: Logits, claimed: int, sampler: Sampler) -> TokenCheck:
        if not 0 <= claimed < logits.shape[-1]:
            raise ValueError(f"token {claimed} outside the vocabulary")
        out = _check_row(_penalise(logits, sampler, self.counts), claimed, sampler, self.position)
        self._advance(claimed)
        return out

    def logprobs(self, logits: Logits, sampler: Sampler) -> npt.NDArray[np.float64]:
        """Log-probabilities of every token at the current position under ``softmax(z / T)`` (``T = 1`` when
        greedy), ``z`` the penalised row: the distribution the sampler draws from before its filters, the same
        one ``TokenCheck.logprob`` reports. Does not advance."""
        z = _penalise(logits, sampler, self.counts).astype(np.float64)
        inv_t = 1.0 if sampler.greedy else 1.0 / sampler.temperature
        scaled = (z - z.max()) * inv_t
        out: npt.NDArray[np.float64] = scaled - np.log(np.exp(scaled).sum())
        return out

    def _advance(self, token: int) -> None:
        self.counts[token] += 1
        self.position += 1
