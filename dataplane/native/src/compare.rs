//! Score a shadow pair: the champion's answer against a challenger's, for the same request.
//! The same figures, by the same rules, as dataplane/compare.py (the proxyless client keeps
//! that one; tests/vectors/compare.json is checked against both).
//!
//! Outputs are matched by name (where a name repeats, the last output of that name counts).
//! Three figures (SPEC section 5), kept as sums and counts so they add up across requests
//! and routers:
//!
//! - exact match: the same output names, datatypes, shapes and element bits (both answers
//!   raw: the raw bytes are compared, without decoding);
//! - label agreement: per row, the label is the argmax of the last dimension (the first
//!   largest, NaN never wins, -1 for a row of NaN only), or the value itself where the
//!   output holds one value per row (last dimension 1, a 1-D output, a scalar). Labels are
//!   equal as Python's `==` says (`1 == 1.0 == True`, NaN equals nothing). A champion row
//!   whose challenger output is missing or differently shaped counts as a disagreement.
//!   BYTES outputs with more than one value per row have no labels;
//! - mean absolute difference over floating-point outputs (FP16, BF16, FP32, FP64) of the
//!   same shape; element pairs where either is NaN or whose difference is not finite are
//!   left out.
//!
//! An output that does not decode (bad raw length, unknown datatype, a shape with a
//! negative dimension, typed contents of the wrong length) is not exact; if it is the
//! champion's, it has no labels or differences to score. Nothing here panics on any input.

use bytes::Bytes;
use prost::Message;

use crate::oip::{InferOutputTensor, InferTensorContents, ModelInferResponse};

/// One pair's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Comparison {
    pub exact_match: bool,
    pub label_agree: u64,
    pub label_total: u64,
    pub abs_diff_sum: f64,
    pub abs_diff_count: u64,
}

/// Parse two serialized ModelInferResponses and compare them. Err: one does not parse (the
/// pair cannot be scored). Decoding from `Bytes` shares the buffers (no copy of tensors).
pub fn compare_raw(champion: Bytes, challenger: Bytes) -> Result<Comparison, prost::DecodeError> {
    let ours = ModelInferResponse::decode(champion)?;
    let theirs = ModelInferResponse::decode(challenger)?;
    Ok(compare_responses(&ours, &theirs))
}

pub fn compare_responses(champion: &ModelInferResponse, challenger: &ModelInferResponse) -> Comparison {
    let ours = outputs(champion);
    let theirs = outputs(challenger);
    let same_names = ours.len() == theirs.len() && ours.iter().all(|o| find(&theirs, o.name).is_some());
    let exact = same_names
        && ours.iter().all(|o| {
            let t = find(&theirs, o.name).expect("same names");
            exactly_equal(champion, o, challenger, t)
        });
    let mut result = Comparison { exact_match: exact, ..Comparison::default() };
    for o in &ours {
        let Some(a) = &o.tensor else { continue };
        let b = find(&theirs, o.name).and_then(|t| t.tensor.as_ref());
        if let Some(labels_a) = row_labels(a) {
            result.label_total += labels_a.len() as u64;
            if let Some(labels_b) = b.and_then(row_labels) {
                if labels_b.len() == labels_a.len() {
                    result.label_agree += labels_a.iter().zip(&labels_b).filter(|(x, y)| x.py_eq(y)).count() as u64;
                }
            }
        }
        if let Some(b) = b {
            let (sum, count) = abs_diff(a, b);
            result.abs_diff_sum += sum;
            result.abs_diff_count += count;
        }
    }
    result
}

// --- outputs and tensors --------------------------------------------------------------------

/// One output of a response: its name, the index of the output that name refers to, and its
/// tensor (None where it does not decode).
struct Output<'a> {
    name: &'a str,
    index: usize,
    tensor: Option<Tensor>,
}

