//! Shadow mode: a copy of a request to the challenger that owns its slot, in the background,
//! compared with the champion's answer once both are in (SPEC section 5).
//!
//! - The champion's answer never waits for a copy: each copy is its own task on the
//!   runtime thread that took the request, and the champion's answer reaches the comparison
//!   through a `ChampionAnswer` that only collects the frames the caller is sent anyway
//!   (clones of `Bytes`, no copy of the data). A copy is sent once the champion's answer
//!   has ended (OK or not): sent beside it, its work (the router's and a model server's on
//!   the same machine) fell on the champion's call, p50 +36 % at 600 req/s (BENCHMARKS.md).
//!   It leaves at a random moment within `COPY_SPREAD` of that end: sent in step with the
//!   champion's answers, the copies' work fell on the calls that follow them (champion p99
//!   1.22x shadow off, against 0.97x spread: BENCHMARKS.md, session 12).
//! - Copies in flight are bounded per router: one count shared by every runtime thread
//!   (`max_inflight`). A copy holds its place until its pair is scored, so the bound also
//!   bounds the answers waiting to be compared; past it a copy is not sent and counts as
//!   `mirror_dropped`.
//! - Whatever the size: the copy's body shares the request's `Bytes` (the rewritten
//!   model_name/model_version are a suffix of their own, body::request_parts), and pairs larger than
//!   `INLINE_COMPARE_BYTES` are compared on the comparison threads, which run at the lowest
//!   CPU priority, never on a runtime thread.
//! - Counters (the variant's stats::Counters): `mirrored`, `mirror_dropped` when a copy is
//!   chosen; `mirror_errors` and mirror latency when it ends (an error: no OK answer within
//!   the mirror deadline); `compared`, `exact_matches`, `label_agree`/`label_total`,
//!   `abs_diff_sum`/`abs_diff_count` once the pair is scored. A pair whose champion failed
//!   or went away is not scored; one whose answers do not parse is not scored and logged
//!   (once).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use prost::Message;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::backends::Backends;
use crate::body::{BoxError, RespBody};
use crate::compare::{compare_responses, Comparison};
use crate::grpc::Code;
use crate::oip::ModelInferResponse;
use crate::stats::Counters;
use crate::table::Variant;

/// Pairs whose two answers together are larger than this are compared on the comparison
/// threads. Comparing costs about 1.5 µs of CPU per KiB of answers here (a pair of 8 KiB
/// answers ~25 µs, of 8 MB ~45 ms), so a runtime thread is held at most ~25 µs.
pub const INLINE_COMPARE_BYTES: usize = 16 * 1024;

/// A copy leaves at a uniformly random moment within this span after its champion's answer
/// ends, not in step with the answers (module doc).
const COPY_SPREAD: Duration = Duration::from_millis(2);

/// The largest answer a comparison decompresses (a compressed answer past it is not scored).
const MAX_ANSWER_BYTES: usize = 1 << 30;

/// How an answer's bytes are laid out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Form {
    /// gRPC message frames as they came; `encoding` is the grpc-encoding.
    #[default]
    Grpc,
    /// One serialized ModelInferResponse (a translated REST call's answer, read whole).
    Message,
    /// A v2 REST JSON answer; `encoding` is its content-encoding.
    Json,
}

/// An answer body as it came (its chunks, shared with what the caller is sent), its
/// encoding and its form.
#[derive(Clone, Debug, Default)]
pub struct Answer {
    pub chunks: Vec<Bytes>,
    pub encoding: Option<HeaderValue>,
    pub form: Form,
}

impl Answer {
    fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    fn joined(self) -> Bytes {
        match self.chunks.len() {
            1 => self.chunks.into_iter().next().expect("one chunk"),
            _ => {
                let mut joined = BytesMut::with_capacity(self.len());
                for chunk in &self.chunks {
                    joined.extend_from_slice(chunk);
                }
                joined.freeze()
            }
        }
    }

