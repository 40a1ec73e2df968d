//! gRPC server reflection (grpc.reflection.v1 and v1alpha, the same messages): list the
//! services, and answer file_by_filename / file_containing_symbol with the serialized
//! FileDescriptorProtos the Python side handed over (a file with its dependencies), so
//! `grpcurl describe` resolves every service listed.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine;
use bytes::{Buf, Bytes, BytesMut};
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;

use crate::body::{status_frame, BoxError, Polled, RespBody};
use crate::grpc::{self, answer_headers, Code, Status};
use crate::serve::Shared;
use crate::wire::{encode_string_field, encode_varint};

const V1: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
const V1ALPHA: &str = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

pub fn is_reflection(path: &str) -> bool {
    path == V1 || path == V1ALPHA
}

/// From the Python side: every listed service, each file's FileDescriptorProto (base64),
/// which file defines each symbol, and each file's dependencies.
#[derive(Deserialize, Default, Clone, Debug)]
pub struct ReflectionSpec {
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub files: HashMap<String, String>,
    #[serde(default)]
    pub symbols: HashMap<String, String>,
    #[serde(default)]
    pub deps: HashMap<String, Vec<String>>,
}

struct Data {
    services: Vec<String>,
    files: HashMap<String, Bytes>,
    symbols: HashMap<String, String>,
    deps: HashMap<String, Vec<String>>,
}

#[derive(Clone)]
pub struct Reflection(Arc<Data>);

impl Reflection {
    pub fn new(spec: &ReflectionSpec) -> Reflection {
        let b64 = base64::engine::general_purpose::STANDARD;
        let files =
            spec.files.iter().filter_map(|(k, v)| b64.decode(v).ok().map(|b| (k.clone(), Bytes::from(b)))).collect();
        Reflection(Arc::new(Data {
            services: spec.services.clone(),
            files,
            symbols: spec.symbols.clone(),
            deps: spec.deps.clone(),
        }))
    }

    /// A file and its dependencies, the file first.
    fn file_with_deps(&self, name: &str) -> Option<Vec<Bytes>> {
        self.0.files.get(name)?;
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut todo = vec![name.to_string()];
        while let Some(file) = todo.pop() {
            if !seen.insert(file.clone()) {
                continue;
            }
            if let Some(bytes) = self.0.files.get(&file) {
                out.push(bytes.clone());
            }
            if let Some(deps) = self.0.deps.get(&file) {
                todo.extend(deps.iter().rev().cloned());
            }
        }
        Some(out)
    }

    /// The answer (a ServerReflectionResponse) to one ServerReflectionRequest.
    pub fn answer(&self, request: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut host = String::new();
        let mut body: Option<Vec<u8>> = None;
        for (field, value) in fields(request) {
            let text = String::from_utf8_lossy(value);
            match field {
                1 => host = text.into_owned(),
                3 => body = Some(self.files_answer(self.file_with_deps(&text), &format!("file {text:?} not found"))),
                4 => {
                    let file = self.lookup_symbol(&text);
                    body = Some(self.files_answer(
                        file.and_then(|f| self.file_with_deps(&f)),
                        &format!("symbol {text:?} not found"),
                    ))
                }
                5 => body = Some(error_response(Code::NOT_FOUND, "extensions are not served")),
                6 => {
                    // all_extension_numbers_of_type: none of our messages has extensions.
                    let mut inner = Vec::new();
                    encode_string_field(1, &text, &mut inner);
                    body = Some(length_field(5, &inner));
                }
                7 => {
                    let mut list = Vec::new();
                    for service in &self.0.services {
                        let mut entry = Vec::new();
                        encode_string_field(1, service, &mut entry);
                        list.extend(length_field(1, &entry));
                    }
                    body = Some(length_field(6, &list));
                }
                _ => {}
            }
        }
        encode_string_field(1, &host, &mut out);
        out.extend(length_field(2, request));
        out.extend(body.unwrap_or_else(|| error_response(Code::INVALID_ARGUMENT, "no reflection request given")));
        out
    }

    /// A symbol's file: the symbol itself, or (a method, a nested type, an enum value) the
    /// nearest enclosing symbol that is known.
    fn lookup_symbol(&self, symbol: &str) -> Option<String> {
        let mut name = symbol.trim_start_matches('.');
        loop {
            if let Some(file) = self.0.symbols.get(name) {
                return Some(file.clone());
            }
            name = &name[..name.rfind('.')?];
        }
    }

    fn files_answer(&self, files: Option<Vec<Bytes>>, missing: &str) -> Vec<u8> {
        match files {
            None => error_response(Code::NOT_FOUND, missing),
            Some(files) => {
                let mut inner = Vec::new();
                for f in files {
                    inner.extend(length_field(1, &f));
                }
                length_field(4, &inner)
            }
        }
    }
}

