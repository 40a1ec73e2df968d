//! Pooled HTTP/2 connections to the model servers, one pool per runtime thread, on h2
//! itself (not hyper's client): a request's head and body are queued in the caller's task
//! and leave in one write, where hyper's client wrote the HEADERS frame before its body
//! task had the stream's send capacity (two writes, two reads on the model server).
//!
//! Each endpoint gets `connections_per_backend` connections per thread (one by default:
//! h2's per-connection lock is never contended within a thread's runtime), used in turn.
//! A connection is made when first needed and again after it closes. A server that is
//! slow to come up (TCP accepted, its HTTP/2 handshake slow) is waited for within the
//! request's deadline; a refused connection fails at once (UNAVAILABLE), so a dead
//! challenger fails over quickly.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection's handle (cheap to clone) and whether the connection has ended.
#[derive(Clone)]
pub struct Sender {
    h2: h2::client::SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

impl Sender {
    fn is_closed(&self) -> bool {
        self.closed.load(Relaxed)
    }

    /// Send a request with its body (the parts in order, empty ones skipped) and wait for
    /// the answer's head. A connection the server is closing (GOAWAY) is marked closed.
    pub async fn send(self, head: Request<()>, body: &[Bytes]) -> Result<Response<BackendBody>, h2::Error> {
        let closed = self.closed.clone();
        let sent = self.send_on(head, body).await;
        if sent.as_ref().is_err_and(|err| err.is_go_away()) {
            closed.store(true, Relaxed);
        }
        sent
    }

    async fn send_on(self, head: Request<()>, body: &[Bytes]) -> Result<Response<BackendBody>, h2::Error> {
        let mut h2 = self.h2.ready().await?;
        let last = body.iter().rposition(|part| !part.is_empty());
        let (answer, mut stream) = h2.send_request(head, last.is_none())?;
        for (i, part) in body.iter().enumerate().filter(|(_, part)| !part.is_empty()) {
            // Past the stream's window h2 holds the rest and sends it as the window opens.
            stream.send_data(part.clone(), Some(i) == last)?;
        }
        let (parts, recv) = answer.await?.into_parts();
        Ok(Response::from_parts(parts, BackendBody { recv, ended: false }))
    }
}

/// Whether the server never saw the call, so it can be sent again on another connection:
/// refused (REFUSED_STREAM), or past the last stream a closing server (GOAWAY) processes,
/// or sent after its GOAWAY arrived. A server that rotates its connections
/// (`max_connection_age`) does this to calls in flight as a matter of course.
pub fn never_processed(err: &h2::Error) -> bool {
    err.is_remote() && (err.is_go_away() || err.reason() == Some(h2::Reason::REFUSED_STREAM))
}

/// A backend's answer body: its DATA frames (their flow-control window released as they
/// are read), then its trailers.
pub struct BackendBody {
    recv: h2::RecvStream,
    ended: bool,
}

impl Body for BackendBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match ready!(self.recv.poll_data(cx)) {
            Some(Ok(data)) => {
                let _ = self.recv.flow_control().release_capacity(data.len());
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Some(Err(err)) => return Poll::Ready(Some(Err(err))),
            None => {}
        }
        let trailers: Option<HeaderMap> = match ready!(self.recv.poll_trailers(cx)) {
            Err(err) => return Poll::Ready(Some(Err(err))),
            Ok(trailers) => trailers,
        };
        self.ended = true;
        Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.recv.is_end_stream()
    }
}

/// Why a backend could not be asked: no answer of any kind came from it.
#[derive(Debug)]
pub enum CallError {
    /// Could not connect, or the connection broke before an answer (gRPC UNAVAILABLE).
    Unavailable(String),
    /// The request's deadline passed first.
    DeadlineExceeded,
}

struct Slot {
    sender: Mutex<Option<Sender>>,
    connecting: tokio::sync::Mutex<()>,
}

impl Slot {
    fn ready(&self) -> Option<Sender> {
        let guard = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().filter(|s| !s.is_closed()).cloned()
    }
}

pub struct Endpoint {
    address: Arc<str>,
    slots: Vec<Slot>,
    next: AtomicUsize,
}

impl Endpoint {
    fn new(address: Arc<str>, connections: usize) -> Endpoint {
        let slots = (0..connections.max(1))
            .map(|_| Slot { sender: Mutex::new(None), connecting: tokio::sync::Mutex::new(()) })
            .collect();
        Endpoint { address, slots, next: AtomicUsize::new(0) }
    }

    /// A connection to send on: the next in turn when it is up, else any that is up (the
    /// next one connects in the background), else a new one, waited for until `deadline`.
    pub async fn sender(self: &Arc<Self>, deadline: Instant) -> Result<Sender, CallError> {
        let i = self.next.fetch_add(1, Relaxed) % self.slots.len();
        if let Some(s) = self.slots[i].ready() {
            return Ok(s);
        }
        if let Some(s) = self.slots.iter().find_map(Slot::ready) {
            let me = self.clone();
            tokio::spawn(async move {
                let _ = me.connect(i, Instant::now() + Duration::from_secs(10)).await;
            });
            return Ok(s);
        }
        self.connect(i, deadline).await
    }