    /// The answer as a ModelInferResponse (gRPC: the one message, decompressed; JSON:
    /// translated). Err where it is not one whole answer.
    fn response(self) -> Result<ModelInferResponse, String> {
        let (form, encoding) = (self.form, self.encoding.clone());
        let body = self.joined();
        let message = match form {
            Form::Grpc => {
                crate::grpc::unary_message(&body, encoding.as_ref().map(HeaderValue::as_bytes), MAX_ANSWER_BYTES)
                    .map_err(|status| status.message)?
            }
            Form::Message => body,
            Form::Json => {
                let json = match encoding.as_ref().map(HeaderValue::as_bytes) {
                    None | Some(b"identity") => body,
                    Some(b"gzip") => gunzip(&body)?,
                    Some(other) => {
                        return Err(format!("a REST answer in content-encoding {}", String::from_utf8_lossy(other)))
                    }
                };
                return crate::json_infer::response_from_json(&json)
                    .map_err(|e| format!("a REST answer is not a v2 inference response: {e}"));
            }
        };
        ModelInferResponse::decode(message)
            .map_err(|e| format!("an answer does not parse as a ModelInferResponse: {e}"))
    }
}

fn gunzip(body: &[u8]) -> Result<Bytes, String> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(MAX_ANSWER_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("a gzip REST answer does not decompress: {e}"))?;
    if out.len() > MAX_ANSWER_BYTES {
        return Err("a gzip REST answer is larger than the comparison's limit".into());
    }
    Ok(Bytes::from(out))
}

/// The champion's side of a pair: the frames of its answer as they go to the caller. An
/// answer that is not finished OK (an error status, the caller gone, the handle dropped)
/// is no answer, and the pair is not scored.
pub struct ChampionAnswer {
    answer: Answer,
    to: Option<oneshot::Sender<Answer>>,
}

impl ChampionAnswer {
    /// The form of the champion's answer (gRPC frames unless said otherwise).
    pub fn set_form(&mut self, form: Form) {
        self.answer.form = form;
    }

    pub fn set_encoding(&mut self, encoding: Option<&HeaderValue>) {
        self.answer.encoding = encoding.cloned();
    }

    /// A data frame of the champion's answer (a clone of the Bytes the caller is sent).
    pub fn data(&mut self, chunk: &Bytes) {
        if self.to.is_some() {
            self.answer.chunks.push(chunk.clone());
        }
    }

    /// The answer ended with grpc-status OK: hand it to the copy.
    pub fn ok(mut self) {
        if let Some(to) = self.to.take() {
            let _ = to.send(std::mem::take(&mut self.answer));
        }
    }

    /// The champion answered this whole body (the router's own buffered path).
    pub fn set(mut self, body: Bytes, encoding: Option<&HeaderValue>) {
        self.set_encoding(encoding);
        self.data(&body);
        self.ok();
    }
}

/// Why a copy got no answer to compare.
#[derive(Debug)]
pub struct CopyFailed(pub String);

/// The shadow copies of one router, shared by its runtime threads.
pub struct Mirrors {
    pub max_inflight: usize,
    pub timeout: Duration,
    inflight: AtomicUsize,
    pub compared_inline: AtomicU64,
    pub compared_off_runtime: AtomicU64,
    pool: ComparePool,
    failure_logged: AtomicBool,
}

/// Gives back a copy's place in flight however its task ends (cancelled at shutdown too).
struct InFlight(Arc<Mirrors>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Relaxed);
    }
}

impl Mirrors {
    pub fn new(max_inflight: usize, timeout: Duration, compare_threads: usize) -> Arc<Mirrors> {
        Arc::new(Mirrors {
            max_inflight,
            timeout,
            inflight: AtomicUsize::new(0),
            compared_inline: AtomicU64::new(0),
            compared_off_runtime: AtomicU64::new(0),
            pool: ComparePool::new(compare_threads.max(1)),
            failure_logged: AtomicBool::new(false),
        })
    }

