//! Just enough of the protobuf wire format to route a request without parsing it: the
//! Rust twin of `dataplane/wire.py`, checked against the same vectors
//! (`tests/vectors/rewrite.json`).
//!
//! The router reads two top-level string fields (1 and 2: model_name/name and
//! model_version/version in ModelInferRequest, ModelReadyRequest and
//! ModelMetadataRequest) and rewrites them by appending new ones: a protobuf parser keeps
//! the last value of a non-repeated field, so the tensors reach the backend as the client
//! sent them. The scan also checks the framing of the nested messages of the v2 schema, so
//! bytes protobuf would refuse are refused here (INVALID_ARGUMENT). It never panics on any
//! input (proptest below).

use std::fmt;

pub const NAME_FIELD: u32 = 1;
pub const VERSION_FIELD: u32 = 2;
/// protobuf's parsers refuse messages and groups nested deeper than this.
pub const MAX_DEPTH: usize = 100;
const MAX_FIELD_NUMBER: u64 = (1 << 29) - 1;
const MAX_VARINT_BYTES: usize = 10;

const VARINT: u64 = 0;
const I64: u64 = 1;
const LEN: u64 = 2;
const SGROUP: u64 = 3;
const EGROUP: u64 = 4;
const I32: u64 = 5;

/// What a field of a known number holds.
#[derive(Clone, Copy)]
pub enum Kind {
    Str,
    Bytes,
    /// bool, int64, uint64, double sent in their own wire types: nothing to check.
    Scalar,
    RepeatedVarint,
    RepeatedFixed32,
    RepeatedFixed64,
    Message(&'static Schema),
}

/// A message: its known fields by number (unknown numbers are skipped, as protobuf does).
pub struct Schema(&'static [(u32, Kind)]);

impl Schema {
    fn get(&self, field: u64) -> Option<Kind> {
        self.0.iter().find(|(n, _)| u64::from(*n) == field).map(|(_, k)| *k)
    }
}

pub static INFER_PARAMETER: Schema =
    Schema(&[(1, Kind::Scalar), (2, Kind::Scalar), (3, Kind::Str), (4, Kind::Scalar), (5, Kind::Scalar)]);
pub static PARAMETERS_ENTRY: Schema = Schema(&[(1, Kind::Str), (2, Kind::Message(&INFER_PARAMETER))]);
pub static TENSOR_CONTENTS: Schema = Schema(&[
    (1, Kind::RepeatedVarint),
    (2, Kind::RepeatedVarint),
    (3, Kind::RepeatedVarint),
    (4, Kind::RepeatedVarint),
    (5, Kind::RepeatedVarint),
    (6, Kind::RepeatedFixed32),
    (7, Kind::RepeatedFixed64),
    (8, Kind::Bytes),
]);
pub static INPUT_TENSOR: Schema = Schema(&[
    (1, Kind::Str),
    (2, Kind::Str),
    (3, Kind::RepeatedVarint),
    (4, Kind::Message(&PARAMETERS_ENTRY)),
    (5, Kind::Message(&TENSOR_CONTENTS)),
]);
pub static REQUESTED_OUTPUT: Schema = Schema(&[(1, Kind::Str), (2, Kind::Message(&PARAMETERS_ENTRY))]);
pub static INFER_REQUEST: Schema = Schema(&[
    (1, Kind::Str),
    (2, Kind::Str),
    (3, Kind::Str),
    (4, Kind::Message(&PARAMETERS_ENTRY)),
    (5, Kind::Message(&INPUT_TENSOR)),
    (6, Kind::Message(&REQUESTED_OUTPUT)),
    (7, Kind::Bytes),
]);
/// ModelReadyRequest and ModelMetadataRequest: name = 1, version = 2.
pub static MODEL_REQUEST: Schema = Schema(&[(1, Kind::Str), (2, Kind::Str)]);

/// The bytes are not a well-formed protobuf message of the expected type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn malformed<T>(text: impl Into<String>) -> Result<T, Malformed> {
    Err(Malformed(text.into()))
}

/// Top-level fields 1 and 2 (the last of each, as protobuf reads them), as strings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelRef<'a> {
    pub name: &'a str,
    pub version: &'a str,
}

fn read_varint(data: &[u8], mut pos: usize, end: usize) -> Result<(u64, usize), Malformed> {
    let mut result: u64 = 0;
    let mut shift = 0u32;
    let mut count = 0;
    while pos < end {
        let byte = data[pos];
        pos += 1;
        if shift < 64 {
            result |= u64::from(byte & 0x7F) << shift;
        }
        if byte < 0x80 {
            return Ok((result, pos));
        }
        shift += 7;
        count += 1;
        if count >= MAX_VARINT_BYTES {
            return malformed("varint longer than 10 bytes");
        }
    }
    malformed("truncated varint")
}

