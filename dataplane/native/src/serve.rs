//! The listening sockets and the HTTP/2 server: one current-thread tokio runtime per
//! thread, each with its own SO_REUSEPORT listener on the same port, and a graceful stop.
//!
//! Whichever thread accepts a connection, it is served by the first thread with headroom:
//! one that was busy less than half of the last quarter second and serves fewer than
//! PACK_CONNECTIONS connections; when none has, by the thread serving the fewest. A light
//! load is packed onto few threads rather than spread over all of them: on a shared host
//! the kernel weighs a process's claim to each core by its load there (per-session
//! autogroups, cgroups), so a router that spreads a quarter core of work over two threads
//! has half its weight on each core, and its calls wait behind busy neighbours (probe,
//! 2 shared cores, 4 connections: p99 55 ms spread, 27 ms packed, nginx 50 ms; CPU per
//! request 56 vs 42 us, a packed thread handling more per wake-up). The kernel's own
//! SO_REUSEPORT hash only decides which thread does the handing.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::Deserialize;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{mpsc, watch, Notify};

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

/// A thread takes new connections while it was busy for less than this share (in
/// thousandths) of the last BUSY_INTERVAL ...
const PACK_BUSY_BELOW_PERMILLE: u32 = 500;
/// ... and serves fewer connections than this: a burst of connections (HTTP/1.1 clients)
/// is spread before its load shows in the threads' CPU time.
const PACK_CONNECTIONS: usize = 8;
/// A thread busier than this (in thousandths of BUSY_INTERVAL), with two connections or
/// more, while another has headroom, asks its oldest connection to go away (HTTP/2 GOAWAY
/// after the calls in flight, HTTP/1.1 close after the answer in flight): its client
/// reconnects, to a thread with headroom. One a tick at most, so load moves step by step.
const SHED_BUSY_PERMILLE: u32 = 900;
const BUSY_INTERVAL: Duration = Duration::from_millis(250);

/// Every thread's way in for connections another thread accepted, how many it serves and
/// how busy it was.
struct Lanes(Vec<Lane>);

struct Lane {
    handed: mpsc::UnboundedSender<(std::net::TcpStream, Open)>,
    open: Arc<AtomicUsize>,
    busy_permille: AtomicU32,
}

impl Lane {
    fn new(handed: mpsc::UnboundedSender<(std::net::TcpStream, Open)>) -> Lane {
        Lane { handed, open: Arc::new(AtomicUsize::new(0)), busy_permille: AtomicU32::new(0) }
    }

    fn has_headroom(&self) -> bool {
        self.busy_permille.load(Relaxed) < PACK_BUSY_BELOW_PERMILLE && self.open.load(Relaxed) < PACK_CONNECTIONS
    }
}

/// One connection counted on its thread's lane until it ends.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Lanes {
    /// The thread to serve a new connection: the first with headroom, else the least busy
    /// (serving the fewest on a tie).
    fn pick(&self) -> (usize, Open) {
        let chosen = (0..self.0.len())
            .find(|&i| self.0[i].has_headroom())
            .or_else(|| {
                (0..self.0.len()).min_by_key(|&i| (self.0[i].busy_permille.load(Relaxed), self.0[i].open.load(Relaxed)))
            })
            .unwrap_or(0);
        let open = self.0[chosen].open.clone();
        open.fetch_add(1, Relaxed);
        (chosen, Open(open))
    }

    /// Whether thread `me` should move one of its connections away (SHED_BUSY_PERMILLE).
    fn should_shed(&self, me: usize) -> bool {
        let lane = &self.0[me];
        lane.busy_permille.load(Relaxed) > SHED_BUSY_PERMILLE
            && lane.open.load(Relaxed) >= 2
            && self
                .0
                .iter()
                .enumerate()
                .any(|(i, other)| i != me && other.busy_permille.load(Relaxed) < PACK_BUSY_BELOW_PERMILLE)
    }
}

/// CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// The share of `wall` (in thousandths) that `cpu` is.
fn permille(cpu: Duration, wall: Duration) -> u32 {
    if wall.is_zero() {
        return 0;
    }
    (cpu.as_secs_f64() / wall.as_secs_f64() * 1000.0).min(1000.0) as u32
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
                (Lane::new(handed), inbox)
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
        // Each connection's request to leave, oldest first (a dead Weak: the connection ended).
        let mut go_aways: VecDeque<Weak<Notify>> = VecDeque::new();
        let backends = self.shared.backends[self.me].clone();
        let mut busy_tick = tokio::time::interval(BUSY_INTERVAL);
        let (mut tick_wall, mut tick_cpu) = (std::time::Instant::now(), thread_cpu_time());
        loop {
            let (stream, open) = tokio::select! {
                _ = busy_tick.tick() => {
                    let (wall, cpu) = (std::time::Instant::now(), thread_cpu_time());
                    let busy = permille(cpu.saturating_sub(tick_cpu), wall - tick_wall);
                    self.lanes.0[self.me].busy_permille.store(busy, Relaxed);
                    (tick_wall, tick_cpu) = (wall, cpu);
                    go_aways.retain(|w| w.strong_count() > 0);
                    if self.lanes.should_shed(self.me) {
                        if let Some(go_away) = go_aways.pop_front().and_then(|w| w.upgrade()) {
                            go_away.notify_one();
                        }
                    }
                    continue;
                }
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    let (thread, open) = self.lanes.pick();
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
            let go_away = Arc::new(Notify::new());
            go_aways.push_back(Arc::downgrade(&go_away));
            let serving = serve_connection(stream, self.shared.clone(), backends.clone(), self.stop.clone(), go_away);
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
    go_away: Arc<Notify>,
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
        _ = go_away.notified() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lanes(threads: usize) -> Lanes {
        Lanes((0..threads).map(|_| Lane::new(mpsc::unbounded_channel().0)).collect())
    }

    fn open_counts(lanes: &Lanes) -> Vec<usize> {
        lanes.0.iter().map(|lane| lane.open.load(Relaxed)).collect()
    }

    fn picks(lanes: &Lanes, n: usize) -> Vec<(usize, Open)> {
        (0..n).map(|_| lanes.pick()).collect()
    }

    #[test]
    fn a_light_load_is_packed_onto_the_first_thread_and_counted_until_it_ends() {
        let lanes = lanes(2);
        let picked = picks(&lanes, 4);
        assert!(picked.iter().all(|(thread, _)| *thread == 0));
        assert_eq!(open_counts(&lanes), [4, 0]);
        drop(picked);
        assert_eq!(open_counts(&lanes), [0, 0]);
    }

    #[test]
    fn a_busy_thread_leaves_new_connections_to_the_next() {
        let lanes = lanes(3);
        let _first = picks(&lanes, 2);
        lanes.0[0].busy_permille.store(PACK_BUSY_BELOW_PERMILLE, Relaxed);
        assert_eq!(lanes.pick().0, 1);
        lanes.0[0].busy_permille.store(PACK_BUSY_BELOW_PERMILLE - 1, Relaxed);
        assert_eq!(lanes.pick().0, 0, "headroom again: packed again");
    }

    #[test]
    fn a_burst_fills_each_thread_to_the_packing_limit_then_goes_to_the_fewest() {
        let lanes = lanes(2);
        let mut picked = picks(&lanes, 2 * PACK_CONNECTIONS);
        assert_eq!(open_counts(&lanes), [PACK_CONNECTIONS, PACK_CONNECTIONS]);
        picked.extend(picks(&lanes, 4));
        assert_eq!(open_counts(&lanes), [PACK_CONNECTIONS + 2, PACK_CONNECTIONS + 2]);
    }

    #[test]
    fn with_every_thread_busy_a_connection_goes_to_the_thread_whose_connections_ended() {
        let lanes = lanes(3);
        for lane in &lanes.0 {
            lane.busy_permille.store(900, Relaxed);
        }
        let mut picked = picks(&lanes, 3);
        assert_eq!(open_counts(&lanes), [1, 1, 1]);
        drop(picked.remove(1));
        assert_eq!(lanes.pick().0, 1);
    }

    #[test]
    fn a_thread_sheds_a_connection_only_when_it_is_saturated_and_another_has_headroom() {
        let lanes = lanes(2);
        let _connections = picks(&lanes, 2);
        lanes.0[0].busy_permille.store(SHED_BUSY_PERMILLE + 1, Relaxed);
        assert!(lanes.should_shed(0));
        lanes.0[1].busy_permille.store(PACK_BUSY_BELOW_PERMILLE, Relaxed);
        assert!(!lanes.should_shed(0), "nowhere better to go");
        lanes.0[1].busy_permille.store(0, Relaxed);
        lanes.0[0].busy_permille.store(SHED_BUSY_PERMILLE, Relaxed);
        assert!(!lanes.should_shed(0), "not saturated");
        assert!(!lanes.should_shed(1), "idle");
        lanes.0[0].busy_permille.store(1000, Relaxed);
        assert_eq!(lanes.pick().0, 1, "the shed connection's reconnection goes to the thread with headroom");
    }

    #[test]
    fn a_thread_with_one_connection_keeps_it_however_busy() {
        let lanes = lanes(2);
        let _only = lanes.pick();
        lanes.0[0].busy_permille.store(1000, Relaxed);
        assert!(!lanes.should_shed(0), "a connection alone would move its whole load, not share it");
    }

    #[tokio::test]
    async fn a_connection_asked_to_go_away_answers_its_call_in_flight_then_closes() {
        let config: Config = serde_json::from_str(r#"{"host": "127.0.0.1", "threads": 1}"#).unwrap();
        let mut server = Server::start(config).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let go_away = Arc::new(Notify::new());
        let (shared, backends) = (server.shared.clone(), server.shared.backends[0].clone());
        let (_stop, stop) = watch::channel(false);
        let serving = tokio::spawn({
            let go_away = go_away.clone();
            async move {
                let (stream, _) = listener.accept().await.unwrap();
                serve_connection(stream, shared, backends, stop, go_away).await;
            }
        });
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let (mut client, connection) = h2::client::handshake(stream).await.unwrap();
        let connection = tokio::spawn(connection);
        let request = http::Request::post("/inference.GRPCInferenceService/ServerLive")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let (answer, mut body) = client.send_request(request, false).unwrap();
        go_away.notify_one();
        body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true).unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), answer).await.unwrap().unwrap();
        assert_eq!(answer.status(), 200);
        tokio::time::timeout(Duration::from_secs(5), serving).await.expect("the server closed the connection").unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), connection).await.expect("the client saw it close");
        assert!(ended.unwrap().is_ok(), "a graceful GOAWAY, not a broken connection");
        server.stop(Duration::ZERO);
    }

    #[test]
    fn busy_is_the_share_of_wall_time_spent_on_the_cpu() {
        assert_eq!(permille(Duration::from_millis(125), BUSY_INTERVAL), 500);
        assert_eq!(permille(Duration::from_millis(300), BUSY_INTERVAL), 1000, "capped");
        assert_eq!(permille(Duration::from_millis(1), Duration::ZERO), 0);
    }

    #[test]
    fn a_spinning_thread_reads_busier_than_a_sleeping_one() {
        let busy_over = |spin: bool| {
            let (wall0, cpu0) = (std::time::Instant::now(), thread_cpu_time());
            while wall0.elapsed() < Duration::from_millis(30) {
                if spin {
                    std::hint::black_box(0u64);
                } else {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            permille(thread_cpu_time() - cpu0, wall0.elapsed())
        };
        let (slept, spun) = (busy_over(false), busy_over(true));
        assert!(slept < 100 && spun > slept, "sleeping read {slept} permille, spinning {spun}");
    }
}
