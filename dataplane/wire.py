"""Just enough of the protobuf wire format to route a request without parsing it.

The router reads two top-level string fields (1 and 2: model_name/name and
model_version/version, the same numbers in ModelInferRequest, ModelReadyRequest and
ModelMetadataRequest) and rewrites them by appending new ones: a protobuf parser keeps the
last value of a non-repeated field, so the tensors go to the backend as the client sent
them, never decoded or re-encoded.

The scan also checks the framing of the nested messages it knows (the Open Inference
Protocol v2 schema below), so bytes protobuf would reject are refused at the router with
INVALID_ARGUMENT rather than by a backend with whatever code it picks. Tensor contents are
checked in C-speed passes only (lengths, a regex for overlong varints), never element by
element. A field of a known number but an unexpected wire type is an unknown field, as in
protobuf.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Union

NAME_FIELD = 1
VERSION_FIELD = 2

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5
_MAX_FIELD_NUMBER = (1 << 29) - 1
_MAX_VARINT_BYTES = 10
# protobuf's parsers refuse messages and groups nested deeper than this.
MAX_DEPTH = 100
_OVERLONG_VARINT = re.compile(rb"[\x80-\xff]{%d}" % _MAX_VARINT_BYTES)

# Field kinds. A schema maps field numbers to a kind or to a nested schema (a message).
STRING = "string"
BYTES = "bytes"
SCALAR_VARINT = "varint"          # bool, int64, uint64
SCALAR_FIXED64 = "fixed64"        # double
REPEATED_VARINT = "repeated_varint"   # repeated bool/int32/int64/uint32/uint64
REPEATED_FIXED32 = "repeated_fixed32"  # repeated float
REPEATED_FIXED64 = "repeated_fixed64"  # repeated double

Schema = Mapping[int, Union[str, "Schema"]]

INFER_PARAMETER: Schema = {1: SCALAR_VARINT, 2: SCALAR_VARINT, 3: STRING, 4: SCALAR_FIXED64, 5: SCALAR_VARINT}
PARAMETERS_ENTRY: Schema = {1: STRING, 2: INFER_PARAMETER}
TENSOR_CONTENTS: Schema = {
    1: REPEATED_VARINT, 2: REPEATED_VARINT, 3: REPEATED_VARINT, 4: REPEATED_VARINT,
    5: REPEATED_VARINT, 6: REPEATED_FIXED32, 7: REPEATED_FIXED64, 8: BYTES,
}
INPUT_TENSOR: Schema = {1: STRING, 2: STRING, 3: REPEATED_VARINT, 4: PARAMETERS_ENTRY, 5: TENSOR_CONTENTS}
REQUESTED_OUTPUT: Schema = {1: STRING, 2: PARAMETERS_ENTRY}
INFER_REQUEST: Schema = {
    1: STRING, 2: STRING, 3: STRING, 4: PARAMETERS_ENTRY, 5: INPUT_TENSOR, 6: REQUESTED_OUTPUT, 7: BYTES,
}
# ModelReadyRequest and ModelMetadataRequest: name = 1, version = 2.
MODEL_REQUEST: Schema = {1: STRING, 2: STRING}


class MalformedMessage(ValueError):
    """The bytes are not a well-formed protobuf message of the expected type."""


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while pos < end:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 7 * _MAX_VARINT_BYTES:
            raise MalformedMessage("varint longer than 10 bytes")
    raise MalformedMessage("truncated varint")


def _check_utf8(data: bytes, start: int, stop: int, field: int) -> None:
    try:
        data[start:stop].decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedMessage(f"string field {field} is not valid UTF-8") from None


def _check_packed(kind: str, data: bytes, start: int, stop: int, field: int) -> None:
    size = stop - start
    if kind == REPEATED_FIXED32 and size % 4:
        raise MalformedMessage(f"packed field {field} is not a whole number of 4-byte values")
    if kind == REPEATED_FIXED64 and size % 8:
        raise MalformedMessage(f"packed field {field} is not a whole number of 8-byte values")
    if kind == REPEATED_VARINT and size:
        if data[stop - 1] >= 0x80:
            raise MalformedMessage(f"packed field {field} ends inside a varint")
        if _OVERLONG_VARINT.search(data, start, stop):
            raise MalformedMessage(f"packed field {field} holds a varint longer than 10 bytes")


def _scan(data: bytes, start: int, end: int, schema: Schema, depth: int, top: dict | None) -> None:
    """Check the message data[start:end] against schema; record fields 1, 2 into top."""
    if depth > MAX_DEPTH:
        raise MalformedMessage("message nested too deeply")
    pos = start
    open_groups: list[int] = []
    while pos < end:
        key = data[pos]
        if key < 0x80:  # one-byte tags (fields 1..15) are the common case: no call
            pos += 1
        else:
            key, pos = _read_varint(data, pos, end)
        field, wire_type = key >> 3, key & 7
        if field == 0 or field > _MAX_FIELD_NUMBER:
            raise MalformedMessage(f"invalid field number {field}")
        if wire_type == VARINT:
            _, pos = _read_varint(data, pos, end)
        elif wire_type == I64:
            pos += 8
        elif wire_type == I32:
            pos += 4
        elif wire_type == LEN:
            if pos < end and data[pos] < 0x80:
                length = data[pos]
                pos += 1
            else:
                length, pos = _read_varint(data, pos, end)
            value_start, pos = pos, pos + length
            if pos > end:
                break
            kind = None if open_groups else schema.get(field)
            if kind is None or kind == BYTES:
                pass
            elif kind == STRING:
                _check_utf8(data, value_start, pos, field)
                if top is not None and field in (NAME_FIELD, VERSION_FIELD):
                    top[field] = (value_start, pos)
            elif isinstance(kind, str):
                if kind.startswith("repeated_"):
                    _check_packed(kind, data, value_start, pos, field)
                # a singular scalar sent length-delimited is an unknown field: skipped
            else:
                _scan(data, value_start, pos, kind, depth + 1, None)
        elif wire_type == SGROUP:
            open_groups.append(field)
            if depth + len(open_groups) > MAX_DEPTH:
                raise MalformedMessage("groups nested too deeply")
        elif wire_type == EGROUP:
            if not open_groups or open_groups.pop() != field:
                raise MalformedMessage(f"unmatched end of group {field}")
        else:
            raise MalformedMessage(f"invalid wire type {wire_type}")
    if pos > end:
        raise MalformedMessage("a field runs past the end of its message")
    if open_groups:
        raise MalformedMessage(f"unterminated group {open_groups[-1]}")


def scan_model_ref(data: bytes, schema: Schema = INFER_REQUEST) -> ModelRef:
    """The values of top-level fields 1 and 2 (the last of each, as protobuf reads them),
    after checking that data is a well-formed message of `schema`. Raises MalformedMessage."""
    top: dict[int, tuple[int, int]] = {}
    _scan(data, 0, len(data), schema, 0, top)
    name = data[slice(*top[NAME_FIELD])].decode() if NAME_FIELD in top else ""
    version = data[slice(*top[VERSION_FIELD])].decode() if VERSION_FIELD in top else ""
    return ModelRef(name, version)


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_string_field(field: int, value: str) -> bytes:
    raw = value.encode("utf-8")
    return encode_varint(field << 3 | LEN) + encode_varint(len(raw)) + raw


def model_ref_suffix(name: str, version: str) -> bytes:
    """Bytes that, appended to a request, set fields 1 and 2 (always both: an empty
    version overrides whatever version the client named)."""
    return encode_string_field(NAME_FIELD, name) + encode_string_field(VERSION_FIELD, version)
