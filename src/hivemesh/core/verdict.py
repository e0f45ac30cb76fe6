"""Token-level verification: a verifier's per-token evidence becomes a verdict, and accusations are settled.

``judge(claim, evidence, tolerance)`` decides one check. The generator sampled with a replayable sampler
(Gumbel-max keyed by the task's seed; temperature 0 is the same rule with no noise), so the verifier, teacher-forcing
the claimed tokens in one forward pass, knows which token the seed selects at each position and how far the claimed
token's perturbed score falls behind it (``Evidence.margins``, logit units). Rules, checked in this order; the first
that applies decides, and ``fault`` says whose failure a rejection is:

1. ``invalid_evidence`` (fault ``verifier``): the problem code is unknown; the columns are not all as long as the
   claim (empty when there is a problem); a margin is negative or not finite; a logprob is not finite or above 0
   (beyond float noise); or a position where the pick *is* the claimed token has a margin other than 0. The
   verifier contradicts itself: it is struck and replaced, and nothing is said about the generator.
2. ``overlong`` (generator): more tokens than ``max_tokens``. Decided by the claim alone.
3. ``empty`` (generator): no tokens with finish ``stop``. A model that stops emits its end-of-generation token, and
   the claim includes it (``engines.base.Finished.tokens``), so an honest stop has at least one token; an empty
   claim would leave nothing to check and let a generator skip the work.
4. ``context`` (fault ``nobody``): prompt + tokens exceed the verifier's context. Unverifiable; check elsewhere.
5. ``bad_token`` (generator): a claimed id outside the vocabulary (the verifier does not say where: no position).
6. ``text_mismatch`` (generator): the tokens do not detokenise to the revealed text. For finish ``stop`` the
   verifier's ``text_ok`` also vouches that the answer ends with the end-of-generation token or a stop string,
   which is why a claim needs no ``eog`` flag: the verifier knows the vocabulary, the router does not.
7. ``truncated`` (generator): finish ``length`` with fewer tokens than ``min(max_tokens, context_length -
   prompt_tokens)``, both as the verifier counts them. An answer that fills the context is complete; an empty
   ``length`` answer is complete only when the prompt already fills the context. (Generator and verifier are
   expected to serve the same model card, hence the same context length.)
8. ``token_mismatch`` (generator): some margin exceeds ``tolerance.margin``, or some claimed token is not the pick
   under a tolerance that forgives no position (``Tolerance.exact``: even the other side of an exact tie); the
   position is the first such one. A single such position is a proof on its own, so it wins over rule 9 wherever
   it lies.
9. ``too_many_near_ties`` (generator): more positions than ``tolerance.cap(n)`` use the tolerance (claimed token
   not the pick, margin within tolerance), or their margins sum to more than ``tolerance.allowance(n)``; the
   position is the one where the cap or the allowance was exceeded.

Otherwise the answer is accepted (``ok``, fault ``none``). The statistics (``checked``, ``tolerated``,
``max_margin``, ``mean_logprob``) cover every position whenever the evidence has columns, whatever the reason.

Why a punishment needs a proof that independent rechecks confirm, never a vote: a vote punishes the minority, so
sybils that win a draw can get honest nodes struck, and a vote's strength is only the honest share of each draw.
A rejection here names something anyone holding the model can recompute (``FraudProof``: the position, the
claimed token, the pick, the margin, the tolerance). ``settle(first, escalations)`` classifies the rechecks:
``fraud`` when every escalation verifier with valid evidence also finds the generator at fault (not necessarily at
the same position: the accusation is that the answer is not the model's, not where), and only then is anyone
punished (the generator); ``false_accusation`` when every valid escalation accepts (only an acceptance under a
tolerance at least as strict as the accuser's counts), which strikes nobody: an acceptance is a word, not a
recomputable proof, and sybil rechecks would use it to strike the honest verifier that caught their fraud;
``inconclusive`` when the rechecks are mixed or none gave valid evidence. Whatever the outcome, the rejected answer
is never served: the task is regenerated elsewhere. A verifier whose evidence is malformed accuses
nobody: it has failed, is struck and replaced. ``p_all_sybil`` gives the chance that a sybil generator draws only
sybil verifiers, the one case a recheck cannot catch, to print next to the measured rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Final, Literal

from hivemesh.protocol.wire import Commit, Evidence, FinishReason, NodeId, SamplingParams, TaskId

__all__ = [
    "Claim",
    "Fault",
    "FraudProof",
    "Outcome",
    "Reason",
    "Settlement",
    "TokenVerdict",
    "Tolerance",
    "exact_between",
    "fraud_proof",
    "judge",
    "p_all_sybil",
    "settle",
    "summary",
]

Fault = Literal["none", "generator", "verifier", "nobody"]
Reason = Literal[
    "ok",
    "invalid_evidence",
    "overlong",
    "empty",
    "context",
    "bad_token",
    "text_mismatch",
    "truncated",
    "token_mismatch",
    "too_many_near_ties",
]
Outcome = Literal["fraud", "false_accusation", "inconclusive"]

PROBLEMS: Final = frozenset({"", "bad_token", "context"})
_LOGPROB_SLACK: Final = 1e-3  # a log-softmax in float32 may come out a hair above 0
_ROUND: Final = 4  # decimals in summaries


@dataclass(frozen=True, slots=True)
class Tolerance:
    """How much hardware noise a check forgives, calibrated on the embedded model (``bench/calibrate_tolerance.py``:
    SmolLM2-135M Q4_1, generation on 2 threads vs a batched prefill on 1, 128 tokens, temperature 0 and 0.7).

    Measured: 2.3-3.0 % of honest tokens are not the verifier's pick, at margins p50 0.06-0.08, p99 0.21-0.36, max
    0.36 logits; a perturbed copy of the model (ffn_norm weights x (1 + 0.15 N(0,1))) has 20-23 % of its tokens
    off, at margins p50 0.73-0.79, p99 3.2-4.5, max 9.6: every such answer is rejected by margin alone."""

    # Largest margin (logit units) at which a claimed token that is not the verifier's pick still passes: about
    # twice the largest honest margin measured.
    margin: float = 0.75
    # Share of an answer's positions that may use the margin: honest answers have ~3 % (Poisson), so 11 % keeps
    # false rejections near 1e-5 at 128 tokens, while bounding what a generator that picks near-ties on purpose
    # can steer.
    cap_fraction: float = 0.11
    # ... but never fewer than this many positions, so short honest answers survive a few flips (P(> 6) ~ 3e-4
    # at 48 tokens).
    cap_min: int = 6
    # Summed margin (logits) the tolerated positions of one answer may use together: honest near ties are small
    # (p50 0.06-0.08), so their sum stays well under a logit, while another model's answer differs at several
    # positions by half a logit or more each. ``max(budget, budget_per_token * n)``.
    budget: float = 1.0
    budget_per_token: float = 0.01

    def __post_init__(self) -> None:
        if not (math.isfinite(self.margin) and self.margin >= 0.0):
            raise ValueError(f"margin must be finite and >= 0, got {self.margin!r}")
        if not 0.0 <= self.cap_fraction <= 1.0:
            raise ValueError(f"cap_fraction must be in [0, 1], got {self.cap_fraction!r}")
        if self.cap_min < 0:
            raise ValueError(f"cap_min must be >= 0, got {self.cap_min}")
        if not all(math.isfinite(b) and b >= 0.0 for b in (self.budget, self.budget_per_token)):
            raise ValueError(f"budget and budget_per_token must be finite and >= 0, got {self.budget!r}")

    @classmethod
    def exact(cls) -> Tolerance:
        """For a generator and a verifier whose engines compute bit-identical logits for the same tokens (the
        same ``ModelCard.numerics``: same model file, same kernels, whatever their thread counts or batch sizes;
        ``engines.llamacpp`` proves it for itself at load): the claimed token must be the pick, everywhere. Not
        even an exact tie goes either way: both sides break ties by the same rule (the lowest id), so an honest
        generator's claim is always the pick, while a claim that takes the other side of a tie is a choice no
        honest engine makes (it let one cheat in 63 through in the runner-up attack while this allowed ties)."""
        return cls(margin=0.0, cap_fraction=0.0, cap_min=0, budget=0.0, budget_per_token=0.0)

    def cap(self, n: int) -> int:
        """How many of ``n`` positions may use the tolerance: ``max(cap_min, floor(cap_fraction * n))``."""
        return max(self.cap_min, math.floor(self.cap_fraction * n))

    def allowance(self, n: int) -> float:
        """The summed margin the tolerated positions of ``n`` may use: ``max(budget, budget_per_token * n)``."""
        return max(self.budget, self.budget_per_token * n)


def exact_between(generator: str, verifier: str) -> bool:
    """Whether a verifier's check of a generator's claim allows no tolerance, from their numeric profiles
    (``ModelCard.numerics``: ``engine/kernels/weights``, "" when unknown):

    - the same non-empty profile: the two compute bit-identical logits, so every claimed token must be the pick;
    - non-empty profiles that name different weights (the last part is the model file's digest): the calibrated
      tolerance covers kernels and hardware running the *same* weights, never other weights under the same model
      name, so such a generator is checked exactly too (a perturbed copy honestly advertising its file gets no
      slack);
    - otherwise (either unknown, or the same weights on other kernels): the calibrated tolerance.
    """
    if not generator or not verifier:
        return False
    if generator == verifier:
        return True
    if "/" not in generator or "/" not in verifier:  # opaque profiles: only equality says anything
        return False
    return generator.rsplit("/", 1)[1] != verifier.rsplit("/", 1)[1]


@dataclass(frozen=True, slots=True)
class Claim:
    """What the generator claims: the token ids it sampled (ending with the end-of-generation token when the
    model stopped), why it stopped, and the ``max_tokens`` it was given."""

    tokens: tuple[int, ...]
    finish_reason: FinishReason
    max_tokens: int

    @classmethod
    def of(cls, commit: Commit, params: SamplingParams) -> Claim:
        return cls(commit.tokens, commit.finish_reason, params.max_tokens)


@dataclass(frozen=True, slots=True)
class TokenVerdict:
    accepted: bool  # fault == "none"
    fault: Fault  # whose failure a rejection is; only "generator" is an accusation
    reason: Reason
    position: int | None  # index into the claimed tokens of the deciding position, when there is one
    tolerated: int  # positions where the claimed token is not the pick but within the margin
    checked: int  # positions the evidence covers (0 when it has none or is invalid)
    max_margin: float  # over every position; 0.0 when none
    mean_logprob: float  # over every position; 0.0 when none
    tolerance: Tolerance = field(default_factory=Tolerance)  # the tolerance it was judged under


def judge(claim: Claim, evidence: Evidence, tolerance: Tolerance | None = None) -> TokenVerdict:
    """Turn one verifier's evidence on a claimed answer into a verdict; see the module docstring for the rules."""
    tol = tolerance if tolerance is not None else Tolerance()
    n = len(claim.tokens)

    def verdict(
        fault: Fault, reason: Reason, position: int | None = None, stats: bool = True
    ) -> TokenVerdict:
        if not stats or not evidence.margins:
            return TokenVerdict(fault == "none", fault, reason, position, 0, 0, 0.0, 0.0, tol)
        return TokenVerdict(
            accepted=fault == "none",
            fault=fault,
            reason=reason,
            position=position,
            tolerated=_near_ties(claim, evidence, tol),
            checked=n,
            max_margin=max(evidence.margins),
            mean_logprob=math.fsum(evidence.logprobs) / n,
            tolerance=tol,
        )

    if not _valid(claim, evidence):
        return verdict("verifier", "invalid_evidence", stats=False)
    if n > claim.max_tokens:
        return verdict("generator", "overlong")
    if n == 0 and claim.finish_reason == "stop":
        return verdict("generator", "empty")
    if evidence.problem == "context":
        return verdict("nobody", "context")
    if evidence.problem == "bad_token":
        return verdict("generator", "bad_token")
    if not evidence.text_ok:
        return verdict("generator", "text_mismatch")
    if claim.finish_reason == "length" and n < min(
        claim.max_tokens, evidence.context_length - evidence.prompt_tokens
    ):
        return verdict("generator", "truncated")
    cap, allowance = tol.cap(n), tol.allowance(n)
    for i, (c, p, m) in enumerate(zip(claim.tokens, evidence.picks, evidence.margins, strict=True)):
        if m > tol.margin or (c != p and cap == 0):
            return verdict("generator", "token_mismatch", i)
    used, spent = 0, 0.0
    for i, (c, p, m) in enumerate(zip(claim.tokens, evidence.picks, evidence.margins, strict=True)):
        if c != p:
            used += 1
            spent += m
            if used > cap or spent > allowance:
                return verdict("generator", "too_many_near_ties", i)
    return verdict("none", "ok")


def _valid(claim: Claim, evidence: Evidence) -> bool:
    e = evidence
    if e.problem not in PROBLEMS:
        return False
    expected = 0 if e.problem else len(claim.tokens)
    if any(len(col) != expected for col in (e.picks, e.margins, e.ranks, e.logprobs)):
        return False
    if not all(math.isfinite(m) and m >= 0.0 for m in e.margins):
        return False
    if not all(math.isfinite(lp) and lp <= _LOGPROB_SLACK for lp in e.logprobs):
        return False
    return all(m == 0.0 for c, p, m in zip(claim.tokens, e.picks, e.margins, strict=False) if c == p)


def _near_ties(claim: Claim, evidence: Evidence, tol: Tolerance) -> int:
    pairs = zip(claim.tokens, evidence.picks, evidence.margins, strict=True)
    return sum(1 for c, p, m in pairs if c != p and m <= tol.margin)


# ---------------------------------------------------------------- proofs


@dataclass(frozen=True, slots=True)
class FraudProof:
    """What anyone holding the model can recheck: the task record has the prompt, the sampling parameters and the
    claimed tokens; this names the position and the numbers the accusing verifier reported."""

    task_id: TaskId
    generator: NodeId
    verifier: NodeId
    reason: Reason
    position: int | None
    claimed: int | None  # the claimed token at ``position``
    pick: int | None  # the verifier's pick at ``position``
    margin: float | None
    rank: int | None
    logprob: float | None
    near_ties: tuple[int, ...]  # too_many_near_ties: every tolerated position up to ``position``
    claimed_tokens: int  # the claim's length, finish reason and max_tokens
    finish_reason: FinishReason
    max_tokens: int
    prompt_tokens: int  # as the verifier counted them (truncation is judged against these)
    context_length: int
    tolerance: Tolerance

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def fraud_proof(
    task_id: TaskId,
    generator: NodeId,
    verifier: NodeId,
    claim: Claim,
    evidence: Evidence,
    verdict: TokenVerdict,
) -> FraudProof | None:
    """The proof behind an accusation, or None when the verdict accuses nobody (fault other than generator)."""
    if verdict.fault != "generator":
        return None
    i = verdict.position
    at = i if i is not None and i < len(evidence.margins) else None
    near: tuple[int, ...] = ()
    if verdict.reason == "too_many_near_ties" and at is not None:
        near = tuple(j for j in range(at + 1) if claim.tokens[j] != evidence.picks[j])
    return FraudProof(
        task_id=task_id,
        generator=generator,
        verifier=verifier,
        reason=verdict.reason,
        position=i,
        claimed=None if at is None else claim.tokens[at],
        pick=None if at is None else evidence.picks[at],
        margin=None if at is None else evidence.margins[at],
        rank=None if at is None else evidence.ranks[at],
        logprob=None if at is None else evidence.logprobs[at],
        near_ties=near,
        claimed_tokens=len(claim.tokens),
        finish_reason=claim.finish_reason,
        max_tokens=claim.max_tokens,
        prompt_tokens=evidence.prompt_tokens,
        context_length=evidence.context_length,
        tolerance=verdict.tolerance,
    )


def summary(verdict: TokenVerdict) -> dict[str, object]:
    """The answer's verification block."""
    return {
        "reason": verdict.reason,
        "position": verdict.position,
        "checked": verdict.checked,
        "tolerated": verdict.tolerated,
        "max_margin": round(verdict.max_margin, _ROUND),
        "mean_logprob": round(verdict.mean_logprob, _ROUND),
    }


# ---------------------------------------------------------------- escalation


@dataclass(frozen=True, slots=True)
class Settlement:
    # fraud: strike the generator; false_accusation (every recheck accepts) and inconclusive: strike nobody
    outcome: Outcome
    confirmed: int  # escalations with valid evidence that also find the generator at fault
    refuted: int  # escalations with valid evidence that accept the answer
    failed: tuple[int, ...]  # indices of escalations whose verifier failed (struck and replaced on their own)


def settle(first: TokenVerdict, escalations: Sequence[TokenVerdict]) -> Settlement:
    """Settle an accusation (``first.fault == "generator"``) by independent rechecks; see the module docstring.

    Escalations with fault ``verifier`` or ``nobody`` gave no valid evidence and count neither way. Raises
    ``ValueError`` when ``first`` is not an accusation."""
    if first.fault != "generator":
        raise ValueError(f"only an accusation (fault 'generator') is settled, got fault {first.fault!r}")
    confirmed = sum(1 for v in escalations if v.fault == "generator")
    # an acceptance under a more lenient tolerance (another numeric profile than the accuser's) does not refute
    refuted = sum(
        1 for v in escalations if v.fault == "none" and v.tolerance.margin <= first.tolerance.margin
    )
    failed = tuple(i for i, v in enumerate(escalations) if v.fault == "verifier")
    outcome: Outcome = "inconclusive"
    if confirmed and not refuted:
        outcome = "fraud"
    elif refuted and not confirmed:
        outcome = "false_accusation"
    return Settlement(outcome, confirmed, refuted, failed)


def p_all_sybil(sybils: int, honest: int, v: int) -> float:
    """The chance that all ``v`` verifiers, drawn uniformly without replacement from the pool other than the
    generator, are sybils when the generator is one of ``sybils``: ``C(s-1, v) / C(s-1+h, v)``."""
    if sybils < 1 or honest < 0:
        raise ValueError(f"need sybils >= 1 (the generator is one) and honest >= 0, got {sybils}, {honest}")
    if not 0 <= v <= sybils - 1 + honest:
        raise ValueError(f"cannot draw {v} verifiers from a pool of {sybils - 1 + honest}")
    return float(Fraction(math.comb(sybils - 1, v), math.comb(sybils - 1 + honest, v)))
