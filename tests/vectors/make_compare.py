"""Writes tests/vectors/compare.json: shadow pairs (two serialized ModelInferResponses,
base64) and the figures their comparison must give (SPEC section 5). Both comparisons read
it: dataplane/compare.py (tests/dataplane/test_compare_vectors.py, the proxyless client's)
and the native router's (dataplane/native/src/compare.rs, cargo test), so the two cannot
drift.

Each case's figures were worked out by hand where it says `expect` (this script checks
compare.py against them before writing); the rest record compare.py's answer.

    .venv/bin/python tests/vectors/make_compare.py     # rewrites the file
"""

from __future__ import annotations

import base64
import json
import math
import random
import struct
import sys
from pathlib import Path

from dataplane.compare import compare_responses
from tsplit.inference import grpc_predict_v2_pb2 as pb

OUT = Path(__file__).with_name("compare.json")

STRUCT = {"BOOL": "?", "INT8": "b", "INT16": "h", "INT32": "i", "INT64": "q", "UINT8": "B", "UINT16": "H",
          "UINT32": "I", "UINT64": "Q", "FP16": "e", "FP32": "f", "FP64": "d"}
TYPED = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
         "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
         "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
         "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def raw_bytes(datatype: str, values) -> bytes:
    if isinstance(values, bytes):   # given as bytes already (broken on purpose, BF16)
        return values
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in values)
    if datatype == "BF16":
        words = struct.unpack(f"<{len(values)}I", struct.pack(f"<{len(values)}f", *values))
        return struct.pack(f"<{len(values)}H", *(w >> 16 for w in words))
    return struct.pack(f"<{len(values)}{STRUCT[datatype]}", *values)


def response(outputs, raw: bool, raw_entries: int | None = None) -> bytes:
    """Serialized ModelInferResponse with (name, datatype, shape, values) outputs; raw: as
    raw_output_contents (only the first raw_entries of them, when given), else typed."""
    r = pb.ModelInferResponse(model_name="m", id="req-1")
    for i, (name, datatype, shape, values) in enumerate(outputs):
        t = r.outputs.add(name=name, datatype=datatype, shape=shape)
        if raw:
            if raw_entries is None or i < raw_entries:
                r.raw_output_contents.append(raw_bytes(datatype, values))
        elif TYPED.get(datatype) and not isinstance(values, bytes):
            getattr(t.contents, TYPED[datatype]).extend(values)
    return r.SerializeToString()


PROBS_A = ("probabilities", "FP32", [2, 3], [0.7, 0.2, 0.1, 0.1, 0.8, 0.1])
LABEL_A = ("label", "INT64", [2, 1], [0, 1])
PROBS_B = ("probabilities", "FP32", [2, 3], [0.6, 0.3, 0.1, 0.5, 0.4, 0.1])
LABEL_B = ("label", "INT64", [2, 1], [0, 0])
A, B = [PROBS_A, LABEL_A], [PROBS_B, LABEL_B]
NAN, INF = float("nan"), float("inf")


def f32(values):
    return struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values))


def diff_ab() -> float:
    return sum(abs(x - y) for x, y in zip(f32(PROBS_A[3]), f32(PROBS_B[3])))


def next_up_f32(x: float) -> float:
    (bits,) = struct.unpack("<I", struct.pack("<f", x))
    return struct.unpack("<f", struct.pack("<I", bits + 1))[0]


