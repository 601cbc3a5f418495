//! The HTTP API (axum): keys under `/v1/kv`, batches at `/v1/txn`, `/v1/info`, probes,
//! `/metrics` and the OpenAPI document. Handlers are thin: they check the caller's key, parse
//! the request, call one [`Backend`] method and turn its answer into JSON (or raw bytes for a
//! value). `kv.rs` holds the key-value handlers, `ops.rs` the operational ones.
//!
//! The middleware stack, outermost first: a request id (`x-request-id`, kept if the client
//! sent one), a tracing span per request carrying that id, the id echoed on the response,
//! metrics by matched route, JSON error bodies for every error answer (also those produced by
//! routing, timeouts and the body limit), the request timeout and the body limit.
//!
//! Invariants:
//! 1. Every answer with status ≥ 400 has the body `{"error": {"code", "message"}}`.
//! 2. No request reaches the database before its key was checked (when keys are configured).
//! 3. Until the backend is open (restore or takeover done), key-value requests answer 503
//!    `starting` and `/readyz` is not ready.

mod kv;
mod ops;

pub use kv::{ListItem, ListReply, LsnReply, percent_decode, percent_encode};
pub use ops::{InfoReply, StatusReply};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::server::auth::{Denied, KeyRole, Keys, Principal};
use crate::server::backend::{Backend, Error, Role};
use crate::server::config::ServerConfig;
use crate::server::metrics::{HttpMetrics, RespMetrics};

/// The response header carrying the LSN a read was at or a write committed at.
pub const LSN_HEADER: &str = "hadal-lsn";
/// The response header carrying a key's expiry (ms since the Unix epoch), when it has one.
pub const EXPIRES_HEADER: &str = "hadal-expires-ms";
/// The request id header (set by the server when the client sent none).
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// An error body longer than this (from a layer that wrote text) is cut in the JSON message.
const ERROR_TEXT_BYTES_MAX: usize = 1024;

/// Where the server is in its life.
#[derive(Debug, Clone)]
pub enum Phase {
    /// Restoring or taking over; nothing to serve yet.
    Starting,
    /// Serving.
    Ready(Backend),
    /// Shutting down: finishing requests in flight; new ones are refused.
    Stopping(Backend),
}

/// What every handler shares.
#[derive(Debug)]
pub struct App {
    /// The resolved settings.
    pub config: Arc<ServerConfig>,
    /// The configured API keys.
    pub keys: Keys,
    /// The backend, once open.
    pub phase: RwLock<Phase>,
    /// Request counters and latencies.
    pub metrics: HttpMetrics,
    /// RESP command counters and connections.
    pub resp_metrics: RespMetrics,
}

impl App {
    /// A new shared state for `config`, in [`Phase::Starting`].
    pub fn new(config: Arc<ServerConfig>) -> crate::server::Result<Arc<App>> {
        Ok(Arc::new(App {
            keys: Keys::new(&config.keys)?,
            config,
            phase: RwLock::new(Phase::Starting),
            metrics: HttpMetrics::default(),
            resp_metrics: RespMetrics::default(),
        }))
    }

    /// This server's role.
    pub fn role(&self) -> Role {
        self.config.role
    }

    /// The backend if open (also while stopping: requests in flight finish).
    pub fn backend(&self) -> Option<Backend> {
        match &*self.phase.read() {
            Phase::Starting => None,
            Phase::Ready(b) | Phase::Stopping(b) => Some(b.clone()),
        }
    }

    /// The backend for a key-value request, or 503 `starting` (invariant 3).
    fn serving(&self) -> Result<Backend, ApiError> {
        self.backend().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "starting",
                format!(
                    "the {} is still starting (restoring from or taking over {}); retry shortly, /readyz says when it is ready",
                    self.role(),
                    self.config.bucket
                ),
            )
        })
    }

    /// Checks the request's `Authorization: Bearer KEY` against the role `needed`
    /// (invariant 2).
    fn authorize(&self, headers: &HeaderMap, needed: KeyRole) -> Result<Principal, ApiError> {
        let presented = match headers.get(header::AUTHORIZATION) {
            None => None,
            Some(value) => Some(bearer(value).ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "the Authorization header must be `Bearer KEY`",
                )
            })?),
        };
        self.keys
            .authorize(presented, needed)
            .map_err(|denied| match denied {
                Denied::Unauthenticated(message) => {
                    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
                }
                Denied::Forbidden { name, role, needed } => ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!(
                        "API key {name:?} has role {role}; this request needs {needed} or higher"
                    ),
                ),
            })
    }
}

fn bearer(value: &HeaderValue) -> Option<&str> {
    let s = value.to_str().ok()?;
    let (scheme, key) = s.split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
}

/// The body of every error answer.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: `not_found`, `assertion_failed`, `fenced`, `read_only`, `behind`,
    /// `unauthorized`, `forbidden`, `bad_request`, `bad_key`, `bad_json`, `too_large`,
    /// `timeout`, `starting`, ….
    pub code: String,
    /// What happened and what to do, for people.
    pub message: String,
    /// The LSN the server was at (`behind`, `not_found`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<u64>,
    /// Which assertion failed (`assertion_failed`), 0-based in the order sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
}

/// An error answer: status, code, message and optional details.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    detail: ErrorDetail,
}