/// The outputs by name, in the order names first appear; a repeated name refers to its last
/// output (as a Python dict filled in order does).
fn outputs(response: &ModelInferResponse) -> Vec<Output<'_>> {
    let mut found: Vec<Output<'_>> = Vec::with_capacity(response.outputs.len());
    for (index, message) in response.outputs.iter().enumerate() {
        let tensor = decode_output(response, index).ok();
        match found.iter_mut().find(|o| o.name == message.name) {
            Some(existing) => {
                existing.index = index;
                existing.tensor = tensor;
            }
            None => found.push(Output { name: &message.name, index, tensor }),
        }
    }
    found
}

fn find<'a, 'b>(outputs: &'b [Output<'a>], name: &str) -> Option<&'b Output<'a>> {
    outputs.iter().find(|o| o.name == name)
}

fn exactly_equal(r1: &ModelInferResponse, o1: &Output<'_>, r2: &ModelInferResponse, o2: &Output<'_>) -> bool {
    let (m1, m2) = (&r1.outputs[o1.index], &r2.outputs[o2.index]);
    if m1.datatype != m2.datatype || m1.shape != m2.shape {
        return false;
    }
    if let (Some(a), Some(b)) = (r1.raw_output_contents.get(o1.index), r2.raw_output_contents.get(o2.index)) {
        // Both raw: comparing the bytes is the bit-for-bit check, and needs no decoding.
        return a == b;
    }
    match (&o1.tensor, &o2.tensor) {
        (Some(a), Some(b)) => same_bits(a, b),
        _ => false,
    }
}

/// The v2 datatypes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    Bool,
    Int8,
    Int16,
    Int32,
    Int64,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Fp16,
    Bf16,
    Fp32,
    Fp64,
    Bytes,
}

impl DataType {
    pub fn parse(name: &str) -> Option<DataType> {
        Some(match name {
            "BOOL" => DataType::Bool,
            "INT8" => DataType::Int8,
            "INT16" => DataType::Int16,
            "INT32" => DataType::Int32,
            "INT64" => DataType::Int64,
            "UINT8" => DataType::Uint8,
            "UINT16" => DataType::Uint16,
            "UINT32" => DataType::Uint32,
            "UINT64" => DataType::Uint64,
            "FP16" => DataType::Fp16,
            "BF16" => DataType::Bf16,
            "FP32" => DataType::Fp32,
            "FP64" => DataType::Fp64,
            "BYTES" => DataType::Bytes,
            _ => return None,
        })
    }

    /// Bytes per element in raw form (0: variable, BYTES).
    pub fn item_size(self) -> usize {
        match self {
            DataType::Bool | DataType::Int8 | DataType::Uint8 => 1,
            DataType::Int16 | DataType::Uint16 | DataType::Fp16 | DataType::Bf16 => 2,
            DataType::Int32 | DataType::Uint32 | DataType::Fp32 => 4,
            DataType::Int64 | DataType::Uint64 | DataType::Fp64 => 8,
            DataType::Bytes => 0,
        }
    }
}

/// Flat, row-major element values, in the width the datatype has.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    Bool(Vec<bool>),
    Int(Vec<i64>),
    Uint(Vec<u64>),
    /// FP16 and BF16 keep their bits; `Tensor::float_at` widens them.
    Half(Vec<u16>),
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Bytes(Vec<Bytes>),
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Values::Bool(v) => v.len(),
            Values::Int(v) => v.len(),
            Values::Uint(v) => v.len(),
            Values::Half(v) => v.len(),
            Values::Fp32(v) => v.len(),
            Values::Fp64(v) => v.len(),
            Values::Bytes(v) => v.len(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub datatype: DataType,
    pub shape: Vec<i64>,
    pub values: Values,
}

impl Tensor {
    fn is_float(&self) -> bool {
        matches!(self.datatype, DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64)
    }