def cases():
    """(name, champion bytes, challenger bytes, expected figures or None)."""
    yield "identical raw", response(A, True), response(A, True), (True, 4, 4, 0.0, 6)
    yield "identical typed", response(A, False), response(A, False), (True, 4, 4, 0.0, 6)
    yield "raw and typed forms of the same values", response(A, True), response(A, False), (True, 4, 4, 0.0, 6)
    for ra, rb in ((True, True), (False, False), (True, False), (False, True)):
        yield f"different answers raw={ra}/{rb}", response(A, ra), response(B, rb), (False, 2, 4, diff_ab(), 6)
    one_bit = [("probabilities", "FP32", [1, 2], [0.25, next_up_f32(0.75)])]
    yield ("one different bit", response([("probabilities", "FP32", [1, 2], [0.25, 0.75])], True),
           response(one_bit, True), (False, 1, 1, f32([next_up_f32(0.75)])[0] - f32([0.75])[0], 2))
    yield "missing challenger output", response(A, True), response(A[:1], True), (False, 2, 4, 0.0, 6)
    yield ("reshaped challenger output", response(A, True),
           response([PROBS_A, ("label", "INT64", [1, 2], [0, 1])], True), (False, 2, 4, 0.0, 6))
    yield ("extra challenger output", response(A, True), response([*A, ("debug", "FP32", [1], [1.0])], True),
           (False, 4, 4, 0.0, 6))
    yield "matched by name, not position", response(A, True), response(A[::-1], False), (True, 4, 4, 0.0, 6)
    yield ("NaN and infinite differences left out", response([("scores", "FP64", [3], [NAN, 1.0, INF])], True),
           response([("scores", "FP64", [3], [1.0, 1.5, INF])], True), (False, 1, 3, 0.5, 1))
    short = [("probabilities", "FP32", [2, 3], raw_bytes("FP32", PROBS_A[3])[:-1]), LABEL_A]
    yield "challenger output one byte short", response(A, True), response(short, True), (False, 2, 4, 0.0, 0)
    yield "champion output one byte short", response(short, True), response(A, True), (False, 2, 2, 0.0, 0)
    yield "both outputs the same broken bytes", response(short, True), response(short, True), (True, 2, 2, 0.0, 0)
    bytes_bool_a = [("class", "BYTES", [3, 1], [b"cat", b"dog", b"cat"]), ("flag", "BOOL", [3], [True, False, True])]
    bytes_bool_b = [("class", "BYTES", [3, 1], [b"cat", b"cat", b"cat"]), ("flag", "BOOL", [3], [True, True, True])]
    for raw in (True, False):
        yield (f"bytes and bool labels raw={raw}", response(bytes_bool_a, raw), response(bytes_bool_b, raw),
               (False, 4, 6, 0.0, 0))
        yield (f"bytes and bool raw={raw} against the other form", response(bytes_bool_a, raw),
               response(bytes_bool_a, not raw), (True, 6, 6, 0.0, 0))
    yield ("BYTES rows of two values have no labels", response([("b", "BYTES", [1, 2], [b"a", b"b"])], True),
           response([("b", "BYTES", [1, 2], [b"a", b"c"])], True), (False, 0, 0, 0.0, 0))
    yield ("argmax: first largest, NaN never wins, -1 for all NaN",
           response([("p", "FP32", [3, 3], [0.1, 0.5, 0.5, NAN, 0.0, -1.0, NAN, NAN, NAN])], True),
           response([("p", "FP64", [3, 3], [0.5, 0.1, 0.5, 0.0, 0.0, 0.0, NAN, NAN, NAN])], True),
           (False, 1, 3, None, None))
    yield ("one-hot integers: argmax rows", response([("o", "INT32", [2, 3], [0, 0, 1, 1, 0, 0])], False),
           response([("o", "INT32", [2, 3], [0, 0, 1, 0, 1, 0])], True), (False, 1, 2, 0.0, 0))
    yield ("integer label equals the same float value", response([("l", "INT64", [3, 1], [1, 2, 3])], True),
           response([("l", "FP32", [3, 1], [1.0, 2.5, 3.0])], False), (False, 2, 3, 0.0, 0))
    yield ("bool label equals int 1 and 0", response([("l", "BOOL", [2], [True, False])], True),
           response([("l", "UINT8", [2], [1, 0])], True), (False, 2, 2, 0.0, 0))
    yield ("UINT64 above INT64's range against INT64",
           response([("l", "UINT64", [2], [2**64 - 1, 5])], True),
           response([("l", "INT64", [2], [-1, 5])], True), (False, 1, 2, 0.0, 0))
    yield ("scalar output", response([("s", "FP64", [], [2.5])], True),
           response([("s", "FP64", [], [2.0])], False), (False, 0, 1, 0.5, 1))
    yield ("empty dimension: no rows, no labels", response([("e", "FP32", [2, 0], [])], True),
           response([("e", "FP32", [2, 0], [])], True), (True, 0, 0, 0.0, 0))
    yield ("empty 1-D output", response([("e", "INT32", [0], [])], False),
           response([("e", "INT32", [0], [])], True), (True, 0, 0, 0.0, 0))
    yield ("negative dimension does not decode", response([("n", "FP32", [-1], [])], False),
           response([("n", "FP32", [-1], [])], False), (False, 0, 0, 0.0, 0))
    yield ("unknown datatype does not decode", response([("x", "COMPLEX64", [1], b"\x00" * 8)], True),
           response([("x", "FP32", [1], [1.0])], True), (False, 0, 0, 0.0, 0))
    yield ("typed contents of the wrong length do not decode", response([("y", "FP32", [3], [1.0, 2.0])], False),
           response([("y", "FP32", [3], [1.0, 2.0, 3.0])], False), (False, 0, 0, 0.0, 0))
    yield ("FP16 has no typed field", response([("h", "FP16", [2], [0.5, 1.0])], False),
           response([("h", "FP16", [2], [0.5, 1.0])], True), (False, 0, 0, 0.0, 0))
    yield ("FP16 raw values, labels and differences", response([("h", "FP16", [2, 2], [0.5, -2.0, 1.0, 65504.0])], True),
           response([("h", "FP16", [2, 2], [0.25, -2.0, 1.5, 1.0])], True), (False, 1, 2, 0.25 + 0.5 + 65503.0, 4))
    yield ("BF16 raw against FP32 typed", response([("b", "BF16", [1, 3], [1.5, -3.0, 2.0])], True),
           response([("b", "FP32", [1, 3], [1.5, -3.0, 2.5])], False), (False, 1, 1, 0.5, 3))
    yield ("FP16 subnormal and infinity", response([("h", "FP16", [3], [2.0**-24, INF, -0.0])], True),
           response([("h", "FP16", [3], [0.0, INF, 0.0])], True), (False, 2, 3, 2.0**-24, 2))
    ints = [("i8", "INT8", [2, 2], [-128, 127, 5, 5]), ("i16", "INT16", [2], [-300, 300]),
            ("u16", "UINT16", [2], [65535, 0]), ("u32", "UINT32", [1, 2], [4294967295, 1]),
            ("i64", "INT64", [2], [-(2**63), 2**63 - 1]), ("u64", "UINT64", [1], [2**64 - 1])]
    yield "every integer type raw against typed", response(ints, True), response(ints, False), (True, 10, 10, 0.0, 0)
    yield ("raw BOOL bytes 1 and 2 differ raw but agree as labels", response([("f", "BOOL", [2], b"\x01\x00")], True),
           response([("f", "BOOL", [2], b"\x02\x00")], True), (False, 2, 2, 0.0, 0))
    yield ("raw BYTES with a trailing byte does not decode", response([("z", "BYTES", [2], [b"a", b"b"])], True),
           response([("z", "BYTES", [2], raw_bytes("BYTES", [b"a", b"b"]) + b"\x01")], True), (False, 0, 2, 0.0, 0))
    yield ("raw BYTES element running past the end", response([("z", "BYTES", [1], b"\x09\x00\x00\x00ab")], True),
           response([("z", "BYTES", [1], [b"ab"])], True), (False, 0, 0, 0.0, 0))
    yield ("fewer raw entries than outputs", response(A, True), response(A, True, raw_entries=1),
           (False, 2, 4, 0.0, 6))
    yield ("repeated output name: the last one counts",
           response([("p", "INT64", [1], [1]), ("p", "INT64", [1], [7])], True),
           response([("p", "INT64", [1], [7])], True), (True, 1, 1, 0.0, 0))
    yield "no outputs at all", response([], True), response([], False), (True, 0, 0, 0.0, 0)
    yield "champion does not parse", b"\xff\xff", response(A, True), "error"
    yield "challenger does not parse", response(A, True), b"\x0a\x05ab", "error"
    rng = random.Random(11)
    rows, width = 200, 10
    pa = [rng.random() for _ in range(rows * width)]
    pb_ = [v + rng.uniform(-0.05, 0.05) for v in pa]
    big_a = [("probabilities", "FP32", [rows, width], pa), ("label", "INT64", [rows, 1], [rng.randrange(width) for _ in range(rows)])]
    big_b = [("probabilities", "FP32", [rows, width], pb_), ("label", "INT64", [rows, 1], [rng.randrange(width) for _ in range(rows)])]
    yield "200 rows of 10 probabilities, raw against typed", response(big_a, True), response(big_b, False), None


