//! The models' REST side: HTTP/1.1 keep-alive connections, pooled per runtime thread, each
//! exchange written and read inline by the task that makes it (no connection task, no
//! channel between them: per request, one write and the reads of its answer).
//!
//! An answer is read whole, framed by Content-Length, chunked encoding (decoded) or the
//! server closing the connection, up to the router's message limit. A connection goes back
//! to its pool when its answer was whole and the server keeps it alive; an idle one the
//! server has closed is noticed before reuse (tokio's cached readiness: no system call
//! while it is quiet), and a call whose reused connection turns out closed before any byte
//! of an answer is sent again once on a new connection.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::{Duration, Instant as StdInstant};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use crate::backends::CallError;

/// Idle connections older than this are closed rather than reused.
const IDLE_LIMIT: Duration = Duration::from_secs(30);
const MAX_IDLE_PER_ENDPOINT: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
const READ_CHUNK: usize = 16 * 1024;

/// A whole answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    /// Its headers without the hop-by-hop ones and without its framing (the body is whole).
    pub headers: HeaderMap,
    pub body: Bytes,
}

struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    idle_since: StdInstant,
}

thread_local! {
    static IDLE: RefCell<HashMap<Box<str>, Vec<Conn>>> = RefCell::new(HashMap::new());
    static LAST_SWEEP: Cell<Option<StdInstant>> = const { Cell::new(None) };
}

/// Why an exchange got no answer.
enum Failure {
    /// The connection was closed before any byte of an answer (a reused one may be stale).
    Closed,
    Broken(String),
}

/// Send one request to `endpoint` (host:port), with the headers of `headers.0` that
/// `headers.1` passes (the caller leaves out hop-by-hop ones), and read its whole answer.
pub async fn exchange(
    endpoint: &str,
    method: &Method,
    path: &str,
    headers: (&HeaderMap, fn(&str) -> bool),
    body: Bytes,
    max_body: usize,
    deadline: Instant,
) -> Result<Answer, CallError> {
    let head = request_head(endpoint, method, path, headers, &body);
    let no_body = *method == Method::HEAD;
    if let Some(conn) = take_idle(endpoint) {
        match timeout_at(deadline, conn.exchange(&head, &body, no_body, max_body)).await {
            Ok(Err(Failure::Closed)) => {} // closed while idle: once more, on a new connection
            done => return settle(endpoint, done),
        }
    }
    let conn = connect(endpoint, deadline).await?;
    settle(endpoint, timeout_at(deadline, conn.exchange(&head, &body, no_body, max_body)).await)
}

/// An exchange's outcome for the caller; a connection still good goes back to the pool.
fn settle(
    endpoint: &str,
    done: Result<Result<(Answer, Option<Conn>), Failure>, tokio::time::error::Elapsed>,
) -> Result<Answer, CallError> {
    match done {
        Err(_) => Err(CallError::DeadlineExceeded),
        Ok(Ok((answer, reusable))) => {
            if let Some(c) = reusable {
                keep(endpoint, c);
            }
            Ok(answer)
        }
        Ok(Err(Failure::Closed)) => Err(CallError::Unavailable("the server closed the connection".into())),
        Ok(Err(Failure::Broken(why))) => Err(CallError::Unavailable(why)),
    }
}

async fn connect(endpoint: &str, deadline: Instant) -> Result<Conn, CallError> {
    let by = deadline.min(Instant::now() + CONNECT_TIMEOUT);
    let stream = match timeout_at(by, TcpStream::connect(endpoint)).await {
        Err(_) if by == deadline => return Err(CallError::DeadlineExceeded),
        Err(_) => return Err(CallError::Unavailable("connect timed out".into())),
        Ok(Err(err)) => return Err(CallError::Unavailable(format!("cannot connect: {err}"))),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    Ok(Conn { stream, buf: BytesMut::with_capacity(READ_CHUNK), idle_since: StdInstant::now() })
}

fn take_idle(endpoint: &str) -> Option<Conn> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(endpoint)?;
        while let Some(conn) = list.pop() {
            if conn.idle_since.elapsed() < IDLE_LIMIT && conn.is_quiet() {
                return Some(conn);
            }
        }
        None
    })
}

fn keep(endpoint: &str, mut conn: Conn) {
    let now = StdInstant::now();
    conn.idle_since = now;
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        match idle.get_mut(endpoint) {
            Some(list) if list.len() < MAX_IDLE_PER_ENDPOINT => list.push(conn),
            Some(_) => {}
            None => {
                idle.insert(endpoint.into(), vec![conn]);
            }
        }
        // Now and then, close what has idled too long (endpoints no route names any more).
        if LAST_SWEEP.get().is_none_or(|at| now.duration_since(at) > IDLE_LIMIT) {
            LAST_SWEEP.set(Some(now));
            idle.retain(|_, list| {
                list.retain(|c| now.duration_since(c.idle_since) < IDLE_LIMIT);
                !list.is_empty()
            });
        }
    });
}