    /// Element i of a float tensor, widened to f64.
    fn float_at(&self, i: usize) -> f64 {
        match &self.values {
            Values::Half(v) if self.datatype == DataType::Bf16 => f32::from_bits((v[i] as u32) << 16) as f64,
            Values::Half(v) => f16_to_f64(v[i]),
            Values::Fp32(v) => v[i] as f64,
            Values::Fp64(v) => v[i],
            _ => f64::NAN,
        }
    }

    /// Element i as a label (the value itself).
    fn label_at(&self, i: usize) -> Label {
        match &self.values {
            Values::Bool(v) => Label::Int(v[i] as i128),
            Values::Int(v) => Label::Int(v[i] as i128),
            Values::Uint(v) => Label::Int(v[i] as i128),
            Values::Half(_) | Values::Fp32(_) | Values::Fp64(_) => Label::Float(self.float_at(i)),
            Values::Bytes(v) => Label::Bytes(v[i].clone()),
        }
    }
}

/// Why an output does not decode (the message names the output and the field).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorError(pub String);

impl std::fmt::Display for TensorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TensorError {}

pub fn decode_output(response: &ModelInferResponse, index: usize) -> Result<Tensor, TensorError> {
    let message: &InferOutputTensor = &response.outputs[index];
    let name = format!("output {:?}", message.name);
    let datatype = DataType::parse(&message.datatype)
        .ok_or_else(|| TensorError(format!("{name}: unsupported datatype {:?}", message.datatype)))?;
    let count = element_count(&message.shape).map_err(|e| TensorError(format!("{name}: {e}")))?;
    let values = if response.raw_output_contents.is_empty() {
        let empty = InferTensorContents::default();
        decode_contents(datatype, message.contents.as_ref().unwrap_or(&empty), count)
    } else {
        match response.raw_output_contents.get(index) {
            Some(raw) => decode_raw(datatype, raw, count),
            None => Err("raw contents are used but this tensor has no entry".to_string()),
        }
    }
    .map_err(|e| TensorError(format!("{name}: {e}")))?;
    Ok(Tensor { datatype, shape: message.shape.clone(), values })
}

/// The number of elements of a shape; Err for a negative dimension or a count that does not
/// fit in memory (no answer could hold it).
pub fn element_count(shape: &[i64]) -> Result<usize, String> {
    if shape.iter().any(|&d| d < 0) {
        return Err(format!("shape {shape:?} has a negative dimension"));
    }
    if shape.contains(&0) {
        return Ok(0);
    }
    shape
        .iter()
        .try_fold(1usize, |count, &d| count.checked_mul(usize::try_from(d).ok()?))
        .filter(|&count| count <= isize::MAX as usize)
        .ok_or_else(|| format!("shape {shape:?} has more elements than any answer can hold"))
}

/// `count` elements from little-endian raw bytes (BYTES: each a 4-byte length, then bytes).
pub fn decode_raw(datatype: DataType, raw: &Bytes, count: usize) -> Result<Values, String> {
    if datatype == DataType::Bytes {
        return decode_raw_bytes(raw, count);
    }
    let size = datatype.item_size();
    if count.checked_mul(size) != Some(raw.len()) {
        return Err(format!("raw contents hold {} bytes, the shape needs {count} elements of {size} bytes", raw.len()));
    }
    fn words<const N: usize>(raw: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
        raw.chunks_exact(N).map(|c| std::array::from_fn(|i| c[i]))
    }
    Ok(match datatype {
        DataType::Bool => Values::Bool(raw.iter().map(|&b| b != 0).collect()),
        DataType::Int8 => Values::Int(raw.iter().map(|&b| b as i8 as i64).collect()),
        DataType::Int16 => Values::Int(words::<2>(raw).map(|w| i16::from_le_bytes(w) as i64).collect()),
        DataType::Int32 => Values::Int(words::<4>(raw).map(|w| i32::from_le_bytes(w) as i64).collect()),
        DataType::Int64 => Values::Int(words::<8>(raw).map(i64::from_le_bytes).collect()),
        DataType::Uint8 => Values::Uint(raw.iter().map(|&b| b as u64).collect()),
        DataType::Uint16 => Values::Uint(words::<2>(raw).map(|w| u16::from_le_bytes(w) as u64).collect()),
        DataType::Uint32 => Values::Uint(words::<4>(raw).map(|w| u32::from_le_bytes(w) as u64).collect()),
        DataType::Uint64 => Values::Uint(words::<8>(raw).map(u64::from_le_bytes).collect()),
        DataType::Fp16 | DataType::Bf16 => Values::Half(words::<2>(raw).map(u16::from_le_bytes).collect()),
        DataType::Fp32 => Values::Fp32(words::<4>(raw).map(f32::from_le_bytes).collect()),
        DataType::Fp64 => Values::Fp64(words::<8>(raw).map(f64::from_le_bytes).collect()),
        DataType::Bytes => unreachable!("handled above"),
    })
}