    /// Copies sent whose pairs are not scored yet.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Relaxed)
    }

    fn reserve(self: &Arc<Self>) -> Option<InFlight> {
        let mut now = self.inflight.load(Relaxed);
        loop {
            if now >= self.max_inflight {
                return None;
            }
            match self.inflight.compare_exchange_weak(now, now + 1, Relaxed, Relaxed) {
                Ok(_) => return Some(InFlight(self.clone())),
                Err(actual) => now = actual,
            }
        }
    }

    /// Start a copy: `send(deadline)` makes the future that sends it to the challenger's
    /// backend, polled in a task of its own on this runtime thread once the champion's
    /// answer has ended (OK or not; the copy is sent either way and given up at the mirror
    /// deadline), so a copy never competes with its champion's call for the router's thread
    /// or for the machine the two backends may share. None: the bound is reached, the copy
    /// is dropped (counted). Otherwise the caller feeds the returned ChampionAnswer with the
    /// champion's answer.
    pub fn start<S, F>(self: &Arc<Self>, counters: &Arc<Counters>, send: S) -> Option<ChampionAnswer>
    where
        S: FnOnce(Instant) -> F + Send + 'static,
        F: std::future::Future<Output = Result<Answer, CopyFailed>> + Send + 'static,
    {
        let Some(place) = self.reserve() else {
            counters.mirror_dropped.fetch_add(1, Relaxed);
            return None;
        };
        counters.mirrored.fetch_add(1, Relaxed);
        let (to, from) = oneshot::channel();
        let mirrors = self.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            let _place = place;
            // The champion's answer always ends (its own deadline, or the caller gone drops
            // the handle): no deadline of our own here. Err: it is no answer to compare.
            let ours = from.await.ok();
            tokio::task::yield_now().await; // the champion's answer is written out first
            tokio::time::sleep(COPY_SPREAD.mul_f64(fastrand::f64())).await;
            let started = Instant::now();
            let theirs = tokio::time::timeout_at(started + mirrors.timeout, send(started + mirrors.timeout)).await;
            let theirs = match theirs {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) | Err(_) => {
                    copy_ended(&counters, started.elapsed(), false);
                    return;
                }
            };
            copy_ended(&counters, started.elapsed(), true);
            let Some(ours) = ours else { return };
            match mirrors.compare(ours, theirs).await {
                Ok(c) => record(&counters, &c),
                Err(err) => {
                    if !mirrors.failure_logged.swap(true, Relaxed) {
                        eprintln!("tsplit router: could not compare a shadow pair (logged once): {err}");
                    }
                }
            }
        });
        Some(ChampionAnswer { answer: Answer::default(), to: Some(to) })
    }

    async fn compare(&self, ours: Answer, theirs: Answer) -> Result<Comparison, String> {
        if ours.len() + theirs.len() <= INLINE_COMPARE_BYTES {
            self.compared_inline.fetch_add(1, Relaxed);
            return compare_answers(ours, theirs);
        }
        let result = self.pool.compare(ours, theirs).await;
        self.compared_off_runtime.fetch_add(1, Relaxed);
        result
    }
}

fn compare_answers(ours: Answer, theirs: Answer) -> Result<Comparison, String> {
    Ok(compare_responses(&ours.response()?, &theirs.response()?))
}

/// A copy answered (ok) or failed after `latency`.
fn copy_ended(counters: &Counters, latency: Duration, ok: bool) {
    counters.mirror_answered(latency, ok);
}

fn record(counters: &Counters, c: &Comparison) {
    counters.compared.fetch_add(1, Relaxed);
    counters.exact_matches.fetch_add(u64::from(c.exact_match), Relaxed);
    counters.label_agree.fetch_add(c.label_agree, Relaxed);
    counters.label_total.fetch_add(c.label_total, Relaxed);
    counters.add_abs_diff(c.abs_diff_sum);
    counters.abs_diff_count.fetch_add(c.abs_diff_count, Relaxed);
}

// --- the copy on the wire, and the champion's answer on its way ---------------------------

/// Start the copy of a ModelInfer call for the challenger `variant` (its counters count
/// it); None when it is dropped. The caller hands the champion's answer to what it returns
/// (Tee).
pub fn copy_infer(
    mirrors: &Arc<Mirrors>,
    backends: &Arc<Backends>,
    variant: &Arc<Variant>,
    message: &Bytes,
    headers: &HeaderMap,
) -> Option<ChampionAnswer> {
    let (backends, variant, message, headers) = (backends.clone(), variant.clone(), message.clone(), headers.clone());
    let counters = variant.counters.clone();
    mirrors.start(&counters, move |deadline| send_copy(backends, variant, message, headers, deadline))
}

