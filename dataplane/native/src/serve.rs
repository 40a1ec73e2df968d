//! The listening sockets and the HTTP/2 server: one current-thread tokio runtime per
//! thread, each with its own SO_REUSEPORT listener on the same port, and a graceful stop.
//!
//! The kernel spreads new connections over the listeners by a hash of their addresses, so
//! a few long-lived HTTP/2 connections often land unevenly (4 on 2 threads: 3 and 1 half
//! the time), and the calls of the busier thread wait while the other idles. A thread
//! that accepts a connection hands it to the thread serving the fewest (its own first).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::Deserialize;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{mpsc, watch};

use crate::backends::Backends;
use crate::stats::CountersRegistry;
use crate::table::Table;

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
fn default_connections() -> usize {
    1
}
fn default_timeout_s() -> f64 {
    300.0
}
fn default_max_message_bytes() -> usize {
    64 << 20
}
fn default_max_inflight_mirrors() -> usize {
    256
}
fn default_mirror_timeout_s() -> f64 {
    10.0
}
fn default_compare_threads() -> usize {
    1
}
fn default_streams() -> u32 {
    4096
}
fn default_buckets() -> Vec<f64> {
    crate::stats::LATENCY_BUCKETS_MS.to_vec()
}

/// What `start()` takes (JSON from dataplane/server.py).
#[derive(Deserialize, Clone, Debug)]
pub struct Config {
    pub host: String,
    #[serde(default)]
    pub port: u16,
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Share the port with other processes (SO_REUSEPORT beyond this process's own
    /// listeners). Off: a port another process listens on is an error.
    #[serde(default)]
    pub reuse_port: bool,
    #[serde(default)]
    pub server_name: String,
    #[serde(default)]
    pub server_version: String,
    /// The backend deadline when the client sets none.
    #[serde(default = "default_timeout_s")]
    pub request_timeout_s: f64,
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// HTTP/2 connections per backend per thread. One by default: a thread's runtime never
    /// contends for its own connections' locks, and calls multiplexed on one connection reach
    /// the backend in batches (fewer reads and writes on both sides: BENCHMARKS.md).
    #[serde(default = "default_connections")]
    pub connections_per_backend: usize,
    #[serde(default = "default_streams")]
    pub max_concurrent_streams: u32,
    /// Upper edges of the latency histogram, ms (tsplit.status.LATENCY_BUCKETS_MS).
    #[serde(default = "default_buckets")]
    pub latency_buckets_ms: Vec<f64>,
    /// gRPC reflection: what the Python side serialized from its descriptor pool.
    #[serde(default)]
    pub reflection: crate::reflection::ReflectionSpec,
    /// Shadow copies in flight in the whole router (every thread); past it they are dropped.
    #[serde(default = "default_max_inflight_mirrors")]
    pub max_inflight_mirrors: usize,
    /// The deadline of a shadow copy.
    #[serde(default = "default_mirror_timeout_s")]
    pub mirror_timeout_s: f64,
    /// Threads that compare large shadow pairs (at the lowest CPU priority).
    #[serde(default = "default_compare_threads")]
    pub compare_threads: usize,
    /// `--auth jwt`: the token settings (absent: `--auth none`).
    #[serde(default)]
    pub auth: Option<crate::auth::AuthConfig>,
}

/// What every runtime thread shares.
pub struct Shared {
    pub config: Config,
    /// None until the first full snapshot is applied.
    pub table: ArcSwapOption<Table>,
    pub registry: CountersRegistry,
    pub mirrors: Arc<crate::mirror::Mirrors>,
    pub stopping: AtomicBool,
    pub reflection: crate::reflection::Reflection,
    /// `--auth jwt`: verifies callers' tokens (None: no auth).
    pub verifier: Option<crate::auth::Verifier>,
    grace_ms: AtomicU64,
    /// Health Watch streams wait on this (true: serving).
    pub serving: watch::Sender<bool>,
    /// Each runtime thread's backend connections (retained to the table's endpoints).
    pub backends: Vec<Arc<Backends>>,
}

impl Shared {
    pub fn is_serving(&self) -> bool {
        !self.stopping.load(Relaxed) && self.table.load().is_some()
    }

    pub fn update_serving(&self) {
        let now = self.is_serving();
        self.serving.send_if_modified(|s| std::mem::replace(s, now) != now);
    }