fn check_packed(kind: Kind, data: &[u8], field: u64) -> Result<(), Malformed> {
    match kind {
        Kind::RepeatedFixed32 if !data.len().is_multiple_of(4) => {
            malformed(format!("packed field {field} is not a whole number of 4-byte values"))
        }
        Kind::RepeatedFixed64 if !data.len().is_multiple_of(8) => {
            malformed(format!("packed field {field} is not a whole number of 8-byte values"))
        }
        Kind::RepeatedVarint if !data.is_empty() => {
            if data[data.len() - 1] >= 0x80 {
                return malformed(format!("packed field {field} ends inside a varint"));
            }
            let mut run = 0;
            for &b in data {
                if b >= 0x80 {
                    run += 1;
                    if run >= MAX_VARINT_BYTES {
                        return malformed(format!("packed field {field} holds a varint longer than 10 bytes"));
                    }
                } else {
                    run = 0;
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

type Top = [Option<(usize, usize)>; 2];

fn scan(
    data: &[u8],
    start: usize,
    end: usize,
    schema: &Schema,
    depth: usize,
    mut top: Option<&mut Top>,
) -> Result<(), Malformed> {
    if depth > MAX_DEPTH {
        return malformed("message nested too deeply");
    }
    let mut pos = start;
    let mut open_groups: Vec<u64> = Vec::new();
    while pos < end {
        let (key, next) = if data[pos] < 0x80 { (u64::from(data[pos]), pos + 1) } else { read_varint(data, pos, end)? };
        pos = next;
        let (field, wire_type) = (key >> 3, key & 7);
        if field == 0 || field > MAX_FIELD_NUMBER {
            return malformed(format!("invalid field number {field}"));
        }
        match wire_type {
            VARINT => pos = read_varint(data, pos, end)?.1,
            I64 => pos += 8,
            I32 => pos += 4,
            LEN => {
                let (length, next) = read_varint(data, pos, end)?;
                let value_start = next;
                if length > (end - value_start) as u64 {
                    return malformed("a field runs past the end of its message");
                }
                pos = value_start + length as usize;
                let kind = if open_groups.is_empty() { schema.get(field) } else { None };
                match kind {
                    None | Some(Kind::Bytes) | Some(Kind::Scalar) => {}
                    Some(Kind::Str) => {
                        if std::str::from_utf8(&data[value_start..pos]).is_err() {
                            return malformed(format!("string field {field} is not valid UTF-8"));
                        }
                        if let Some(top) = top.as_deref_mut() {
                            if field == u64::from(NAME_FIELD) || field == u64::from(VERSION_FIELD) {
                                top[(field - 1) as usize] = Some((value_start, pos));
                            }
                        }
                    }
                    Some(Kind::Message(nested)) => scan(data, value_start, pos, nested, depth + 1, None)?,
                    Some(kind) => check_packed(kind, &data[value_start..pos], field)?,
                }
            }
            SGROUP => {
                open_groups.push(field);
                if depth + open_groups.len() > MAX_DEPTH {
                    return malformed("groups nested too deeply");
                }
            }
            EGROUP => {
                if open_groups.pop() != Some(field) {
                    return malformed(format!("unmatched end of group {field}"));
                }
            }
            _ => return malformed(format!("invalid wire type {wire_type}")),
        }
    }
    if pos > end {
        return malformed("a field runs past the end of its message");
    }
    if let Some(group) = open_groups.last() {
        return malformed(format!("unterminated group {group}"));
    }
    Ok(())
}

/// The values of top-level fields 1 and 2 after checking that `data` is a well-formed
/// message of `schema`.
pub fn scan_model_ref<'a>(data: &'a [u8], schema: &Schema) -> Result<ModelRef<'a>, Malformed> {
    let mut top: Top = [None, None];
    scan(data, 0, data.len(), schema, 0, Some(&mut top))?;
    // Both spans were checked as UTF-8 by the scan.
    let text = |span: Option<(usize, usize)>| span.map_or("", |(a, b)| std::str::from_utf8(&data[a..b]).unwrap_or(""));
    Ok(ModelRef { name: text(top[0]), version: text(top[1]) })
}

pub fn encode_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7F) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

pub fn encode_string_field(field: u32, value: &str, out: &mut Vec<u8>) {
    encode_varint(u64::from(field) << 3 | LEN, out);
    encode_varint(value.len() as u64, out);
    out.extend_from_slice(value.as_bytes());
}

/// Bytes that, appended to a request, set fields 1 and 2 (always both: an empty version
/// overrides whatever version the client named).
pub fn model_ref_suffix(name: &str, version: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + version.len() + 6);
    encode_string_field(NAME_FIELD, name, &mut out);
    encode_string_field(VERSION_FIELD, version, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request(name: &str, version: &str, tail: &[u8]) -> Vec<u8> {
        let mut out = model_ref_suffix(name, version);
        out.extend_from_slice(tail);
        out
    }

    #[test]
    fn scan_reads_the_last_name_and_version() {
        let mut raw = request("dep_a", "1", &[]);
        raw.extend(model_ref_suffix("iris", ""));
        let found = scan_model_ref(&raw, &INFER_REQUEST).unwrap();
        assert_eq!(found, ModelRef { name: "iris", version: "" });
    }

    #[test]
    fn scan_refuses_a_length_past_the_end() {
        assert!(scan_model_ref(&[0x0a, 0x05, b'a'], &INFER_REQUEST).is_err());
    }

    #[test]
    fn scan_refuses_bad_utf8_in_the_name() {
        assert!(scan_model_ref(&[0x0a, 0x01, 0xff], &INFER_REQUEST).is_err());
    }

    #[test]
    fn scan_refuses_an_overlong_varint() {
        let raw = [0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01];
        assert!(scan_model_ref(&raw, &INFER_REQUEST).is_err());
    }

    #[test]
    fn scan_refuses_unmatched_groups() {
        assert!(scan_model_ref(&[0x1b], &INFER_REQUEST).is_err()); // start group 3, never ended
        assert!(scan_model_ref(&[0x1c], &INFER_REQUEST).is_err()); // end group 3, never started
        assert!(scan_model_ref(&[0x1b, 0x1c], &INFER_REQUEST).is_ok());
    }

    #[test]
    fn scan_refuses_deep_nesting() {
        let raw = vec![0x1b; MAX_DEPTH + 2];
        assert!(scan_model_ref(&raw, &INFER_REQUEST).is_err());
    }

    proptest! {
        #[test]
        fn scan_never_panics_on_any_bytes(raw in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = scan_model_ref(&raw, &INFER_REQUEST);
            let _ = scan_model_ref(&raw, &MODEL_REQUEST);
        }

        #[test]
        fn scan_never_panics_on_mutated_requests(
            name in "[a-z_]{0,12}", version in "[0-9]{0,3}",
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            cut in any::<usize>(),
        ) {
            let mut raw = request(&name, &version, &[0x2a, 0x06, 0x0a, 0x01, b'x', 0x12, 0x01, b'y']);
            for (at, byte) in flips {
                let at = at % raw.len();
                raw[at] = byte;
            }
            raw.truncate(cut % (raw.len() + 1));
            let _ = scan_model_ref(&raw, &INFER_REQUEST);
        }

        #[test]
        fn appended_fields_are_what_the_scan_reads(name in "\\PC{0,16}", version in "\\PC{0,8}") {
            let mut raw = request("dep_x", "7", &[]);
            raw.extend(model_ref_suffix(&name, &version));
            let found = scan_model_ref(&raw, &INFER_REQUEST).unwrap();
            prop_assert_eq!(found, ModelRef { name: &name, version: &version });
        }
    }
}

#[cfg(test)]
mod vectors {
    use super::*;
    use base64::Engine;
    use bytes::Bytes;

    /// tests/vectors/rewrite.json, shared with dataplane/wire.py's tests.
    #[test]
    fn the_shared_rewrite_vectors_hold() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/vectors/rewrite.json");
        let text = std::fs::read_to_string(path).expect("tests/vectors/rewrite.json");
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        let cases = doc["cases"].as_array().unwrap();
        assert!(cases.len() >= 10);
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let raw = b64.decode(case["request"].as_str().unwrap()).unwrap();
            if case["error"].as_bool() == Some(true) {
                assert!(scan_model_ref(&raw, &INFER_REQUEST).is_err(), "{name}: accepted");
                continue;
            }
            let message = match case["compressed"].as_str() {
                None => Bytes::from(raw.clone()),
                Some(packed) => {
                    let packed = b64.decode(packed).unwrap();
                    let mut body = vec![1u8];
                    body.extend((packed.len() as u32).to_be_bytes());
                    body.extend(packed);
                    let encoding = case["encoding"].as_str().unwrap().as_bytes();
                    crate::grpc::unary_message(&Bytes::from(body), Some(encoding), 1 << 20).unwrap()
                }
            };
            assert_eq!(&message[..], &raw[..], "{name}: decompressed");
            let found = scan_model_ref(&message, &INFER_REQUEST).unwrap();
            assert_eq!(found.name, case["model_name"].as_str().unwrap(), "{name}");
            assert_eq!(found.version, case["model_version"].as_str().unwrap(), "{name}");
            let to = case["rewrite_to"].as_array().unwrap();
            let mut rewritten = message.to_vec();
            rewritten.extend(model_ref_suffix(to[0].as_str().unwrap(), to[1].as_str().unwrap()));
            assert_eq!(rewritten, b64.decode(case["rewritten"].as_str().unwrap()).unwrap(), "{name}: rewritten");
        }
    }
}
