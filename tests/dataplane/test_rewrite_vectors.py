"""tests/vectors/rewrite.json against dataplane/wire.py: the same requests, names read and
rewritten bytes the native router's wire scan (dataplane/native/src/wire.rs) is checked
against by cargo test, so the proxyless client's rewrite and the router's cannot drift."""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from pathlib import Path

import pytest

from dataplane import wire

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "rewrite.json").read_text())["cases"]


@pytest.mark.parametrize("case", VECTORS, ids=[c["name"] for c in VECTORS])
def test_the_python_scan_reads_and_rewrites_each_vector(case):
    raw = base64.b64decode(case["request"])
    if case.get("error"):
        with pytest.raises(wire.MalformedMessage):
            wire.scan_model_ref(raw)
        return
    if "compressed" in case:
        packed = base64.b64decode(case["compressed"])
        assert (gzip.decompress(packed) if case["encoding"] == "gzip" else zlib.decompress(packed)) == raw
    ref = wire.scan_model_ref(raw)
    assert (ref.name, ref.version) == (case["model_name"], case["model_version"])
    assert raw + wire.model_ref_suffix(*case["rewrite_to"]) == base64.b64decode(case["rewritten"])
