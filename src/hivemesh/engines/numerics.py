"""The numeric profile of a llama.cpp engine: a name shared by exactly the engines that compute bit-identical
logits for the same tokens, so that a verifier of the generator's profile can check its claim exactly.

Measured on this build (SmolLM2-135M Q4_1, CPU): the logits do not depend on the thread count (each dot product
is computed by one thread in a fixed order), but with llama.cpp's llamafile kernels (tinyBLAS, used only for
batches of two rows or more) a one-token decode and a batched prefill of the same tokens differ by up to ~1.6
logits, so 2-4 % of an honest greedy answer's tokens are not the prefill's argmax. Built without them
(``GGML_LLAMAFILE=OFF``, as ``scripts/setup`` does) both paths run the same kernels and agree bit for bit.

The profile is therefore only claimed after a probe at load proves it for this process: a short greedy decode,
one token at a time, and a batched prefill of the same tokens must give identical logits on every row. It names
the engine's version, a digest of the kernels it was built with (``llama_print_system_info``) and the model
file's sha256, so two engines share it only when they run the same model through the same code.
"""

from __future__ import annotations

import hashlib
import logging
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

PROBE_TEXT = b"The numbers from one to ten are"
PROBE_TOKENS = 4  # greedy tokens decoded one at a time, then checked against one batched prefill


@cache
def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _decode(llm: Any, tokens: list[int], start: int, rows: bool) -> list[npt.NDArray[np.float32]]:
    """Evaluate ``tokens`` at positions ``start``.. as one batch; the logits of every row when ``rows``."""
    batch = llm._batch.batch
    batch.n_tokens = len(tokens)
    for j, tok in enumerate(tokens):
        batch.token[j] = tok
        batch.pos[j] = start + j
        batch.seq_id[j][0] = 0
        batch.n_seq_id[j] = 1
        batch.logits[j] = rows or j == len(tokens) - 1
    llm._ctx.decode(llm._batch)
    n_vocab = int(llm.n_vocab())
    wanted = range(len(tokens)) if rows else [len(tokens) - 1]
    return [np.ctypeslib.as_array(llm._ctx.get_logits_ith(j), shape=(n_vocab,)).copy() for j in wanted]


def _clear(llm: Any) -> None:
    llm._ctx.kv_cache_clear()
    llm.reset()


def decode_matches_prefill(llm: Any) -> bool:
    """Greedy-decode ``PROBE_TOKENS`` tokens one at a time, then prefill prompt + those tokens in one batch: True
    when every row's logits are identical. Leaves the context empty."""
    prompt = [int(t) for t in llm.tokenize(PROBE_TEXT, add_bos=True)]
    _clear(llm)
    try:
        decoded = _decode(llm, prompt, 0, rows=False)
        claimed: list[int] = []
        for _ in range(PROBE_TOKENS):
            tok = int(np.argmax(decoded[-1]))
            claimed.append(tok)
            decoded += _decode(llm, [tok], len(prompt) + len(claimed) - 1, rows=False)
        _clear(llm)
        prefilled = _decode(llm, prompt + claimed, 0, rows=True)[len(prompt) - 1 :]
        return all(np.array_equal(a, b) for a, b in zip(decoded, prefilled, strict=True))
    finally:
        _clear(llm)


def profile(llm: Any, model_path: Path) -> str:
    """The engine's numeric profile, or "" when its one-token decode and its batched prefill disagree (then every
    check of its answers uses the calibrated tolerance)."""
    import llama_cpp

    if not decode_matches_prefill(llm):
        log.warning(
            "numerics: decode and batched prefill disagree on this build (llamafile kernels?): "
            "verification of this engine's answers uses the calibrated tolerance"
        )
        return ""
    system = llama_cpp.llama_print_system_info()
    text = system.decode() if isinstance(system, bytes) else str(system)
    # the load and context settings that choose kernels or change the arithmetic (weight repacking, attention)
    mp, cp = llm.model_params, llm.context_params
    text += f"|extra_bufts={mp.use_extra_bufts}|flash_attn={cp.flash_attn_type}|kv={cp.type_k},{cp.type_v}"
    kernels = hashlib.sha256(text.encode()).hexdigest()
    return f"llama.cpp-{llama_cpp.__version__}/{kernels[:12]}/{file_sha256(model_path)[:16]}"