fn decode_raw_bytes(raw: &Bytes, count: usize) -> Result<Values, String> {
    // Every element takes at least its 4-byte length: a count past that cannot fit.
    if count > raw.len() / 4 {
        return Err(format!("raw BYTES contents of {} bytes cannot hold {count} elements", raw.len()));
    }
    let mut values = Vec::with_capacity(count);
    let mut offset = 0usize;
    for i in 0..count {
        let Some(prefix) = raw.get(offset..offset + 4) else {
            return Err(format!("raw BYTES contents end before element {i} of {count}"));
        };
        let length = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
        offset += 4;
        if length > raw.len() - offset {
            return Err(format!("raw BYTES element {i} runs past the end of the contents"));
        }
        values.push(raw.slice(offset..offset + length));
        offset += length;
    }
    if offset != raw.len() {
        return Err(format!("raw BYTES contents hold more than the shape's {count} elements"));
    }
    Ok(Values::Bytes(values))
}

/// The typed contents field of the datatype, which must hold exactly `count` elements.
pub fn decode_contents(datatype: DataType, contents: &InferTensorContents, count: usize) -> Result<Values, String> {
    let (field, values) = match datatype {
        DataType::Bool => ("bool_contents", Values::Bool(contents.bool_contents.clone())),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => {
            ("int_contents", Values::Int(contents.int_contents.iter().map(|&v| v as i64).collect()))
        }
        DataType::Int64 => ("int64_contents", Values::Int(contents.int64_contents.clone())),
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => {
            ("uint_contents", Values::Uint(contents.uint_contents.iter().map(|&v| v as u64).collect()))
        }
        DataType::Uint64 => ("uint64_contents", Values::Uint(contents.uint64_contents.clone())),
        DataType::Fp32 => ("fp32_contents", Values::Fp32(contents.fp32_contents.clone())),
        DataType::Fp64 => ("fp64_contents", Values::Fp64(contents.fp64_contents.clone())),
        DataType::Bytes => ("bytes_contents", Values::Bytes(contents.bytes_contents.clone())),
        DataType::Fp16 | DataType::Bf16 => return Err(format!("datatype {datatype:?} travels only as raw contents")),
    };
    if values.len() != count {
        return Err(format!("contents.{field} holds {} elements, the shape needs {count}", values.len()));
    }
    Ok(values)
}

/// True when the two tensors hold the same datatype, shape and element bits.
pub fn same_bits(a: &Tensor, b: &Tensor) -> bool {
    if a.datatype != b.datatype || a.shape != b.shape {
        return false;
    }
    match (&a.values, &b.values) {
        (Values::Fp32(x), Values::Fp32(y)) => x.iter().map(|v| v.to_bits()).eq(y.iter().map(|v| v.to_bits())),
        (Values::Fp64(x), Values::Fp64(y)) => x.iter().map(|v| v.to_bits()).eq(y.iter().map(|v| v.to_bits())),
        (x, y) => x == y,
    }
}

