//! Response bodies: a unary answer the router makes itself, and a backend's answer passed
//! through frame by frame while its status is counted and the deadline enforced.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use tokio::time::Sleep;

use crate::backends::BackendBody;
use crate::grpc::{put_status, Code, Status};
use crate::stats::Counters;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type RespBody = UnsyncBoxBody<Bytes, BoxError>;
pub type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

/// The last frame of an answer: trailers with `status`.
pub fn status_frame(status: &Status) -> Polled {
    let mut trailers = HeaderMap::new();
    put_status(&mut trailers, status);
    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
}

pub fn empty() -> RespBody {
    http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync()
}

/// One data frame (if any), then trailers: a whole unary answer.
pub struct Unary {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Unary {
    pub fn ok(data: Bytes) -> RespBody {
        let mut trailers = HeaderMap::new();
        put_status(&mut trailers, &Status::new(Code::OK, ""));
        Unary { data: Some(data), trailers: Some(trailers) }.boxed_unsync()
    }

    pub fn with_trailers(data: Option<Bytes>, trailers: HeaderMap) -> RespBody {
        Unary { data, trailers: Some(trailers) }.boxed_unsync()
    }
}

impl Body for Unary {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

/// A request's body as the parts it is made of (the 5-byte frame prefix, the client's
/// message as received, the model_name/model_version suffix): no part is copied, so a
/// large request and its shadow copy share one buffer.
pub fn request_parts(message: Bytes, suffix: &[u8]) -> [Bytes; 3] {
    let mut prefix = [0u8; 5];
    prefix[1..].copy_from_slice(&((message.len() + suffix.len()) as u32).to_be_bytes());
    [Bytes::copy_from_slice(&prefix), message, Bytes::copy_from_slice(suffix)]
}

/// How much earlier than this router's deadline a caller may give up and still count as
/// DEADLINE_EXCEEDED (a loaded machine takes tens of ms from the caller's write to here).
pub const DEADLINE_SLACK: std::time::Duration = std::time::Duration::from_millis(50);

/// How an answer is counted once its status is known.
pub struct Tally {
    pub counters: Arc<Counters>,
    pub started: Instant,
    /// Forced with x-tsplit-variant: counted in `forced` only.
    pub forced: bool,
}

impl Tally {
    /// The code of an answer the caller did not wait for: DEADLINE_EXCEEDED when its
    /// deadline had (all but) passed, else CANCELLED. The caller's clock started before
    /// this router's (its grpc-timeout was written before the request travelled), so a
    /// caller that gives up at its deadline does so up to a transit time earlier here:
    /// `DEADLINE_SLACK`.
    pub fn abandoned(self, deadline: tokio::time::Instant) {
        let passed = tokio::time::Instant::now() + DEADLINE_SLACK >= deadline;
        self.finish(if passed { Code::DEADLINE_EXCEEDED } else { Code::CANCELLED });
    }

    pub fn finish(self, code: Code) {
        if self.forced {
            self.counters.forced_answered(code);
        } else {
            self.counters.answered(self.started.elapsed(), code);
        }
    }
}

/// Counts a call the caller abandons (its future dropped) before an answer was counted.
pub struct Pending {
    pub tally: Option<Tally>,
    pub deadline: tokio::time::Instant,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(t) = self.tally.take() {
            t.abandoned(self.deadline);
        }
    }
}

/// A backend's answer on its way to the caller.
pub struct Relay {
    inner: BackendBody,
    deadline: Pin<Box<Sleep>>,
    tally: Option<Tally>,
    /// Names the variant in an error the router makes up mid-answer (never an address).
    what: Arc<str>,
    done: bool,
}

impl Relay {
    /// `tally` is None when the status was already counted (a Trailers-Only answer).
    pub fn boxed(inner: BackendBody, deadline: tokio::time::Instant, tally: Option<Tally>, what: Arc<str>) -> RespBody {
        Relay { inner, deadline: Box::pin(tokio::time::sleep_until(deadline)), tally, what, done: false }.boxed_unsync()
    }

    fn end_with(&mut self, status: Status) -> Polled {
        self.done = true;
        if let Some(t) = self.tally.take() {
            t.finish(status.code);
        }
        status_frame(&status)
    }
}

impl Body for Relay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return this.end_with(Status::new(Code::DEADLINE_EXCEEDED, "Deadline Exceeded"));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.done = true;
                    let code =
                        trailers.get(&crate::grpc::GRPC_STATUS).map_or(Code::UNKNOWN, |v| Code::parse(v.as_bytes()));
                    if let Some(t) = this.tally.take() {
                        t.finish(code);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(_))) => {
                let message = format!("the backend of {} broke off its answer", this.what);
                this.end_with(Status::new(Code::UNAVAILABLE, message))
            }
            Poll::Ready(None) => {
                this.done = true;
                if let Some(t) = this.tally.take() {
                    t.finish(Code::UNKNOWN);
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.tally.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The caller went away before the answer ended.
        if let Some(t) = self.tally.take() {
            t.abandoned(self.deadline.deadline());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::CountersRegistry;
    use std::time::Duration;

    fn abandon(registry: &CountersRegistry, variant: &str, left: Duration) {
        let tally = Tally { counters: registry.get("dep_a", variant, "mod_1"), started: Instant::now(), forced: false };
        tally.abandoned(tokio::time::Instant::now() + left);
    }

    #[test]
    fn a_caller_that_gives_up_at_its_deadline_counts_as_deadline_exceeded() {
        let registry = CountersRegistry::default();
        // Within a transit time of this router's deadline: the caller's own deadline passed.
        abandon(&registry, "champion", DEADLINE_SLACK / 2);
        // Well before it: the caller cancelled.
        abandon(&registry, "ch_1", Duration::from_secs(5));
        let v = registry.to_json();
        assert_eq!(v["dep_a"]["champion"]["errors_by_code"]["DEADLINE_EXCEEDED"], 1);
        assert_eq!(v["dep_a"]["ch_1"]["errors_by_code"]["CANCELLED"], 1);
    }
}
