"""Writes tests/vectors/rewrite.json: ModelInferRequests (base64, some gzip- or
deflate-compressed as a client sends them with grpc-encoding), what the router reads from
them (model_name, model_version) and the bytes a backend gets after the rewrite to a
variant's model, or `"error": true` for bytes that are not a ModelInferRequest. Both
implementations read it: dataplane/wire.py (tests/dataplane/test_rewrite_vectors.py, the
proxyless client's) and the native router's (dataplane/native/src/wire.rs, cargo test).

    .venv/bin/python tests/vectors/make_rewrite.py     # rewrites the file
"""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from pathlib import Path

from dataplane import wire
from tsplit.inference import grpc_predict_v2_pb2 as pb

OUT = Path(__file__).with_name("rewrite.json")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def tensor_request(name: str, version: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=name, model_version=version, id="req-1")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2]).contents.fp32_contents.extend([0.25, 0.75])
    request.outputs.add(name="y")
    request.parameters["flag"].bool_param = True
    return request


def cases() -> list[dict]:
    out = []

    def ok(name: str, raw: bytes, to: tuple[str, str], encoding: str = "") -> None:
        ref = wire.scan_model_ref(raw)
        case = {"name": name, "request": b64(raw), "model_name": ref.name, "model_version": ref.version,
                "rewrite_to": list(to), "rewritten": b64(raw + wire.model_ref_suffix(*to))}
        if encoding:
            packed = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
            case.update(encoding=encoding, compressed=b64(packed))
        out.append(case)

    def bad(name: str, raw: bytes) -> None:
        try:
            wire.scan_model_ref(raw)
        except wire.MalformedMessage:
            out.append({"name": name, "request": b64(raw), "error": True})
        else:
            raise AssertionError(f"{name}: the scan accepted it")

    ok("name only", pb.ModelInferRequest(model_name="dep_a").SerializeToString(), ("iris", ""))
    ok("name and version, rewritten to another version",
       pb.ModelInferRequest(model_name="dep_a", model_version="7").SerializeToString(), ("iris", "2"))
    ok("tensors, parameters and outputs", tensor_request("dep_b").SerializeToString(), ("linear-a", "1"))
    ok("raw input contents", pb.ModelInferRequest(model_name="dep_c", raw_input_contents=[b"\x00" * 16]).
       SerializeToString(), ("m", ""))
    ok("a unicode name", pb.ModelInferRequest(model_name="dep_é").SerializeToString(), ("modèle", "β"))
    ok("the name given twice: the last counts",
       pb.ModelInferRequest(model_name="dep_x").SerializeToString() + wire.model_ref_suffix("dep_y", ""),
       ("iris", ""))
    ok("no model name", pb.ModelInferRequest(id="r").SerializeToString(), ("iris", ""))
    ok("gzip-compressed", tensor_request("dep_g").SerializeToString(), ("iris", ""), "gzip")
    ok("deflate-compressed", tensor_request("dep_d", "3").SerializeToString(), ("iris", "1"), "deflate")
    good = tensor_request("dep_t").SerializeToString()
    bad("truncated in a nested message", good[:-3])
    bad("a length past the end", b"\x0a\x09dep")
    bad("a name that is not UTF-8", b"\x0a\x02\xff\xfe")
    bad("an invalid wire type", b"\x0f")
    bad("field number zero", b"\x02\x00")
    bad("an unterminated group", b"\x1b")
    bad("a packed float field of 3 bytes", pb.ModelInferRequest(model_name="d").SerializeToString() +
        b"\x2a\x07\x2a\x05\x32\x03\x00\x00\x00")
    return out


def main() -> None:
    OUT.write_text(json.dumps({"cases": cases()}, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
