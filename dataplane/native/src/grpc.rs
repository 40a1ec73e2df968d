//! gRPC over HTTP/2 framing: status codes, the 5-byte message prefix, grpc-encoding
//! (gzip/deflate) of requests, grpc-timeout, and the Trailers-Only answers the router makes
//! up itself.

use std::io::Read;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Response};

// Header names as values: a lookup by `&str` parses and hashes the name on every call.
pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
pub static GRPC_ENCODING: HeaderName = HeaderName::from_static("grpc-encoding");

/// gRPC status codes (the ones the router names itself, and every code by number for the
/// counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Code(pub u16);

impl Code {
    pub const OK: Code = Code(0);
    pub const CANCELLED: Code = Code(1);
    pub const UNKNOWN: Code = Code(2);
    pub const INVALID_ARGUMENT: Code = Code(3);
    pub const DEADLINE_EXCEEDED: Code = Code(4);
    pub const NOT_FOUND: Code = Code(5);
    pub const RESOURCE_EXHAUSTED: Code = Code(8);
    pub const UNIMPLEMENTED: Code = Code(12);
    pub const INTERNAL: Code = Code(13);
    pub const UNAVAILABLE: Code = Code(14);
    pub const UNAUTHENTICATED: Code = Code(16);

    pub const NAMES: [&'static str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];

    /// The name Python's grpc.StatusCode uses (the counters' `errors_by_code` keys).
    pub fn name(self) -> &'static str {
        Self::NAMES.get(self.0 as usize).copied().unwrap_or("UNKNOWN")
    }

    /// From a grpc-status value; anything that is not a code is UNKNOWN.
    pub fn parse(value: &[u8]) -> Code {
        std::str::from_utf8(value)
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|c| (*c as usize) < Self::NAMES.len())
            .map_or(Code::UNKNOWN, Code)
    }
}

/// A status the router answers itself.
#[derive(Clone, Debug)]
pub struct Status {
    pub code: Code,
    pub message: String,
}

impl Status {
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status { code, message: message.into() }
    }
}

/// grpc-message is percent-encoded (the gRPC HTTP/2 spec): printable ASCII but '%' as is.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub const CONTENT_TYPE: &str = "application/grpc";

/// Headers of a gRPC answer: HTTP 200 and the gRPC content type.
pub fn answer_headers() -> http::response::Builder {
    Response::builder().status(200).header(http::header::CONTENT_TYPE, CONTENT_TYPE)
}

/// Put a status into a header map (trailers, or the headers of a Trailers-Only answer).
pub fn put_status(headers: &mut HeaderMap, status: &Status) {
    headers.insert(GRPC_STATUS.clone(), HeaderValue::from(status.code.0));
    if !status.message.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&percent_encode(&status.message)) {
            headers.insert(GRPC_MESSAGE.clone(), value);
        }
    }
}

/// Frame one message: compressed flag 0, big-endian length, the bytes.
pub fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// Frame a message made of two parts (a request and the suffix appended to it) without
/// first joining them.
pub fn frame_parts(head: &[u8], tail: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + head.len() + tail.len());
    out.put_u8(0);
    out.put_u32((head.len() + tail.len()) as u32);
    out.put_slice(head);
    out.put_slice(tail);
    out.freeze()
}