def figures(champion: bytes, challenger: bytes):
    try:
        ours = pb.ModelInferResponse.FromString(champion)
        theirs = pb.ModelInferResponse.FromString(challenger)
    except Exception:
        return "error"
    c = compare_responses(ours, theirs)
    return {"exact_match": c.exact_match, "label_agree": c.label_agree, "label_total": c.label_total,
            "abs_diff_sum": c.abs_diff_sum, "abs_diff_count": c.abs_diff_count}


def main() -> int:
    out = []
    for name, champion, challenger, expect in cases():
        got = figures(champion, challenger)
        if expect is not None:
            if expect == "error" or got == "error":
                assert got == expect, (name, got)
            else:
                keys = ("exact_match", "label_agree", "label_total", "abs_diff_sum", "abs_diff_count")
                for key, want in zip(keys, expect):
                    if want is None:
                        continue
                    ok = math.isclose(got[key], want, rel_tol=1e-12, abs_tol=1e-300) if key == "abs_diff_sum" \
                        else got[key] == want
                    assert ok, (name, key, got[key], want)
        out.append({"name": name, "champion": base64.b64encode(champion).decode(),
                    "challenger": base64.b64encode(challenger).decode(), "expected": got})
    OUT.write_text(json.dumps({"about": "shadow pairs and their comparison (SPEC section 5); written by "
                               "tests/vectors/make_compare.py", "cases": out}, indent=1) + "\n")
    print(f"{OUT}: {len(out)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
