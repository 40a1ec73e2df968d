"""Score a shadow pair: the champion's answer against a challenger's, for the same request.

Outputs are matched by name. Three figures (SPEC section 5), kept as sums and counts so
they add up across requests and routers:

- exact match: the same output names, datatypes, shapes and element bits;
- label agreement: per row, the label is the argmax of the last dimension, or the value
  itself where the output holds one value per row (last dimension 1, a 1-D output, a
  scalar). A champion row whose challenger output is missing or differently shaped counts
  as a disagreement. BYTES outputs with more than one value per row have no labels;
- mean absolute difference over floating-point outputs of the same shape (integer outputs
  are labels or counts, which label agreement scores); element pairs where either is NaN
  or whose difference is not finite are left out.

An output that does not decode (bad raw length, unknown datatype) is not exact; if it is
the champion's, it has no labels or differences to score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from dataplane.tensors import Tensor, TensorError, decode_output, same_bits

if TYPE_CHECKING:  # messages of any pool work; see dataplane/oip.py for why not this one
    from tsplit.inference import grpc_predict_v2_pb2 as pb


class _Ratios:
    """The figures derived from summed counts (label_agree/total, abs_diff_sum/count)."""

    @property
    def label_agreement(self) -> float | None:
        return self.label_agree / self.label_total if self.label_total else None

    @property
    def mean_abs_diff(self) -> float | None:
        return self.abs_diff_sum / self.abs_diff_count if self.abs_diff_count else None


@dataclass(frozen=True)
class Comparison(_Ratios):
    exact_match: bool
    label_agree: int
    label_total: int
    abs_diff_sum: float
    abs_diff_count: int


@dataclass(frozen=True)
class ComparisonTotals(_Ratios):
    """Comparisons summed over many pairs (and, by adding totals, over routers)."""

    pairs: int = 0
    exact_matches: int = 0
    label_agree: int = 0
    label_total: int = 0
    abs_diff_sum: float = 0.0
    abs_diff_count: int = 0

    def plus(self, c: Comparison) -> "ComparisonTotals":
        return self + ComparisonTotals(1, int(c.exact_match), c.label_agree, c.label_total,
                                       c.abs_diff_sum, c.abs_diff_count)

    def __add__(self, other: "ComparisonTotals") -> "ComparisonTotals":
        return ComparisonTotals(
            self.pairs + other.pairs, self.exact_matches + other.exact_matches,
            self.label_agree + other.label_agree, self.label_total + other.label_total,
            self.abs_diff_sum + other.abs_diff_sum, self.abs_diff_count + other.abs_diff_count)

    @property
    def exact_match_rate(self) -> float | None:
        return self.exact_matches / self.pairs if self.pairs else None



def compare_responses(champion: pb.ModelInferResponse, challenger: pb.ModelInferResponse) -> Comparison:
    ours, theirs = _outputs(champion), _outputs(challenger)
    exact = ours.keys() == theirs.keys() and all(
        _exactly_equal(champion, i, a, challenger, *theirs[name]) for name, (i, a) in ours.items())
    agree = total = diff_count = 0
    diff_sum = 0.0
    for name, (_, a) in ours.items():
        if a is None:
            continue
        b = theirs.get(name, (0, None))[1]
        labels_a = row_labels(a)
        if labels_a is not None:
            labels_b = row_labels(b) if b is not None else None
            total += len(labels_a)
            if labels_b is not None and len(labels_b) == len(labels_a):
                agree += sum(1 for x, y in zip(labels_a, labels_b) if x == y)
        if b is not None:
            s, n = abs_diff(a, b)
            diff_sum, diff_count = diff_sum + s, diff_count + n
    return Comparison(exact, agree, total, diff_sum, diff_count)


def _outputs(response: pb.ModelInferResponse) -> dict[str, tuple[int, Tensor | None]]:
    """Each output's index and decoded tensor (None where it does not decode)."""
    found: dict[str, tuple[int, Tensor | None]] = {}
    for i, message in enumerate(response.outputs):
        try:
            found[message.name] = (i, decode_output(response, i))
        except TensorError:
            found[message.name] = (i, None)
    return found


def _exactly_equal(r1: pb.ModelInferResponse, i1: int, t1: Tensor | None,
                   r2: pb.ModelInferResponse, i2: int, t2: Tensor | None) -> bool:
    m1, m2 = r1.outputs[i1], r2.outputs[i2]
    if (m1.datatype, tuple(m1.shape)) != (m2.datatype, tuple(m2.shape)):
        return False
    if r1.raw_output_contents and r2.raw_output_contents and i1 < len(r1.raw_output_contents) \
            and i2 < len(r2.raw_output_contents):
        # Both raw: comparing the bytes is the bit-for-bit check, and needs no decoding.
        return r1.raw_output_contents[i1] == r2.raw_output_contents[i2]
    return t1 is not None and t2 is not None and same_bits(t1, t2)


def row_labels(t: Tensor) -> Sequence[Any] | None:
    """One label per row, or None when the output has no labels (see the module doc)."""
    if len(t.shape) <= 1 or t.shape[-1] == 1:
        return t.values
    width = t.shape[-1]
    if width == 0 or t.dtype.kind == "bytes":
        return None
    return [_argmax(t.values, start, start + width) for start in range(0, len(t.values), width)]


def _argmax(values: Sequence[Any], start: int, stop: int) -> int:
    """Index of the first largest value in values[start:stop]; NaN never wins; -1 if all NaN."""
    best, best_value = -1, None
    for i in range(start, stop):
        v = values[i]
        if v != v:  # NaN
            continue
        if best_value is None or v > best_value:
            best, best_value = i - start, v
    return best


def abs_diff(a: Tensor, b: Tensor) -> tuple[float, int]:
    """Sum and count of |a - b| over element pairs, for float tensors of the same shape."""
    if a.shape != b.shape or a.dtype.kind != "float" or b.dtype.kind != "float":
        return 0.0, 0
    total, count = 0.0, 0
    for x, y in zip(a.values, b.values):
        d = abs(x - y)
        if math.isfinite(d):
            total += d
            count += 1
    return total, count