/// The one message of a unary call's body: its bytes, decompressed per `encoding` when
/// its compressed flag is set. Errors are INVALID_ARGUMENT / UNIMPLEMENTED statuses.
pub fn unary_message(body: &Bytes, encoding: Option<&[u8]>, max_bytes: usize) -> Result<Bytes, Status> {
    if body.len() < 5 {
        return Err(Status::new(Code::INVALID_ARGUMENT, "the request is not a gRPC message (no message frame)"));
    }
    let compressed = body[0];
    let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if compressed > 1 {
        return Err(Status::new(Code::INVALID_ARGUMENT, "the request's message frame has a bad compressed flag"));
    }
    if body.len() - 5 != length {
        return Err(Status::new(Code::INVALID_ARGUMENT, "a unary request must carry exactly one whole message"));
    }
    let message = body.slice(5..);
    if compressed == 0 {
        return Ok(message);
    }
    let inflate_into = |reader: &mut dyn Read| -> Result<Bytes, Status> {
        let mut out = Vec::new();
        match reader.take(max_bytes as u64 + 1).read_to_end(&mut out) {
            Ok(_) if out.len() > max_bytes => Err(Status::new(
                Code::RESOURCE_EXHAUSTED,
                format!("the decompressed request is larger than the router's limit ({max_bytes} bytes)"),
            )),
            Ok(_) => Ok(Bytes::from(out)),
            Err(_) => Err(Status::new(Code::INVALID_ARGUMENT, "the request's compressed message does not decompress")),
        }
    };
    match encoding {
        Some(b"gzip") => inflate_into(&mut flate2::read::GzDecoder::new(&message[..])),
        Some(b"deflate") => inflate_into(&mut flate2::read::ZlibDecoder::new(&message[..])),
        None | Some(b"identity") => {
            Err(Status::new(Code::INVALID_ARGUMENT, "a compressed message without a grpc-encoding"))
        }
        Some(other) => Err(Status::new(
            Code::UNIMPLEMENTED,
            format!("grpc-encoding {:?} is not supported (gzip, deflate, identity)", String::from_utf8_lossy(other)),
        )),
    }
}

/// grpc-timeout: at most 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A grpc-timeout value for what is left of a deadline (rounded up, at most 8 digits).
pub fn format_timeout(left: Duration) -> HeaderValue {
    let micros = left.as_micros().max(1);
    let text = if micros < 100_000_000 {
        format!("{micros}u")
    } else if left.as_millis() < 100_000_000 {
        format!("{}m", left.as_millis())
    } else {
        format!("{}S", left.as_secs().min(99_999_999))
    };
    let mut value = HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("1S"));
    // A new value on every call: HPACK would add each to the connection's table and evict the
    // headers that repeat; sensitive values are sent as literals, never indexed.
    value.set_sensitive(true);
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn timeouts_parse_in_every_unit() {
        assert_eq!(parse_timeout(b"5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"123456789S"), None);
        assert_eq!(parse_timeout(b"S"), None);
        assert_eq!(parse_timeout(b""), None);
        assert_eq!(parse_timeout(b"5x"), None);
    }

    #[test]
    fn formatted_timeouts_parse_back() {
        for d in [
            Duration::from_micros(1),
            Duration::from_millis(1500),
            Duration::from_secs(300),
            Duration::from_secs(1 << 30),
        ] {
            let back = parse_timeout(format_timeout(d).as_bytes()).unwrap();
            assert!(back >= d.min(Duration::from_secs(99_999_999)) || d.as_secs() > 99_999_999);
        }
    }

    #[test]
    fn a_passed_on_timeout_is_never_indexed_by_hpack() {
        assert!(format_timeout(Duration::from_millis(1500)).is_sensitive());
    }

    #[test]
    fn a_gzip_message_is_decompressed() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(b"hello").unwrap();
        let packed = enc.finish().unwrap();
        let mut body = vec![1u8];
        body.extend((packed.len() as u32).to_be_bytes());
        body.extend(packed);
        let got = unary_message(&Bytes::from(body), Some(b"gzip"), 1 << 20).unwrap();
        assert_eq!(&got[..], b"hello");
    }

    #[test]
    fn a_short_or_overlong_frame_is_invalid() {
        assert_eq!(unary_message(&Bytes::from_static(b"\0\0"), None, 10).unwrap_err().code, Code::INVALID_ARGUMENT);
        assert_eq!(
            unary_message(&Bytes::from_static(b"\0\0\0\0\x02a"), None, 10).unwrap_err().code,
            Code::INVALID_ARGUMENT
        );
        assert_eq!(&unary_message(&Bytes::from_static(b"\0\0\0\0\x01a"), None, 10).unwrap()[..], b"a");
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(percent_encode("50% off\n"), "50%25 off%0A");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }
}
