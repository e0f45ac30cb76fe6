"""Capability checks: short prompts whose answers have a known property, each judged by a pure predicate.

A check is a frozen dataclass with a ``name``, the ``prompt`` (one user message), ``max_tokens``, and
``check(output) -> bool``. The validator runs L2 rounds from one set of checks and canaries (tasks that read like
ordinary user questions) from another; ``judge`` scores a node's reply for correctness, speed and latency.

The standard sets are tuned on the embedded model (SmolLM2-135M-Instruct, greedy decoding): a tiny model that
gets ``7 + 5`` right and ``4 + 4`` wrong (on the build ``scripts/setup`` makes), so the prompts below are ones it answers correctly every time, and the
predicates accept the phrasings it uses ("7 + 5 = 12", "The capital of France is Paris.", JSON in a code fence).
Any larger model passes them too. ``BASIC`` checks only that a node answers at all (for the ``instant`` engine,
whose output is deterministic filler).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = [
    "BASIC",
    "CHECK_SETS",
    "STANDARD",
    "Arithmetic",
    "Check",
    "CheckSet",
    "Fact",
    "JsonEcho",
    "JsonFields",
    "Judgement",
    "Limits",
    "NonEmpty",
    "extract_json",
    "judge",
]


class Check(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def prompt(self) -> str: ...

    @property
    def max_tokens(self) -> int: ...

    def check(self, output: str) -> bool: ...


_INT = re.compile(r"-?\d+")


@dataclass(frozen=True, slots=True)
class Arithmetic:
    """``a op b``: the answer is the number after the first ``=`` if the model writes the sum out, else the first
    number it says."""

    a: int
    op: Literal["+", "-", "*"]
    b: int
    max_tokens: int = 12

    @property
    def name(self) -> str:
        return f"arithmetic {self.a} {self.op} {self.b}"

    @property
    def prompt(self) -> str:
        return f"What is {self.a} {self.op} {self.b}? Answer with just the number."

    @property
    def expected(self) -> int:
        return {"+": self.a + self.b, "-": self.a - self.b, "*": self.a * self.b}[self.op]

    def check(self, output: str) -> bool:
        line = output.strip().split("\n", 1)[0]
        _, eq, after = line.partition("=")
        m = _INT.search(after if eq else line)
        return m is not None and int(m.group()) == self.expected


@dataclass(frozen=True, slots=True)
class Fact:
    """A question with a fixed answer: one of ``answers`` must appear as a whole word in the first line."""

    name: str
    prompt: str
    answers: tuple[str, ...]
    max_tokens: int = 16

    def check(self, output: str) -> bool:
        line = output.strip().split("\n", 1)[0].lower()
        return any(re.search(rf"\b{re.escape(a.lower())}\b", line) for a in self.answers)


def extract_json(output: str) -> Any:
    """The first JSON object in ``output`` (bare, or in a Markdown code fence). Raises ``ValueError`` if none
    parses."""
    text = output.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", text, flags=re.S)
    if fence:
        text = fence.group(1).strip()
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise ValueError("no JSON object in the output")
    return json.loads(text[start : end + 1])


@dataclass(frozen=True, slots=True)
class JsonEcho:
    """Repeat a JSON object exactly: the output must parse and equal it."""

    name: str
    expected: str  # a JSON object, as the prompt shows it
    max_tokens: int = 24

    @property
    def prompt(self) -> str:
        return f"Reply with only this JSON object and nothing else: {self.expected}"

    def check(self, output: str) -> bool:
        try:
            return bool(extract_json(output) == json.loads(self.expected))
        except ValueError:
            return False


@dataclass(frozen=True, slots=True)
class JsonFields:
    """Turn a sentence into a JSON object: it must parse and hold ``fields`` (string values, any case)."""

    name: str
    prompt: str
    fields: tuple[tuple[str, str], ...]
    max_tokens: int = 32

    def check(self, output: str) -> bool:
        try:
            obj = extract_json(output)
        except ValueError:
            return False
        if not isinstance(obj, dict):
            return False
        return all(str(obj.get(k, "")).strip().lower() == v.lower() for k, v in self.fields)


@dataclass(frozen=True, slots=True)
class NonEmpty:
    """Any non-blank answer: a node that is up and generating."""

    name: str
    prompt: str
    max_tokens: int = 8

    def check(self, output: str) -> bool:
        return bool(output.strip())


@dataclass(frozen=True, slots=True)
class CheckSet:
    l2: tuple[Check, ...]  # capability rounds and re-validation
    canaries: tuple[Check, ...]  # read like user questions; sent between rounds


def _capital(country: str, city: str) -> Fact:
    return Fact(f"capital of {country}", f"What is the capital of {country}? Answer in one word.", (city,))


def _opposite(word: str, answer: str) -> Fact:
    return Fact(f"opposite of {word}", f"What is the opposite of {word}? Answer in one word.", (answer,))


STANDARD = CheckSet(
    l2=(
        Arithmetic(2, "+", 3),
        Arithmetic(3, "+", 4),
        Arithmetic(2, "+", 2),
        Arithmetic(7, "+", 5),
        Arithmetic(3, "*", 3),
        Arithmetic(10, "+", 10),
        Fact("days in a week", "How many days are in a week? Answer with just the number.", ("7", "seven")),
        Fact("hours in a day", "How many hours are in a day? Answer with just the number.", ("24",)),
        Fact(
            "legs of a spider",
            "How many legs does a spider have? Answer with just the number.",
            ("8", "eight"),
        ),
        _capital("France", "Paris"),
        JsonEcho("json status", '{"status": "ok"}', max_tokens=40),  # a preamble, then a code fence
        JsonEcho("json name", '{"name": "hivemesh", "ok": true}'),
        JsonEcho("json pair", '{"a": 1, "b": 2}', max_tokens=32),
        JsonFields(
            "json city",
            'Convert to JSON with keys "city" and "country": Paris is in France. Output only JSON.',
            (("city", "Paris"), ("country", "France")),
        ),
    ),
    canaries=(
        _capital("Japan", "Tokyo"),
        _capital("Italy", "Rome"),
        _capital("Germany", "Berlin"),
        _capital("Spain", "Madrid"),
        _opposite("hot", "cold"),
        _opposite("up", "down"),
        _opposite("day", "night"),
        Fact(
            "months in a year",
            "How many months are in a year? Answer with just the number.",
            ("12", "twelve"),
        ),
    ),
)

BASIC = CheckSet(
    l2=(NonEmpty("say hello", "Say hello."), NonEmpty("count", "Count from one to five.")),
    canaries=(NonEmpty("greeting", "Write a one-line greeting."),),
)

CHECK_SETS: dict[str, CheckSet] = {"standard": STANDARD, "basic": BASIC}


@dataclass(frozen=True, slots=True)
class Limits:
    """What a passing answer must also meet besides being correct."""

    min_tokens_per_s: float = 0.0  # 0: speed is recorded, not required
    max_latency_ms: int = 60_000  # generation time the node reported


@dataclass(frozen=True, slots=True)
class Judgement:
    check: str
    passed: bool
    correct: bool
    tokens_per_s: float | None
    latency_ms: int | None
    detail: str


def judge(
    check: Check,
    output: str | None,
    *,
    tokens_per_s: float | None = None,
    latency_ms: int | None = None,
    error: str | None = None,
    limits: Limits = Limits(),
) -> Judgement:
    """Score one reply: correct (``check``), fast enough, soon enough. ``output`` None: the node did not answer."""
    if output is None:
        why = f"no answer: {error or 'unknown'}"
        return Judgement(check.name, False, False, tokens_per_s, latency_ms, f"{check.name}: {why}"[:2000])
    correct = check.check(output)
    fast = limits.min_tokens_per_s <= 0 or (tokens_per_s or 0.0) >= limits.min_tokens_per_s
    prompt = latency_ms is None or latency_ms <= limits.max_latency_ms
    problems = [
        *(["wrong answer"] if not correct else []),
        *([f"slow: {tokens_per_s or 0:.1f} tokens/s"] if not fast else []),
        *([f"late: {latency_ms} ms"] if not prompt else []),
    ]
    tps = "?" if tokens_per_s is None else f"{tokens_per_s:.1f}"
    detail = f"{check.name}: {', '.join(problems) or 'ok'} ({tps} tokens/s, {latency_ms} ms) output={output[:120]!r}"
    return Judgement(
        check.name, correct and fast and prompt, correct, tokens_per_s, latency_ms, detail[:2000]
    )
