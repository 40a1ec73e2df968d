//! One request, from its path to its answer: the v2 inference calls (ModelInfer routed by
//! slot, ModelReady/ModelMetadata to the champion, the server calls answered here), the
//! health and reflection services, and the router's own errors.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::time::{timeout_at, Instant};

use crate::backends::{BackendBody, Backends, CallError};
use crate::body::{empty, request_parts, Pending, Relay, RespBody, Tally, Unary};
use crate::grpc::{self, answer_headers, put_status, Code, Status};
use crate::serve::Shared;
use crate::table::{Route, Variant};
use crate::wire;

pub const SERVICE: &str = "inference.GRPCInferenceService";
pub const INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
const SERVER_LIVE: &str = "/inference.GRPCInferenceService/ServerLive";
const SERVER_READY: &str = "/inference.GRPCInferenceService/ServerReady";
const SERVER_METADATA: &str = "/inference.GRPCInferenceService/ServerMetadata";
const MODEL_READY: &str = "/inference.GRPCInferenceService/ModelReady";
const MODEL_METADATA: &str = "/inference.GRPCInferenceService/ModelMetadata";

pub const ROUTING_KEY_HEADER: &str = "x-routing-key";
pub const FORCED_VARIANT_HEADER: &str = "x-tsplit-variant";
static ROUTING_KEY: http::HeaderName = http::HeaderName::from_static(ROUTING_KEY_HEADER);
static FORCED_VARIANT: http::HeaderName = http::HeaderName::from_static(FORCED_VARIANT_HEADER);
pub const NOT_READY_MESSAGE: &str = "the router has not loaded its routing configuration yet; retry shortly";

/// Every request the server takes.
pub async fn handle(shared: Arc<Shared>, backends: Arc<Backends>, req: Request<Incoming>) -> Response<RespBody> {
    // The rarer calls' futures are boxed: this future is moved into every call's task, and
    // its size is its largest branch's.
    if !crate::rest::is_grpc(req.headers()) {
        return Box::pin(crate::rest::handle(shared, backends, req)).await;
    }
    let path = req.uri().path();
    let answer = match path {
        INFER => infer(&shared, &backends, req).await,
        SERVER_LIVE => Ok(local(Bytes::from_static(&[0x08, 0x01]))),
        SERVER_READY => {
            Ok(local(if shared.table.load().is_some() { Bytes::from_static(&[0x08, 0x01]) } else { Bytes::new() }))
        }
        SERVER_METADATA => {
            let mut out = Vec::new();
            wire::encode_string_field(1, &shared.config.server_name, &mut out);
            wire::encode_string_field(2, &shared.config.server_version, &mut out);
            Ok(local(Bytes::from(out)))
        }
        MODEL_READY | MODEL_METADATA => Box::pin(to_champion(&shared, &backends, req)).await,
        crate::health::CHECK | crate::health::WATCH => Box::pin(crate::health::handle(&shared, req)).await,
        p if crate::reflection::is_reflection(p) => Box::pin(crate::reflection::handle(&shared, req)).await,
        _ => Err(Status::new(Code::UNIMPLEMENTED, format!("method {path} is not served by this router"))),
    };
    answer.unwrap_or_else(|status| error_answer(&status, None))
}

/// A Trailers-Only answer with the router's own status (and tsplit-* headers, when a
/// variant was chosen).
pub fn error_answer(status: &Status, extra: Option<&HeaderMap>) -> Response<RespBody> {
    let mut response = answer_headers().body(empty()).expect("static headers are valid");
    if let Some(extra) = extra {
        for (k, v) in extra {
            response.headers_mut().insert(k, v.clone());
        }
    }
    put_status(response.headers_mut(), status);
    response
}

/// A whole unary answer: one message and status OK.
pub fn local(message: Bytes) -> Response<RespBody> {
    answer_headers().body(Unary::ok(grpc::frame(&message))).expect("static headers are valid")
}

struct Call {
    deadline: Instant,
    message: Bytes,
    headers: HeaderMap,
}

