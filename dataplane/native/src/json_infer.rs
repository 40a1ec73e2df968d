//! The Open Inference Protocol v2 REST JSON inference request and response, translated to
//! and from ModelInferRequest / ModelInferResponse (SPEC section 5, "REST"), for a model
//! that has no `http_endpoint`: the router parses the caller's JSON, sends `ModelInfer` to
//! the variant's gRPC endpoint and writes the answer back as JSON.
//!
//! Request (the v2 REST body): `{"id"?, "parameters"?, "inputs": [{"name", "shape",
//! "datatype", "parameters"?, "data"}], "outputs"?: [{"name", "parameters"?}]}`; unknown
//! fields are ignored. `data` is row-major, flat or nested (`[[1, 2], [3, 4]]`), and must
//! hold exactly the shape's element count. Every v2 datatype: BOOL (true/false), INT8..64,
//! UINT8..64 (integers in the type's range), FP16, BF16, FP32, FP64 (numbers; a finite value
//! too large for the type is refused), BYTES (strings, sent as their UTF-8 bytes).
//! Parameters are bool, integer (int64, or uint64 above its range), number or string.
//!
//! On the wire, tensors go in the typed `contents` fields; FP16 and BF16 have none, so a
//! request with one of those sends every input as `raw_input_contents` (the protocol wants
//! raw for all inputs or none). An answer may use either form. NaN and infinities have no
//! JSON form: they are written as `null` (serde_json's choice), and BYTES that are not
//! UTF-8 are written with U+FFFD for the bad sequences.
//!
//! Parsing is two-pass and borrows: the body is read into borrowed `RawValue`s for `data`,
//! then each tensor's data is parsed straight into a vector of its datatype, so a large
//! tensor is never a tree of `serde_json::Value`s. Nothing here panics on any input.

use std::collections::HashMap;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::compare::{decode_contents, decode_raw, element_count, DataType, Values};
use crate::oip::{
    InferInputTensor, InferOutputTensor, InferParameter, InferRequestedOutputTensor, InferTensorContents,
    ModelInferRequest, ModelInferResponse, ParameterChoice,
};

/// Bad input: the message of the v2 error object (`{"error": "..."}`, HTTP 400).
#[derive(Clone, Debug, PartialEq)]
pub struct JsonError(pub String);

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for JsonError {}

fn bad(message: impl Into<String>) -> JsonError {
    JsonError(message.into())
}

/// The v2 REST error object, `{"error": "<message>"}`.
pub fn error_body(message: &str) -> Bytes {
    #[derive(Serialize)]
    struct ErrorObject<'a> {
        error: &'a str,
    }
    Bytes::from(serde_json::to_vec(&ErrorObject { error: message }).unwrap_or_else(|_| b"{\"error\":\"\"}".to_vec()))
}

// --- the JSON shapes -------------------------------------------------------------------

#[derive(Deserialize)]
struct RequestJson<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<ParametersJson>,
    #[serde(borrow)]
    inputs: Vec<TensorJson<'a>>,
    #[serde(default)]
    outputs: Option<Vec<RequestedOutputJson>>,
}

#[derive(Deserialize)]
struct ResponseJson<'a> {
    #[serde(default)]
    model_name: Option<String>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<ParametersJson>,
    #[serde(borrow)]
    outputs: Vec<TensorJson<'a>>,
}

#[derive(Deserialize)]
struct TensorJson<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<ParametersJson>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct RequestedOutputJson {
    name: String,
    #[serde(default)]
    parameters: Option<ParametersJson>,
}

/// A parameters object: bool, integer, number or string values.
struct ParametersJson(HashMap<String, InferParameter>);

impl<'de> Deserialize<'de> for ParametersJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map: HashMap<String, serde_json::Value> = HashMap::deserialize(deserializer)?;
        let mut out = HashMap::with_capacity(map.len());
        for (key, value) in map {
            let choice = match value {
                serde_json::Value::Bool(b) => ParameterChoice::BoolParam(b),
                serde_json::Value::String(s) => ParameterChoice::StringParam(s),
                serde_json::Value::Number(n) => {
                    if let Some(i) = n.as_i64() {
                        ParameterChoice::Int64Param(i)
                    } else if let Some(u) = n.as_u64() {
                        ParameterChoice::Uint64Param(u)
                    } else {
                        ParameterChoice::DoubleParam(n.as_f64().unwrap_or(f64::NAN))
                    }
                }
                _ => {
                    return Err(de::Error::custom(format!("parameter {key:?} must be a boolean, a number or a string")))
                }
            };
            out.insert(key, InferParameter { parameter_choice: Some(choice) });
        }
        Ok(ParametersJson(out))
    }
}

fn parameters_of(p: Option<ParametersJson>) -> HashMap<String, InferParameter> {
    p.map(|p| p.0).unwrap_or_default()
}

/// Serializes a parameters map as a JSON object (a parameter without a value as null).
struct ParametersOut<'a>(&'a HashMap<String, InferParameter>);

