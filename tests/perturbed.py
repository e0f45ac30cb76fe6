"""A deliberately wrong copy of the embedded model, for verification tests and the tolerance calibration.

``perturb(src, dst)`` copies the GGUF and scales every ``ffn_norm.weight`` element by ``1 + 0.15 * N(0, 1)``
(seeded), editing the tensors in place with the ``gguf`` package. The copy loads and answers fluently but picks
different tokens than the original often enough to be told apart: a stand-in for a miner that runs a cheaper or
tampered model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest


def perturb(src: Path, dst: Path, *, scale: float = 0.15, seed: int = 0) -> Path:
    from gguf import GGUFReader

    shutil.copyfile(src, dst)
    reader = GGUFReader(dst, "r+")
    rng = np.random.default_rng(seed)
    edited = 0
    for tensor in reader.tensors:
        if tensor.name.endswith("ffn_norm.weight"):
            data = tensor.data
            if data.dtype != np.float32:
                raise ValueError(f"{tensor.name} is {data.dtype}, expected float32")
            data *= (1.0 + scale * rng.standard_normal(data.shape)).astype(np.float32)
            edited += 1
    if not edited:
        raise ValueError(f"{src.name} has no ffn_norm.weight tensors")
    reader.data.flush()
    del reader
    return dst


@pytest.fixture(scope="session")
def perturbed_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hivemesh.engines.llamacpp import default_model_path

    return perturb(default_model_path(), tmp_path_factory.mktemp("perturbed") / "perturbed.gguf")