/// Read a unary request: its deadline, its one message (decompressed), its headers.
async fn read_call(shared: &Shared, req: Request<Incoming>) -> Result<Call, Status> {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let timeout = parts
        .headers
        .get(&grpc::GRPC_TIMEOUT)
        .and_then(|v| grpc::parse_timeout(v.as_bytes()))
        .unwrap_or_else(|| Duration::from_secs_f64(shared.config.request_timeout_s));
    let deadline = started + timeout;
    let max = shared.config.max_message_bytes;
    let collected = match timeout_at(deadline, Limited::new(body, max + 5).collect()).await {
        Err(_) => return Err(Status::new(Code::DEADLINE_EXCEEDED, "Deadline Exceeded")),
        Ok(Err(err)) if err.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return Err(Status::new(
                Code::RESOURCE_EXHAUSTED,
                format!("the request is larger than the router's limit ({max} bytes)"),
            ))
        }
        Ok(Err(_)) => return Err(Status::new(Code::CANCELLED, "the request was not received whole")),
        Ok(Ok(c)) => c.to_bytes(),
    };
    let encoding = parts.headers.get(&grpc::GRPC_ENCODING).map(|v| v.as_bytes());
    let message = grpc::unary_message(&collected, encoding, max)?;
    Ok(Call { deadline, message, headers: parts.headers })
}

fn invalid(err: wire::Malformed) -> Status {
    Status::new(Code::INVALID_ARGUMENT, format!("the request is not a valid message: {err}"))
}

/// `--auth jwt`: the caller's principal (None without auth), or UNAUTHENTICATED.
fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<Option<Arc<crate::auth::Principal>>, Status> {
    crate::rest::authenticate(shared, headers).map_err(|e| Status::new(Code::UNAUTHENTICATED, e.0))
}

/// The named deployment; another org's is NOT_FOUND in the same words as none.
fn route_of(
    shared: &Shared,
    name: &str,
    field: &str,
    principal: &Option<Arc<crate::auth::Principal>>,
) -> Result<Arc<Route>, Status> {
    if name.is_empty() {
        return Err(Status::new(
            Code::INVALID_ARGUMENT,
            format!("{field} is required: set it to a deployment id (dep_...)"),
        ));
    }
    let table = shared.table.load();
    let Some(table) = table.as_ref() else {
        return Err(Status::new(Code::UNAVAILABLE, NOT_READY_MESSAGE));
    };
    table
        .lookup(name)
        .filter(|route| crate::rest::may_use(principal, route))
        .cloned()
        .ok_or_else(|| Status::new(Code::NOT_FOUND, format!("{field} {}: no such deployment", py_repr(name))))
}

/// Which variant answers a call, and which challenger gets its shadow copy.
pub(crate) struct Choice {
    pub variant: Arc<Variant>,
    pub mirror: Option<Arc<Variant>>,
    /// Forced with x-tsplit-variant (counted in `forced` only; never mirrored).
    pub forced: bool,
}

/// The variant a call names with x-tsplit-variant, else its slot's owner (by x-routing-key,
/// or a random slot) and, in shadow mode, the challenger that gets a copy. gRPC and REST
/// alike; Err: the forced variant is not one of the deployment's (the message).
pub(crate) fn choose(route: &Route, headers: &HeaderMap) -> Result<Choice, String> {
    match headers.get(&FORCED_VARIANT).map(|v| String::from_utf8_lossy(v.as_bytes())) {
        Some(name) if !name.is_empty() => match route.variant(&name) {
            Some(v) => Ok(Choice { variant: v.clone(), mirror: None, forced: true }),
            None => {
                let known: Vec<&str> = route.variants.iter().map(|v| v.name.as_str()).collect();
                Err(format!(
                    "x-tsplit-variant {} is not a variant of deployment {} (variants: {})",
                    py_repr(&name),
                    route.slug,
                    known.join(", ")
                ))
            }
        },
        _ => {
            let key = headers.get(&ROUTING_KEY).map(|v| v.as_bytes());
            let (answer, mirror) = route.choose(route.slot_of(key));
            Ok(Choice { variant: answer.clone(), mirror: mirror.cloned(), forced: false })
        }
    }
}

impl Choice {
    /// After an attempt that got no answer at all (the backend unreachable, or UNAVAILABLE
    /// before any answer): a challenger is retried on the champion, counted as a failover
    /// (not for forced calls, which the guardrails do not read). True: retry on the
    /// champion, now `self.variant`.
    pub(crate) fn fail_over(&mut self, route: &Route) -> bool {
        if self.variant.is_champion() {
            return false;
        }
        if !self.forced {
            self.variant.counters.failovers.fetch_add(1, Relaxed);
        }
        self.variant = route.champion().clone();
        true
    }
}