/// Send a copy of a ModelInfer request (the client's message, shared, with the variant's
/// model_name/model_version suffix) to a challenger's backend, and read its whole answer.
pub async fn send_copy(
    backends: Arc<Backends>,
    variant: Arc<Variant>,
    message: Bytes,
    headers: HeaderMap,
    deadline: Instant,
) -> Result<Answer, CopyFailed> {
    let response = crate::dispatch::send(&backends, &variant, crate::dispatch::INFER, &message, &headers, deadline)
        .await
        .map_err(|e| CopyFailed(format!("{e:?}")))?;
    if let Some(code) = response.headers().get(&crate::grpc::GRPC_STATUS) {
        // Trailers-Only: an error (or an OK without a message, nothing to compare).
        return Err(CopyFailed(format!("grpc-status {:?} and no answer", code)));
    }
    let (parts, mut body) = response.into_parts();
    let mut answer = Answer {
        chunks: Vec::new(),
        encoding: parts.headers.get(&crate::grpc::GRPC_ENCODING).cloned(),
        form: Form::Grpc,
    };
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| CopyFailed(format!("the answer broke off: {e}")))?;
        match frame.into_data() {
            Ok(data) => answer.chunks.push(data),
            Err(frame) => {
                let status = frame.trailers_ref().and_then(|t| t.get(&crate::grpc::GRPC_STATUS));
                return match status.map(|v| Code::parse(v.as_bytes())) {
                    Some(Code::OK) => Ok(answer),
                    other => Err(CopyFailed(format!("grpc-status {other:?}"))),
                };
            }
        }
    }
    Err(CopyFailed("the answer ended without a status".into()))
}

/// The champion's answer body on its way to the caller, its frames also handed to the
/// pair's ChampionAnswer (clones of Bytes). Only a whole answer is handed over: a gRPC one
/// that ends with grpc-status OK, a REST one (its status already known to be 2xx) once its
/// body has ended. The caller's frames are never held back.
pub struct Tee {
    inner: RespBody,
    shadow: Option<ChampionAnswer>,
}

impl Tee {
    /// A gRPC answer (grpc-encoding `encoding`).
    pub fn boxed(inner: RespBody, mut shadow: ChampionAnswer, encoding: Option<&HeaderValue>) -> RespBody {
        shadow.set_encoding(encoding);
        Tee { inner, shadow: Some(shadow) }.boxed_unsync()
    }

    /// A 2xx v2 REST JSON answer (content-encoding `encoding`).
    pub fn boxed_json(inner: RespBody, mut shadow: ChampionAnswer, encoding: Option<&HeaderValue>) -> RespBody {
        shadow.set_form(Form::Json);
        shadow.set_encoding(encoding);
        Tee { inner, shadow: Some(shadow) }.boxed_unsync()
    }

    fn hand_over(&mut self) {
        if let Some(shadow) = self.shadow.take() {
            shadow.ok();
        }
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let json = this.shadow.as_ref().is_some_and(|s| s.answer.form == Form::Json);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(shadow) = this.shadow.as_mut() {
                        shadow.data(data);
                    }
                    // A body that knows it has ended may not be polled again.
                    if json && this.inner.is_end_stream() {
                        this.hand_over();
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    let ok =
                        trailers.get(&crate::grpc::GRPC_STATUS).is_some_and(|v| Code::parse(v.as_bytes()) == Code::OK);
                    if ok || json {
                        this.hand_over();
                    }
                }
            }
            Poll::Ready(None) if json => this.hand_over(),
            Poll::Ready(Some(Err(_))) => this.shadow = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// --- the comparison threads -------------------------------------------------------------

type Job = (Answer, Answer, oneshot::Sender<Result<Comparison, String>>);

/// Threads that compare large pairs, started on first use, at the lowest CPU priority (so
/// on busy cores the runtime threads, and with them the champions' answers, run first).
/// Their queue needs no bound of its own: every job holds a place in flight.
struct ComparePool {
    threads: usize,
    queue: Mutex<Option<mpsc::Sender<Job>>>,
}

impl ComparePool {
    fn new(threads: usize) -> ComparePool {
        ComparePool { threads, queue: Mutex::new(None) }
    }