    /// Drop every thread's connections to endpoints no route of `table` names.
    pub fn retain_backends(&self, table: &Table) {
        let used = table.endpoints();
        for pool in &self.backends {
            pool.retain(|address| used.contains(address));
        }
    }
}

/// A started server: its threads and how to stop them.
pub struct Server {
    pub shared: Arc<Shared>,
    pub port: u16,
    shutdown: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

/// Every thread's way in for connections another thread accepted, and how many it serves.
struct Lanes(Vec<Lane>);

struct Lane {
    handed: mpsc::UnboundedSender<(std::net::TcpStream, Open)>,
    open: Arc<AtomicUsize>,
}

/// One connection counted on its thread's lane until it ends.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Lanes {
    /// The thread to serve a connection `me` accepted: the one serving the fewest, `me` on a tie.
    fn pick(&self, me: usize) -> (usize, Open) {
        let least = (0..self.0.len()).min_by_key(|&i| (self.0[i].open.load(Relaxed), i != me)).unwrap_or(me);
        let open = self.0[least].open.clone();
        open.fetch_add(1, Relaxed);
        (least, Open(open))
    }
}

fn listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

impl Server {
    /// Bind one listener per thread (all on one port: the first picks it when port is 0)
    /// and start serving. Errors here are the caller's (address in use, bad host).
    pub fn start(config: Config) -> std::io::Result<Server> {
        let ip: std::net::IpAddr = config.host.parse().map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("bad listen host {:?}", config.host))
        })?;
        let threads = config.threads.max(1);
        if !config.reuse_port && config.port != 0 {
            // This process's listeners share the port among themselves (SO_REUSEPORT),
            // which would also let them join another process's: a plain bind first says
            // whether the port is free.
            let probe = Socket::new(Domain::for_address(SocketAddr::new(ip, 0)), Type::STREAM, Some(Protocol::TCP))?;
            probe.set_reuse_address(true)?;
            probe.bind(&SocketAddr::new(ip, config.port).into())?;
        }
        let first = listener(SocketAddr::new(ip, config.port))?;
        let port = first.local_addr()?.port();
        let mut listeners = vec![first];
        for _ in 1..threads {
            listeners.push(listener(SocketAddr::new(ip, port))?);
        }
        let (serving, _) = watch::channel(false);
        let mirrors = crate::mirror::Mirrors::new(
            config.max_inflight_mirrors,
            Duration::from_secs_f64(config.mirror_timeout_s.max(0.0)),
            config.compare_threads,
        );
        let verifier = match &config.auth {
            Some(auth) => Some(
                crate::auth::Verifier::new(auth)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
            ),
            None => None,
        };
        let connections = config.connections_per_backend;
        let shared = Arc::new(Shared {
            verifier,
            reflection: crate::reflection::Reflection::new(&config.reflection),
            registry: CountersRegistry::new(&config.latency_buckets_ms),
            config,
            table: ArcSwapOption::empty(),
            mirrors,
            stopping: AtomicBool::new(false),
            grace_ms: AtomicU64::new(10_000),
            serving,
            backends: (0..threads).map(|_| Arc::new(Backends::new(connections))).collect(),
        });
        let (shutdown, _) = watch::channel(false);
        let (lanes, inboxes): (Vec<Lane>, Vec<_>) = (0..threads)
            .map(|_| {
                let (handed, inbox) = mpsc::unbounded_channel();
                (Lane { handed, open: Arc::new(AtomicUsize::new(0)) }, inbox)
            })
            .unzip();
        let lanes = Arc::new(Lanes(lanes));
        let mut handles = Vec::with_capacity(threads);
        for (i, (std_listener, inbox)) in listeners.into_iter().zip(inboxes).enumerate() {
            let thread = ServingThread {
                me: i,
                shared: shared.clone(),
                lanes: lanes.clone(),
                inbox,
                stop: shutdown.subscribe(),
            };
            let handle = std::thread::Builder::new()
                .name(format!("tsplit-router-{i}"))
                .spawn(move || thread.run(std_listener))?;
            handles.push(handle);
        }
        Ok(Server { shared, port, shutdown, threads: handles })
    }

    /// Stop accepting, let calls in flight finish for up to `grace`, then end.
    pub fn stop(&mut self, grace: Duration) {
        self.shared.stopping.store(true, Relaxed);
        self.shared.update_serving();
        self.shared.grace_ms.store(grace.as_millis() as u64, Relaxed);
        let _ = self.shutdown.send(true);
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop(Duration::ZERO);
        }
    }
}