/// Python's repr() of a str, for messages that match the Python router's.
fn py_repr(text: &str) -> String {
    if text.contains('\'') && !text.contains('"') {
        format!("\"{text}\"")
    } else {
        format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// Headers never passed to a backend: the caller's token, tsplit's own (`x-tsplit-*`), and
/// what describes this hop (hop-by-hop headers, the host, the body's length).
pub(crate) fn stays_here(name: &str) -> bool {
    matches!(
        name,
        "authorization"
            | "proxy-authorization"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "host"
            | "content-length"
    ) || name.starts_with("x-tsplit-")
}

/// Client metadata passed to a gRPC backend: not what `stays_here`, nor what describes
/// this call's encoding and deadline (the router sets its own).
pub(crate) fn forwardable(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len() + 3);
    for (k, v) in headers {
        let name = k.as_str();
        let grpc_hop = matches!(
            name,
            "content-type"
                | "user-agent"
                | "grpc-timeout"
                | "grpc-encoding"
                | "grpc-accept-encoding"
                | "grpc-message-type"
        );
        if !grpc_hop && !stays_here(name) {
            out.append(k.clone(), v.clone());
        }
    }
    out.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(grpc::CONTENT_TYPE));
    out.insert(http::header::TE, HeaderValue::from_static("trailers"));
    out
}

/// Send one unary call to a variant's backend: the answer's head, or why there is none.
pub(crate) async fn send(
    backends: &Backends,
    variant: &Variant,
    path: &str,
    message: &Bytes,
    headers: &HeaderMap,
    deadline: Instant,
) -> Result<Response<BackendBody>, CallError> {
    let endpoint = backends.endpoint(&variant.endpoint);
    let uri = match &variant.infer_uri {
        Some(uri) if path == INFER => Some(uri.clone()),
        _ => crate::table::grpc_uri(&variant.endpoint, path).ok(),
    };
    let uri = uri.ok_or_else(|| CallError::Unavailable("the endpoint is not host:port".into()))?;
    let body = request_parts(message.clone(), &variant.suffix);
    // A call the server never saw (its connection was closing) goes again, once, on another.
    let mut retried = false;
    loop {
        let sender = endpoint.sender(deadline).await?;
        let mut request = Request::post(uri.clone())
            .version(http::Version::HTTP_2)
            .body(())
            .map_err(|e| CallError::Unavailable(format!("bad request: {e}")))?;
        *request.headers_mut() = headers.clone();
        let left = deadline.saturating_duration_since(Instant::now());
        request.headers_mut().insert(grpc::GRPC_TIMEOUT.clone(), grpc::format_timeout(left));
        match timeout_at(deadline, sender.send(request, &body)).await {
            Err(_) => return Err(CallError::DeadlineExceeded),
            Ok(Err(err)) => {
                endpoint.discard_closed();
                if retried || !crate::backends::never_processed(&err) {
                    return Err(CallError::Unavailable(format!("{err}")));
                }
                retried = true;
            }
            Ok(Ok(response)) => return Ok(response),
        }
    }
}

/// The grpc-status in an answer's headers: set only in a Trailers-Only answer.
fn head_status(response: &Response<BackendBody>) -> Option<Code> {
    response.headers().get(&grpc::GRPC_STATUS).map(|v| Code::parse(v.as_bytes()))
}

/// The error a failed send becomes for the caller, naming the variant.
fn send_failure(err: CallError, variant: &Variant) -> Status {
    match err {
        CallError::DeadlineExceeded => Status::new(Code::DEADLINE_EXCEEDED, "Deadline Exceeded"),
        CallError::Unavailable(_) => {
            Status::new(Code::UNAVAILABLE, format!("the backend of {} is unreachable", variant.description))
        }
    }
}