impl Serialize for ParametersOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            match &value.parameter_choice {
                Some(ParameterChoice::BoolParam(b)) => map.serialize_entry(key, b)?,
                Some(ParameterChoice::Int64Param(i)) => map.serialize_entry(key, i)?,
                Some(ParameterChoice::Uint64Param(u)) => map.serialize_entry(key, u)?,
                Some(ParameterChoice::DoubleParam(d)) => map.serialize_entry(key, d)?,
                Some(ParameterChoice::StringParam(s)) => map.serialize_entry(key, s)?,
                None => map.serialize_entry(key, &())?,
            }
        }
        map.end()
    }
}

// --- data: nested JSON arrays straight into a typed vector ------------------------------

/// One element type of `data`: how a JSON scalar becomes it (Err: the reason).
trait Element: Sized {
    const WHAT: &'static str;
    fn from_bool(_: bool) -> Result<Self, &'static str> {
        Err(Self::WHAT)
    }
    fn from_i64(_: i64) -> Result<Self, &'static str> {
        Err(Self::WHAT)
    }
    fn from_u64(_: u64) -> Result<Self, &'static str> {
        Err(Self::WHAT)
    }
    fn from_f64(_: f64) -> Result<Self, &'static str> {
        Err(Self::WHAT)
    }
    fn from_str(_: &str) -> Result<Self, &'static str> {
        Err(Self::WHAT)
    }
}

impl Element for bool {
    const WHAT: &'static str = "booleans (true or false)";
    fn from_bool(b: bool) -> Result<Self, &'static str> {
        Ok(b)
    }
}

/// Integers of a range, kept as i64 / u64 until encoding.
struct Int<const MIN: i64, const MAX: i64>(i64);
struct Uint<const MAX: u64>(u64);

impl<const MIN: i64, const MAX: i64> Element for Int<MIN, MAX> {
    const WHAT: &'static str = "integers in the datatype's range";
    fn from_i64(i: i64) -> Result<Self, &'static str> {
        if (MIN..=MAX).contains(&i) {
            Ok(Int(i))
        } else {
            Err(Self::WHAT)
        }
    }
    fn from_u64(u: u64) -> Result<Self, &'static str> {
        i64::try_from(u).map_err(|_| Self::WHAT).and_then(Self::from_i64)
    }
}

impl<const MAX: u64> Element for Uint<MAX> {
    const WHAT: &'static str = "non-negative integers in the datatype's range";
    fn from_i64(i: i64) -> Result<Self, &'static str> {
        u64::try_from(i).map_err(|_| Self::WHAT).and_then(Self::from_u64)
    }
    fn from_u64(u: u64) -> Result<Self, &'static str> {
        if u <= MAX {
            Ok(Uint(u))
        } else {
            Err(Self::WHAT)
        }
    }
}

/// A number as f64; finite values past the type's largest finite value (`MAX`, the bits of
/// an f64) are refused rather than turned into infinities.
struct Float<const MAX: u64>(f64);

const F16_MAX: u64 = 65504f64.to_bits();
const BF16_MAX: u64 = 3.3895313892515355e38f64.to_bits();
const F32_MAX: u64 = (f32::MAX as f64).to_bits();
const F64_MAX: u64 = f64::MAX.to_bits();

impl<const MAX: u64> Element for Float<MAX> {
    const WHAT: &'static str = "numbers in the datatype's range";
    fn from_i64(i: i64) -> Result<Self, &'static str> {
        Self::from_f64(i as f64)
    }
    fn from_u64(u: u64) -> Result<Self, &'static str> {
        Self::from_f64(u as f64)
    }
    fn from_f64(f: f64) -> Result<Self, &'static str> {
        if f.is_finite() && f.abs() > f64::from_bits(MAX) {
            Err(Self::WHAT)
        } else {
            Ok(Float(f))
        }
    }
}

impl Element for Bytes {
    const WHAT: &'static str = "strings";
    fn from_str(s: &str) -> Result<Self, &'static str> {
        Ok(Bytes::copy_from_slice(s.as_bytes()))
    }
}

/// Appends every scalar of a (nested) array, in row-major order, to `out`.
struct Flatten<'v, T> {
    out: &'v mut Vec<T>,
    depth: u32,
}

const MAX_DEPTH: u32 = 64;

impl<'de, T: Element> DeserializeSeed<'de> for Flatten<'_, T> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, T: Element> Visitor<'de> for Flatten<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", T::WHAT)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(de::Error::custom("data is nested too deeply"));
        }
        if let Some(hint) = seq.size_hint() {
            self.out.reserve(hint);
        }
        while seq.next_element_seed(Flatten { out: &mut *self.out, depth: self.depth + 1 })?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<(), E> {
        self.out.push(T::from_bool(b).map_err(E::custom)?);
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, i: i64) -> Result<(), E> {
        self.out.push(T::from_i64(i).map_err(E::custom)?);
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, u: u64) -> Result<(), E> {
        self.out.push(T::from_u64(u).map_err(E::custom)?);
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, f: f64) -> Result<(), E> {
        self.out.push(T::from_f64(f).map_err(E::custom)?);
        Ok(())
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        self.out.push(T::from_str(s).map_err(E::custom)?);
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(format!("null is not a value; data must hold {}", T::WHAT)))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(format!("an object is not a value; data must hold {}", T::WHAT)))
    }
}

