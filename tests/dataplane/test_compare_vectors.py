"""tests/vectors/compare.json against dataplane/compare.py: the same pairs and figures the
native router's comparison (dataplane/native/src/compare.rs) is checked against by cargo
test, so the proxyless client's comparison and the router's cannot drift."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from dataplane.compare import compare_responses
from tsplit.inference import grpc_predict_v2_pb2 as pb

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "compare.json").read_text())["cases"]


@pytest.mark.parametrize("case", VECTORS, ids=[c["name"] for c in VECTORS])
def test_the_python_comparison_gives_each_vectors_figures(case):
    champion, challenger = (base64.b64decode(case[side]) for side in ("champion", "challenger"))
    expected = case["expected"]
    if expected == "error":
        with pytest.raises(Exception):
            compare_responses(pb.ModelInferResponse.FromString(champion), pb.ModelInferResponse.FromString(challenger))
        return
    c = compare_responses(pb.ModelInferResponse.FromString(champion), pb.ModelInferResponse.FromString(challenger))
    assert (c.exact_match, c.label_agree, c.label_total, c.abs_diff_count) == (
        expected["exact_match"], expected["label_agree"], expected["label_total"], expected["abs_diff_count"])
    assert c.abs_diff_sum == pytest.approx(expected["abs_diff_sum"], rel=1e-12, abs=0)


def test_the_vectors_cover_every_datatype_and_both_forms():
    seen_types, forms = set(), set()
    for case in VECTORS:
        for side in ("champion", "challenger"):
            try:
                r = pb.ModelInferResponse.FromString(base64.b64decode(case[side]))
            except Exception:
                continue
            seen_types.update(o.datatype for o in r.outputs)
            forms.add("raw" if r.raw_output_contents else "typed")
    assert {"BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
            "FP16", "BF16", "FP32", "FP64", "BYTES"} <= seen_types
    assert forms == {"raw", "typed"}