/// IEEE half precision bits to f64 (exact).
fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = ((bits >> 10) & 0x1f) as i32;
    let fraction = (bits & 0x3ff) as f64;
    match exponent {
        0 => sign * fraction * 2f64.powi(-24),
        0x1f if fraction == 0.0 => sign * f64::INFINITY,
        0x1f => f64::NAN,
        _ => sign * (1.0 + fraction / 1024.0) * 2f64.powi(exponent - 15),
    }
}

// --- labels and differences -----------------------------------------------------------------

/// A row's label: an argmax index or an element value, compared as Python compares them.
#[derive(Clone, Debug)]
pub enum Label {
    Int(i128),
    Float(f64),
    Bytes(Bytes),
}

impl Label {
    /// Python's `==` between the values: numbers by value across int and float (exactly),
    /// NaN equal to nothing, bytes only to bytes.
    pub fn py_eq(&self, other: &Label) -> bool {
        match (self, other) {
            (Label::Int(a), Label::Int(b)) => a == b,
            (Label::Float(a), Label::Float(b)) => a == b,
            (Label::Int(i), Label::Float(f)) | (Label::Float(f), Label::Int(i)) => {
                // Every int here is below 2^64 in magnitude: a float that equals it is
                // integral and in i128's range, where `as` is exact.
                f.is_finite() && f.fract() == 0.0 && f.abs() < 1e30 && *f as i128 == *i
            }
            (Label::Bytes(a), Label::Bytes(b)) => a == b,
            _ => false,
        }
    }
}

/// One label per row, or None when the output has no labels (see the module doc).
pub fn row_labels(t: &Tensor) -> Option<Vec<Label>> {
    let n = t.values.len();
    if t.shape.len() <= 1 || t.shape.last() == Some(&1) {
        return Some((0..n).map(|i| t.label_at(i)).collect());
    }
    let width = *t.shape.last().expect("two or more dimensions") as usize;
    if width == 0 || t.datatype == DataType::Bytes {
        return None;
    }
    Some((0..n).step_by(width).map(|start| Label::Int(argmax(t, start, (start + width).min(n)))).collect())
}

/// Index of the first largest value in values[start..stop]; NaN never wins; -1 if all NaN.
fn argmax(t: &Tensor, start: usize, stop: usize) -> i128 {
    fn first_largest<T: PartialOrd + Copy>(values: &[T]) -> i128 {
        let mut best = -1i128;
        let mut best_value = None::<T>;
        for (i, &v) in values.iter().enumerate() {
            // NaN (the only value not equal to itself) never wins.
            #[allow(clippy::eq_op)]
            let is_nan = v != v;
            if !is_nan && best_value.is_none_or(|b| v > b) {
                best = i as i128;
                best_value = Some(v);
            }
        }
        best
    }
    match &t.values {
        Values::Bool(v) => first_largest(&v[start..stop]),
        Values::Int(v) => first_largest(&v[start..stop]),
        Values::Uint(v) => first_largest(&v[start..stop]),
        Values::Fp32(v) => first_largest(&v[start..stop]),
        Values::Fp64(v) => first_largest(&v[start..stop]),
        Values::Half(_) => {
            let widened: Vec<f64> = (start..stop).map(|i| t.float_at(i)).collect();
            first_largest(&widened)
        }
        Values::Bytes(_) => -1, // no labels (row_labels returns None first)
    }
}