    async fn compare(&self, ours: Answer, theirs: Answer) -> Result<Comparison, String> {
        let (to, from) = oneshot::channel();
        self.submit((ours, theirs, to))?;
        from.await.map_err(|_| "the comparison thread stopped".to_string())?
    }

    fn submit(&self, job: Job) -> Result<(), String> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.is_none() {
            *queue = Some(self.spawn()?);
        }
        queue.as_ref().expect("started").send(job).map_err(|_| "the comparison threads stopped".to_string())
    }

    fn spawn(&self) -> Result<mpsc::Sender<Job>, String> {
        let (to, from) = mpsc::channel::<Job>();
        let from = Arc::new(Mutex::new(from));
        for i in 0..self.threads {
            let from = from.clone();
            std::thread::Builder::new()
                .name(format!("tsplit-compare-{i}"))
                .spawn(move || {
                    lowest_priority();
                    loop {
                        let job = from.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok((ours, theirs, to)) = job else { return };
                        let result = std::panic::catch_unwind(|| compare_answers(ours, theirs))
                            .unwrap_or_else(|_| Err("the comparison panicked".to_string()));
                        let _ = to.send(result);
                    }
                })
                .map_err(|e| format!("cannot start a comparison thread: {e}"))?;
        }
        Ok(to)
    }
}

