//! Pooled HTTP/2 connections to the model servers, one pool per runtime thread.
//!
//! Each endpoint gets `connections_per_backend` connections per thread (one by default:
//! h2's per-connection lock is never contended within a thread's runtime), used in turn.
//! A connection is made when first needed and again after it closes. A server that is
//! slow to come up (TCP accepted, its HTTP/2 handshake slow) is waited for within the
//! request's deadline; a refused connection fails at once (UNAVAILABLE), so a dead
//! challenger fails over quickly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

pub type Sender = SendRequest<crate::body::Parts>;

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
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .max_frame_size(1 << 16)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        let (sender, connection) = match timeout_at(deadline, builder.handshake(TokioIo::new(stream))).await {
            Err(_) => return Err(CallError::DeadlineExceeded),
            Ok(Err(err)) => return Err(CallError::Unavailable(format!("HTTP/2 handshake failed: {err}"))),
            Ok(Ok(pair)) => pair,
        };
        tokio::spawn(async move {
            let _ = connection.await;
        });
        *slot.sender.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender.clone());
        Ok(sender)
    }

    /// Forget a connection that failed a request (the next use makes a new one).
    pub fn discard(&self, failed: &Sender) {
        for slot in &self.slots {
            let mut guard = slot.sender.lock().unwrap_or_else(|e| e.into_inner());
            if guard.as_ref().is_some_and(|s| s.is_closed()) {
                *guard = None;
            }
        }
        let _ = failed;
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
