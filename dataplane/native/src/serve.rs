//! The listening sockets and the HTTP/2 server: one multi-thread tokio runtime with a
//! worker per thread, one SO_REUSEPORT listener per worker on the same port, and a
//! graceful stop.
//!
//! Work stealing is why the runtime is shared: with one current-thread runtime per core,
//! a thread that the OS left waiting for a core held all of its connections' calls until
//! it ran again (saturation p99 66 vs nginx's 29 ms); here another worker takes them over
//! (BENCHMARKS.md, session 7).

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::Deserialize;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

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
    /// HTTP/2 connections per backend per worker. One by default: a worker rarely contends
    /// for its own connections' locks, and calls multiplexed on one connection reach the
    /// backend in batches (fewer reads and writes on both sides: BENCHMARKS.md).
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

/// What every runtime worker shares.
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
    /// Each runtime worker's backend connections (retained to the table's endpoints).
    pub backends: Vec<Arc<Backends>>,
}

thread_local! {
    /// Which of `Shared::backends` the calls this thread starts use (set as a worker starts).
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

impl Shared {
    pub fn is_serving(&self) -> bool {
        !self.stopping.load(Relaxed) && self.table.load().is_some()
    }

    pub fn update_serving(&self) {
        let now = self.is_serving();
        self.serving.send_if_modified(|s| std::mem::replace(s, now) != now);
    }

    /// The backend connections of the worker this runs on.
    pub fn worker_backends(&self) -> &Arc<Backends> {
        &self.backends[WORKER.with(Cell::get) % self.backends.len()]
    }

    /// Drop every worker's connections to endpoints no route of `table` names.
    pub fn retain_backends(&self, table: &Table) {
        let used = table.endpoints();
        for pool in &self.backends {
            pool.retain(|address| used.contains(address));
        }
    }
}

/// A started server: its runtime, its accept loops and how to stop them.
pub struct Server {
    pub shared: Arc<Shared>,
    pub port: u16,
    shutdown: watch::Sender<bool>,
    runtime: Option<tokio::runtime::Runtime>,
    accepting: Vec<tokio::task::JoinHandle<()>>,
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
    /// Bind one listener per worker (all on one port: the first picks it when port is 0)
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
        let started = Arc::new(AtomicUsize::new(0));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("tsplit-router")
            .on_thread_start(move || WORKER.with(|w| w.set(started.fetch_add(1, Relaxed))))
            .enable_all()
            .build()?;
        let (shutdown, _) = watch::channel(false);
        let mut accepting = Vec::with_capacity(threads);
        for std_listener in listeners {
            // Registered with the runtime's reactor, so from inside it.
            let listener = {
                let _entered = runtime.enter();
                tokio::net::TcpListener::from_std(std_listener)?
            };
            accepting.push(runtime.spawn(accept_loop(listener, shared.clone(), shutdown.subscribe())));
        }
        Ok(Server { shared, port, shutdown, runtime: Some(runtime), accepting })
    }

    /// Stop accepting, let calls in flight finish for up to `grace`, then end.
    pub fn stop(&mut self, grace: Duration) {
        self.shared.stopping.store(true, Relaxed);
        self.shared.update_serving();
        self.shared.grace_ms.store(grace.as_millis() as u64, Relaxed);
        let _ = self.shutdown.send(true);
        let Some(runtime) = self.runtime.take() else { return };
        let accepting = std::mem::take(&mut self.accepting);
        runtime.block_on(async {
            for accept_loop in accepting {
                let _ = accept_loop.await;
            }
        });
        // What is left (backend connections, shadow copies past their champions) ends here.
        runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.runtime.is_some() {
            self.stop(Duration::ZERO);
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                connections.spawn(serve_connection(stream, shared.clone(), stop.clone()));
            }
            _ = stop.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let grace = Duration::from_millis(shared.grace_ms.load(Relaxed));
    let _ = tokio::time::timeout(grace, async { while connections.join_next().await.is_some() {} }).await;
    connections.shutdown().await;
}

async fn serve_connection(stream: tokio::net::TcpStream, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
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
        let backends = shared.worker_backends().clone();
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