async fn infer(
    shared: &Shared,
    backends: &Arc<Backends>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Status> {
    let started = std::time::Instant::now();
    let call = read_call(shared, req).await?;
    let principal = authenticate(shared, &call.headers)?;
    let found = wire::scan_model_ref(&call.message, &wire::INFER_REQUEST).map_err(invalid)?;
    let route = route_of(shared, found.name, "model_name", &principal)?;
    let mut choice = choose(&route, &call.headers).map_err(|m| Status::new(Code::INVALID_ARGUMENT, m))?;
    let headers = forwardable(&call.headers);
    // Shadow mode: the copy starts on its own; the champion's answer never waits for it.
    let shadow = choice
        .mirror
        .take()
        .and_then(|m| crate::mirror::copy_infer(&shared.mirrors, backends, &m, &call.message, &headers));
    let mut pending = Pending {
        tally: Some(Tally { counters: choice.variant.counters.clone(), started, forced: choice.forced }),
        deadline: call.deadline,
    };
    let mut sent = send(backends, &choice.variant, INFER, &call.message, &headers, call.deadline).await;
    let gave_no_answer = match &sent {
        Err(CallError::Unavailable(_)) => true,
        Ok(r) => head_status(r) == Some(Code::UNAVAILABLE),
        Err(CallError::DeadlineExceeded) => false,
    };
    if gave_no_answer && choice.fail_over(&route) {
        if let Some(t) = pending.tally.as_mut() {
            t.counters = choice.variant.counters.clone();
        }
        sent = send(backends, &choice.variant, INFER, &call.message, &headers, call.deadline).await;
    }
    let variant = choice.variant;
    let tally = pending.tally.take().expect("the tally is taken only here");
    let extra = &variant.answer_headers;
    match sent {
        Err(err) => {
            let status = send_failure(err, &variant);
            tally.finish(status.code);
            Ok(error_answer(&status, Some(extra)))
        }
        Ok(response) => Ok(relay(response, tally, extra, call.deadline, variant.description.clone(), shadow)),
    }
}

/// A backend's answer passed on, with the tsplit-* headers added and the status counted.
fn relay(
    response: Response<BackendBody>,
    tally: Tally,
    extra: &HeaderMap,
    deadline: Instant,
    what: Arc<str>,
    shadow: Option<crate::mirror::ChampionAnswer>,
) -> Response<RespBody> {
    let (mut parts, body) = response.into_parts();
    // A Trailers-Only answer is an error: no pair to score (shadow dropped).
    let (tally, shadow) = match head_status_of(&parts.headers) {
        Some(code) => {
            tally.finish(code);
            (None, None)
        }
        None => (Some(tally), shadow),
    };
    for (k, v) in extra {
        parts.headers.insert(k, v.clone());
    }
    let mut body = Relay::boxed(body, deadline, tally, what);
    if let Some(shadow) = shadow {
        body = crate::mirror::Tee::boxed(body, shadow, parts.headers.get(&grpc::GRPC_ENCODING));
    }
    Response::from_parts(parts, body)
}

fn head_status_of(headers: &HeaderMap) -> Option<Code> {
    headers.get(&grpc::GRPC_STATUS).map(|v| Code::parse(v.as_bytes()))
}

/// ModelReady / ModelMetadata: asked of the deployment's champion, not counted.
/// ModelMetadata's answer is named after the deployment (a client that checks the name it
/// asked for sees its own).
async fn to_champion(
    shared: &Shared,
    backends: &Backends,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Status> {
    let path = req.uri().path().to_string();
    let call = read_call(shared, req).await?;
    let principal = authenticate(shared, &call.headers)?;
    let found = wire::scan_model_ref(&call.message, &wire::MODEL_REQUEST).map_err(invalid)?;
    let route = route_of(shared, found.name, "name", &principal)?;
    let champion = route.champion().clone();
    let headers = forwardable(&call.headers);
    let extra = &champion.answer_headers;
    let response = match send(backends, &champion, &path, &call.message, &headers, call.deadline).await {
        Err(err) => return Ok(error_answer(&send_failure(err, &champion), Some(extra))),
        Ok(r) => r,
    };
    if path != MODEL_METADATA || head_status(&response).is_some() {
        let (mut parts, body) = response.into_parts();
        for (k, v) in extra {
            parts.headers.insert(k, v.clone());
        }
        return Ok(Response::from_parts(parts, Relay::boxed(body, call.deadline, None, champion.description.clone())));
    }
    // ModelMetadata: read the whole answer, append the deployment's name, send it on.
    let (mut parts, body) = response.into_parts();
    let collected = match timeout_at(call.deadline, body.collect()).await {
        Err(_) => return Err(Status::new(Code::DEADLINE_EXCEEDED, "Deadline Exceeded")),
        Ok(Err(_)) => {
            return Err(Status::new(
                Code::UNAVAILABLE,
                format!("the backend of {} broke off its answer", champion.description),
            ))
        }
        Ok(Ok(c)) => c,
    };
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let data = collected.to_bytes();
    let data = match grpc::unary_message(
        &data,
        parts.headers.get(&grpc::GRPC_ENCODING).map(|v| v.as_bytes()),
        usize::MAX >> 1,
    ) {
        Ok(message) if Code::parse(trailers.get(&grpc::GRPC_STATUS).map_or(b"2", |v| v.as_bytes())) == Code::OK => {
            let mut suffix = Vec::new();
            wire::encode_string_field(wire::NAME_FIELD, &route.slug, &mut suffix);
            parts.headers.remove(&grpc::GRPC_ENCODING);
            Some(grpc::frame_parts(&message, &suffix))
        }
        _ => (!data.is_empty()).then_some(data),
    };
    for (k, v) in extra {
        parts.headers.insert(k, v.clone());
    }
    Ok(Response::from_parts(parts, Unary::with_trailers(data, trailers)))
}
