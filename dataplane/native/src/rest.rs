//! The Open Inference Protocol v2 REST API on the router's one port, beside gRPC (SPEC
//! section 5, "REST"), over HTTP/1.1 and HTTP/2 alike (serve.rs's auto server; dispatch.rs
//! hands every request whose content-type is not application/grpc here).
//!
//! - `GET /v2/health/live`, `GET /v2/health/ready` (503 until the first snapshot), `GET /v2`
//!   (server metadata): no token needed.
//! - `GET /v2/models/{slug}[/versions/{v}]` and `.../ready`: asked of the champion (REST
//!   when it has an `http_endpoint`, else ModelMetadata/ModelReady over gRPC); the answer
//!   names the deployment.
//! - `POST /v2/models/{slug}[/versions/{v}]/infer`: a variant is chosen exactly as for gRPC
//!   (split by slot, `x-routing-key`, `x-tsplit-variant`), then
//!   - a model with an `http_endpoint` gets the body untouched (never parsed) at
//!     `/v2/models/{model_name}[/versions/{model_version}]/infer` over pooled HTTP/1.1
//!     keep-alive connections (h1.rs), and its answer (any status) passes through;
//!   - a model without one gets the JSON translated to ModelInfer on its gRPC endpoint
//!     (json_infer.rs), and the answer translated back (a gRPC error becomes its HTTP
//!     status with the v2 error object).
//!
//!   A challenger that cannot be reached is retried on the champion (a failover); answers
//!   are counted in the same per-variant counters as gRPC (2xx is OK, an HTTP error is
//!   counted under the gRPC code it corresponds to), latency to the answer's head.
//!
//! The router's own errors are the v2 error object `{"error": "..."}`: 400 (not JSON, not an
//! inference request, a body that did not arrive whole), 401 (no valid token, with
//! `--auth jwt`), 404 (no such deployment, or another org's: the same words), 405, 413 (a
//! body over the router's limit, `max_message_bytes`, 64 MiB by default), 415 (a
//! content-type that is not JSON), 503 (no routing configuration yet, the champion
//! unreachable), 504 (the deadline, `request_timeout_s`, passed).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use prost::Message;
use serde_json::{json, Value};
use tokio::time::{timeout_at, Instant};

use crate::auth::{bearer_token, AuthError, Principal};
use crate::backends::{Backends, CallError};
use crate::body::{RespBody, Tally};
use crate::dispatch::{self, NOT_READY_MESSAGE, ROUTING_KEY_HEADER};
use crate::grpc::{self, Code};
use crate::json_infer::{error_body, request_from_json, response_to_json};
use crate::mirror::CopyFailed;
use crate::oip;
use crate::serve::Shared;
use crate::table::{Route, Variant};

const JSON: &str = "application/json";
const MODEL_READY_PATH: &str = "/inference.GRPCInferenceService/ModelReady";
const MODEL_METADATA_PATH: &str = "/inference.GRPCInferenceService/ModelMetadata";

/// Whether a request is gRPC (dispatch.rs keeps those; everything else comes here).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// An answer the router makes: status and JSON body.
fn answer(status: StatusCode, body: Bytes) -> Response<RespBody> {
    let mut response = Response::new(Full::new(body).map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    response
}

fn error(status: StatusCode, message: &str) -> Response<RespBody> {
    answer(status, error_body(message))
}

fn unauthorized(err: &AuthError) -> Response<RespBody> {
    let mut response = error(StatusCode::UNAUTHORIZED, &err.0);
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn with_headers(mut response: Response<RespBody>, extra: &HeaderMap) -> Response<RespBody> {
    for (k, v) in extra {
        response.headers_mut().insert(k, v.clone());
    }
    response
}

/// The caller's principal under `--auth jwt` (None without auth); Err: no valid token.
pub fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<Option<Arc<Principal>>, AuthError> {
    let Some(verifier) = shared.verifier.as_ref() else { return Ok(None) };
    let token = bearer_token(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()))?;
    verifier.check(token).map(Some)
}

/// Whether the caller may see the deployment: any valid token of its org (or no auth).
pub fn may_use(principal: &Option<Arc<Principal>>, route: &Route) -> bool {
    principal.as_ref().is_none_or(|p| p.org_id == route.org_id)
}

/// The deployment named in a REST path, or the answer that says why not (404 for another
/// org's deployment is the same as for none).
fn route_for(
    shared: &Shared,
    principal: &Option<Arc<Principal>>,
    slug: &str,
) -> Result<Arc<Route>, Box<Response<RespBody>>> {
    let table = shared.table.load();
    let Some(table) = table.as_ref() else {
        return Err(Box::new(error(StatusCode::SERVICE_UNAVAILABLE, NOT_READY_MESSAGE)));
    };
    match table.lookup(slug) {
        Some(route) if may_use(principal, route) => Ok(route.clone()),
        _ => Err(Box::new(error(StatusCode::NOT_FOUND, &format!("model '{slug}': no such deployment")))),
    }
}

/// A parsed REST path under /v2/models/.
struct ModelPath<'a> {
    slug: &'a str,
    action: &'a str, // "", "ready" or "infer"
}