/// What one serving thread runs on: its runtime's listener, its inbox of connections other
/// threads handed it (`shared.backends[me]` are its backend connections).
struct ServingThread {
    me: usize,
    shared: Arc<Shared>,
    lanes: Arc<Lanes>,
    inbox: mpsc::UnboundedReceiver<(std::net::TcpStream, Open)>,
    stop: watch::Receiver<bool>,
}

impl ServingThread {
    fn run(self, std_listener: std::net::TcpListener) {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(err) => {
                eprintln!("tsplit router: cannot start a runtime: {err}");
                return;
            }
        };
        runtime.block_on(self.accept_loop(std_listener));
    }

    async fn accept_loop(mut self, std_listener: std::net::TcpListener) {
        let listener = match tokio::net::TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(err) => {
                eprintln!("tsplit router: cannot listen: {err}");
                return;
            }
        };
        let mut connections = tokio::task::JoinSet::new();
        let backends = self.shared.backends[self.me].clone();
        loop {
            let (stream, open) = tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    let (thread, open) = self.lanes.pick(self.me);
                    if thread != self.me {
                        // A closed inbox (that thread has stopped) drops the connection.
                        if let Ok(stream) = stream.into_std() {
                            let _ = self.lanes.0[thread].handed.send((stream, open));
                        }
                        continue;
                    }
                    (stream, open)
                }
                Some((stream, open)) = self.inbox.recv() => match tokio::net::TcpStream::from_std(stream) {
                    Ok(stream) => (stream, open),
                    Err(_) => continue,
                },
                _ = self.stop.changed() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let serving = serve_connection(stream, self.shared.clone(), backends.clone(), self.stop.clone());
            connections.spawn(async move {
                serving.await;
                drop(open);
            });
        }
        drop(listener);
        let grace = Duration::from_millis(self.shared.grace_ms.load(Relaxed));
        let _ = tokio::time::timeout(grace, async { while connections.join_next().await.is_some() {} }).await;
        connections.shutdown().await;
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    shared: Arc<Shared>,
    backends: Arc<Backends>,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(shared.config.max_concurrent_streams)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_frame_size(1 << 16)
        .keep_alive_interval(None);
    let service = service_fn(move |req: http::Request<Incoming>| {
        let shared = shared.clone();
        let backends = backends.clone();
        async move { Ok::<_, std::convert::Infallible>(crate::dispatch::handle(shared, backends, req).await) }
    });
    let connection = builder.serve_connection(crate::http_errors::V2Errors::new(TokioIo::new(stream)), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = stop.changed() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lanes(threads: usize) -> Lanes {
        Lanes(
            (0..threads)
                .map(|_| Lane { handed: mpsc::unbounded_channel().0, open: Arc::new(AtomicUsize::new(0)) })
                .collect(),
        )
    }

    fn open_counts(lanes: &Lanes) -> Vec<usize> {
        lanes.0.iter().map(|lane| lane.open.load(Relaxed)).collect()
    }

    #[test]
    fn connections_one_thread_accepts_are_spread_evenly_and_counted_until_they_end() {
        let lanes = lanes(2);
        let picked: Vec<(usize, Open)> = (0..4).map(|_| lanes.pick(1)).collect();
        let threads: Vec<usize> = picked.iter().map(|(thread, _)| *thread).collect();
        assert_eq!(threads, [1, 0, 1, 0], "the accepting thread first, then the one serving fewer");
        assert_eq!(open_counts(&lanes), [2, 2]);
        drop(picked);
        assert_eq!(open_counts(&lanes), [0, 0]);
    }

    #[test]
    fn a_connection_goes_to_the_thread_whose_connections_ended() {
        let lanes = lanes(3);
        let mut picked: Vec<(usize, Open)> = (0..3).map(|_| lanes.pick(0)).collect();
        assert_eq!(open_counts(&lanes), [1, 1, 1]);
        let ended = picked.remove(1);
        drop(ended);
        assert_eq!(lanes.pick(2).0, 1);
    }
}