fn flat<T: Element>(raw: &RawValue, what: &str) -> Result<Vec<T>, JsonError> {
    let mut out = Vec::new();
    let mut deserializer = serde_json::Deserializer::from_str(raw.get());
    Flatten { out: &mut out, depth: 0 }
        .deserialize(&mut deserializer)
        .map_err(|e| bad(format!("{what}: data must hold {} ({})", T::WHAT, strip_position(&e))))?;
    Ok(out)
}

/// serde_json's message without " at line 1 column 5" (positions inside `data`, not the body).
fn strip_position(err: &serde_json::Error) -> String {
    let text = err.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// A tensor parsed from JSON: its values in the v2 datatype's width.
struct Parsed {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    parameters: HashMap<String, InferParameter>,
    values: Values,
}

fn parse_tensor(t: TensorJson<'_>, kind: &str) -> Result<Parsed, JsonError> {
    let what = format!("{kind} {:?}", t.name);
    let datatype =
        DataType::parse(&t.datatype).ok_or_else(|| bad(format!("{what}: unknown datatype {:?}", t.datatype)))?;
    let count = element_count(&t.shape).map_err(|e| bad(format!("{what}: {e}")))?;
    let values = match datatype {
        DataType::Bool => Values::Bool(flat::<bool>(t.data, &what)?),
        DataType::Int8 => ints(flat::<Int<{ i8::MIN as i64 }, { i8::MAX as i64 }>>(t.data, &what)?),
        DataType::Int16 => ints(flat::<Int<{ i16::MIN as i64 }, { i16::MAX as i64 }>>(t.data, &what)?),
        DataType::Int32 => ints(flat::<Int<{ i32::MIN as i64 }, { i32::MAX as i64 }>>(t.data, &what)?),
        DataType::Int64 => ints(flat::<Int<{ i64::MIN }, { i64::MAX }>>(t.data, &what)?),
        DataType::Uint8 => uints(flat::<Uint<{ u8::MAX as u64 }>>(t.data, &what)?),
        DataType::Uint16 => uints(flat::<Uint<{ u16::MAX as u64 }>>(t.data, &what)?),
        DataType::Uint32 => uints(flat::<Uint<{ u32::MAX as u64 }>>(t.data, &what)?),
        DataType::Uint64 => uints(flat::<Uint<{ u64::MAX }>>(t.data, &what)?),
        DataType::Fp16 => Values::Half(
            flat::<Float<F16_MAX>>(t.data, &what)?.into_iter().map(|f| half::f16::from_f64(f.0).to_bits()).collect(),
        ),
        DataType::Bf16 => Values::Half(
            flat::<Float<BF16_MAX>>(t.data, &what)?.into_iter().map(|f| half::bf16::from_f64(f.0).to_bits()).collect(),
        ),
        DataType::Fp32 => {
            Values::Fp32(flat::<Float<F32_MAX>>(t.data, &what)?.into_iter().map(|f| f.0 as f32).collect())
        }
        DataType::Fp64 => Values::Fp64(flat::<Float<F64_MAX>>(t.data, &what)?.into_iter().map(|f| f.0).collect()),
        DataType::Bytes => Values::Bytes(flat::<Bytes>(t.data, &what)?),
    };
    let got = values_len(&values);
    if got != count {
        return Err(bad(format!("{what}: shape {:?} needs {count} values, data has {got}", t.shape)));
    }
    Ok(Parsed { name: t.name, datatype: t.datatype, shape: t.shape, parameters: parameters_of(t.parameters), values })
}

fn ints<const A: i64, const B: i64>(v: Vec<Int<A, B>>) -> Values {
    Values::Int(v.into_iter().map(|i| i.0).collect())
}

fn uints<const M: u64>(v: Vec<Uint<M>>) -> Values {
    Values::Uint(v.into_iter().map(|u| u.0).collect())
}

fn values_len(values: &Values) -> usize {
    match values {
        Values::Bool(v) => v.len(),
        Values::Int(v) => v.len(),
        Values::Uint(v) => v.len(),
        Values::Half(v) => v.len(),
        Values::Fp32(v) => v.len(),
        Values::Fp64(v) => v.len(),
        Values::Bytes(v) => v.len(),
    }
}

/// The typed contents field for the values (None: FP16/BF16, raw only).
fn contents_of(datatype: &str, values: Values) -> Option<InferTensorContents> {
    let mut c = InferTensorContents::default();
    match values {
        Values::Bool(v) => c.bool_contents = v,
        Values::Int(v) if datatype == "INT64" => c.int64_contents = v,
        Values::Int(v) => c.int_contents = v.into_iter().map(|i| i as i32).collect(),
        Values::Uint(v) if datatype == "UINT64" => c.uint64_contents = v,
        Values::Uint(v) => c.uint_contents = v.into_iter().map(|u| u as u32).collect(),
        Values::Half(_) => return None,
        Values::Fp32(v) => c.fp32_contents = v,
        Values::Fp64(v) => c.fp64_contents = v,
        Values::Bytes(v) => c.bytes_contents = v,
    }
    Some(c)
}

/// Little-endian raw bytes of the values in the datatype's width (BYTES: 4-byte lengths).
fn raw_of(datatype: DataType, values: &Values) -> Bytes {
    let size = datatype.item_size();
    let mut out = BytesMut::with_capacity(values_len(values) * size.max(4));
    match values {
        Values::Bool(v) => v.iter().for_each(|&b| out.put_u8(b as u8)),
        Values::Int(v) => v.iter().for_each(|&i| out.put_slice(&i.to_le_bytes()[..size])),
        Values::Uint(v) => v.iter().for_each(|&u| out.put_slice(&u.to_le_bytes()[..size])),
        Values::Half(v) => v.iter().for_each(|&h| out.put_u16_le(h)),
        Values::Fp32(v) => v.iter().for_each(|&f| out.put_f32_le(f)),
        Values::Fp64(v) => v.iter().for_each(|&f| out.put_f64_le(f)),
        Values::Bytes(v) => v.iter().for_each(|b| {
            out.put_u32_le(b.len() as u32);
            out.put_slice(b);
        }),
    }
    out.freeze()
}

/// Tensors as the protocol sends them: typed contents each, or (when one of them has no
/// typed field) every one raw.
fn encode_tensors(parsed: Vec<Parsed>) -> (Vec<(Parsed, Option<InferTensorContents>)>, Vec<Bytes>) {
    let all_typed = parsed.iter().all(|p| !matches!(p.values, Values::Half(_)));
    if all_typed {
        let typed = parsed
            .into_iter()
            .map(|mut p| {
                let values = std::mem::replace(&mut p.values, Values::Bool(Vec::new()));
                let contents = contents_of(&p.datatype, values);
                (p, contents)
            })
            .collect();
        (typed, Vec::new())
    } else {
        let raw =
            parsed.iter().map(|p| raw_of(DataType::parse(&p.datatype).unwrap_or(DataType::Bytes), &p.values)).collect();
        (parsed.into_iter().map(|p| (p, None)).collect(), raw)
    }
}

fn parse_body<'a, T: Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, JsonError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(bad(format!("the body is empty; expected a JSON {what}")));
    }
    serde_json::from_slice(body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            bad(format!("the body is not JSON: {e}"))
        } else {
            bad(format!("not a v2 {what}: {e}"))
        }
    })
}

