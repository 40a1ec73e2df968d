"""Shadow comparison and v2 tensor decoding, on known outputs in raw and typed form."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from dataplane.compare import Comparison, ComparisonTotals, compare_responses, row_labels
from dataplane.tensors import (
    DATATYPES, Tensor, TensorError, decode_output, decode_raw, encode_raw, output_tensors)
from tsplit.inference import grpc_predict_v2_pb2 as pb

STRUCT_CODES = {"FP32": "f", "FP64": "d", "INT64": "q", "INT32": "i", "UINT8": "B", "BOOL": "?", "FP16": "e"}
TYPED_FIELDS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents",
                "INT32": "int_contents", "UINT8": "uint_contents", "BOOL": "bool_contents",
                "BYTES": "bytes_contents"}


def raw_bytes(datatype: str, values) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in values)
    return struct.pack(f"<{len(values)}{STRUCT_CODES[datatype]}", *values)


def response(outputs: list[tuple[str, str, list[int], list]], raw: bool) -> pb.ModelInferResponse:
    """A ModelInferResponse with (name, datatype, shape, flat values) outputs."""
    r = pb.ModelInferResponse(model_name="m", id="req-1")
    for name, datatype, shape, values in outputs:
        t = r.outputs.add(name=name, datatype=datatype, shape=shape)
        if raw:
            r.raw_output_contents.append(raw_bytes(datatype, values))
        else:
            getattr(t.contents, TYPED_FIELDS[datatype]).extend(values)
    return r


def f32(values):
    """The values as float32 holds them (what a decoder reads back)."""
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


CHAMPION_OUT = [
    ("probabilities", "FP32", [2, 3], [0.7, 0.2, 0.1, 0.1, 0.8, 0.1]),
    ("label", "INT64", [2, 1], [0, 1]),
]
CHALLENGER_OUT = [
    ("probabilities", "FP32", [2, 3], [0.6, 0.3, 0.1, 0.5, 0.4, 0.1]),
    ("label", "INT64", [2, 1], [0, 0]),
]


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_identical_answers_match_exactly_and_agree_fully(raw):
    c = compare_responses(response(CHAMPION_OUT, raw), response(CHAMPION_OUT, raw))
    assert c.exact_match
    assert (c.label_agree, c.label_total) == (4, 4) and c.label_agreement == 1.0
    assert (c.abs_diff_sum, c.abs_diff_count) == (0.0, 6) and c.mean_abs_diff == 0.0


def test_raw_and_typed_forms_of_the_same_values_match_exactly():
    c = compare_responses(response(CHAMPION_OUT, raw=True), response(CHAMPION_OUT, raw=False))
    assert c.exact_match and c.label_agreement == 1.0


@pytest.mark.parametrize("raw_a, raw_b", [(True, True), (False, False), (True, False)])
def test_different_answers_give_the_right_figures(raw_a, raw_b):
    c = compare_responses(response(CHAMPION_OUT, raw_a), response(CHALLENGER_OUT, raw_b))
    assert not c.exact_match
    # probabilities: row 0 argmax 0 vs 0 (agree), row 1 argmax 1 vs 0; label: 0 vs 0, 1 vs 0.
    assert (c.label_agree, c.label_total) == (2, 4)
    expected = sum(abs(a - b) for a, b in zip(f32(CHAMPION_OUT[0][3]), f32(CHALLENGER_OUT[0][3])))
    assert c.abs_diff_count == 6  # float outputs only: integer labels are scored by agreement
    assert c.abs_diff_sum == pytest.approx(expected, rel=1e-12)


def test_a_single_different_bit_breaks_exact_match_only():
    a = [("probabilities", "FP32", [1, 2], [0.25, 0.75])]
    (bits,) = struct.unpack("<I", struct.pack("<f", 0.75))
    (neighbour,) = struct.unpack("<f", struct.pack("<I", bits + 1))  # the next float32 up
    b = [("probabilities", "FP32", [1, 2], [0.25, neighbour])]
    c = compare_responses(response(a, True), response(b, True))
    assert not c.exact_match and c.label_agreement == 1.0 and c.abs_diff_count == 2 and c.abs_diff_sum > 0


def test_missing_or_reshaped_challenger_output_counts_as_disagreement():
    champion = response(CHAMPION_OUT, True)
    only_probs = response(CHAMPION_OUT[:1], True)
    c = compare_responses(champion, only_probs)
    assert not c.exact_match and (c.label_agree, c.label_total) == (2, 4) and c.abs_diff_count == 6
    reshaped = response([CHAMPION_OUT[0], ("label", "INT64", [1, 2], [0, 1])], True)
    c = compare_responses(champion, reshaped)
    assert not c.exact_match and (c.label_agree, c.label_total) == (2, 4)


def test_extra_challenger_output_breaks_exact_match_but_is_not_scored():
    extra = response([*CHAMPION_OUT, ("debug", "FP32", [1], [1.0])], True)
    c = compare_responses(response(CHAMPION_OUT, True), extra)
    assert not c.exact_match and (c.label_agree, c.label_total) == (4, 4) and c.abs_diff_count == 6


def test_outputs_are_matched_by_name_not_position():
    c = compare_responses(response(CHAMPION_OUT, True), response(CHAMPION_OUT[::-1], False))
    assert c.exact_match and c.label_agreement == 1.0


def test_nan_and_infinite_differences_are_left_out():
    a = [("scores", "FP64", [3], [float("nan"), 1.0, float("inf")])]
    b = [("scores", "FP64", [3], [1.0, 1.5, float("inf")])]
    c = compare_responses(response(a, True), response(b, True))
    assert (c.abs_diff_sum, c.abs_diff_count) == (0.5, 1)


def test_undecodable_outputs():
    good = response(CHAMPION_OUT, True)
    broken = response(CHAMPION_OUT, True)
    broken.raw_output_contents[0] = broken.raw_output_contents[0][:-1]  # one byte short
    c = compare_responses(good, broken)
    assert not c.exact_match and (c.label_agree, c.label_total) == (2, 4)  # probability rows disagree
    c = compare_responses(broken, good)
    assert not c.exact_match and (c.label_agree, c.label_total) == (2, 2)  # the champion's broken output is skipped
    with pytest.raises(TensorError, match="probabilities"):
        decode_output(broken, 0)


def test_labels_of_bytes_bool_and_one_dimensional_outputs():
    a = [("class", "BYTES", [3, 1], [b"cat", b"dog", b"cat"]), ("flag", "BOOL", [3], [True, False, True])]
    b = [("class", "BYTES", [3, 1], [b"cat", b"cat", b"cat"]), ("flag", "BOOL", [3], [True, True, True])]
    for raw in (True, False):
        c = compare_responses(response(a, raw), response(b, raw))
        assert (c.label_agree, c.label_total, c.abs_diff_count) == (4, 6, 0) and not c.exact_match
        assert compare_responses(response(a, raw), response(a, not raw)).exact_match


def test_row_labels_rules():
    assert row_labels(Tensor("p", "FP32", (2, 3), (0.1, 0.5, 0.5, float("nan"), 0.0, -1.0))) == [1, 1]
    assert row_labels(Tensor("p", "FP32", (1, 2), (float("nan"), float("nan")))) == [-1]
    assert row_labels(Tensor("l", "INT64", (2, 1), (4, 7))) == (4, 7)
    assert row_labels(Tensor("one_hot", "INT32", (2, 3), (0, 0, 1, 1, 0, 0))) == [2, 0]
    assert row_labels(Tensor("s", "FP64", (), (2.5,))) == (2.5,)
    assert row_labels(Tensor("b", "BYTES", (1, 2), (b"a", b"b"))) is None


def test_totals_add_across_pairs_and_routers():
    one = ComparisonTotals().plus(Comparison(True, 2, 2, 0.0, 3)).plus(Comparison(False, 1, 2, 0.5, 3))
    other = ComparisonTotals().plus(Comparison(False, 0, 2, 1.0, 3))
    total = one + other
    assert (total.pairs, total.exact_matches, total.label_agree, total.label_total) == (3, 1, 3, 6)
    assert total.exact_match_rate == pytest.approx(1 / 3) and total.label_agreement == 0.5
    assert total.mean_abs_diff == pytest.approx(1.5 / 9)
    assert ComparisonTotals().label_agreement is None and ComparisonTotals().mean_abs_diff is None


# --- tensors ----------------------------------------------------------------------------

def test_half_precision_raw_decodes():
    halves = struct.pack("<2e", 0.5, -2.0)
    assert decode_raw(DATATYPES["FP16"], halves, 2) == (0.5, -2.0)
    bf16 = struct.pack("<2H", *(w >> 16 for w in struct.unpack("<2I", struct.pack("<2f", 1.5, -3.0))))
    assert decode_raw(DATATYPES["BF16"], bf16, 2) == (1.5, -3.0)
    assert encode_raw(DATATYPES["BF16"], [1.5, -3.0]) == bf16


def test_bad_tensors_name_the_tensor():
    r = response([("x", "FP32", [2], [1.0, 2.0])], raw=False)
    r.outputs[0].datatype = "COMPLEX64"
    with pytest.raises(TensorError, match="'x'.*COMPLEX64"):
        output_tensors(r)
    r = response([("y", "FP32", [3], [1.0, 2.0])], raw=False)
    with pytest.raises(TensorError, match="'y'.*fp32_contents holds 2.*needs 3"):
        output_tensors(r)
    r = response([("z", "BYTES", [2], [b"a", b"b"])], raw=True)
    r.raw_output_contents[0] += b"\x01"
    with pytest.raises(TensorError, match="'z'"):
        output_tensors(r)


numeric_values = {
    "FP32": st.lists(st.floats(width=32, allow_nan=False), max_size=12),
    "FP64": st.lists(st.floats(allow_nan=False), max_size=12),
    "INT64": st.lists(st.integers(-2**63, 2**63 - 1), max_size=12),
    "INT32": st.lists(st.integers(-2**31, 2**31 - 1), max_size=12),
    "UINT8": st.lists(st.integers(0, 255), max_size=12),
    "BOOL": st.lists(st.booleans(), max_size=12),
    "BYTES": st.lists(st.binary(max_size=8), max_size=12),
}


@settings(deadline=None)
@given(st.sampled_from(sorted(numeric_values)).flatmap(lambda d: st.tuples(st.just(d), numeric_values[d])))
def test_raw_and_typed_round_trip_to_the_same_tensor(case):
    datatype, values = case
    out = [("t", datatype, [len(values)], values)]
    from_raw, from_typed = output_tensors(response(out, True))["t"], output_tensors(response(out, False))["t"]
    assert from_raw == from_typed
    assert list(from_raw.values) == values and from_raw.shape == (len(values),)
    assert encode_raw(DATATYPES[datatype], from_raw.values) == raw_bytes(datatype, values)
    c = compare_responses(response(out, True), response(out, False))
    assert c.exact_match and c.label_agree == c.label_total == len(values)