fn model_path(path: &str) -> Option<ModelPath<'_>> {
    let rest = path.strip_prefix("/v2/models/")?;
    let mut parts = rest.split('/');
    let slug = parts.next().filter(|s| !s.is_empty())?;
    let mut next = parts.next();
    if next == Some("versions") {
        parts.next()?; // a version in the path is the caller's; the variant's own is sent
        next = parts.next();
    }
    let action = match next {
        None | Some("") => "",
        Some(a @ ("ready" | "infer")) => a,
        Some(_) => return None,
    };
    if parts.next().is_some_and(|p| !p.is_empty()) {
        return None;
    }
    Some(ModelPath { slug, action })
}

/// Every REST request.
pub async fn handle(shared: Arc<Shared>, backends: Arc<Backends>, req: Request<Incoming>) -> Response<RespBody> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let get = method == Method::GET || method == Method::HEAD;
    match path.as_str() {
        "/v2/health/live" if get => return answer(StatusCode::OK, Bytes::from_static(b"{\"live\":true}")),
        "/v2/health/ready" if get => {
            return if shared.is_serving() {
                answer(StatusCode::OK, Bytes::from_static(b"{\"ready\":true}"))
            } else {
                answer(StatusCode::SERVICE_UNAVAILABLE, Bytes::from_static(b"{\"ready\":false}"))
            };
        }
        "/v2" | "/v2/" if get => {
            let body = json!({"name": shared.config.server_name, "version": shared.config.server_version,
                              "extensions": []});
            return answer(StatusCode::OK, Bytes::from(body.to_string()));
        }
        "/v2/health/live" | "/v2/health/ready" | "/v2" | "/v2/" => {
            return error(StatusCode::METHOD_NOT_ALLOWED, &format!("{path} takes GET"))
        }
        _ => {}
    }
    let Some(model) = model_path(&path) else {
        return error(StatusCode::NOT_FOUND, &format!("{path} is not a v2 REST route of this router"));
    };
    let principal = match authenticate(&shared, req.headers()) {
        Ok(p) => p,
        Err(err) => return unauthorized(&err),
    };
    let route = match route_for(&shared, &principal, model.slug) {
        Ok(r) => r,
        Err(answer) => return *answer,
    };
    match (model.action, get, method == Method::POST) {
        ("infer", _, true) => infer(&shared, &backends, &route, req).await,
        ("", true, _) | ("ready", true, _) => model_call(&shared, &backends, &route, model.action, req).await,
        ("infer", _, _) => error(StatusCode::METHOD_NOT_ALLOWED, &format!("{path} takes POST")),
        _ => error(StatusCode::METHOD_NOT_ALLOWED, &format!("{path} takes GET")),
    }
}

// --- the backends' REST side: pooled HTTP/1.1 (h1.rs) ------------------------------

/// Whether a caller's request header is passed to a REST backend: not what
/// `dispatch::stays_here`, nor `expect` or the routing key.
fn rest_forwarded(name: &str) -> bool {
    !dispatch::stays_here(name) && name != "expect" && name != ROUTING_KEY_HEADER
}

/// The same for a shadow copy, whose answer is read as it is (not compressed).
fn rest_copy_forwarded(name: &str) -> bool {
    rest_forwarded(name) && name != "accept-encoding"
}

