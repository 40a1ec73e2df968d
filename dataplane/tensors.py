"""Open Inference Protocol v2 tensors as plain Python values, and back.

A v2 tensor travels either as `raw_*_contents` (little-endian bytes, the i-th entry for
the i-th tensor; BYTES elements each prefixed by a 4-byte little-endian length) or as the
typed fields of `InferTensorContents`. Pure Python (struct), no numpy: the router only
decodes tensors to score shadow pairs, never on the hot path.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:  # messages of any pool work; see dataplane/oip.py for why not this one
    from tsplit.inference import grpc_predict_v2_pb2 as pb


class TensorError(ValueError):
    """A tensor that does not decode or encode: the message names the tensor and the field."""


@dataclass(frozen=True)
class DataType:
    name: str
    kind: str                   # "float", "int", "uint", "bool" or "bytes"
    struct_code: str            # element format for struct ("" for BYTES and BF16)
    item_size: int              # bytes per element in raw form (0: variable, BYTES)
    contents_field: str | None  # the typed InferTensorContents field; None: raw only

    @property
    def is_numeric(self) -> bool:
        return self.kind in ("float", "int", "uint")


DATATYPES: Mapping[str, DataType] = MappingProxyType({
    "BOOL": DataType("BOOL", "bool", "?", 1, "bool_contents"),
    "INT8": DataType("INT8", "int", "b", 1, "int_contents"),
    "INT16": DataType("INT16", "int", "h", 2, "int_contents"),
    "INT32": DataType("INT32", "int", "i", 4, "int_contents"),
    "INT64": DataType("INT64", "int", "q", 8, "int64_contents"),
    "UINT8": DataType("UINT8", "uint", "B", 1, "uint_contents"),
    "UINT16": DataType("UINT16", "uint", "H", 2, "uint_contents"),
    "UINT32": DataType("UINT32", "uint", "I", 4, "uint_contents"),
    "UINT64": DataType("UINT64", "uint", "Q", 8, "uint64_contents"),
    "FP16": DataType("FP16", "float", "e", 2, None),
    "BF16": DataType("BF16", "float", "", 2, None),
    "FP32": DataType("FP32", "float", "f", 4, "fp32_contents"),
    "FP64": DataType("FP64", "float", "d", 8, "fp64_contents"),
    "BYTES": DataType("BYTES", "bytes", "", 0, "bytes_contents"),
})


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    values: tuple[Any, ...]  # flat, row-major: float, int, bool or bytes per element

    @property
    def dtype(self) -> DataType:
        return DATATYPES[self.datatype]


def datatype(name: str, tensor: str = "tensor") -> DataType:
    found = DATATYPES.get(name)
    if found is None:
        raise TensorError(f"{tensor}: unsupported datatype {name!r} (supported: {', '.join(DATATYPES)})")
    return found


def element_count(shape: Sequence[int], tensor: str = "tensor") -> int:
    count = 1
    for dim in shape:
        if dim < 0:
            raise TensorError(f"{tensor}: shape {list(shape)} has a negative dimension")
        count *= dim
    return count


# --- raw bytes ---------------------------------------------------------------------------

def decode_raw(dtype: DataType, raw: bytes, count: int, tensor: str = "tensor") -> tuple[Any, ...]:
    """`count` elements from little-endian raw bytes."""
    if dtype.name == "BYTES":
        return _decode_raw_bytes(raw, count, tensor)
    expected = count * dtype.item_size
    if len(raw) != expected:
        raise TensorError(f"{tensor}: raw contents hold {len(raw)} bytes, the shape needs {expected} "
                          f"({count} x {dtype.name})")
    if dtype.name == "BF16":
        halves = struct.unpack(f"<{count}H", raw)
        return struct.unpack(f"<{count}f", struct.pack(f"<{count}I", *(h << 16 for h in halves)))
    return struct.unpack(f"<{count}{dtype.struct_code}", raw)


def _decode_raw_bytes(raw: bytes, count: int, tensor: str) -> tuple[bytes, ...]:
    values, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(raw):
            raise TensorError(f"{tensor}: raw BYTES contents end before element {len(values)} of {count}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise TensorError(f"{tensor}: raw BYTES element {len(values)} runs past the end of the contents")
        values.append(bytes(raw[offset:offset + length]))
        offset += length
    if offset != len(raw):
        raise TensorError(f"{tensor}: raw BYTES contents hold more than the shape's {count} elements")
    return tuple(values)


def encode_raw(dtype: DataType, values: Sequence[Any], tensor: str = "tensor") -> bytes:
    """Little-endian raw bytes of `values` (the inverse of decode_raw)."""
    try:
        if dtype.name == "BYTES":
            return b"".join(struct.pack("<I", len(v)) + bytes(v) for v in values)
        if dtype.name == "BF16":
            words = struct.unpack(f"<{len(values)}I", struct.pack(f"<{len(values)}f", *values))
            return struct.pack(f"<{len(values)}H", *(w >> 16 for w in words))
        return struct.pack(f"<{len(values)}{dtype.struct_code}", *values)
    except (struct.error, OverflowError, TypeError) as err:
        raise TensorError(f"{tensor}: values do not fit datatype {dtype.name}") from err


# --- typed contents ----------------------------------------------------------------------

def decode_contents(dtype: DataType, contents: pb.InferTensorContents, count: int,
                    tensor: str = "tensor") -> tuple[Any, ...]:
    if dtype.contents_field is None:
        raise TensorError(f"{tensor}: datatype {dtype.name} travels only as raw contents")
    values = tuple(getattr(contents, dtype.contents_field))
    if len(values) != count:
        raise TensorError(f"{tensor}: contents.{dtype.contents_field} holds {len(values)} elements, "
                          f"the shape needs {count}")
    return values


def fill_contents(contents: pb.InferTensorContents, dtype: DataType, values: Sequence[Any],
                  tensor: str = "tensor") -> None:
    if dtype.contents_field is None:
        raise TensorError(f"{tensor}: datatype {dtype.name} travels only as raw contents")
    try:
        getattr(contents, dtype.contents_field).extend(values)
    except (TypeError, ValueError) as err:
        raise TensorError(f"{tensor}: values do not fit contents.{dtype.contents_field}") from err


# --- whole messages ----------------------------------------------------------------------

def _decode_tensor(message: Any, raw_list: Sequence[bytes], index: int, label: str) -> Tensor:
    name = f"{label} {message.name!r}"
    dtype = datatype(message.datatype, name)
    shape = tuple(message.shape)
    count = element_count(shape, name)
    if raw_list:
        if index >= len(raw_list):
            raise TensorError(f"{name}: raw contents are used but this tensor has no entry")
        values = decode_raw(dtype, raw_list[index], count, name)
    else:
        values = decode_contents(dtype, message.contents, count, name)
    return Tensor(message.name, dtype.name, shape, values)


def decode_output(response: pb.ModelInferResponse, index: int) -> Tensor:
    return _decode_tensor(response.outputs[index], response.raw_output_contents, index, "output")


def decode_input(request: pb.ModelInferRequest, index: int) -> Tensor:
    return _decode_tensor(request.inputs[index], request.raw_input_contents, index, "input")


def output_tensors(response: pb.ModelInferResponse) -> dict[str, Tensor]:
    return {t.name: t for t in (decode_output(response, i) for i in range(len(response.outputs)))}


def same_bits(a: Tensor, b: Tensor) -> bool:
    """True when the two tensors hold the same datatype, shape and element bits."""
    if (a.datatype, a.shape) != (b.datatype, b.shape):
        return False
    dtype = a.dtype
    if dtype.kind != "float":
        return a.values == b.values
    return encode_raw(dtype, a.values) == encode_raw(dtype, b.values)