/// A v2 REST inference request as the ModelInferRequest for one model.
pub fn request_from_json(body: &[u8], model_name: &str, model_version: &str) -> Result<ModelInferRequest, JsonError> {
    let request: RequestJson<'_> = parse_body(body, "inference request")?;
    if request.inputs.is_empty() {
        return Err(bad("an inference request needs at least one input"));
    }
    let parsed = request.inputs.into_iter().map(|t| parse_tensor(t, "input")).collect::<Result<Vec<_>, _>>()?;
    let (tensors, raw_input_contents) = encode_tensors(parsed);
    Ok(ModelInferRequest {
        model_name: model_name.to_string(),
        model_version: model_version.to_string(),
        id: request.id.unwrap_or_default(),
        parameters: parameters_of(request.parameters),
        inputs: tensors
            .into_iter()
            .map(|(p, contents)| InferInputTensor {
                name: p.name,
                datatype: p.datatype,
                shape: p.shape,
                parameters: p.parameters,
                contents,
            })
            .collect(),
        outputs: request
            .outputs
            .unwrap_or_default()
            .into_iter()
            .map(|o| InferRequestedOutputTensor { name: o.name, parameters: parameters_of(o.parameters) })
            .collect(),
        raw_input_contents,
    })
}

/// A v2 REST inference response (a backend's JSON answer) as a ModelInferResponse: what
/// the shadow comparison of two REST answers scores.
pub fn response_from_json(body: &[u8]) -> Result<ModelInferResponse, JsonError> {
    let response: ResponseJson<'_> = parse_body(body, "inference response")?;
    let parsed = response.outputs.into_iter().map(|t| parse_tensor(t, "output")).collect::<Result<Vec<_>, _>>()?;
    let (tensors, raw_output_contents) = encode_tensors(parsed);
    Ok(ModelInferResponse {
        model_name: response.model_name.unwrap_or_default(),
        model_version: response.model_version.unwrap_or_default(),
        id: response.id.unwrap_or_default(),
        parameters: parameters_of(response.parameters),
        outputs: tensors
            .into_iter()
            .map(|(p, contents)| InferOutputTensor {
                name: p.name,
                datatype: p.datatype,
                shape: p.shape,
                parameters: p.parameters,
                contents,
            })
            .collect(),
        raw_output_contents,
    })
}

// --- writing JSON ------------------------------------------------------------------------

/// Flat values as a JSON array (FP16/BF16 widened; BYTES as strings).
struct DataOut<'a> {
    datatype: DataType,
    values: &'a Values,
}