/// nice 19 for the calling thread (Linux threads have their own nice value).
fn lowest_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority on this thread's own id, no memory involved.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    use prost::Message;

    use crate::oip::{InferOutputTensor, ModelInferResponse};
    use crate::stats::CountersRegistry;

    fn counters() -> Arc<Counters> {
        CountersRegistry::default().get("dep_a", "ch_b", "mod_b")
    }

    /// A framed answer with one FP32 output of `values`.
    fn answer(values: &[f32]) -> Answer {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let response = ModelInferResponse {
            outputs: vec![InferOutputTensor {
                name: "p".into(),
                datatype: "FP32".into(),
                shape: vec![1, values.len() as i64],
                ..Default::default()
            }],
            raw_output_contents: vec![Bytes::from(raw)],
            ..Default::default()
        };
        Answer { chunks: vec![crate::grpc::frame(&response.encode_to_vec())], encoding: None, form: Form::Grpc }
    }

    fn get(a: &AtomicU64) -> u64 {
        a.load(Relaxed)
    }

    async fn settled(mirrors: &Mirrors) {
        for _ in 0..500 {
            if mirrors.inflight() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("copies still in flight");
    }

    #[tokio::test]
    async fn copies_past_the_bound_are_dropped_and_counted_and_places_come_back() {
        let mirrors = Mirrors::new(2, Duration::from_secs(5), 1);
        let c = counters();
        let (release, released) = tokio::sync::watch::channel(false);
        let mut handles = Vec::new();
        for _ in 0..5 {
            let mut released = released.clone();
            handles.push(mirrors.start(&c, |_| async move {
                let _ = released.wait_for(|r| *r).await;
                Err(CopyFailed("released".into()))
            }));
        }
        assert_eq!(handles.iter().filter(|h| h.is_some()).count(), 2);
        assert_eq!((get(&c.mirrored), get(&c.mirror_dropped), mirrors.inflight()), (2, 3, 2));
        drop(handles); // the champions' answers ended: the copies go out
        let _ = release.send(true);
        settled(&mirrors).await;
        assert_eq!(get(&c.mirror_errors), 2);
        assert!(mirrors.start(&c, |_| async { Err(CopyFailed("x".into())) }).is_some(), "a place came back");
    }

    #[tokio::test]
    async fn a_copy_leaves_only_once_its_champions_answer_has_ended_ok_or_not() {
        let mirrors = Mirrors::new(4, Duration::from_secs(5), 1);
        let c = counters();
        let sent = Arc::new(AtomicUsize::new(0));
        let copy = |sent: Arc<AtomicUsize>| {
            move |_| async move {
                sent.fetch_add(1, Relaxed);
                Ok(answer(&[1.0]))
            }
        };
        let answered = mirrors.start(&c, copy(sent.clone())).unwrap();
        let failed = mirrors.start(&c, copy(sent.clone())).unwrap();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(sent.load(Relaxed), 0, "no copy before its champion answered");
        answered.set(answer(&[1.0]).chunks[0].clone(), None);
        drop(failed); // a champion that failed: its copy still goes (the challenger is judged on it)
        settled(&mirrors).await;
        assert_eq!(sent.load(Relaxed), 2);
        assert_eq!((get(&c.mirror_answers), get(&c.compared)), (2, 1));
    }

    #[tokio::test]
    async fn a_copy_leaves_within_its_spread_of_the_champions_answer() {
        let mirrors = Mirrors::new(64, Duration::from_secs(5), 1);
        let c = counters();
        let (sent, mut copies) = tokio::sync::mpsc::unbounded_channel();
        let first_ended = std::time::Instant::now();
        for _ in 0..32 {
            let sent = sent.clone();
            let handle = mirrors.start(&c, move |_| async move {
                let _ = sent.send(std::time::Instant::now());
                Err(CopyFailed("counted only".into()))
            });
            handle.expect("room").set(answer(&[1.0]).chunks[0].clone(), None);
        }
        settled(&mirrors).await;
        let mut waits = Vec::new();
        while let Ok(at) = copies.try_recv() {
            waits.push(at.duration_since(first_ended));
        }
        assert_eq!(waits.len(), 32, "every copy left");
        // tokio's timer ticks in milliseconds (a 2 ms spread fires within 3 ms), and a loaded
        // test machine may be later still: never by half a second.
        assert!(waits.iter().all(|w| *w < COPY_SPREAD + Duration::from_millis(500)), "{waits:?}");
    }

    #[tokio::test]
    async fn the_champion_never_waits_for_its_copy() {
        let mirrors = Mirrors::new(4, Duration::from_secs(5), 1);
        let c = counters();
        let started = std::time::Instant::now();
        let handle = mirrors.start(&c, |_| std::future::pending()).expect("room");
        handle.set(answer(&[1.0]).chunks[0].clone(), None);
        assert!(started.elapsed() < Duration::from_millis(50));
        assert_eq!(mirrors.inflight(), 1);
    }

    #[tokio::test]
    async fn a_pair_is_scored_once_both_answers_are_in() {
        let mirrors = Mirrors::new(4, Duration::from_secs(5), 1);
        let c = counters();
        let mut handle = mirrors.start(&c, |_| async { Ok(answer(&[0.5, 0.25, 0.25])) }).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(get(&c.compared), 0, "the champion has not answered yet");
        // The champion's answer in two frames, as a relay sees it.
        let whole = answer(&[0.25, 0.5, 0.25]).chunks.remove(0);
        handle.data(&whole.slice(..7));
        handle.data(&whole.slice(7..));
        handle.ok();
        settled(&mirrors).await;
        assert_eq!((get(&c.compared), get(&c.exact_matches), get(&c.label_agree), get(&c.label_total)), (1, 0, 0, 1));
        assert_eq!(get(&c.abs_diff_count), 3);
        assert_eq!(f64::from_bits(get(&c.abs_diff_sum_bits)), 0.5);
        assert_eq!((get(&c.mirror_errors), get(&mirrors.compared_inline)), (0, 1));
    }

    #[tokio::test]
    async fn a_failed_or_late_copy_is_an_error_and_not_compared() {
        let mirrors = Mirrors::new(4, Duration::from_millis(50), 1);
        let c = counters();
        mirrors
            .start(&c, |_| async { Err(CopyFailed("UNAVAILABLE".into())) })
            .unwrap()
            .set(answer(&[1.0]).chunks[0].clone(), None);
        mirrors.start(&c, |_| std::future::pending()).unwrap().set(answer(&[1.0]).chunks[0].clone(), None);
        settled(&mirrors).await;
        assert_eq!((get(&c.mirrored), get(&c.mirror_errors), get(&c.compared)), (2, 2, 0));
        assert!(get(&c.mirror_latency_us_sum) >= 50_000, "the late copy's latency is its deadline");
    }

    #[tokio::test]
    async fn a_champion_that_fails_or_goes_away_leaves_the_pair_unscored() {
        let mirrors = Mirrors::new(4, Duration::from_secs(5), 1);
        let c = counters();
        drop(mirrors.start(&c, |_| async { Ok(answer(&[1.0])) }).unwrap());
        let mut half = mirrors.start(&c, |_| async { Ok(answer(&[1.0])) }).unwrap();
        half.data(&answer(&[1.0]).chunks[0]);
        drop(half); // frames, but never an OK status
        settled(&mirrors).await;
        assert_eq!((get(&c.mirrored), get(&c.mirror_errors), get(&c.compared)), (2, 0, 0));
    }

    #[tokio::test]
    async fn large_pairs_are_compared_off_the_runtime_and_compressed_answers_decompressed() {
        let mirrors = Mirrors::new(4, Duration::from_secs(5), 1);
        let c = counters();
        let values: Vec<f32> = (0..10_000).map(|i| i as f32).collect();
        let ours = answer(&values);
        // The challenger answers gzip-compressed.
        let message = &ours.chunks[0][5..];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(message).unwrap();
        let packed = gz.finish().unwrap();
        let mut framed = vec![1u8];
        framed.extend((packed.len() as u32).to_be_bytes());
        framed.extend(packed);
        let theirs = Answer {
            chunks: vec![Bytes::from(framed)],
            encoding: Some(HeaderValue::from_static("gzip")),
            form: Form::Grpc,
        };
        mirrors.start(&c, |_| async move { Ok(theirs) }).unwrap().set(ours.chunks[0].clone(), None);
        settled(&mirrors).await;
        assert_eq!((get(&c.compared), get(&c.exact_matches), get(&c.label_agree)), (1, 1, 1));
        assert_eq!((get(&mirrors.compared_off_runtime), get(&mirrors.compared_inline)), (1, 0));
    }

    #[tokio::test]
    async fn answers_that_do_not_parse_are_not_scored() {
        let mirrors = Mirrors::new(4, Duration::from_secs(5), 1);
        let c = counters();
        let garbage = Answer { chunks: vec![crate::grpc::frame(b"\xff\xff\xff")], encoding: None, form: Form::Grpc };
        mirrors.start(&c, |_| async move { Ok(garbage) }).unwrap().set(answer(&[1.0]).chunks[0].clone(), None);
        let unframed = Answer { chunks: vec![Bytes::from_static(b"\x00\x00")], encoding: None, form: Form::Grpc };
        mirrors.start(&c, |_| async move { Ok(unframed) }).unwrap().set(answer(&[1.0]).chunks[0].clone(), None);
        settled(&mirrors).await;
        assert_eq!((get(&c.mirrored), get(&c.compared), get(&c.mirror_errors)), (2, 0, 0));
    }

    /// The JSON of `grpc_answer()`.
    const SAME_JSON: &str =
        r#"{"model_name":"m","outputs":[{"name":"p","datatype":"FP32","shape":[1,3],"data":[0.25,0.5,0.25]}]}"#;

    fn body_of(bytes: Bytes) -> RespBody {
        http_body_util::Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
    }

    /// One FP32 output "p" of [0.25, 0.5, 0.25], over gRPC (raw contents).
    fn grpc_answer() -> Answer {
        answer(&[0.25, 0.5, 0.25])
    }

    async fn relayed(body: RespBody) {
        let _ = body.collect().await;
    }

    #[tokio::test]
    async fn a_rest_json_answer_is_scored_against_a_grpc_one_and_a_broken_one_is_not() {
        let mirrors = Mirrors::new(4, Duration::from_secs(5), 1);
        let c = counters();
        let same = SAME_JSON;
        let other =
            r#"{"model_name":"m","outputs":[{"name":"p","datatype":"FP32","shape":[1,3],"data":[0.5,0.25,0.25]}]}"#;
        for champion in [same, other, r#"{"model_name":"m","outputs":[{"name":"p""#] {
            let shadow = mirrors.start(&c, |_| async { Ok(grpc_answer()) }).unwrap();
            relayed(Tee::boxed_json(body_of(Bytes::from_static(champion.as_bytes())), shadow, None)).await;
        }
        // The copy's answer in JSON too (a challenger with an http_endpoint).
        let theirs = Answer { chunks: vec![Bytes::from_static(same.as_bytes())], encoding: None, form: Form::Json };
        let shadow = mirrors.start(&c, |_| async move { Ok(theirs) }).unwrap();
        relayed(Tee::boxed(crate::body::Unary::ok(grpc_answer().chunks.remove(0)), shadow, None)).await;
        settled(&mirrors).await;
        assert_eq!((get(&c.mirrored), get(&c.compared), get(&c.exact_matches)), (4, 3, 2));
        assert_eq!((get(&c.label_agree), get(&c.label_total)), (2, 3));
        assert_eq!(f64::from_bits(get(&c.abs_diff_sum_bits)), 0.5);
    }

    #[tokio::test]
    async fn a_gzip_rest_answer_and_a_message_answer_are_scored() {
        use std::io::Write;
        let mirrors = Mirrors::new(4, Duration::from_secs(5), 1);
        let c = counters();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(SAME_JSON.as_bytes()).unwrap();
        let body = body_of(Bytes::from(gz.finish().unwrap()));
        let shadow = mirrors.start(&c, |_| async { Ok(grpc_answer()) }).unwrap();
        relayed(Tee::boxed_json(body, shadow, Some(&HeaderValue::from_static("gzip")))).await;
        // A translated champion's answer: the one message, unframed.
        let message = grpc_answer().chunks.remove(0).slice(5..);
        let mut shadow = mirrors.start(&c, |_| async { Ok(grpc_answer()) }).unwrap();
        shadow.set_form(Form::Message);
        shadow.set(message, None);
        settled(&mirrors).await;
        assert_eq!((c.compared.load(Relaxed), c.exact_matches.load(Relaxed)), (2, 2));
    }
}