/// Ask a variant's REST side, with the headers of `headers.0` that `headers.1` passes; its
/// whole answer (at most `max_body` bytes of body).
async fn send_rest(
    variant: &Variant,
    method: Method,
    action: &str,
    body: Bytes,
    headers: (&HeaderMap, fn(&str) -> bool),
    max_body: usize,
    deadline: Instant,
) -> Result<crate::h1::Answer, CallError> {
    let path = match action {
        "infer" => std::borrow::Cow::Borrowed(variant.rest_infer_path.as_str()),
        _ => std::borrow::Cow::Owned(crate::table::rest_path(&variant.model_name, &variant.model_version, action)),
    };
    crate::h1::exchange(&variant.http_endpoint, &method, &path, headers, body, max_body, deadline).await
}

/// A backend's REST answer passed on as it is (h1.rs dropped its hop-by-hop headers).
fn pass_through(answer: crate::h1::Answer, extra: &HeaderMap) -> Response<RespBody> {
    let mut response = Response::new(Full::new(answer.body).map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = answer.status;
    *response.headers_mut() = answer.headers;
    with_headers(response, extra)
}

// --- the backends' gRPC side ----------------------------------------------------------

/// A unary gRPC answer read whole: its status and, when OK, its message.
struct GrpcAnswer {
    code: Code,
    message: String,
    data: Bytes,
}

async fn grpc_call(
    shared: &Shared,
    backends: &Backends,
    variant: &Variant,
    path: &str,
    message: &Bytes,
    headers: &HeaderMap,
    deadline: Instant,
) -> Result<GrpcAnswer, CallError> {
    let response = dispatch::send(backends, variant, path, message, headers, deadline).await?;
    let (parts, body) = response.into_parts();
    if let Some(code) = parts.headers.get(&crate::grpc::GRPC_STATUS).map(|v| Code::parse(v.as_bytes())) {
        return Ok(GrpcAnswer { code, message: grpc_message(&parts.headers), data: Bytes::new() });
    }
    let collected = match timeout_at(deadline, body.collect()).await {
        Err(_) => return Err(CallError::DeadlineExceeded),
        Ok(Err(err)) => return Err(CallError::Unavailable(format!("the answer broke off: {err}"))),
        Ok(Ok(c)) => c,
    };
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let code = trailers.get(&crate::grpc::GRPC_STATUS).map_or(Code::UNKNOWN, |v| Code::parse(v.as_bytes()));
    let raw = collected.to_bytes();
    if code != Code::OK {
        return Ok(GrpcAnswer { code, message: grpc_message(&trailers), data: Bytes::new() });
    }
    let encoding = parts.headers.get("grpc-encoding").map(|v| v.as_bytes());
    match grpc::unary_message(&raw, encoding, shared.config.max_message_bytes.max(1 << 20) * 4) {
        Ok(data) => Ok(GrpcAnswer { code, message: String::new(), data }),
        Err(status) => Ok(GrpcAnswer { code: Code::INTERNAL, message: status.message, data: Bytes::new() }),
    }
}

/// grpc-message, percent-decoded.
fn grpc_message(headers: &HeaderMap) -> String {
    let raw = headers.get("grpc-message").map(|v| v.as_bytes()).unwrap_or_default();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            if let Ok(b) = u8::from_str_radix(std::str::from_utf8(&raw[i + 1..i + 3]).unwrap_or("zz"), 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The HTTP status of a gRPC code (as grpc-gateway and Triton map them).
pub fn http_status(code: Code) -> StatusCode {
    match code.0 {
        0 => StatusCode::OK,
        1 => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        3 | 9 | 11 => StatusCode::BAD_REQUEST,
        4 => StatusCode::GATEWAY_TIMEOUT,
        5 => StatusCode::NOT_FOUND,
        6 | 10 => StatusCode::CONFLICT,
        7 => StatusCode::FORBIDDEN,
        8 => StatusCode::TOO_MANY_REQUESTS,
        12 => StatusCode::NOT_IMPLEMENTED,
        14 => StatusCode::SERVICE_UNAVAILABLE,
        16 => StatusCode::UNAUTHORIZED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The gRPC code an HTTP answer is counted under.
pub fn grpc_code(status: StatusCode) -> Code {
    match status.as_u16() {
        200..=299 => Code::OK,
        400 | 413 | 415 | 422 => Code::INVALID_ARGUMENT,
        401 => Code::UNAUTHENTICATED,
        403 => Code(7), // PERMISSION_DENIED
        404 => Code::NOT_FOUND,
        408 | 504 => Code::DEADLINE_EXCEEDED,
        429 => Code::RESOURCE_EXHAUSTED,
        501 => Code::UNIMPLEMENTED,
        502 | 503 => Code::UNAVAILABLE,
        _ => Code::UNKNOWN,
    }
}

// --- infer -----------------------------------------------------------------------------

/// Read the whole body within the limit and the deadline (413, 400, 504 otherwise).
async fn read_body(shared: &Shared, body: Incoming, deadline: Instant) -> Result<Bytes, Response<RespBody>> {
    let max = shared.config.max_message_bytes;
    match timeout_at(deadline, Limited::new(body, max).collect()).await {
        Err(_) => Err(error(StatusCode::GATEWAY_TIMEOUT, "the request body did not arrive before the deadline")),
        Ok(Err(err)) if err.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the request body is larger than the router's limit ({max} bytes)"),
        )),
        Ok(Err(_)) => Err(error(StatusCode::BAD_REQUEST, "the request body was not received whole")),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    match headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("")) {
        None => true, // a client that says nothing is taken at its word: JSON
        Some(ct) => {
            let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            essence == JSON || (essence.starts_with("application/") && essence.ends_with("+json"))
        }
    }
}

/// The caller's headers as each kind of backend gets them: filtered for a REST backend as
/// its request is written (`rest_forwarded`), made once for gRPC backends when one is
/// asked (a call forwarded to http_endpoints never builds them).
struct Forwarded<'a> {
    caller: &'a HeaderMap,
    grpc: std::sync::OnceLock<HeaderMap>,
}

impl Forwarded<'_> {
    fn grpc(&self) -> &HeaderMap {
        self.grpc.get_or_init(|| dispatch::forwardable(&grpc_metadata(self.caller)))
    }
}

/// What one attempt on a variant gave.
enum Attempt {
    /// An answer, and its status; `message` is the ModelInferResponse a translated call's
    /// 200 was made from (what its shadow pair compares).
    Answer {
        response: Response<RespBody>,
        status: StatusCode,
        message: Option<Bytes>,
    },
    /// No answer at all: the variant's backend cannot be reached.
    Unreachable,
    Deadline,
}

fn router_answer(status: StatusCode, message: &str) -> Attempt {
    Attempt::Answer { response: error(status, message), status, message: None }
}

/// A JSON inference request as a ModelInfer message (without the model's name and
/// version: dispatch::send appends the variant's own as its suffix).
fn translate(body: &[u8]) -> Result<Bytes, String> {
    request_from_json(body, "", "").map(|r| Bytes::from(r.encode_to_vec())).map_err(|e| e.0)
}

/// The call's body as it reaches each kind of backend: as it came, and translated once
/// (when a variant without an http_endpoint needs it).
struct Bodies {
    json: Bytes,
    translated: Option<Result<Bytes, String>>,
}

impl Bodies {
    fn translated(&mut self) -> &Result<Bytes, String> {
        self.translated.get_or_insert_with(|| translate(&self.json))
    }
}

async fn attempt(
    shared: &Shared,
    backends: &Backends,
    variant: &Variant,
    bodies: &mut Bodies,
    headers: &Forwarded<'_>,
    deadline: Instant,
) -> Attempt {
    if !variant.http_endpoint.is_empty() {
        let max = shared.config.max_message_bytes;
        return match send_rest(
            variant,
            Method::POST,
            "infer",
            bodies.json.clone(),
            (headers.caller, rest_forwarded),
            max,
            deadline,
        )
        .await
        {
            Ok(answer) => {
                let status = answer.status;
                Attempt::Answer { response: pass_through(answer, &HeaderMap::new()), status, message: None }
            }
            Err(CallError::Unavailable(_)) => Attempt::Unreachable,
            Err(CallError::DeadlineExceeded) => Attempt::Deadline,
        };
    }
    let message = match bodies.translated() {
        Ok(m) => m.clone(),
        Err(err) => return router_answer(StatusCode::BAD_REQUEST, err),
    };
    match grpc_call(shared, backends, variant, dispatch::INFER, &message, headers.grpc(), deadline).await {
        Err(CallError::Unavailable(_)) => Attempt::Unreachable,
        Err(CallError::DeadlineExceeded) => Attempt::Deadline,
        Ok(a) if a.code == Code::UNAVAILABLE => Attempt::Unreachable,
        Ok(a) if a.code != Code::OK => router_answer(http_status(a.code), &a.message),
        Ok(a) => {
            let decoded = oip::ModelInferResponse::decode(a.data.clone())
                .map_err(|e| format!("the backend's answer is not a ModelInferResponse: {e}"))
                .and_then(|r| response_to_json(&r).map_err(|e| format!("the backend's answer: {e}")));
            match decoded {
                Ok(json) => Attempt::Answer {
                    response: answer(StatusCode::OK, Bytes::from(json)),
                    status: StatusCode::OK,
                    message: Some(a.data),
                },
                Err(message) => router_answer(StatusCode::BAD_GATEWAY, &message),
            }
        }
    }
}

// --- shadow copies ---------------------------------------------------------------------

/// Bodies larger than this are translated for a shadow copy off the runtime thread.
const INLINE_TRANSLATE_BYTES: usize = 16 * 1024;

/// Start the shadow copy of a REST call for the challenger `variant`, in its own form: the
/// JSON body as it came to its http_endpoint, else the ModelInfer (translated once, shared
/// with the champion's call when that is translated too; translated in the copy's own task
/// otherwise, off the runtime thread when large). None: dropped past the bound (counted).
fn start_copy(
    shared: &Shared,
    backends: &Arc<Backends>,
    variant: &Arc<Variant>,
    bodies: &mut Bodies,
    headers: &Forwarded<'_>,
    champion_translated: bool,
) -> Option<crate::mirror::ChampionAnswer> {
    let (backends, variant) = (backends.clone(), variant.clone());
    if !variant.http_endpoint.is_empty() {
        let (body, headers, max) = (bodies.json.clone(), headers.caller.clone(), shared.config.max_message_bytes);
        return shared
            .mirrors
            .start(&variant.counters.clone(), move |deadline| send_rest_copy(variant, body, headers, max, deadline));
    }
    let ready = if champion_translated { Some(bodies.translated().clone()) } else { None };
    let (json, headers) = (bodies.json.clone(), headers.grpc().clone());
    shared.mirrors.start(&variant.counters.clone(), move |deadline| async move {
        let message = match ready {
            Some(translated) => translated,
            None if json.len() <= INLINE_TRANSLATE_BYTES => translate(&json),
            None => tokio::task::spawn_blocking(move || translate(&json))
                .await
                .unwrap_or_else(|_| Err("the translation stopped".into())),
        };
        let message = message.map_err(|e| CopyFailed(format!("the request does not translate: {e}")))?;
        crate::mirror::send_copy(backends, variant, message, headers, deadline).await
    })
}

/// Send a shadow copy of a REST call to a challenger's http_endpoint and read its whole
/// answer (a 2xx one; any other status is the copy's error).
async fn send_rest_copy(
    variant: Arc<Variant>,
    body: Bytes,
    headers: HeaderMap,
    max_body: usize,
    deadline: Instant,
) -> Result<crate::mirror::Answer, CopyFailed> {
    let answer = send_rest(&variant, Method::POST, "infer", body, (&headers, rest_copy_forwarded), max_body, deadline)
        .await
        .map_err(|e| CopyFailed(format!("{e:?}")))?;
    if !answer.status.is_success() {
        return Err(CopyFailed(format!("HTTP status {}", answer.status)));
    }
    Ok(crate::mirror::Answer {
        chunks: vec![answer.body],
        encoding: answer.headers.get(header::CONTENT_ENCODING).cloned(),
        form: crate::mirror::Form::Json,
    })
}

async fn infer(shared: &Shared, backends: &Arc<Backends>, route: &Route, req: Request<Incoming>) -> Response<RespBody> {
    let started = std::time::Instant::now();
    let deadline = Instant::now() + Duration::from_secs_f64(shared.config.request_timeout_s);
    let (parts, body) = req.into_parts();
    if !is_json(&parts.headers) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "an inference request is JSON: send Content-Type: application/json",
        );
    }
    let json = match read_body(shared, body, deadline).await {
        Ok(b) => b,
        Err(answer) => return answer,
    };
    let mut choice = match dispatch::choose(route, &parts.headers) {
        Ok(c) => c,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let mut bodies = Bodies { json, translated: None };
    let headers = Forwarded { caller: &parts.headers, grpc: std::sync::OnceLock::new() };
    // Shadow mode: the copy starts on its own; the champion's answer never waits for it. A
    // body the router refuses (400: it does not translate) has no copy, as a gRPC request
    // that is not a valid message has none.
    let champion_translated = choice.variant.http_endpoint.is_empty();
    let mut shadow = choice.mirror.take().and_then(|m| {
        if champion_translated && bodies.translated().is_err() {
            return None;
        }
        start_copy(shared, backends, &m, &mut bodies, &headers, champion_translated)
    });
    let mut outcome = attempt(shared, backends, &choice.variant, &mut bodies, &headers, deadline).await;
    if matches!(outcome, Attempt::Unreachable) && choice.fail_over(route) {
        outcome = attempt(shared, backends, &choice.variant, &mut bodies, &headers, deadline).await;
    }
    let variant = choice.variant;
    let tally = Tally { counters: variant.counters.clone(), started, forced: choice.forced };
    let extra = &variant.answer_headers;
    let (response, status) = match outcome {
        Attempt::Answer { response, status, message } => {
            // The pair is scored only when the champion answered 2xx (else the shadow is
            // dropped and the pair left unscored).
            let response = match (shadow.take(), message) {
                (Some(mut pair), Some(message)) if status.is_success() => {
                    pair.set_form(crate::mirror::Form::Message);
                    pair.set(message, None);
                    response
                }
                (Some(pair), None) if status.is_success() => {
                    let (head, body) = response.into_parts();
                    let encoding = head.headers.get(header::CONTENT_ENCODING).cloned();
                    Response::from_parts(head, crate::mirror::Tee::boxed_json(body, pair, encoding.as_ref()))
                }
                _ => response,
            };
            (response, status)
        }
        Attempt::Unreachable => (
            error(StatusCode::SERVICE_UNAVAILABLE, &format!("the backend of {} is unreachable", variant.description)),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        Attempt::Deadline => (error(StatusCode::GATEWAY_TIMEOUT, "Deadline Exceeded"), StatusCode::GATEWAY_TIMEOUT),
    };
    tally.finish(grpc_code(status));
    with_headers(response, extra)
}

/// The caller's headers as gRPC metadata for a translated call: only custom ones (the
/// HTTP/1.1 and JSON ones describe this hop).
fn grpc_metadata(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (k, v) in headers {
        let name = k.as_str();
        let http_only = matches!(
            name,
            "accept" | "accept-encoding" | "content-encoding" | "origin" | "referer" | "cookie" | "expect"
        );
        if !http_only {
            out.append(k.clone(), v.clone());
        }
    }
    out
}

// --- model metadata and ready ----------------------------------------------------------

async fn model_call(
    shared: &Shared,
    backends: &Backends,
    route: &Route,
    action: &str,
    req: Request<Incoming>,
) -> Response<RespBody> {
    let deadline = Instant::now() + Duration::from_secs_f64(shared.config.request_timeout_s.min(30.0));
    let champion = route.champion().clone();
    let extra = &champion.answer_headers;
    let unreachable =
        || error(StatusCode::SERVICE_UNAVAILABLE, &format!("the backend of {} is unreachable", champion.description));
    if !champion.http_endpoint.is_empty() {
        let headers = (req.headers(), rest_forwarded as fn(&str) -> bool);
        let got = send_rest(&champion, Method::GET, action, Bytes::new(), headers, 16 << 20, deadline).await;
        let got = match got {
            Ok(a) => a,
            Err(CallError::DeadlineExceeded) => return error(StatusCode::GATEWAY_TIMEOUT, "Deadline Exceeded"),
            Err(CallError::Unavailable(_)) => return with_headers(unreachable(), extra),
        };
        if action == "ready" || !got.status.is_success() {
            return pass_through(got, extra);
        }
        // Metadata names the deployment, as over gRPC.
        let mut value: Value = match serde_json::from_slice(&got.body) {
            Ok(v) => v,
            Err(_) => return with_headers(error(StatusCode::BAD_GATEWAY, "the model's metadata is not JSON"), extra),
        };
        if let Some(o) = value.as_object_mut() {
            o.insert("name".into(), Value::from(route.slug.as_str()));
        }
        return with_headers(answer(StatusCode::OK, Bytes::from(value.to_string())), extra);
    }
    let headers = dispatch::forwardable(&grpc_metadata(req.headers()));
    let path = if action == "ready" { MODEL_READY_PATH } else { MODEL_METADATA_PATH };
    // ModelReadyRequest / ModelMetadataRequest: name and version are the suffix's fields.
    let reply = match grpc_call(shared, backends, &champion, path, &Bytes::new(), &headers, deadline).await {
        Ok(r) => r,
        Err(CallError::DeadlineExceeded) => return error(StatusCode::GATEWAY_TIMEOUT, "Deadline Exceeded"),
        Err(CallError::Unavailable(_)) => return with_headers(unreachable(), extra),
    };
    if reply.code != Code::OK {
        return with_headers(error(http_status(reply.code), &reply.message), extra);
    }
    let body = if action == "ready" {
        let ready = oip::ModelReadyResponse::decode(reply.data).map(|r| r.ready).unwrap_or(false);
        let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        return with_headers(
            answer(status, Bytes::from(json!({"name": route.slug, "ready": ready}).to_string())),
            extra,
        );
    } else {
        match oip::ModelMetadataResponse::decode(reply.data) {
            Ok(m) => {
                let tensors = |ts: &[oip::TensorMetadata]| -> Vec<Value> {
                    ts.iter().map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape})).collect()
                };
                json!({"name": route.slug, "versions": m.versions, "platform": m.platform,
                       "inputs": tensors(&m.inputs), "outputs": tensors(&m.outputs)})
            }
            Err(_) => {
                return with_headers(error(StatusCode::BAD_GATEWAY, "the model's metadata does not decode"), extra)
            }
        }
    };
    with_headers(answer(StatusCode::OK, Bytes::from(body.to_string())), extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_paths_parse() {
        let p = |s: &str| model_path(s).map(|m| (m.slug.to_string(), m.action.to_string()));
        assert_eq!(p("/v2/models/dep_a"), Some(("dep_a".into(), "".into())));
        assert_eq!(p("/v2/models/dep_a/ready"), Some(("dep_a".into(), "ready".into())));
        assert_eq!(p("/v2/models/dep_a/infer"), Some(("dep_a".into(), "infer".into())));
        assert_eq!(p("/v2/models/dep_a/versions/3/infer"), Some(("dep_a".into(), "infer".into())));
        assert_eq!(p("/v2/models/"), None);
        assert_eq!(p("/v2/models/dep_a/explain"), None);
        assert_eq!(p("/v2/models/dep_a/infer/more"), None);
        assert_eq!(p("/v2/repository"), None);
    }

    #[test]
    fn content_types() {
        let h = |ct: Option<&'static str>| {
            let mut m = HeaderMap::new();
            if let Some(ct) = ct {
                m.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            }
            m
        };
        assert!(is_json(&h(None)));
        assert!(is_json(&h(Some("application/json"))));
        assert!(is_json(&h(Some("Application/JSON; charset=utf-8"))));
        assert!(!is_json(&h(Some("text/plain"))));
        assert!(!is_json(&h(Some("application/x-www-form-urlencoded"))));
        assert!(is_grpc(&h(Some("application/grpc+proto"))));
        assert!(!is_grpc(&h(Some("application/json"))));
    }

    #[test]
    fn grpc_messages_are_percent_decoded() {
        let mut h = HeaderMap::new();
        h.insert("grpc-message", HeaderValue::from_static("bad %22x%22 100%"));
        assert_eq!(grpc_message(&h), "bad \"x\" 100%");
    }

    #[test]
    fn statuses_map_both_ways() {
        assert_eq!(http_status(Code::INVALID_ARGUMENT), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::UNAVAILABLE), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(grpc_code(StatusCode::OK), Code::OK);
        assert_eq!(grpc_code(StatusCode::SERVICE_UNAVAILABLE), Code::UNAVAILABLE);
        assert_eq!(grpc_code(StatusCode::BAD_REQUEST), Code::INVALID_ARGUMENT);
    }
}
