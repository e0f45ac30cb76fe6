"""Output grammars: a task's ``Constraint`` compiled into a GBNF grammar, and the per-position mask it puts on the
vocabulary of a llama.cpp model.

``gbnf(constraint)`` is a pure function of the constraint (llama-cpp-python's JSON-schema converter, pinned with
the engine), so every miner, generator or verifier, derives the same grammar from the task's params. With
``text_allowed`` (``tool_choice: "auto"``) the grammar also accepts free text whose first non-blank character is
not ``{``, so the model chooses between answering and calling a tool at its first token.

``GrammarMask`` follows a generation token by token: ``allowed(row)`` is the set of tokens the grammar accepts at
this position (end-of-generation only where the grammar may end), ``accept(token)`` advances it. Accepting a
forbidden token or an end-of-generation token would abort llama.cpp, so callers accept only allowed, non-final
tokens (a verifier that meets a forbidden claimed token stops masking: that position is already the proof).

A full mask costs one pass of llama.cpp's grammar over the whole vocabulary (25-60 ms a position for SmolLM2's 49k
tokens on one core). ``constrained_row`` usually needs the grammar's answer for a few hundred tokens only, with the
same pick and margins as the full mask (see there).
"""

from __future__ import annotations

import ctypes
import functools
import json
import re
from typing import Any

import numpy as np
import numpy.typing as npt

from hivemesh.core.sampling import MASKED, Sampler, masked
from hivemesh.protocol.wire import Constraint

FREE_TEXT = "hivemesh-free-text ::= [^{ \\t\\r\\n] [^\\x00]* | [ \\t\\r\\n]+ ([^{ \\t\\r\\n] [^\\x00]*)?\n"


_LITERALS = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]')  # string literals, char classes
_ROOT_REF = re.compile(r"(?<![\w-])root(?![\w-])")


class GrammarError(ValueError):
    """The constraint's schema cannot be turned into a grammar (an unsupported or malformed JSON schema)."""