#[cfg(test)]
mod wire_tests {
    use super::*;
    use crate::body::{request_parts, Unary};
    use crate::stats::CountersRegistry;
    use std::time::Duration;

    #[test]
    fn a_copy_shares_the_request_buffer() {
        let message = Bytes::from(vec![7u8; 1 << 20]);
        let seen = request_parts(message.clone(), b"\x0a\x01m");
        assert_eq!(&seen[0][..], &[0, 0, 0x10, 0, 3]); // not compressed, 1 MiB + 3 bytes
        assert_eq!(seen[1].as_ptr(), message.as_ptr(), "the message is the client's buffer, not a copy");
        assert_eq!(&seen[2][..], b"\x0a\x01m");
    }

    async fn relayed(body: RespBody) {
        let _ = body.collect().await;
    }

    #[tokio::test]
    async fn the_champion_answer_is_handed_over_only_when_it_ends_ok() {
        let mirrors = Mirrors::new(4, Duration::from_secs(5), 1);
        let c = CountersRegistry::default().get("dep_a", "ch_b", "mod_b");
        let answer = crate::grpc::frame(&[]); // an empty ModelInferResponse
        let theirs = Answer { chunks: vec![answer.clone()], encoding: None, form: Form::Grpc };
        let t = theirs.clone();
        let shadow = mirrors.start(&c, |_| async move { Ok(t) }).unwrap();
        relayed(Tee::boxed(Unary::ok(answer.clone()), shadow, None)).await;
        let mut trailers = HeaderMap::new();
        crate::grpc::put_status(&mut trailers, &crate::grpc::Status::new(Code::INTERNAL, "boom"));
        let shadow = mirrors.start(&c, |_| async move { Ok(theirs) }).unwrap();
        relayed(Tee::boxed(Unary::with_trailers(Some(answer), trailers), shadow, None)).await;
        for _ in 0..500 {
            if mirrors.inflight() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!((c.mirrored.load(Relaxed), c.compared.load(Relaxed), c.exact_matches.load(Relaxed)), (2, 1, 1));
    }
}
