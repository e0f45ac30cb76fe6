"""The embedding model: offline loading, unit vectors, paraphrases close and unrelated texts far."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from hivemesh.engines.embedder import MODEL_PACKAGE, Embedder
from hivemesh.errors import ServiceUnavailable

# --- the wrapper, with a stand-in model (fast) ------------------------------------------------------------------


class FakeModel:
    """Records how many encode calls overlap; returns unit vectors."""

    max_seq_length = 8

    def __init__(self) -> None:
        self.active = 0
        self.most_active = 0
        self.guard = threading.Lock()

    def encode(self, texts: list[str], **kw: Any) -> npt.NDArray[np.float32]:
        with self.guard:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        time.sleep(0.01)
        with self.guard:
            self.active -= 1
        out = np.zeros((len(texts), 384), dtype=np.float32)
        out[:, 0] = 1.0
        return out

    def tokenizer(self, texts: list[str], **kw: Any) -> dict[str, list[list[int]]]:
        return {"input_ids": [[0] * min(len(t.split()) + 2, kw["max_length"]) for t in texts]}


def test_empty_input() -> None:
    e = Embedder(FakeModel())
    assert e.embed([]).shape == (0, 384) and e.embed([]).dtype == np.float32
    assert e.count_tokens([]) == 0


def test_one_string_is_not_a_list_of_texts() -> None:
    e = Embedder(FakeModel())
    with pytest.raises(TypeError):
        e.embed("hello")
    with pytest.raises(TypeError):
        e.count_tokens("hello")


def test_count_tokens_truncates_like_the_model() -> None:
    e = Embedder(FakeModel())
    assert e.count_tokens(["a b", "one two three four five six seven eight nine"]) == 4 + 8


async def test_aembed_runs_one_call_at_a_time() -> None:
    model = FakeModel()
    e = Embedder(model)
    results = await asyncio.gather(*(e.aembed([f"text {i}"]) for i in range(6)))
    assert all(r.shape == (1, 384) for r in results)
    assert model.most_active == 1


def test_load_without_the_model_package_is_service_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, MODEL_PACKAGE, None)  # makes the import fail
    with pytest.raises(ServiceUnavailable, match="not installed"):
        Embedder.load()


def test_importing_the_module_stays_cheap() -> None:
    code = "import sys, hivemesh.engines.embedder; print('torch' in sys.modules, 'sentence_transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# --- the real model (slow) --------------------------------------------------------------------------------------


def _no_network(*args: object, **kwargs: object) -> None:
    raise OSError("network access is not allowed while loading the embedding model")


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("HF_HUB_OFFLINE", raising=False)
        mp.delenv("TRANSFORMERS_OFFLINE", raising=False)
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        mp.setattr(socket, "getaddrinfo", _no_network)
        e = Embedder.load()
        assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    yield e


def cos(e: Embedder, a: str, b: str) -> float:
    v = e.embed([a, b])
    return float(v[0] @ v[1])


PARAPHRASES = [
    ("The capital of France is Paris.", "Paris is the capital of France."),
    (
        "To reverse a list in Python, call list.reverse() or use slicing with [::-1].",
        "In Python you can reverse a list with the reverse() method or the slice [::-1].",
    ),
    (
        "Water boils at 100 degrees Celsius at sea level.",
        "At sea level, water boils at a temperature of 100 degrees Celsius.",
    ),
]
UNRELATED = [
    ("The capital of France is Paris.", "I like to eat spicy noodles for dinner."),
    ("2 + 2 = 4", "The mitochondria is the powerhouse of the cell."),
    ("Water boils at 100 degrees Celsius at sea level.", "The stock market fell sharply on Monday."),
]


@pytest.mark.slow
class TestRealModel:
    def test_loads_offline_from_the_package(self, embedder: Embedder) -> None:
        assert embedder.model_id == "all-MiniLM-L6-v2" and embedder.dimensions == 384

    def test_shape_dtype_and_unit_norm(self, embedder: Embedder) -> None:
        v = embedder.embed(["one", "two words", "", "a much longer sentence " * 100])
        assert v.shape == (4, 384) and v.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)

    @pytest.mark.parametrize(("a", "b"), PARAPHRASES)
    def test_paraphrases_are_close(self, embedder: Embedder, a: str, b: str) -> None:
        assert cos(embedder, a, b) > 0.85

    @pytest.mark.parametrize(("a", "b"), UNRELATED)
    def test_unrelated_texts_are_far(self, embedder: Embedder, a: str, b: str) -> None:
        assert cos(embedder, a, b) < 0.5

    def test_same_text_same_vector_whatever_the_batch(self, embedder: Embedder) -> None:
        alone = embedder.embed(["Paris is the capital of France."])
        batched = embedder.embed(["something else entirely", "Paris is the capital of France."])
        np.testing.assert_allclose(alone[0], batched[1], atol=1e-5)

    async def test_aembed_matches_embed(self, embedder: Embedder) -> None:
        texts: Sequence[str] = ["hello", "world"]
        np.testing.assert_allclose(await embedder.aembed(texts), embedder.embed(texts), atol=1e-6)

    def test_count_tokens(self, embedder: Embedder) -> None:
        assert embedder.count_tokens(["hello world"]) == 4  # [CLS] hello world [SEP]
        assert embedder.count_tokens(["word " * 1000]) == embedder.max_seq_length
