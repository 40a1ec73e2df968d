//! grpc.health.v1: SERVING for the whole router ("") and the inference service once the
//! first full snapshot is applied (and until the stop begins), NOT_SERVING before.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::watch;

use crate::body::{status_frame, BoxError, RespBody};
use crate::dispatch::{local, SERVICE};
use crate::grpc::{self, answer_headers, Code, Status};
use crate::serve::Shared;
use crate::wire;

pub const CHECK: &str = "/grpc.health.v1.Health/Check";
pub const WATCH: &str = "/grpc.health.v1.Health/Watch";

const SERVING: u8 = 1;
const NOT_SERVING: u8 = 2;

fn status_message(serving: bool) -> Bytes {
    Bytes::from(vec![0x08, if serving { SERVING } else { NOT_SERVING }])
}

pub async fn handle(shared: &Shared, req: Request<Incoming>) -> Result<Response<RespBody>, Status> {
    let watch = req.uri().path() == WATCH;
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(|_| Status::new(Code::CANCELLED, "the request was not received whole"))?;
    let message = grpc::unary_message(&body.to_bytes(), None, 1 << 16)?;
    let service = wire::scan_model_ref(&message, &wire::MODEL_REQUEST)
        .map_err(|e| Status::new(Code::INVALID_ARGUMENT, format!("the request is not a valid message: {e}")))?
        .name
        .to_string();
    if !service.is_empty() && service != SERVICE {
        return Err(Status::new(Code::NOT_FOUND, format!("unknown service {service:?}")));
    }
    if !watch {
        return Ok(local(status_message(shared.is_serving())));
    }
    let body = WatchBody::new(shared.serving.subscribe(), shared.is_serving());
    Ok(answer_headers().body(body.boxed_unsync()).expect("static headers are valid"))
}

type Next = Pin<Box<dyn Future<Output = (watch::Receiver<bool>, Option<bool>)> + Send>>;

fn next_change(mut updates: watch::Receiver<bool>) -> Next {
    Box::pin(async move {
        let changed = updates.changed().await.ok().map(|_| *updates.borrow_and_update());
        (updates, changed)
    })
}

/// Health/Watch: the status now, then each change, until the router stops.
struct WatchBody {
    next: Option<Next>,
    first: Option<bool>,
}

impl WatchBody {
    fn new(mut updates: watch::Receiver<bool>, now: bool) -> WatchBody {
        updates.mark_unchanged();
        WatchBody { next: Some(next_change(updates)), first: Some(now) }
    }
}

impl Body for WatchBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(serving) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(grpc::frame(&status_message(serving))))));
        }
        let Some(next) = self.next.as_mut() else { return Poll::Ready(None) };
        match next.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready((updates, Some(serving))) => {
                self.next = Some(next_change(updates));
                Poll::Ready(Some(Ok(Frame::data(grpc::frame(&status_message(serving))))))
            }
            Poll::Ready((_, None)) => {
                self.next = None;
                status_frame(&Status::new(Code::UNAVAILABLE, "the router is stopping"))
            }
        }
    }
}