@functools.lru_cache(maxsize=256)
def gbnf(constraint: Constraint) -> str:
    """The GBNF grammar of ``constraint`` (cached: tasks with the same schema share it)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        grammar: str = json_schema_to_gbnf(constraint.json_schema)
    except Exception as exc:  # the converter raises whatever it meets: KeyError, ValueError, TypeError...
        raise GrammarError(f"the JSON schema cannot be turned into a grammar: {exc}") from None
    if not constraint.text_allowed:
        return grammar
    lines = grammar.splitlines()
    if not any(ln.startswith("root ::= ") for ln in lines) or any(
        _ROOT_REF.search(_LITERALS.sub("", ln.split("::=", 1)[-1])) for ln in lines
    ):
        raise GrammarError("the JSON schema refers to its own root; it cannot be combined with free text")
    body = "\n".join(("hivemesh-json ::= " + ln[9:]) if ln.startswith("root ::= ") else ln for ln in lines)
    return body + "\nroot ::= hivemesh-json | hivemesh-free-text\n" + FREE_TEXT


def check(constraint: Constraint) -> str | None:
    """Why ``constraint`` cannot be served (the router's 400), or None. Only the grammar's text is built here;
    llama-cpp-python's converter is needed, so a router without it accepts the constraint (the miners check)."""
    try:
        gbnf(constraint)
    except GrammarError as exc:
        return str(exc)
    except ImportError:
        return None
    return None


def schema_example(schema: Any) -> Any:
    """A small value that satisfies the common JSON-schema shapes (``const``, ``enum``, ``oneOf``/``anyOf``,
    objects with their required properties, arrays, scalars): what a deterministic engine without a model answers."""
    if not isinstance(schema, dict):
        return {}
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("oneOf", "anyOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return schema_example(schema[key][0])
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = kind[0] if kind else "object"
    if kind == "object":
        props = schema.get("properties") or {}
        required = schema.get("required") or []
        return {k: schema_example(props.get(k, {})) for k in required if isinstance(k, str)}
    if kind == "array":
        n = int(schema.get("minItems", 0) or 0)
        return [schema_example(schema.get("items", {})) for _ in range(min(n, 8))]
    if kind == "string":
        return "x" * min(int(schema.get("minLength", 0) or 0), 64)
    if kind in ("integer", "number"):
        low = schema.get("minimum", 0)
        return low if isinstance(low, int | float) else 0
    if kind == "boolean":
        return False
    return None


class GrammarMask:
    """The grammar of one generation (or one verification), over a llama.cpp model's vocabulary."""

    def __init__(self, vocab: Any, n_vocab: int, grammar: str) -> None:
        from llama_cpp import llama_cpp as C

        self._c = C
        self._smpl = C.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        if not self._smpl:
            raise GrammarError("llama.cpp could not parse the grammar")
        self._data = np.recarray(
            (n_vocab,), dtype=np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
        )
        self._ids = np.arange(n_vocab, dtype=np.intc)
        self._array = C.llama_token_data_array(
            data=self._data.ctypes.data_as(C.llama_token_data_p), size=n_vocab, selected=-1, sorted=False
        )

    def allowed(self) -> npt.NDArray[np.bool_]:
        """Which tokens the grammar accepts next."""
        d = self._data
        d.id[:] = self._ids
        d.logit[:] = 0.0
        d.p[:] = 0.0
        self._array.size, self._array.sorted, self._array.selected = len(self._ids), False, -1
        self._c.llama_sampler_apply(self._smpl, ctypes.byref(self._array))
        out: npt.NDArray[np.bool_] = np.isfinite(d.logit)
        return out

    def allowed_among(self, ids: npt.NDArray[np.integer]) -> npt.NDArray[np.bool_]:
        """Which of ``ids`` the grammar accepts next (one pass over those tokens only)."""
        n = len(ids)
        d = self._data
        d.id[:n] = ids
        d.logit[:n] = 0.0
        d.p[:n] = 0.0
        self._array.size, self._array.sorted, self._array.selected = n, False, -1
        self._c.llama_sampler_apply(self._smpl, ctypes.byref(self._array))
        out: npt.NDArray[np.bool_] = np.isfinite(d.logit[:n])
        return out

    def accept(self, token: int) -> None:
        self._c.llama_sampler_accept(self._smpl, token)

    def close(self) -> None:
        smpl, self._smpl = self._smpl, None
        if smpl:
            self._c.llama_sampler_free(smpl)


SHORTLIST = 256  # tokens the grammar is asked about first: the most likely ones


def constrained_row(
    row: npt.NDArray[np.floating],
    grammar: GrammarMask,
    sampler: Sampler,
    *,
    claimed: int | None = None,
    exact: bool = False,
) -> npt.NDArray[np.float32]:
    """The logits row under the grammar (``core.sampling.masked``) as far as picking and checking need it.

    The grammar is asked about the ``SHORTLIST`` most likely tokens (and a verifier's claimed token) only. When one
    of them is allowed and, for sampling, every token outside the shortlist lies below the ``min_p`` floor under
    the best allowed token (so outside the candidates whatever the grammar says of it), the pick, the candidate set
    and every margin are those of the full mask, and tokens outside are left masked; only log-probabilities (then
    normalised over the allowed tokens of the shortlist) and ranks may differ. Otherwise, with penalties (they move
    tokens across the shortlist's edge), or with ``exact`` (reported logprobs), the whole vocabulary is masked."""
    if exact or sampler.penalised or row.shape[0] <= SHORTLIST:
        return masked(row, grammar.allowed())
    z = np.asarray(row, dtype=np.float32)
    top = np.argpartition(-z, SHORTLIST)[:SHORTLIST]
    ok = grammar.allowed_among(top)
    if not ok.any():
        return masked(row, grammar.allowed())
    if not sampler.greedy and sampler.min_p <= 0.0:
        return masked(row, grammar.allowed())
    outside = float(np.partition(z, z.shape[0] - SHORTLIST - 1)[z.shape[0] - SHORTLIST - 1])  # best left out
    best = float(z[top[ok]].max())
    floor = best if sampler.greedy else best + sampler.temperature * float(np.log(sampler.min_p))
    if outside >= floor:  # a token left out could matter (greedy: a tie with the best allowed one)
        return masked(row, grammar.allowed())
    out = np.full_like(z, np.float32(MASKED))
    keep = top[ok]
    out[keep] = z[keep]
    unknown = claimed is not None and out[claimed] == np.float32(MASKED)
    if unknown and grammar.allowed_among(np.array([claimed], dtype=np.intc))[0]:
        out[claimed] = z[claimed]
    return out


def dumps_schema(schema: Any) -> str:
    """A schema's text on the wire: compact, keys in the caller's order (the grammar keeps properties in it)."""
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
