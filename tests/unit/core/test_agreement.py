"""Proof-of-Inference agreement: grouping reveals, choosing the answer, naming the dissenters."""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hivemesh.core.agreement import Reveal, decide, normalise, output_digest
from hivemesh.protocol.wire import NodeId


def reveals(*outputs: str) -> list[Reveal]:
    return [Reveal(NodeId(f"0x{i:02x}"), text) for i, text in enumerate(outputs)]


def unit(*rows: list[float]) -> npt.NDArray[np.float32]:
    v = np.array(rows, dtype=np.float64)
    out: npt.NDArray[np.float32] = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    return out


def angle(deg: float) -> list[float]:
    """A 2-d unit vector; cos(angle(a), angle(b)) = cos(a - b)."""
    return [float(np.cos(np.radians(deg))), float(np.sin(np.radians(deg)))]


# --- normalise and digest ---------------------------------------------------------------------------------------


def test_normalise_strips_collapses_and_composes() -> None:
    assert normalise("  Hello \n\n\t world  ") == "Hello world"
    assert normalise("cafe\u0301") == "caf\u00e9"  # NFD -> NFC
    assert normalise("") == ""


def test_digest_is_sha256_of_normalised_text() -> None:
    assert output_digest(" a  b\n") == hashlib.sha256(b"a b").hexdigest()
    assert output_digest("a b") == output_digest("a\n b ")
    assert output_digest("a b") != output_digest("a c")


# --- mode none --------------------------------------------------------------------------------------------------


def test_none_mode_is_unverified_with_everyone_in_consensus() -> None:
    d = decide(reveals("x", "y", "z"), mode="none", quorum=2)
    assert d.verdict == "unverified"
    assert d.answer == 0
    assert d.consensus == ("0x00", "0x01", "0x02") and d.dissent == ()
    assert d.groups == () and d.score == 0.0


# --- mode exact -------------------------------------------------------------------------------------------------


def test_exact_majority_is_verified_and_outlier_dissents() -> None:
    d = decide(reveals("Paris", "Paris ", "garbage!!"), mode="exact", quorum=2)
    assert d.verdict == "verified"
    assert d.consensus == ("0x00", "0x01") and d.dissent == ("0x02",)
    assert d.answer == 0
    assert d.score == pytest.approx(2 / 3) and d.similarity == 1.0
    assert d.groups == ((0, 1), (2,))


def test_exact_quorum_not_met_is_disputed_with_a_best_answer() -> None:
    d = decide(reveals("a", "b", "b", "c"), mode="exact", quorum=3)
    assert d.verdict == "disputed"
    assert d.answer == 1 and d.consensus == ("0x01", "0x02")
    assert d.dissent == ("0x00", "0x03")


def test_exact_single_reveal_quorum_one_is_verified() -> None:
    d = decide(reveals("only"), mode="exact", quorum=1)
    assert (d.verdict, d.answer, d.consensus, d.dissent, d.score) == ("verified", 0, ("0x00",), (), 1.0)


def test_exact_tie_is_broken_by_digest_not_arrival_order() -> None:
    winner = min(["a", "b"], key=output_digest)
    for order in (("a", "b"), ("b", "a")):
        rs = reveals(*order)
        d = decide(rs, mode="exact", quorum=1)
        assert rs[d.answer].output == winner


def test_exact_all_different_with_quorum_two_is_disputed() -> None:
    d = decide(reveals("a", "b", "c"), mode="exact", quorum=2)
    assert d.verdict == "disputed" and len(d.consensus) == 1 and len(d.dissent) == 2
    assert d.score == pytest.approx(1 / 3)


@given(
    outputs=st.lists(st.sampled_from(["4", " 4", "four", "5", "", "4\n"]), min_size=1, max_size=8),
    quorum=st.integers(1, 5),
    data=st.data(),
)
def test_exact_permuting_reveals_never_changes_the_consensus_set(
    outputs: list[str], quorum: int, data: st.DataObject
) -> None:
    rs = reveals(*outputs)
    permuted = data.draw(st.permutations(rs))
    a = decide(rs, mode="exact", quorum=quorum)
    b = decide(permuted, mode="exact", quorum=quorum)
    assert set(a.consensus) == set(b.consensus)
    assert a.verdict == b.verdict
    assert normalise(rs[a.answer].output) == normalise(permuted[b.answer].output)


# --- mode semantic ----------------------------------------------------------------------------------------------