    async fn connect(&self, i: usize, deadline: Instant) -> Result<Sender, CallError> {
        let slot = &self.slots[i];
        let _one_at_a_time =
            timeout_at(deadline, slot.connecting.lock()).await.map_err(|_| CallError::DeadlineExceeded)?;
        if let Some(s) = slot.ready() {
            return Ok(s);
        }
        let stream = match timeout_at(deadline, TcpStream::connect(&*self.address)).await {
            Err(_) => return Err(CallError::DeadlineExceeded),
            Ok(Err(err)) => return Err(CallError::Unavailable(format!("cannot connect: {err}"))),
            Ok(Ok(stream)) => stream,
        };
        let _ = stream.set_nodelay(true);
        let mut builder = h2::client::Builder::new();
        builder
            .initial_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .max_frame_size(1 << 16)
            .enable_push(false);
        let (h2, mut connection) = match timeout_at(deadline, builder.handshake(stream)).await {
            Err(_) => return Err(CallError::DeadlineExceeded),
            Ok(Err(err)) => return Err(CallError::Unavailable(format!("HTTP/2 handshake failed: {err}"))),
            Ok(Ok(pair)) => pair,
        };
        let sender = Sender { h2, closed: Arc::new(AtomicBool::new(false)) };
        let closed = sender.closed.clone();
        let ping = connection.ping_pong();
        tokio::spawn(async move {
            tokio::select! {
                _ = &mut connection => {}
                _ = keepalive(ping) => {} // no pong in time: the connection is dropped
            }
            closed.store(true, Relaxed);
        });
        *slot.sender.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender.clone());
        Ok(sender)
    }

    /// Forget the connections that have ended (the next use makes a new one).
    pub fn discard_closed(&self) {
        for slot in &self.slots {
            let mut guard = slot.sender.lock().unwrap_or_else(|e| e.into_inner());
            if guard.as_ref().is_some_and(Sender::is_closed) {
                *guard = None;
            }
        }
    }
}

/// Returns when a ping goes unanswered for KEEPALIVE_TIMEOUT (one every KEEPALIVE_INTERVAL).
async fn keepalive(ping: Option<h2::PingPong>) {
    let Some(mut ping) = ping else { return std::future::pending().await };
    loop {
        tokio::time::sleep(KEEPALIVE_INTERVAL).await;
        match tokio::time::timeout(KEEPALIVE_TIMEOUT, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
    }
}

/// One runtime thread's connections, by endpoint.
pub struct Backends {
    endpoints: Mutex<HashMap<Arc<str>, Arc<Endpoint>>>,
    connections: usize,
}

impl Backends {
    pub fn new(connections: usize) -> Backends {
        Backends { endpoints: Mutex::new(HashMap::new()), connections }
    }

    pub fn endpoint(&self, address: &Arc<str>) -> Arc<Endpoint> {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = map.get(address) {
            return found.clone();
        }
        let made = Arc::new(Endpoint::new(address.clone(), self.connections));
        map.insert(address.clone(), made.clone());
        made
    }

    /// The endpoints with a pool, sorted.
    pub fn addresses(&self) -> Vec<Arc<str>> {
        let mut out: Vec<_> = self.endpoints.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        out.sort();
        out
    }

    /// Drop the connections of endpoints no route names any more.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.endpoints.lock().unwrap_or_else(|e| e.into_inner()).retain(|a, _| keep(a));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP/2 server on loopback. Its first connection sends GOAWAY before it reads any
    /// call; on the others, the first call is refused (REFUSED_STREAM), the second reset
    /// (INTERNAL_ERROR) and the rest answered.
    async fn closing_server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            for n in 0..10 {
                let Ok((stream, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let Ok(mut connection) = h2::server::handshake(stream).await else { return };
                    if n == 0 {
                        connection.abrupt_shutdown(h2::Reason::NO_ERROR);
                    }
                    let mut calls = 0;
                    while let Some(Ok((_, mut respond))) = connection.accept().await {
                        calls += 1;
                        match calls {
                            1 => respond.send_reset(h2::Reason::REFUSED_STREAM),
                            2 => respond.send_reset(h2::Reason::INTERNAL_ERROR),
                            _ => drop(respond.send_response(Response::new(()), true)),
                        }
                    }
                });
            }
        });
        address
    }

    async fn call(endpoint: &Arc<Endpoint>) -> Result<http::StatusCode, h2::Error> {
        let sender = endpoint.sender(Instant::now() + Duration::from_secs(5)).await.expect("connects");
        let head = Request::post(format!("http://{}/x", endpoint.address)).body(()).unwrap();
        let answer = sender.send(head, &[Bytes::from_static(b"call")]).await;
        endpoint.discard_closed();
        answer.map(|r| r.status())
    }

    #[tokio::test]
    async fn calls_a_closing_server_never_saw_are_told_apart_and_its_connection_is_replaced() {
        let address = closing_server().await;
        let endpoint = Arc::new(Endpoint::new(Arc::from(address.as_str()), 1));
        let goaway = call(&endpoint).await.unwrap_err();
        assert!(never_processed(&goaway), "{goaway}");
        // The closing connection is not used again: these go on a new one.
        let refused = call(&endpoint).await.unwrap_err();
        assert!(never_processed(&refused), "{refused}");
        let reset = call(&endpoint).await.unwrap_err();
        assert!(!never_processed(&reset), "a reset call may have run: {reset}");
        assert_eq!(call(&endpoint).await.unwrap(), http::StatusCode::OK);
    }
}