/// Sum and count of |a - b| over element pairs, for float tensors of the same shape.
pub fn abs_diff(a: &Tensor, b: &Tensor) -> (f64, u64) {
    if a.shape != b.shape || !a.is_float() || !b.is_float() {
        return (0.0, 0);
    }
    fn sum(pairs: impl Iterator<Item = (f64, f64)>) -> (f64, u64) {
        let (mut total, mut count) = (0.0, 0u64);
        for (x, y) in pairs {
            let d = (x - y).abs();
            if d.is_finite() {
                total += d;
                count += 1;
            }
        }
        (total, count)
    }
    match (&a.values, &b.values) {
        // The common cases without a match per element.
        (Values::Fp32(x), Values::Fp32(y)) => sum(x.iter().zip(y).map(|(&x, &y)| (x as f64, y as f64))),
        (Values::Fp64(x), Values::Fp64(y)) => sum(x.iter().copied().zip(y.iter().copied())),
        _ => sum((0..a.values.len().min(b.values.len())).map(|i| (a.float_at(i), b.float_at(i)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use proptest::prelude::*;

    use crate::oip::InferOutputTensor;

    /// tests/vectors/compare.json, the cases dataplane/compare.py is checked against too.
    #[test]
    fn the_shared_vectors_give_the_python_comparison_figures() {
        let text = include_str!("../../../tests/vectors/compare.json");
        let file: serde_json::Value = serde_json::from_str(text).expect("compare.json parses");
        let cases = file["cases"].as_array().expect("cases");
        assert!(cases.len() >= 40);
        let b64 = base64::engine::general_purpose::STANDARD;
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let champion = Bytes::from(b64.decode(case["champion"].as_str().unwrap()).unwrap());
            let challenger = Bytes::from(b64.decode(case["challenger"].as_str().unwrap()).unwrap());
            let got = compare_raw(champion, challenger);
            let expected = &case["expected"];
            if expected == "error" {
                assert!(got.is_err(), "{name}: {got:?}");
                continue;
            }
            let got = got.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got.exact_match, expected["exact_match"].as_bool().unwrap(), "{name}");
            assert_eq!(got.label_agree, expected["label_agree"].as_u64().unwrap(), "{name}");
            assert_eq!(got.label_total, expected["label_total"].as_u64().unwrap(), "{name}");
            assert_eq!(got.abs_diff_count, expected["abs_diff_count"].as_u64().unwrap(), "{name}");
            let want = expected["abs_diff_sum"].as_f64().unwrap();
            assert!((got.abs_diff_sum - want).abs() <= 1e-12 * want.abs(), "{name}: {} != {want}", got.abs_diff_sum);
        }
    }

    fn output(name: &str, datatype: &str, shape: Vec<i64>) -> InferOutputTensor {
        InferOutputTensor { name: name.into(), datatype: datatype.into(), shape, ..Default::default() }
    }

    #[test]
    fn half_precision_widens_exactly() {
        assert_eq!(f16_to_f64(0x3800), 0.5);
        assert_eq!(f16_to_f64(0xc000), -2.0);
        assert_eq!(f16_to_f64(0x7bff), 65504.0);
        assert_eq!(f16_to_f64(0x0001), 2f64.powi(-24));
        assert_eq!(f16_to_f64(0xfc00), f64::NEG_INFINITY);
        assert!(f16_to_f64(0x7e00).is_nan());
        assert!(f16_to_f64(0x8000) == 0.0 && f16_to_f64(0x8000).is_sign_negative());
    }

    #[test]
    fn shapes_too_large_for_any_answer_do_not_decode() {
        assert!(element_count(&[i64::MAX, i64::MAX]).is_err());
        assert_eq!(element_count(&[i64::MAX, i64::MAX, 0]), Ok(0));
        assert!(element_count(&[3, -1]).is_err());
        let response = ModelInferResponse {
            outputs: vec![output("x", "BYTES", vec![1 << 40])],
            raw_output_contents: vec![Bytes::from_static(b"\x00\x00\x00\x00")],
            ..Default::default()
        };
        assert!(decode_output(&response, 0).is_err());
    }

    #[test]
    fn labels_compare_as_python_numbers() {
        assert!(Label::Int(1).py_eq(&Label::Float(1.0)));
        assert!(!Label::Int(1).py_eq(&Label::Float(1.5)));
        assert!(!Label::Float(f64::NAN).py_eq(&Label::Float(f64::NAN)));
        assert!(Label::Float(0.0).py_eq(&Label::Float(-0.0)));
        // 2^53 + 1 has no double: the nearest double is not equal to it.
        assert!(!Label::Int((1i128 << 53) + 1).py_eq(&Label::Float((1u64 << 53) as f64)));
        assert!(Label::Int(u64::MAX as i128 + 1).py_eq(&Label::Float(2f64.powi(64))));
        assert!(!Label::Bytes(Bytes::from_static(b"1")).py_eq(&Label::Int(1)));
    }

    fn arb_datatype() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "BOOL",
            "INT8",
            "INT16",
            "INT32",
            "INT64",
            "UINT8",
            "UINT16",
            "UINT32",
            "UINT64",
            "FP16",
            "BF16",
            "FP32",
            "FP64",
            "BYTES",
            "COMPLEX64",
            "",
        ])
    }

    /// Responses of any shape: outputs with random names, datatypes, shapes (negative and
    /// huge dimensions included), typed contents of any length, raw entries of any bytes.
    fn arb_response() -> impl Strategy<Value = ModelInferResponse> {
        let contents = (
            prop::collection::vec(any::<bool>(), 0..6),
            prop::collection::vec(any::<i32>(), 0..6),
            prop::collection::vec(any::<i64>(), 0..6),
            prop::collection::vec(any::<f32>(), 0..6),
            prop::collection::vec(any::<f64>(), 0..6),
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..4), 0..6),
        )
            .prop_map(|(b, i, l, f, d, s)| InferTensorContents {
                bool_contents: b,
                int_contents: i,
                int64_contents: l,
                uint_contents: vec![7, 0, u32::MAX],
                uint64_contents: vec![u64::MAX],
                fp32_contents: f,
                fp64_contents: d,
                bytes_contents: s.into_iter().map(Bytes::from).collect(),
            });
        let dim = prop_oneof![8 => 0i64..4, 1 => Just(-1i64), 1 => Just(i64::MAX)];
        let tensor = (
            prop::sample::select(vec!["a", "b", "c"]),
            arb_datatype(),
            prop::collection::vec(dim, 0..4),
            prop::option::of(contents),
        )
            .prop_map(|(name, datatype, shape, contents)| InferOutputTensor {
                contents,
                ..output(name, datatype, shape)
            });
        (prop::collection::vec(tensor, 0..4), prop::collection::vec(prop::collection::vec(any::<u8>(), 0..24), 0..4))
            .prop_map(|(outputs, raw)| ModelInferResponse {
                outputs,
                raw_output_contents: raw.into_iter().map(Bytes::from).collect(),
                ..Default::default()
            })
    }

    /// (name, datatype, shape, values as f64) outputs, decodable in both forms.
    type Outputs = Vec<(&'static str, &'static str, Vec<i64>, Vec<f64>)>;

    /// Two answers with the same output names, datatypes and shapes, and values of their
    /// own (NaN and infinities included, some values shared).
    fn arb_output_pair() -> impl Strategy<Value = (Outputs, Outputs)> {
        let value = prop_oneof![
            6 => (-4i32..4).prop_map(|v| v as f64 / 2.0),
            1 => Just(f64::NAN),
            1 => Just(f64::INFINITY),
        ];
        let one = (
            prop::sample::select(vec!["FP32", "FP64", "INT64", "INT32", "UINT8", "BOOL"]),
            prop::collection::vec(1i64..4, 0..3),
        )
            .prop_flat_map(move |(datatype, shape)| {
                let n = shape.iter().product::<i64>() as usize;
                let values = prop::collection::vec(value.clone(), n);
                (Just(datatype), Just(shape), values.clone(), values)
            });
        prop::collection::vec(one, 0..3).prop_map(|outputs| {
            let names = ["a", "b", "c"];
            let (mut x, mut y) = (Vec::new(), Vec::new());
            for (i, (datatype, shape, va, vb)) in outputs.into_iter().enumerate() {
                x.push((names[i], datatype, shape.clone(), va));
                y.push((names[i], datatype, shape, vb));
            }
            (x, y)
        })
    }

    /// The outputs as a response, raw or typed (non-float values made to fit the datatype).
    fn encode(outputs: &Outputs, raw: bool) -> ModelInferResponse {
        let mut response = ModelInferResponse::default();
        for (name, datatype, shape, values) in outputs {
            let int = |v: f64| if v.is_finite() { v as i64 } else { 1 };
            let mut contents = InferTensorContents::default();
            let mut bytes = Vec::new();
            for &v in values {
                match *datatype {
                    "FP32" => {
                        contents.fp32_contents.push(v as f32);
                        bytes.extend((v as f32).to_le_bytes());
                    }
                    "FP64" => {
                        contents.fp64_contents.push(v);
                        bytes.extend(v.to_le_bytes());
                    }
                    "INT64" => {
                        contents.int64_contents.push(int(v));
                        bytes.extend(int(v).to_le_bytes());
                    }
                    "INT32" => {
                        contents.int_contents.push(int(v) as i32);
                        bytes.extend((int(v) as i32).to_le_bytes());
                    }
                    "UINT8" => {
                        contents.uint_contents.push(int(v).unsigned_abs() as u8 as u32);
                        bytes.push(int(v).unsigned_abs() as u8);
                    }
                    _ => {
                        contents.bool_contents.push(int(v) != 0);
                        bytes.push((int(v) != 0) as u8);
                    }
                }
            }
            response.outputs.push(InferOutputTensor {
                contents: (!raw).then_some(contents),
                ..output(name, datatype, shape.clone())
            });
            if raw {
                response.raw_output_contents.push(Bytes::from(bytes));
            }
        }
        response
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn any_pair_compares_without_panicking(a in arb_response(), b in arb_response()) {
            let c = compare_responses(&a, &b);
            prop_assert!(c.label_agree <= c.label_total);
            prop_assert!(c.abs_diff_sum.is_finite() && c.abs_diff_sum >= 0.0);
        }

        #[test]
        fn exact_match_is_symmetric_and_a_response_matches_itself(a in arb_response(), b in arb_response()) {
            prop_assert_eq!(compare_responses(&a, &b).exact_match, compare_responses(&b, &a).exact_match);
            let same = compare_responses(&a, &a);
            // Itself: every output that decodes has the same bits (NaN included), so the
            // pair is exact.
            let decodable = (0..a.outputs.len()).all(|i| decode_output(&a, i).is_ok());
            if decodable {
                prop_assert!(same.exact_match);
                prop_assert_eq!(same.abs_diff_sum, 0.0);
            }
        }

        #[test]
        fn figures_are_symmetric_between_answers_of_the_same_outputs(
            (a, b) in arb_output_pair(), raw_a in any::<bool>(), raw_b in any::<bool>()
        ) {
            let (a, b) = (encode(&a, raw_a), encode(&b, raw_b));
            let (ab, ba) = (compare_responses(&a, &b), compare_responses(&b, &a));
            prop_assert_eq!(ab.exact_match, ba.exact_match);
            prop_assert_eq!((ab.label_agree, ab.label_total), (ba.label_agree, ba.label_total));
            prop_assert_eq!(ab.abs_diff_count, ba.abs_diff_count);
            prop_assert!((ab.abs_diff_sum - ba.abs_diff_sum).abs() <= 1e-9 * ab.abs_diff_sum.max(1.0));
        }

        #[test]
        fn any_bytes_parse_or_fail_without_panicking(a in prop::collection::vec(any::<u8>(), 0..64),
                                                      b in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = compare_raw(Bytes::from(a), Bytes::from(b));
        }
    }
}