impl ApiError {
    /// An error answer with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            detail: ErrorDetail {
                code: code.to_owned(),
                message: message.into(),
                lsn: None,
                index: None,
            },
        }
    }

    /// 400 `code`.
    pub fn bad_request(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// The same error carrying the server's LSN (also sent as the `Hadal-Lsn` header).
    pub fn with_lsn(mut self, lsn: u64) -> ApiError {
        self.detail.lsn = Some(lsn);
        self
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let status = match &e {
            Error::ReadOnly { .. } => StatusCode::FORBIDDEN,
            Error::Behind { .. } | Error::Fenced(_) | Error::Retry(_) | Error::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::AssertionFailed { .. } | Error::Contended { .. } => StatusCode::CONFLICT,
            Error::Invalid(_) => StatusCode::BAD_REQUEST,
            Error::Indeterminate(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut out = ApiError::new(status, e.code(), e.to_string());
        match e {
            Error::Behind { current, .. } => out.detail.lsn = Some(current.get()),
            Error::AssertionFailed { index, .. } => out.detail.index = Some(index),
            _ => {}
        }
        out
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let lsn = self.detail.lsn;
        let mut response =
            (self.status, axum::Json(ErrorBody { error: self.detail })).into_response();
        if let Some(lsn) = lsn {
            response
                .headers_mut()
                .insert(LSN_HEADER, HeaderValue::from(lsn));
        }
        response
    }
}

/// Request ids: a random per-process prefix and a counter, so ids are unique across restarts
/// without a UUID dependency.
#[derive(Debug, Clone)]
struct RequestIds {
    prefix: u32,
    next: Arc<AtomicU64>,
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:08x}-{n}", self.prefix);
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

/// The OpenAPI document's frame; the paths come from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Hadal",
        description = "A bottomless key-value database: every commit is shipped to an object-store bucket. Keys in paths are percent-encoded bytes; values are raw bytes. Errors are {\"error\": {\"code\", \"message\"}}."
    ),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The router with every route, middleware and the OpenAPI document.
pub fn router(app: Arc<App>) -> Router {
    let (routes, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(kv::get_key, kv::put_key, kv::delete_key))
        .routes(routes!(kv::list_keys))
        .routes(routes!(kv::post_txn))
        .routes(routes!(ops::info))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .split_for_parts();
    let openapi = Arc::new(openapi);
    let config = app.config.clone();
    let body_limit = usize::try_from(config.body_limit).unwrap_or(usize::MAX);
    routes
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || {
                let doc = openapi.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .fallback(fallback)
        // Each `layer` wraps the ones before it: the last is the outermost.
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            config.request_timeout,
        ))
        .layer(middleware::map_response(json_errors))
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        .layer(PropagateRequestIdLayer::new(HeaderName::from_static(
            REQUEST_ID_HEADER,
        )))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &axum::http::Request<Body>| {
                    let id = req
                        .headers()
                        .get(REQUEST_ID_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!(
                        "request",
                        id,
                        method = %req.method(),
                        path = %req.uri().path(),
                    )
                })
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(SetRequestIdLayer::new(
            HeaderName::from_static(REQUEST_ID_HEADER),
            RequestIds {
                prefix: rand::random(),
                next: Arc::new(AtomicU64::new(1)),
            },
        ))
        .with_state(app)
}

/// Records each request's route, method, status and latency.
async fn observe(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    app.metrics.observe(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Turns every error answer that is not JSON yet (routing's 404/405, the timeout's 504, the
/// body limit's 413, extractor rejections) into the JSON error body (invariant 1).
async fn json_errors<B>(response: axum::http::Response<B>) -> Response
where
    B: axum::body::HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let response = response.map(Body::new);
    let status = response.status();
    if status.as_u16() < 400 {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, ERROR_TEXT_BYTES_MAX * 4).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    };
    let text: String = text.trim().chars().take(ERROR_TEXT_BYTES_MAX).collect();
    let (code, default_message) = match status {
        StatusCode::BAD_REQUEST => ("bad_request", "the request is malformed"),
        StatusCode::NOT_FOUND => ("not_found", "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this route does not take that method; see /v1/openapi.json",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "too_large",
            "the request body is larger than the server's body_limit",
        ),
        StatusCode::GATEWAY_TIMEOUT => (
            "timeout",
            "the request took longer than the server's request_timeout; a write may still have committed: read its key to know",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", "wrong content type"),
        s if s.is_server_error() => ("internal", "the server failed"),
        _ => ("bad_request", "the request was refused"),
    };
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE || text.is_empty() {
        default_message.to_owned()
    } else {
        format!("{default_message}: {text}")
    };
    let mut out = ApiError::new(status, code, message).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// Unknown routes: 404, with a hint for keys whose `/` was not encoded.
async fn fallback(uri: axum::http::Uri) -> ApiError {
    let path = uri.path();
    if path.starts_with("/v1/kv/") {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no route for {path}: a key is one path segment of percent-encoded bytes, so write `/` in a key as %2F"
            ),
        );
    }
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {path}; the API is described at /v1/openapi.json"),
    )
}

/// How long a `min_lsn` read waits: the server's setting, but never past the request timeout.
fn min_lsn_wait(config: &ServerConfig) -> Duration {
    config.min_lsn_wait.min(
        config
            .request_timeout
            .saturating_sub(Duration::from_millis(100)),
    )
}