def test_semantic_groups_close_vectors_and_picks_the_medoid() -> None:
    rs = reveals("p0", "p1", "p2", "junk")
    v = unit(angle(0), angle(10), angle(20), angle(120))
    d = decide(rs, mode="semantic", quorum=2, threshold=0.9, vectors=v)
    assert d.verdict == "verified"
    assert d.consensus == ("0x00", "0x01", "0x02") and d.dissent == ("0x03",)
    assert d.answer == 1  # the middle one is closest to the other two
    assert d.similarity == pytest.approx(np.cos(np.radians(10)), abs=1e-6)
    assert d.groups[0] == (0, 1, 2) and (3,) in d.groups


def test_semantic_garbage_outliers_become_dissenters() -> None:
    rs = reveals("good a", "good b", "good c", "lorem", "ipsum")
    v = unit([1, 0, 0, 0], [0.99, 0.1, 0, 0], [0.98, 0, 0.1, 0], [0, 0, 0, 1], [0, 1, 0, 0.2])
    d = decide(rs, mode="semantic", quorum=3, vectors=v)
    assert d.verdict == "verified"
    assert set(d.dissent) == {"0x03", "0x04"}


def test_semantic_quorum_not_met_is_disputed() -> None:
    rs = reveals("a", "b", "c")
    v = unit(angle(0), angle(5), angle(90))
    d = decide(rs, mode="semantic", quorum=3, vectors=v)
    assert d.verdict == "disputed"
    assert set(d.consensus) == {"0x00", "0x01"} and d.dissent == ("0x02",)


def test_semantic_tie_on_size_goes_to_the_tighter_group() -> None:
    rs = reveals("a1", "a2", "b1", "b2")
    v = unit(angle(0), angle(25), angle(90), angle(95))  # two pairs; the second is tighter
    d = decide(rs, mode="semantic", quorum=2, threshold=0.85, vectors=v)
    assert d.consensus == ("0x02", "0x03")
    assert d.groups == ((2, 3), (0, 1))


def test_semantic_full_tie_goes_to_the_lowest_index() -> None:
    rs = reveals("a1", "a2", "b1", "b2")
    v = unit(angle(0), angle(10), angle(90), angle(100))
    d = decide(rs, mode="semantic", quorum=2, vectors=v)
    assert d.consensus == ("0x00", "0x01") and d.answer == 0


def test_semantic_identical_texts_count_as_similarity_one() -> None:
    rs = reveals("same  answer", "same answer", "other")
    v = unit(angle(0), angle(80), angle(160))  # the vectors disagree, the texts do not
    d = decide(rs, mode="semantic", quorum=2, vectors=v)
    assert d.verdict == "verified" and d.consensus == ("0x00", "0x01")
    assert d.similarity == 1.0


def test_semantic_overlapping_neighbourhoods() -> None:
    # 0 ~ 1 ~ 2 in a chain, 0 and 2 too far apart: 1's neighbourhood is the largest group
    rs = reveals("x", "y", "z")
    v = unit(angle(0), angle(25), angle(50))
    d = decide(rs, mode="semantic", quorum=3, threshold=0.85, vectors=v)
    assert d.consensus == ("0x00", "0x01", "0x02") and d.answer == 1 and d.verdict == "verified"


def test_semantic_does_not_depend_on_vector_dtype() -> None:
    rs = reveals("a", "b", "c")
    v = unit(angle(0), angle(10), angle(80))
    assert decide(rs, mode="semantic", quorum=2, vectors=v) == decide(
        rs, mode="semantic", quorum=2, vectors=v.astype(np.float64)
    )


# --- errors -----------------------------------------------------------------------------------------------------


def test_empty_reveals_raise() -> None:
    with pytest.raises(ValueError, match="no reveals"):
        decide([], mode="exact", quorum=1)


@pytest.mark.parametrize(
    ("vectors", "match"),
    [
        (None, "needs one embedding"),
        (np.ones((3, 2), dtype=np.float32) / np.sqrt(2), "shape"),
        (np.ones((2,), dtype=np.float32), "shape"),
        (np.array([[1.0, 0.0], [np.nan, 0.0]]), "finite"),
        (np.array([[1.0, 0.0], [2.0, 0.0]]), "normalised"),
    ],
)
def test_semantic_rejects_bad_vectors(vectors: npt.NDArray[np.float64] | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decide(reveals("a", "b"), mode="semantic", quorum=1, vectors=vectors)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="quorum"):
        decide(reveals("a"), mode="exact", quorum=0)
    with pytest.raises(ValueError, match="threshold"):
        decide(reveals("a"), mode="exact", quorum=1, threshold=1.5)
    with pytest.raises(ValueError, match="more than once"):
        decide([Reveal(NodeId("0xa"), "x"), Reveal(NodeId("0xa"), "x")], mode="exact", quorum=2)