impl Serialize for DataOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.values {
            Values::Bool(v) => v.serialize(serializer),
            Values::Int(v) => v.serialize(serializer),
            Values::Uint(v) => v.serialize(serializer),
            Values::Fp32(v) => v.serialize(serializer),
            Values::Fp64(v) => v.serialize(serializer),
            Values::Half(v) => {
                let mut seq = serializer.serialize_seq(Some(v.len()))?;
                for &bits in v {
                    let f = if self.datatype == DataType::Bf16 {
                        half::bf16::from_bits(bits).to_f32()
                    } else {
                        half::f16::from_bits(bits).to_f32()
                    };
                    seq.serialize_element(&f)?;
                }
                seq.end()
            }
            Values::Bytes(v) => {
                let mut seq = serializer.serialize_seq(Some(v.len()))?;
                for b in v {
                    seq.serialize_element(&String::from_utf8_lossy(b))?;
                }
                seq.end()
            }
        }
    }
}

#[derive(Serialize)]
struct TensorOut<'a> {
    name: &'a str,
    datatype: &'a str,
    shape: &'a [i64],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<ParametersOut<'a>>,
    data: DataOut<'a>,
}

fn some_parameters(p: &HashMap<String, InferParameter>) -> Option<ParametersOut<'_>> {
    (!p.is_empty()).then_some(ParametersOut(p))
}

struct TensorIn<'a> {
    name: &'a str,
    datatype: &'a str,
    shape: &'a [i64],
    parameters: &'a HashMap<String, InferParameter>,
    contents: Option<&'a InferTensorContents>,
}

/// The values of tensor `index` (typed contents, or `raw[index]` when raw is used).
fn tensor_values(t: &TensorIn<'_>, raw: &[Bytes], index: usize, kind: &str) -> Result<(DataType, Values), JsonError> {
    let what = format!("{kind} {:?}", t.name);
    let datatype =
        DataType::parse(t.datatype).ok_or_else(|| bad(format!("{what}: unknown datatype {:?}", t.datatype)))?;
    let count = element_count(t.shape).map_err(|e| bad(format!("{what}: {e}")))?;
    let values = if raw.is_empty() {
        let empty = InferTensorContents::default();
        decode_contents(datatype, t.contents.unwrap_or(&empty), count)
    } else {
        match raw.get(index) {
            Some(bytes) => decode_raw(datatype, bytes, count),
            None => Err("raw contents are used but this tensor has no entry".to_string()),
        }
    }
    .map_err(|e| bad(format!("{what}: {e}")))?;
    Ok((datatype, values))
}

/// A request input or response output (the same fields) as a TensorIn.
macro_rules! tensor_in {
    ($t:expr) => {
        TensorIn {
            name: &$t.name,
            datatype: &$t.datatype,
            shape: &$t.shape,
            parameters: &$t.parameters,
            contents: $t.contents.as_ref(),
        }
    };
}

/// The tensors with their decoded values, ready to be written.
fn tensors_out<'a>(tensors: &'a [TensorIn<'a>], values: &'a [(DataType, Values)]) -> Vec<TensorOut<'a>> {
    tensors
        .iter()
        .zip(values)
        .map(|(t, (datatype, values))| TensorOut {
            name: t.name,
            datatype: t.datatype,
            shape: t.shape,
            parameters: some_parameters(t.parameters),
            data: DataOut { datatype: *datatype, values },
        })
        .collect()
}

fn tensors_json<'a>(tensors: &[TensorIn<'a>], raw: &[Bytes], kind: &str) -> Result<Vec<(DataType, Values)>, JsonError> {
    tensors.iter().enumerate().map(|(i, t)| tensor_values(t, raw, i, kind)).collect()
}

#[derive(Serialize)]
struct ResponseOut<'a> {
    model_name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    model_version: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<ParametersOut<'a>>,
    outputs: Vec<TensorOut<'a>>,
}

/// A ModelInferResponse as the v2 REST JSON answer. Err: the answer's tensors do not
/// decode (the router answers that as its own error, never a half-written body).
pub fn response_to_json(response: &ModelInferResponse) -> Result<Vec<u8>, JsonError> {
    let tensors: Vec<TensorIn<'_>> = response.outputs.iter().map(|o| tensor_in!(o)).collect();
    let values = tensors_json(&tensors, &response.raw_output_contents, "output")?;
    let out = ResponseOut {
        model_name: &response.model_name,
        model_version: &response.model_version,
        id: &response.id,
        parameters: some_parameters(&response.parameters),
        outputs: tensors_out(&tensors, &values),
    };
    serde_json::to_vec(&out).map_err(|e| bad(format!("the answer cannot be written as JSON: {e}")))
}

#[derive(Serialize)]
struct RequestOut<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<ParametersOut<'a>>,
    inputs: Vec<TensorOut<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    outputs: Vec<RequestedOut<'a>>,
}

#[derive(Serialize)]
struct RequestedOut<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<ParametersOut<'a>>,
}

