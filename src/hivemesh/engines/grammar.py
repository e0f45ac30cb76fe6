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

A mask costs one pass of llama.cpp's grammar over the whole vocabulary (~30 ms a position for SmolLM2's 49k tokens
on one core), paid only by constrained tasks.
"""

from __future__ import annotations

import ctypes
import functools
import json
import re
from typing import Any

import numpy as np
import numpy.typing as npt

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

    def accept(self, token: int) -> None:
        self._c.llama_sampler_accept(self._smpl, token)

    def close(self) -> None:
        smpl, self._smpl = self._smpl, None
        if smpl:
            self._c.llama_sampler_free(smpl)


def dumps_schema(schema: Any) -> str:
    """A schema's text on the wire: compact, keys in the caller's order (the grammar keeps properties in it)."""
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
