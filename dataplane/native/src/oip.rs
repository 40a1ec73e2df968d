//! The Open Inference Protocol v2 messages (protos/tsplit/inference/grpc_predict_v2.proto),
//! as prost structs written by hand: derive only, no protoc and no build script. Field
//! numbers and types are the proto's; a test below checks them against bytes the proto's
//! own encoding gives.
//!
//! Bytes fields (`raw_*_contents`, `bytes_contents`) are `bytes::Bytes`: decoding from a
//! `Bytes` buffer slices it (no copy), so a large answer's tensors are not duplicated.
//!
//! The router itself never parses a request on its hot path (wire.rs scans and rewrites the
//! bytes); these are for comparing shadow pairs (compare.rs) and for REST translation.

use std::collections::HashMap;

use bytes::Bytes;

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ParameterChoice {
    #[prost(bool, tag = "1")]
    BoolParam(bool),
    #[prost(int64, tag = "2")]
    Int64Param(i64),
    #[prost(string, tag = "3")]
    StringParam(String),
    #[prost(double, tag = "4")]
    DoubleParam(f64),
    #[prost(uint64, tag = "5")]
    Uint64Param(u64),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct InferParameter {
    #[prost(oneof = "ParameterChoice", tags = "1, 2, 3, 4, 5")]
    pub parameter_choice: Option<ParameterChoice>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct InferTensorContents {
    #[prost(bool, repeated, tag = "1")]
    pub bool_contents: Vec<bool>,
    #[prost(int32, repeated, tag = "2")]
    pub int_contents: Vec<i32>,
    #[prost(int64, repeated, tag = "3")]
    pub int64_contents: Vec<i64>,
    #[prost(uint32, repeated, tag = "4")]
    pub uint_contents: Vec<u32>,
    #[prost(uint64, repeated, tag = "5")]
    pub uint64_contents: Vec<u64>,
    #[prost(float, repeated, tag = "6")]
    pub fp32_contents: Vec<f32>,
    #[prost(double, repeated, tag = "7")]
    pub fp64_contents: Vec<f64>,
    #[prost(bytes = "bytes", repeated, tag = "8")]
    pub bytes_contents: Vec<Bytes>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct InferInputTensor {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub datatype: String,
    #[prost(int64, repeated, tag = "3")]
    pub shape: Vec<i64>,
    #[prost(map = "string, message", tag = "4")]
    pub parameters: HashMap<String, InferParameter>,
    #[prost(message, optional, tag = "5")]
    pub contents: Option<InferTensorContents>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct InferRequestedOutputTensor {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(map = "string, message", tag = "2")]
    pub parameters: HashMap<String, InferParameter>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelInferRequest {
    #[prost(string, tag = "1")]
    pub model_name: String,
    #[prost(string, tag = "2")]
    pub model_version: String,
    #[prost(string, tag = "3")]
    pub id: String,
    #[prost(map = "string, message", tag = "4")]
    pub parameters: HashMap<String, InferParameter>,
    #[prost(message, repeated, tag = "5")]
    pub inputs: Vec<InferInputTensor>,
    #[prost(message, repeated, tag = "6")]
    pub outputs: Vec<InferRequestedOutputTensor>,
    #[prost(bytes = "bytes", repeated, tag = "7")]
    pub raw_input_contents: Vec<Bytes>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct InferOutputTensor {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub datatype: String,
    #[prost(int64, repeated, tag = "3")]
    pub shape: Vec<i64>,
    #[prost(map = "string, message", tag = "4")]
    pub parameters: HashMap<String, InferParameter>,
    #[prost(message, optional, tag = "5")]
    pub contents: Option<InferTensorContents>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelInferResponse {
    #[prost(string, tag = "1")]
    pub model_name: String,
    #[prost(string, tag = "2")]
    pub model_version: String,
    #[prost(string, tag = "3")]
    pub id: String,
    #[prost(map = "string, message", tag = "4")]
    pub parameters: HashMap<String, InferParameter>,
    #[prost(message, repeated, tag = "5")]
    pub outputs: Vec<InferOutputTensor>,
    #[prost(bytes = "bytes", repeated, tag = "6")]
    pub raw_output_contents: Vec<Bytes>,
}

// --- the server and model calls --------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerLiveRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerLiveResponse {
    #[prost(bool, tag = "1")]
    pub live: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerReadyRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerReadyResponse {
    #[prost(bool, tag = "1")]
    pub ready: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelReadyRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelReadyResponse {
    #[prost(bool, tag = "1")]
    pub ready: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerMetadataRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerMetadataResponse {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
    #[prost(string, repeated, tag = "3")]
    pub extensions: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelMetadataRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorMetadata {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub datatype: String,
    #[prost(int64, repeated, tag = "3")]
    pub shape: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelMetadataResponse {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, repeated, tag = "2")]
    pub versions: Vec<String>,
    #[prost(string, tag = "3")]
    pub platform: String,
    #[prost(message, repeated, tag = "4")]
    pub inputs: Vec<TensorMetadata>,
    #[prost(message, repeated, tag = "5")]
    pub outputs: Vec<TensorMetadata>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// A ModelInferResponse as Python protobuf serializes it for the proto (the bytes
    /// printed by `SerializeToString`), so a wrong field number or encoding fails here.
    #[test]
    fn field_numbers_and_encodings_match_the_proto() {
        let contents = InferTensorContents { int64_contents: vec![1, 2], ..Default::default() };
        let response = ModelInferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: "i".into(),
            outputs: vec![InferOutputTensor {
                name: "o".into(),
                datatype: "INT64".into(),
                shape: vec![2],
                contents: Some(contents),
                ..Default::default()
            }],
            raw_output_contents: vec![Bytes::from_static(b"\x01")],
            ..Default::default()
        };
        let expected: &[u8] = &[
            0x0a, 1, b'm', // model_name = 1
            0x12, 1, b'1', // model_version = 2
            0x1a, 1, b'i', // id = 3
            0x2a, 19, // outputs = 5
            0x0a, 1, b'o', 0x12, 5, b'I', b'N', b'T', b'6', b'4', // name, datatype
            0x1a, 1, 2, // shape = 3, packed
            0x2a, 4, 0x1a, 2, 1, 2, // contents = 5 { int64_contents = 3, packed }
            0x32, 1, 1, // raw_output_contents = 6
        ];
        assert_eq!(response.encode_to_vec(), expected);
        assert_eq!(ModelInferResponse::decode(expected).unwrap(), response);
    }

    #[test]
    fn request_fields_and_parameters_round_trip() {
        let mut parameters = HashMap::new();
        parameters.insert(
            "p".to_string(),
            InferParameter { parameter_choice: Some(ParameterChoice::StringParam("v".into())) },
        );
        let request = ModelInferRequest {
            model_name: "dep".into(),
            parameters: parameters.clone(),
            inputs: vec![InferInputTensor {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![1, 2],
                parameters,
                contents: None,
            }],
            outputs: vec![InferRequestedOutputTensor { name: "y".into(), ..Default::default() }],
            raw_input_contents: vec![Bytes::from_static(&[0; 8])],
            ..Default::default()
        };
        let bytes = request.encode_to_vec();
        // raw_input_contents is field 7 (tag 0x3a), the last field written.
        assert_eq!(&bytes[bytes.len() - 10..bytes.len() - 8], &[0x3a, 8]);
        assert_eq!(ModelInferRequest::decode(bytes.as_slice()).unwrap(), request);
    }

    #[test]
    fn decoding_from_bytes_shares_the_buffer() {
        let response =
            ModelInferResponse { raw_output_contents: vec![Bytes::from(vec![7u8; 4096])], ..Default::default() };
        let buffer = Bytes::from(response.encode_to_vec());
        let decoded = ModelInferResponse::decode(buffer.clone()).unwrap();
        let raw = &decoded.raw_output_contents[0];
        let inside = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
        assert!(inside.contains(&(raw.as_ptr() as usize)));
    }
}