/// A ModelInferRequest as a v2 REST JSON request (the inverse of `request_from_json`; the
/// model's name and version are in the REST path, not the body).
pub fn request_to_json(request: &ModelInferRequest) -> Result<Vec<u8>, JsonError> {
    let tensors: Vec<TensorIn<'_>> = request.inputs.iter().map(|t| tensor_in!(t)).collect();
    let values = tensors_json(&tensors, &request.raw_input_contents, "input")?;
    let out = RequestOut {
        id: &request.id,
        parameters: some_parameters(&request.parameters),
        inputs: tensors_out(&tensors, &values),
        outputs: request
            .outputs
            .iter()
            .map(|o| RequestedOut { name: &o.name, parameters: some_parameters(&o.parameters) })
            .collect(),
    };
    serde_json::to_vec(&out).map_err(|e| bad(format!("the request cannot be written as JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn request(body: Value) -> Result<ModelInferRequest, JsonError> {
        request_from_json(body.to_string().as_bytes(), "m", "1")
    }

    fn one_input(datatype: &str, shape: Value, data: Value) -> Result<ModelInferRequest, JsonError> {
        request(json!({"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": data}]}))
    }

    fn message(r: Result<ModelInferRequest, JsonError>) -> String {
        r.expect_err("should be refused").0
    }

    #[test]
    fn a_request_becomes_model_infer_with_typed_contents() {
        let r = request(json!({
            "id": "r1",
            "parameters": {"a": 1, "b": true, "c": "s", "d": 0.5, "e": 18446744073709551615u64},
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2.5], [3, 4]],
                        "parameters": {"p": "q"}}],
            "outputs": [{"name": "y", "parameters": {"binary_data": false}}],
        }))
        .unwrap();
        assert_eq!((r.model_name.as_str(), r.model_version.as_str(), r.id.as_str()), ("m", "1", "r1"));
        let p = |k: &str| r.parameters[k].parameter_choice.clone().unwrap();
        assert_eq!(p("a"), ParameterChoice::Int64Param(1));
        assert_eq!(p("b"), ParameterChoice::BoolParam(true));
        assert_eq!(p("c"), ParameterChoice::StringParam("s".into()));
        assert_eq!(p("d"), ParameterChoice::DoubleParam(0.5));
        assert_eq!(p("e"), ParameterChoice::Uint64Param(u64::MAX));
        let x = &r.inputs[0];
        assert_eq!((x.name.as_str(), x.datatype.as_str(), x.shape.as_slice()), ("x", "FP32", &[2i64, 2][..]));
        assert_eq!(x.contents.as_ref().unwrap().fp32_contents, vec![1.0, 2.5, 3.0, 4.0]);
        assert!(x.parameters.contains_key("p"));
        assert_eq!(r.outputs[0].name, "y");
        assert!(r.raw_input_contents.is_empty());
    }

    #[test]
    fn every_datatype_lands_in_its_field() {
        let c = |dt: &str, data: Value| one_input(dt, json!([2]), data).unwrap().inputs[0].contents.clone().unwrap();
        assert_eq!(c("BOOL", json!([true, false])).bool_contents, vec![true, false]);
        assert_eq!(c("INT8", json!([-128, 127])).int_contents, vec![-128, 127]);
        assert_eq!(c("INT16", json!([-32768, 1])).int_contents, vec![-32768, 1]);
        assert_eq!(c("INT32", json!([i32::MIN, i32::MAX])).int_contents, vec![i32::MIN, i32::MAX]);
        assert_eq!(c("INT64", json!([i64::MIN, i64::MAX])).int64_contents, vec![i64::MIN, i64::MAX]);
        assert_eq!(c("UINT8", json!([0, 255])).uint_contents, vec![0, 255]);
        assert_eq!(c("UINT16", json!([0, 65535])).uint_contents, vec![0, 65535]);
        assert_eq!(c("UINT32", json!([0, u32::MAX])).uint_contents, vec![0, u32::MAX]);
        assert_eq!(c("UINT64", json!([0, u64::MAX])).uint64_contents, vec![0, u64::MAX]);
        assert_eq!(c("FP64", json!([0.1, -2])).fp64_contents, vec![0.1, -2.0]);
        assert_eq!(c("BYTES", json!(["héllo", ""])).bytes_contents, vec![Bytes::from("héllo"), Bytes::new()]);
    }

    #[test]
    fn fp16_sends_every_input_raw() {
        let r = request(json!({"inputs": [
            {"name": "h", "datatype": "FP16", "shape": [2], "data": [1.5, -2]},
            {"name": "i", "datatype": "INT16", "shape": [1], "data": [-2]},
            {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["ab"]},
        ]}))
        .unwrap();
        assert!(r.inputs.iter().all(|t| t.contents.is_none()));
        assert_eq!(r.raw_input_contents[0].as_ref(), &[0x00, 0x3e, 0x00, 0xc0]);
        assert_eq!(r.raw_input_contents[1].as_ref(), &[0xfe, 0xff]);
        assert_eq!(r.raw_input_contents[2].as_ref(), &[2, 0, 0, 0, b'a', b'b']);
    }

    #[test]
    fn shapes_are_checked_against_the_data() {
        assert!(
            message(one_input("FP32", json!([2, 3]), json!([1, 2, 3, 4, 5]))).contains("needs 6 values, data has 5")
        );
        assert!(message(one_input("FP32", json!([-1]), json!([1]))).contains("negative"));
        assert!(one_input("FP32", json!([]), json!(7)).is_ok()); // a scalar
        assert!(one_input("FP32", json!([0, 3]), json!([])).is_ok());
    }

    #[test]
    fn values_outside_the_datatype_are_refused() {
        for (dt, data) in [
            ("UINT8", json!([256])),
            ("UINT8", json!([-1])),
            ("INT8", json!([128])),
            ("INT32", json!([1.5])),
            ("INT64", json!([9223372036854775808u64])),
            ("BOOL", json!([1])),
            ("FP32", json!(["1"])),
            ("FP32", json!([1e300])),
            ("FP16", json!([70000])),
            ("BYTES", json!([1])),
            ("FP32", json!([null])),
            ("FP32", json!([{"a": 1}])),
        ] {
            let m = message(one_input(dt, json!([1]), data.clone()));
            assert!(m.contains("input \"x\": data must hold"), "{dt} {data}: {m}");
        }
        assert!(message(one_input("FP8", json!([1]), json!([1]))).contains("unknown datatype \"FP8\""));
    }

    #[test]
    fn what_is_not_an_inference_request_says_so() {
        assert!(request_from_json(b"{not json", "m", "").unwrap_err().0.contains("not JSON"));
        assert!(request_from_json(b"", "m", "").unwrap_err().0.contains("empty"));
        assert!(request_from_json(b"[1, 2]", "m", "").unwrap_err().0.contains("not a v2 inference request"));
        assert!(message(request(json!({"x": 1}))).contains("missing field `inputs`"));
        assert!(message(request(json!({"inputs": []}))).contains("at least one input"));
        assert!(message(request(json!({"inputs": [{"name": "x", "shape": [1], "data": [1]}]}))).contains("datatype"));
        assert!(message(request(json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}))).contains("data"));
        assert!(message(request(json!({"inputs": [], "parameters": {"a": [1]}}))).contains("parameter \"a\""));
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let body = format!(r#"{{"inputs": [{{"name": "x", "datatype": "FP32", "shape": [1], "data": {deep}}}]}}"#);
        assert!(request_from_json(body.as_bytes(), "m", "").is_err());
    }

    #[test]
    fn an_answer_becomes_v2_json_raw_or_typed() {
        let typed = InferTensorContents { int64_contents: vec![1, 2], ..Default::default() };
        let response = ModelInferResponse {
            model_name: "iris".into(),
            id: "r1".into(),
            outputs: vec![InferOutputTensor {
                name: "label".into(),
                datatype: "INT64".into(),
                shape: vec![2],
                contents: Some(typed),
                ..Default::default()
            }],
            ..Default::default()
        };
        let v: Value = serde_json::from_slice(&response_to_json(&response).unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"model_name": "iris", "id": "r1",
                             "outputs": [{"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 2]}]})
        );
        let raw = ModelInferResponse {
            model_name: "m".into(),
            outputs: vec![
                InferOutputTensor { name: "h".into(), datatype: "FP16".into(), shape: vec![1], ..Default::default() },
                InferOutputTensor { name: "s".into(), datatype: "BYTES".into(), shape: vec![1], ..Default::default() },
                InferOutputTensor { name: "n".into(), datatype: "FP32".into(), shape: vec![1], ..Default::default() },
            ],
            raw_output_contents: vec![
                Bytes::from_static(&[0x00, 0x3e]),
                Bytes::from_static(&[3, 0, 0, 0, b'a', 0xff, b'c']),
                Bytes::from(f32::NAN.to_le_bytes().to_vec()),
            ],
            ..Default::default()
        };
        let v: Value = serde_json::from_slice(&response_to_json(&raw).unwrap()).unwrap();
        assert_eq!(v["outputs"][0]["data"], json!([1.5]));
        assert_eq!(v["outputs"][1]["data"], json!(["a\u{fffd}c"]));
        assert_eq!(v["outputs"][2]["data"], json!([null]));
    }

    #[test]
    fn an_answer_that_does_not_decode_is_an_error_not_a_panic() {
        let response = ModelInferResponse {
            outputs: vec![InferOutputTensor {
                name: "o".into(),
                datatype: "FP32".into(),
                shape: vec![2],
                ..Default::default()
            }],
            raw_output_contents: vec![Bytes::from_static(&[1, 2, 3])],
            ..Default::default()
        };
        assert!(response_to_json(&response).unwrap_err().0.contains("output \"o\""));
    }

    #[test]
    fn the_error_object_is_v2s() {
        let v: Value = serde_json::from_slice(&error_body("no \"such\" model")).unwrap();
        assert_eq!(v, json!({"error": "no \"such\" model"}));
    }

    // --- round trips -----------------------------------------------------------------------

    const DATATYPES: [&str; 14] = [
        "BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP16", "BF16", "FP32",
        "FP64", "BYTES",
    ];

    /// An f32 as JSON holds it after serde_json writes it (its shortest f32 digits).
    fn f32_value(f: f32) -> Value {
        serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap()
    }

    fn values(datatype: &'static str, n: usize) -> BoxedStrategy<Vec<Value>> {
        let v = |s: BoxedStrategy<Value>| proptest::collection::vec(s, n).boxed();
        match datatype {
            "BOOL" => v(any::<bool>().prop_map(Value::from).boxed()),
            "INT8" => v(any::<i8>().prop_map(Value::from).boxed()),
            "INT16" => v(any::<i16>().prop_map(Value::from).boxed()),
            "INT32" => v(any::<i32>().prop_map(Value::from).boxed()),
            "INT64" => v(any::<i64>().prop_map(Value::from).boxed()),
            "UINT8" => v(any::<u8>().prop_map(Value::from).boxed()),
            "UINT16" => v(any::<u16>().prop_map(Value::from).boxed()),
            "UINT32" => v(any::<u32>().prop_map(Value::from).boxed()),
            "UINT64" => v(any::<u64>().prop_map(Value::from).boxed()),
            // Values the type holds exactly (what comes back equals what went in).
            "FP16" => v(any::<u16>()
                .prop_map(half::f16::from_bits)
                .prop_filter("finite", |h| h.is_finite())
                .prop_map(|h| f32_value(h.to_f32()))
                .boxed()),
            "BF16" => v(any::<u16>()
                .prop_map(half::bf16::from_bits)
                .prop_filter("finite", |h| h.is_finite())
                .prop_map(|h| f32_value(h.to_f32()))
                .boxed()),
            "FP32" => v(any::<f32>().prop_filter("finite", |f| f.is_finite()).prop_map(f32_value).boxed()),
            "FP64" => v(any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from).boxed()),
            _ => v(".{0,8}".prop_map(Value::from).boxed()),
        }
    }

    fn tensor() -> impl Strategy<Value = Value> {
        (proptest::sample::select(&DATATYPES[..]), proptest::collection::vec(0i64..4, 0..3)).prop_flat_map(
            |(datatype, shape)| {
                let n = shape.iter().product::<i64>() as usize;
                (Just(datatype), Just(shape), values(datatype, n), "[a-z]{1,6}").prop_map(
                    |(datatype, shape, data, name)| json!({"name": name, "datatype": datatype, "shape": shape, "data": data}),
                )
            },
        )
    }

    fn parameters() -> impl Strategy<Value = Value> {
        proptest::collection::hash_map(
            "[a-z]{1,5}",
            prop_oneof![
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                (i64::MAX as u64 + 1..=u64::MAX).prop_map(Value::from),
                any::<f64>()
                    .prop_filter("finite, not integral", |f| f.is_finite() && f.fract() != 0.0)
                    .prop_map(Value::from),
                ".{0,6}".prop_map(Value::from),
            ],
            0..3,
        )
        .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    /// JSON as this module writes it: empty parameter objects are left out.
    fn normalized(mut v: Value) -> Value {
        if let Some(o) = v.as_object_mut() {
            o.retain(|k, x| !(k == "parameters" && x.as_object().is_some_and(|m| m.is_empty())));
            for x in o.values_mut() {
                *x = normalized(x.take());
            }
        } else if let Some(a) = v.as_array_mut() {
            for x in a.iter_mut() {
                *x = normalized(x.take());
            }
        }
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn request_json_round_trips_through_model_infer(
            inputs in proptest::collection::vec(tensor(), 1..4),
            params in parameters(),
            id in "[a-z0-9]{0,4}",
        ) {
            let body = json!({"id": id, "parameters": params, "inputs": inputs});
            let request = request_from_json(body.to_string().as_bytes(), "m", "").unwrap();
            // Through the protobuf bytes too: what the backend gets.
            let wire = prost::Message::encode_to_vec(&request);
            let decoded: ModelInferRequest = prost::Message::decode(wire.as_slice()).unwrap();
            let back: Value = serde_json::from_slice(&request_to_json(&decoded).unwrap()).unwrap();
            let mut expected = normalized(body);
            if id.is_empty() {
                expected.as_object_mut().unwrap().remove("id");
            }
            prop_assert_eq!(back, expected);
        }

        #[test]
        fn response_json_round_trips_through_model_infer_response(
            outputs in proptest::collection::vec(tensor(), 0..4),
            params in parameters(),
        ) {
            let body = json!({"model_name": "m", "model_version": "2", "parameters": params, "outputs": outputs});
            let response = response_from_json(body.to_string().as_bytes()).unwrap();
            let wire = prost::Message::encode_to_vec(&response);
            let decoded: ModelInferResponse = prost::Message::decode(wire.as_slice()).unwrap();
            let back: Value = serde_json::from_slice(&response_to_json(&decoded).unwrap()).unwrap();
            prop_assert_eq!(back, normalized(body));
        }

        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = request_from_json(&body, "m", "");
            let _ = response_from_json(&body);
        }

        #[test]
        fn arbitrary_answers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(response) = <ModelInferResponse as prost::Message>::decode(bytes.as_slice()) {
                let _ = response_to_json(&response);
            }
        }
    }
}