/// The request line and headers: the host, the body's length, and the passed headers.
fn request_head(
    endpoint: &str,
    method: &Method,
    path: &str,
    (headers, passed): (&HeaderMap, fn(&str) -> bool),
    body: &Bytes,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(128 + headers.len() * 32);
    head.extend_from_slice(method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    head.extend_from_slice(endpoint.as_bytes());
    if !body.is_empty() || *method == Method::POST || *method == Method::PUT {
        head.extend_from_slice(b"\r\ncontent-length: ");
        head.extend_from_slice(body.len().to_string().as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    for (name, value) in headers.iter().filter(|(name, _)| passed(name.as_str())) {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

impl Conn {
    /// An idle connection the server neither closed nor wrote to.
    fn is_quiet(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Read more of the answer; Ok(false): the server closed the connection.
    async fn fill(&mut self) -> Result<bool, Failure> {
        self.buf.reserve(READ_CHUNK);
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) => Ok(false),
            Ok(_) => Ok(true),
            Err(err) => Err(Failure::Broken(format!("reading the answer: {err}"))),
        }
    }

    async fn more(&mut self) -> Result<(), Failure> {
        match self.fill().await? {
            true => Ok(()),
            false => Err(Failure::Broken("the answer broke off".into())),
        }
    }

    async fn exchange(
        mut self,
        head: &[u8],
        body: &Bytes,
        no_body: bool,
        max_body: usize,
    ) -> Result<(Answer, Option<Conn>), Failure> {
        // A server may answer before it has read the whole request (a 413) and close: the
        // write then fails, and its answer is still read. A failed write with nothing to
        // read is a closed connection.
        let written = self.stream.write_all_buf(&mut Buf::chain(head, body.clone())).await.is_ok();
        let (status, headers, framing, keep_alive) = loop {
            if !self.buf.is_empty() {
                if let Some(parsed) = self.parse_head(no_body)? {
                    break parsed;
                }
            }
            if self.buf.len() > MAX_HEAD_BYTES {
                return Err(Failure::Broken("the answer's head is too large".into()));
            }
            let started = !self.buf.is_empty();
            match self.fill().await {
                Ok(true) => {}
                Ok(false) | Err(_) if !started => return Err(Failure::Closed),
                Ok(false) => return Err(Failure::Broken("the answer broke off".into())),
                Err(err) => return Err(err),
            }
        };
        let too_large = || Failure::Broken(format!("the answer is larger than the router's limit ({max_body} bytes)"));
        let (body, whole) = match framing {
            Framing::Empty => (Bytes::new(), true),
            Framing::Length(n) if n > max_body => return Err(too_large()),
            Framing::Length(n) => {
                self.buf.reserve(n.saturating_sub(self.buf.len()));
                while self.buf.len() < n {
                    self.more().await?;
                }
                (self.buf.split_to(n).freeze(), true)
            }
            Framing::Chunked => (self.read_chunked(max_body).await?, true),
            Framing::UntilClose => {
                while self.fill().await? {
                    if self.buf.len() > max_body {
                        return Err(too_large());
                    }
                }
                (self.buf.split().freeze(), false)
            }
        };
        let reusable = (written && whole && keep_alive && self.buf.is_empty()).then_some(self);
        Ok((Answer { status, headers, body }, reusable))
    }

    /// The answer's head when it is all in the buffer (consumed; informational 1xx answers
    /// are skipped), else None.
    #[allow(clippy::type_complexity)]
    fn parse_head(&mut self, no_body: bool) -> Result<Option<(StatusCode, HeaderMap, Framing, bool)>, Failure> {
        loop {
            let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut slots);
            let consumed = match response.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(err) => return Err(Failure::Broken(format!("the answer is not HTTP/1.1: {err}"))),
            };
            let code = response.code.unwrap_or(0);
            let status = StatusCode::from_u16(code)
                .map_err(|_| Failure::Broken(format!("the answer's status {code} is not an HTTP status")))?;
            if status.is_informational() {
                self.buf.advance(consumed);
                continue;
            }
            // Room for the tsplit-* headers the router adds to every answer.
            let mut headers = HeaderMap::with_capacity(response.headers.len() + 3);
            let (mut length, mut chunked, mut close, mut keep) = (None, false, false, false);
            for h in response.headers.iter() {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| Failure::Broken("the answer has a bad header name".into()))?;
                let tokens = || h.value.split(|&b| b == b',').map(|t| t.trim_ascii());
                match name.as_str() {
                    "content-length" => {
                        let n = std::str::from_utf8(h.value).ok().and_then(|s| s.trim().parse::<usize>().ok());
                        match (n, length) {
                            (Some(n), None) => length = Some(n),
                            (Some(n), Some(m)) if n == m => {}
                            _ => return Err(Failure::Broken("the answer has a bad Content-Length".into())),
                        }
                        continue;
                    }
                    "transfer-encoding" => {
                        chunked = tokens().next_back().is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
                        continue;
                    }
                    "connection" => {
                        close |= tokens().any(|t| t.eq_ignore_ascii_case(b"close"));
                        keep |= tokens().any(|t| t.eq_ignore_ascii_case(b"keep-alive"));
                        continue;
                    }
                    "keep-alive" | "proxy-connection" | "upgrade" | "trailer" => continue,
                    _ => {}
                }
                let value = HeaderValue::from_bytes(h.value)
                    .map_err(|_| Failure::Broken("the answer has a bad header value".into()))?;
                headers.append(name, value);
            }
            let http11 = response.version == Some(1);
            self.buf.advance(consumed);
            let framing = if no_body || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
                Framing::Empty
            } else if chunked {
                Framing::Chunked
            } else if let Some(n) = length {
                Framing::Length(n)
            } else {
                Framing::UntilClose
            };
            let keep_alive = !close && (http11 || keep);
            return Ok(Some((status, headers, framing, keep_alive)));
        }
    }

    /// A chunked body, decoded (its trailers read and dropped).
    async fn read_chunked(&mut self, max_body: usize) -> Result<Bytes, Failure> {
        let mut body = BytesMut::new();
        loop {
            let (consumed, size) = loop {
                match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete(found)) => break found,
                    Ok(httparse::Status::Partial) if self.buf.len() < MAX_HEAD_BYTES => self.more().await?,
                    _ => return Err(Failure::Broken("the answer's chunked body is malformed".into())),
                }
            };
            self.buf.advance(consumed);
            if size == 0 {
                break;
            }
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            if size > max_body.saturating_sub(body.len()) {
                return Err(Failure::Broken(format!(
                    "the answer is larger than the router's limit ({max_body} bytes)"
                )));
            }
            while self.buf.len() < size + 2 {
                self.more().await?;
            }
            body.extend_from_slice(&self.buf[..size]);
            if &self.buf[size..size + 2] != b"\r\n" {
                return Err(Failure::Broken("the answer's chunked body is malformed".into()));
            }
            self.buf.advance(size + 2);
        }
        // Trailer lines, up to the empty line.
        loop {
            match self.buf.windows(2).position(|w| w == b"\r\n") {
                Some(0) => {
                    self.buf.advance(2);
                    return Ok(body.freeze());
                }
                Some(end) => self.buf.advance(end + 2),
                None if self.buf.len() < MAX_HEAD_BYTES => self.more().await?,
                None => return Err(Failure::Broken("the answer's trailers are too large".into())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A server on 127.0.0.1 that reads each request's head and body (by Content-Length)
    /// and writes the next of `answers` on the connection; it counts the connections it
    /// took and closes one after its answers when `close_after` is set.
    async fn server(answers: Vec<&'static [u8]>, close_after: Option<usize>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut next = 0;
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, SeqCst);
                let mut served = 0;
                let mut buf = Vec::new();
                loop {
                    // Read one request: its head, then Content-Length bytes.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break Some(i + 4);
                        }
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => break None,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let Some(head_end) = head_end else { break };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                    while buf.len() < head_end + length {
                        let mut chunk = [0u8; 4096];
                        let n = stream.read(&mut chunk).await.unwrap();
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    buf.drain(..head_end + length);
                    stream.write_all(answers[next % answers.len()]).await.unwrap();
                    next += 1;
                    served += 1;
                    if close_after == Some(served) {
                        break;
                    }
                }
            }
        });
        (address, accepted)
    }

    async fn post(address: &str, body: &'static [u8], max: usize) -> Result<Answer, CallError> {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        let deadline = Instant::now() + Duration::from_secs(5);
        let all = (&headers, (|_| true) as fn(&str) -> bool);
        exchange(address, &Method::POST, "/v2/models/m/infer", all, Bytes::from_static(body), max, deadline).await
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";

    #[tokio::test(flavor = "current_thread")]
    async fn answers_reuse_one_kept_alive_connection() {
        let (address, accepted) = server(vec![OK], None).await;
        for _ in 0..5 {
            let answer = post(&address, b"{\"inputs\":[]}", 1 << 20).await.unwrap();
            assert_eq!(answer.status, StatusCode::OK);
            assert_eq!(&answer.body[..], b"{\"ok\":true}");
            assert_eq!(answer.headers["content-type"], "application/json");
            assert!(answer.headers.get("content-length").is_none());
        }
        assert_eq!(accepted.load(SeqCst), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_chunked_answer_is_decoded_and_its_trailers_dropped() {
        let chunked: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4;ext=1\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nx-t: 1\r\n\r\n";
        let (address, accepted) = server(vec![chunked, OK], None).await;
        let answer = post(&address, b"{}", 1 << 20).await.unwrap();
        assert_eq!(&answer.body[..], b"{\"a\":1}");
        assert!(answer.headers.get("transfer-encoding").is_none());
        // The connection is whole after the trailers: the next answer comes on it.
        assert_eq!(&post(&address, b"{}", 1 << 20).await.unwrap().body[..], b"{\"ok\":true}");
        assert_eq!(accepted.load(SeqCst), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn informational_answers_are_skipped_and_errors_pass_as_they_are() {
        let answer: &[u8] =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 422 Unprocessable Entity\r\ncontent-length: 2\r\n\r\nno";
        let (address, _) = server(vec![answer], None).await;
        let got = post(&address, b"{}", 1 << 20).await.unwrap();
        assert_eq!(got.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(&got.body[..], b"no");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_answer_given_before_the_request_was_read_whole_is_passed_on() {
        // The server reads the head only, refuses the body and closes with most of it unread.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut chunk = [0u8; 1024];
                let n = stream.read(&mut chunk).await.unwrap();
                head.extend_from_slice(&chunk[..n]);
            }
            let refusal = b"HTTP/1.1 413 Payload Too Large\r\nconnection: close\r\ncontent-length: 8\r\n\r\ntoo big!";
            stream.write_all(refusal).await.unwrap();
        });
        let large = Bytes::from(vec![b'x'; 32 << 20]);
        let deadline = Instant::now() + Duration::from_secs(5);
        let all = (&HeaderMap::new(), (|_| true) as fn(&str) -> bool);
        let got = exchange(&address, &Method::POST, "/v2/models/m/infer", all, large, 1 << 20, deadline).await.unwrap();
        assert_eq!(got.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(&got.body[..], b"too big!");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_the_server_closed_while_idle_is_replaced() {
        let (address, accepted) = server(vec![OK], Some(1)).await;
        for _ in 0..3 {
            assert_eq!(post(&address, b"{}", 1 << 20).await.unwrap().status, StatusCode::OK);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(SeqCst), 3);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_answer_closed_by_the_server_is_read_to_its_end_and_not_reused() {
        let until_close: &[u8] = b"HTTP/1.0 200 OK\r\n\r\n{\"whole\":1}";
        let (address, accepted) = server(vec![until_close], Some(1)).await;
        let answer = post(&address, b"{}", 1 << 20).await.unwrap();
        assert_eq!(&answer.body[..], b"{\"whole\":1}");
        post(&address, b"{}", 1 << 20).await.unwrap();
        assert_eq!(accepted.load(SeqCst), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_answer_over_the_limit_or_malformed_is_an_error_not_a_panic() {
        let (address, _) = server(vec![OK], None).await;
        assert!(matches!(post(&address, b"{}", 4).await, Err(CallError::Unavailable(_))));
        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n"[..],
            b"nonsense\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc",
        ] {
            let (address, _) = server(vec![bad], Some(1)).await;
            assert!(matches!(post(&address, b"{}", 1 << 20).await, Err(CallError::Unavailable(_))), "{bad:?}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_refused_connection_is_unavailable_and_a_silent_server_runs_into_the_deadline() {
        let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = free.local_addr().unwrap().to_string();
        drop(free);
        assert!(matches!(post(&closed, b"{}", 1 << 20).await, Err(CallError::Unavailable(_))));
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = silent.local_addr().unwrap().to_string();
        let deadline = Instant::now() + Duration::from_millis(100);
        let got = exchange(
            &address,
            &Method::GET,
            "/v2/models/m",
            (&HeaderMap::new(), |_| true),
            Bytes::new(),
            1 << 20,
            deadline,
        )
        .await;
        assert!(matches!(got, Err(CallError::DeadlineExceeded)));
        drop(silent);
    }

    #[test]
    fn the_request_head_names_the_host_and_the_length_and_the_passed_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("r1"));
        headers.insert("x-dropped", HeaderValue::from_static("no"));
        let passed = (&headers, (|name: &str| name != "x-dropped") as fn(&str) -> bool);
        let head = request_head("127.0.0.1:9", &Method::POST, "/v2/models/m/infer", passed, &Bytes::from_static(b"{}"));
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "POST /v2/models/m/infer HTTP/1.1\r\nhost: 127.0.0.1:9\r\ncontent-length: 2\r\nx-request-id: r1\r\n\r\n"
        );
        let get = request_head("h:1", &Method::GET, "/v2/models/m", (&HeaderMap::new(), |_| true), &Bytes::new());
        assert_eq!(String::from_utf8(get).unwrap(), "GET /v2/models/m HTTP/1.1\r\nhost: h:1\r\n\r\n");
    }
}
