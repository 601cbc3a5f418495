//! Operational handlers: `/v1/info`, `/healthz`, `/readyz`, `/metrics`. Probes need no key
//! (orchestrators call them); `/v1/info` needs a reader's, `/metrics` an admin's.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{ApiError, App, ErrorBody, Phase};
use crate::server::auth::KeyRole;
use crate::server::backend::{Info, Role};

/// `/v1/info`: the node's positions and settings, and whether it serves.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InfoReply {
    /// `writer` or `replica`.
    #[schema(value_type = String)]
    pub role: Role,
    /// Whether the server serves (restored or took over, not stopped, not shutting down).
    pub ready: bool,
    /// The server's version.
    pub version: &'static str,
    /// The bucket shipped to or followed.
    pub bucket: String,
    /// Positions and settings; absent while starting.
    #[schema(value_type = Option<Object>)]
    pub node: Option<Info>,
}

/// A probe's answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StatusReply {
    /// `ok` or `ready`.
    pub status: &'static str,
}

/// Role, epoch, LSNs (committed, durable, applied), lag, bucket, durability, retention.
#[utoipa::path(
    get,
    path = "/v1/info",
    tag = "ops",
    responses(
        (status = 200, description = "The node's state", body = InfoReply),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub async fn info(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<axum::Json<InfoReply>, ApiError> {
    app.authorize(&headers, KeyRole::Reader)?;
    let phase = app.phase.read().clone();
    let (ready, node) = match phase {
        Phase::Starting => (false, None),
        Phase::Ready(b) => (b.ready().is_ok(), Some(b.info().await)),
        Phase::Stopping(b) => (false, Some(b.info().await)),
    };
    Ok(axum::Json(InfoReply {
        role: app.role(),
        ready,
        version: env!("CARGO_PKG_VERSION"),
        bucket: app.config.bucket.clone(),
        node,
    }))
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    responses((status = 200, description = "The process is alive", body = StatusReply))
)]
pub async fn healthz() -> axum::Json<StatusReply> {
    axum::Json(StatusReply { status: "ok" })
}

/// Readiness: restored or took over, and neither stopped nor shutting down.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    responses(
        (status = 200, description = "Serving", body = StatusReply),
        (status = 503, description = "`starting`, `stopping`, or `stopped` with the reason (fenced, follower halted)", body = ErrorBody),
    )
)]
pub async fn readyz(State(app): State<Arc<App>>) -> Result<axum::Json<StatusReply>, ApiError> {
    let unavailable =
        |code: &str, message: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message);
    match &*app.phase.read() {
        Phase::Starting => Err(unavailable(
            "starting",
            format!(
                "the {} is restoring from or taking over {}",
                app.role(),
                app.config.bucket
            ),
        )),
        Phase::Stopping(_) => Err(unavailable(
            "stopping",
            "the server is shutting down".into(),
        )),
        Phase::Ready(b) => match b.ready() {
            Ok(()) => Ok(axum::Json(StatusReply { status: "ready" })),
            Err(why) => Err(unavailable("stopped", why)),
        },
    }
}

/// Prometheus text exposition.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden`: needs an admin key", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub async fn metrics(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    app.authorize(&headers, KeyRole::Admin)?;
    let backend = app.backend();
    let text = crate::server::metrics::render(
        app.role(),
        backend.as_ref(),
        &app.metrics,
        &app.resp_metrics,
    )
    .await;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