fn length_field(field: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 6);
    encode_varint(field << 3 | 2, &mut out);
    encode_varint(value.len() as u64, &mut out);
    out.extend_from_slice(value);
    out
}

fn error_response(code: Code, message: &str) -> Vec<u8> {
    let mut inner = Vec::new();
    encode_varint(1 << 3, &mut inner);
    encode_varint(u64::from(code.0), &mut inner);
    encode_string_field(2, message, &mut inner);
    length_field(7, &inner)
}

/// The length-delimited top-level fields of a message (others skipped; stops at the
/// first malformed byte).
fn fields(data: &[u8]) -> Vec<(u64, &[u8])> {
    let mut out = Vec::new();
    let mut pos = 0;
    let varint = |pos: &mut usize| -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *data.get(*pos)?;
            *pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    };
    while pos < data.len() {
        let Some(key) = varint(&mut pos) else { break };
        match key & 7 {
            0 => {
                if varint(&mut pos).is_none() {
                    break;
                }
            }
            1 => pos += 8,
            5 => pos += 4,
            2 => {
                let Some(len) = varint(&mut pos) else { break };
                let Some(end) = pos.checked_add(len as usize).filter(|e| *e <= data.len()) else { break };
                out.push((key >> 3, &data[pos..end]));
                pos = end;
            }
            _ => break,
        }
    }
    out
}

pub async fn handle(shared: &Shared, req: Request<Incoming>) -> Result<Response<RespBody>, Status> {
    let body =
        Stream { inbound: req.into_body(), buf: BytesMut::new(), reflection: shared.reflection.clone(), done: false };
    Ok(answer_headers().body(body.boxed_unsync()).expect("static headers are valid"))
}

/// The bidirectional stream: each request message read is answered at once.
struct Stream {
    inbound: Incoming,
    buf: BytesMut,
    reflection: Reflection,
    done: bool,
}

impl Stream {
    fn next_message(&mut self) -> Option<Bytes> {
        if self.buf.len() < 5 {
            return None;
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if self.buf.len() < 5 + len {
            return None;
        }
        self.buf.advance(5);
        Some(self.buf.split_to(len).freeze())
    }

    fn end(&mut self, status: Status) -> Polled {
        self.done = true;
        status_frame(&status)
    }
}

impl Body for Stream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            if let Some(message) = this.next_message() {
                let answer = this.reflection.answer(&message);
                return Poll::Ready(Some(Ok(Frame::data(grpc::frame(&answer)))));
            }
            if this.buf.len() > 4 << 20 {
                return this.end(Status::new(Code::RESOURCE_EXHAUSTED, "reflection request too large"));
            }
            match Pin::new(&mut this.inbound).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.buf.extend_from_slice(&data);
                    }
                }
                Poll::Ready(Some(Err(_))) => return this.end(Status::new(Code::CANCELLED, "the stream broke")),
                Poll::Ready(None) => return this.end(Status::new(Code::OK, "")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_services_names_every_service() {
        let spec = ReflectionSpec { services: vec!["a.B".into(), "c.D".into()], ..Default::default() };
        let r = Reflection::new(&spec);
        let mut req = Vec::new();
        encode_string_field(7, "*", &mut req);
        let answer = r.answer(&req);
        let top = fields(&answer);
        let list = top.iter().find(|(f, _)| *f == 6).unwrap().1;
        let names: Vec<String> =
            fields(list).iter().map(|(_, e)| String::from_utf8_lossy(fields(e)[0].1).into_owned()).collect();
        assert_eq!(names, ["a.B", "c.D"]);
    }

    #[test]
    fn a_method_resolves_to_its_services_file_with_deps() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let spec = ReflectionSpec {
            services: vec!["p.S".into()],
            files: HashMap::from([("p.proto".into(), b64.encode(b"P")), ("dep.proto".into(), b64.encode(b"D"))]),
            symbols: HashMap::from([("p.S".into(), "p.proto".into())]),
            deps: HashMap::from([("p.proto".into(), vec!["dep.proto".into()])]),
        };
        let r = Reflection::new(&spec);
        let mut req = Vec::new();
        encode_string_field(4, "p.S.Method", &mut req);
        let top = fields(&r.answer(&req)).into_iter().find(|(f, _)| *f == 4).unwrap().1.to_vec();
        let files: Vec<&[u8]> = fields(&top).into_iter().map(|(_, v)| v).collect();
        assert_eq!(files, [b"P".as_slice(), b"D".as_slice()]);
    }

    #[test]
    fn an_unknown_symbol_is_not_found() {
        let r = Reflection::new(&ReflectionSpec::default());
        let mut req = Vec::new();
        encode_string_field(4, "x.Y", &mut req);
        assert!(fields(&r.answer(&req)).iter().any(|(f, _)| *f == 7));
    }
}
