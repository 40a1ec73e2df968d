//! The v2 error object for requests hyper refuses before the router sees them (SPEC section
//! 5, "REST": every router error is `{"error": "..."}`): a request line or header that does
//! not parse, headers too large. hyper answers those itself, with an empty body and the
//! connection closed; `V2Errors` (the connection's transport) gives that answer a JSON body.
//!
//! Only hyper's own parse-error answer is rewritten: a head-only write of exactly
//! `HTTP/1.1 <4xx/5xx> ...`, `connection: close`, `content-length: 0` and `date` (hyper's
//! order and nothing else). Every answer the router sends carries a content-type or tsplit-*
//! headers, so none of them matches; HTTP/2 frames never start with `HTTP/1.1`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};

/// A transport that rewrites hyper's empty parse-error answers into v2 error objects.
pub struct V2Errors<T> {
    inner: T,
    /// A rewritten answer being written: its bytes, how many are written, and how many of
    /// hyper's bytes it stands for.
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<T> V2Errors<T> {
    pub fn new(inner: T) -> V2Errors<T> {
        V2Errors { inner, pending: None }
    }
}

/// hyper's parse-error answer `head` with a v2 error body, or None when `head` is not one.
pub fn v2_error_answer(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let (status_line, rest) = text.strip_prefix("HTTP/1.1 ")?.split_once("\r\n")?;
    let code: u16 = status_line.get(..3)?.parse().ok()?;
    if !(400..600).contains(&code) {
        return None;
    }
    let rest = rest.strip_prefix("connection: close\r\ncontent-length: 0\r\n")?;
    let date = match rest {
        "\r\n" => None,
        _ => Some(rest.strip_prefix("date: ")?.strip_suffix("\r\n\r\n")?),
    };
    if date.is_some_and(|d| d.contains(['\r', '\n'])) {
        return None;
    }
    let message = match code {
        431 => "the request's headers are over the router's limits (their size or count)",
        414 => "the request's path is longer than the router's limit",
        505 => "the request's HTTP version is not served: send HTTP/1.1 or HTTP/2",
        _ => "the request is not valid HTTP/1.1",
    };
    let body = crate::json_infer::error_body(message);
    let mut out = format!(
        "HTTP/1.1 {status_line}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(date) = date {
        out.push_str("date: ");
        out.push_str(date);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(&body);
    Some(out)
}

impl<T: Write + Unpin> V2Errors<T> {
    /// Write the pending rewritten answer; Ready(Ok(n)): all of it, standing for n of hyper's bytes.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some((bytes, done, claimed)) = self.pending.as_mut() else { return Poll::Ready(Ok(0)) };
        while *done < bytes.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]) {
                Poll::Ready(Ok(0)) => {
                    self.pending = None;
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Ready(Err(e)) => {
                    self.pending = None;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        let claimed = *claimed;
        self.pending = None;
        Poll::Ready(Ok(claimed))
    }

    fn start(&mut self, buf: &[u8]) -> bool {
        if self.pending.is_none() {
            if let Some(answer) = v2_error_answer(buf) {
                self.pending = Some((answer, 0, buf.len()));
            }
        }
        self.pending.is_some()
    }
}

impl<T: Read + Unpin> Read for V2Errors<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for V2Errors<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.start(buf) {
            return this.drain(cx);
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (nonempty.next(), nonempty.next()) {
            if this.start(only) {
                return this.drain(cx);
            }
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_parse_error_answers_get_a_v2_body_and_nothing_else_changes() {
        let date = "Wed, 02 Dec 2026 02:32:39 GMT";
        let head =
            format!("HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: {date}\r\n\r\n");
        let answer = String::from_utf8(v2_error_answer(head.as_bytes()).unwrap()).unwrap();
        let (head_out, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head_out.starts_with("HTTP/1.1 400 Bad Request\r\nconnection: close\r\n"));
        assert!(head_out.contains("content-type: application/json") && head_out.ends_with(date));
        assert!(head_out.contains(&format!("content-length: {}", body.len())));
        assert_eq!(body, r#"{"error":"the request is not valid HTTP/1.1"}"#);
        let big = "HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert!(String::from_utf8(v2_error_answer(big.as_bytes()).unwrap()).unwrap().contains("headers are over"));
        for other in [
            // The router's own answers and a backend's passed on: never rewritten.
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\ntsplit-variant: champion\r\n\r\n",
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\nbody",
            "\0\0\x04\x01\0\0\0\0\x01HTTP/1.1 400",
        ] {
            assert_eq!(v2_error_answer(other.as_bytes()), None, "{other:?}");
        }
    }
}
