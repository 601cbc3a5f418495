//! Key-value handlers: one key by path (`/v1/kv/{key}`), listings (`/v1/kv`) and batches with
//! assertions (`/v1/txn`).
//!
//! Keys in paths and in query parameters are percent-encoded bytes (RFC 3986: `%` and two hex
//! digits per byte; every other character stands for itself, `+` included), so any byte string
//! is a key, `/` being written `%2F`. Malformed encodings are refused, never guessed at. In JSON,
//! keys and values are either text (`key`, `value`) or base64 (`key_b64`, `value_b64`);
//! listings always answer base64.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hadal_engine::{Assertion, Batch, Clock, DEFAULT_TABLE, Lsn, SystemClock};
use serde::{Deserialize, Serialize};

use super::{ApiError, App, EXPIRES_HEADER, ErrorBody, LSN_HEADER, min_lsn_wait};
use crate::server::auth::KeyRole;
use crate::server::backend::{SCAN_LIMIT_MAX, ScanRequest};

/// The path prefix of single-key routes.
const KEY_PATH_PREFIX: &str = "/v1/kv/";
/// A listing answers this many keys when the request names no `limit`.
const LIST_LIMIT_DEFAULT: usize = 100;
/// A batch holds at most this many assertions and operations together.
const TXN_ITEMS_MAX: usize = 10_000;

/// A write's answer.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LsnReply {
    /// The commit's LSN; durable per the server's durability mode.
    pub lsn: u64,
}

/// One key of a listing.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ListItem {
    /// The key, base64 (standard alphabet, padded).
    pub key: String,
    /// The value, base64.
    pub value: String,
    /// When the key expires, ms since the Unix epoch (absent: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// The LSN of the commit that last wrote the key.
    pub lsn: u64,
}

/// A page of a listing.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ListReply {
    /// The LSN of the snapshot the page was read from.
    pub lsn: u64,
    /// Keys in order (descending with `reverse=true`).
    pub items: Vec<ListItem>,
    /// Pass as `cursor=` to get the next page; `null` on the last page.
    pub next: Option<String>,
}

/// A batch: assertions checked first, then operations, all or nothing.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TxnRequest {
    /// Conditions that must hold; the first that fails is named in a 409.
    #[serde(default)]
    pub assert: Vec<AssertSpec>,
    /// The writes (at least one).
    pub ops: Vec<OpSpec>,
}

/// What an assertion checks.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// The key has a visible value.
    Exists,
    /// The key has no visible value.
    Absent,
    /// The key's value equals `value` / `value_b64`.
    Equals,
    /// The key was last written at or before `lsn` (an absent key passes).
    LastWriteAtMost,
}

/// One assertion: `{"check": "exists", "key": "user:1"}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssertSpec {
    /// What to check.
    pub check: Check,
    /// The key as text (or use `key_b64`).
    pub key: Option<String>,
    /// The key as base64.
    pub key_b64: Option<String>,
    /// For `equals`: the value as text (or use `value_b64`).
    pub value: Option<String>,
    /// For `equals`: the value as base64.
    pub value_b64: Option<String>,
    /// For `last_write_at_most`: the LSN.
    pub lsn: Option<u64>,
}

/// What an operation does.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Store a value.
    Put,
    /// Delete the key (nothing happens if it is absent).
    Delete,
}

/// One operation: `{"op": "put", "key": "user:1", "value": "alice", "ttl_ms": 60000}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpSpec {
    /// What to do.
    pub op: OpKind,
    /// The key as text (or use `key_b64`).
    pub key: Option<String>,
    /// The key as base64.
    pub key_b64: Option<String>,
    /// For `put`: the value as text (or use `value_b64`).
    pub value: Option<String>,
    /// For `put`: the value as base64.
    pub value_b64: Option<String>,
    /// For `put`: expire the key this many milliseconds from now.
    pub ttl_ms: Option<u64>,
}

/// Percent-encodes bytes for a path segment or query value: unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`) stand for themselves, every other byte is `%XX`.
pub fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes RFC 3986 percent-encoding strictly: `%` must be followed by two hex digits.
pub fn percent_decode(s: &str) -> Result<Vec<u8>, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let digits = bytes
                .get(i + 1..i + 3)
                .and_then(|h| Some((hex_digit(h[0])? << 4) | hex_digit(h[1])?));
            match digits {
                Some(b) => out.push(b),
                None => {
                    let shown: String = s[i..].chars().take(3).collect();
                    return Err(format!(
                        "{shown:?} at byte {i} is not a percent-encoded byte (% and two hex digits)"
                    ));
                }
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The key of a `/v1/kv/{key}` request, from the raw (still encoded) path.
fn path_key(uri: &Uri) -> Result<Vec<u8>, ApiError> {
    let raw = uri.path().strip_prefix(KEY_PATH_PREFIX).unwrap_or_default();
    let key = percent_decode(raw)
        .map_err(|e| ApiError::bad_request("bad_key", format!("the key in the path: {e}")))?;
    if key.is_empty() {
        return Err(ApiError::bad_request("bad_key", "the key is empty"));
    }
    Ok(key)
}

/// Query parameters, strictly: only the names a route takes, each at most once, values
/// percent-decoded to bytes.
fn query(uri: &Uri, allowed: &[&str]) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for pair in uri.query().unwrap_or_default().split('&') {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !allowed.contains(&name) {
            return Err(ApiError::bad_request(
                "bad_query",
                format!(
                    "unknown query parameter {name:?}; this route takes {}",
                    allowed.join(", ")
                ),
            ));
        }
        if out.iter().any(|(n, _)| n == name) {
            return Err(ApiError::bad_request(
                "bad_query",
                format!("query parameter {name:?} is given twice"),
            ));
        }
        let value = percent_decode(value).map_err(|e| {
            ApiError::bad_request("bad_query", format!("query parameter {name:?}: {e}"))
        })?;
        out.push((name.to_owned(), value));
    }
    Ok(out)
}

fn param<'a>(params: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
}

fn number(params: &[(String, Vec<u8>)], name: &str) -> Result<Option<u64>, ApiError> {
    let Some(raw) = param(params, name) else {
        return Ok(None);
    };
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                "bad_query",
                format!(
                    "query parameter {name:?} must be a non-negative integer, not {:?}",
                    String::from_utf8_lossy(raw)
                ),
            )
        })
}

fn flag(params: &[(String, Vec<u8>)], name: &str) -> Result<bool, ApiError> {
    match param(params, name) {
        None => Ok(false),
        Some(b"true" | b"1" | b"") => Ok(true),
        Some(b"false" | b"0") => Ok(false),
        Some(other) => Err(ApiError::bad_request(
            "bad_query",
            format!(
                "query parameter {name:?} must be true or false, not {:?}",
                String::from_utf8_lossy(other)
            ),
        )),
    }
}

/// Absolute expiry `ttl_ms` from now; zero is refused (it would be expired on arrival).
fn expiry(ttl_ms: Option<u64>, what: &str) -> Result<Option<u64>, ApiError> {
    match ttl_ms {
        None => Ok(None),
        Some(0) => Err(ApiError::bad_request(
            "bad_request",
            format!("{what}: ttl_ms must be at least 1 (omit it for a key that never expires)"),
        )),
        Some(ms) => Ok(Some(SystemClock.now_ms().saturating_add(ms))),
    }
}

fn lsn_header(response: &mut Response, lsn: u64) {
    response
        .headers_mut()
        .insert(LSN_HEADER, HeaderValue::from(lsn));
}

fn lsn_reply(lsn: Lsn) -> Response {
    let mut response = axum::Json(LsnReply { lsn: lsn.get() }).into_response();
    lsn_header(&mut response, lsn.get());
    response
}

/// A key for messages: text if printable, else hex.
fn show(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if !s.chars().any(char::is_control) => format!("{s:?}"),
        _ => format!("0x{}", hex::encode(key)),
    }
}

/// Read one key.
#[utoipa::path(
    get,
    path = "/v1/kv/{key}",
    tag = "kv",
    params(
        ("key" = String, Path, description = "The key: percent-encoded bytes"),
        ("min_lsn" = Option<u64>, Query, description = "Read at or after this LSN; a replica waits (bounded) to catch up, else 503 `behind` with its LSN"),
    ),
    responses(
        (status = 200, description = "The raw value; headers Hadal-Lsn (the LSN read at) and Hadal-Expires-Ms (if it expires)", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "Absent or expired (`not_found`, with the LSN read at)", body = ErrorBody),
        (status = 503, description = "`behind`: the server has not reached min_lsn; `starting`", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub async fn get_key(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    app.authorize(&headers, KeyRole::Reader)?;
    let key = path_key(&uri)?;
    let params = query(&uri, &["min_lsn"])?;
    let min_lsn = number(&params, "min_lsn")?.map(Lsn::new);
    let backend = app.serving()?;
    let read = backend
        .get(key.clone(), min_lsn, min_lsn_wait(&app.config))
        .await?;
    let Some(entry) = read.value else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "key {} not found (read at lsn {})",
                show(&key),
                read.lsn.get()
            ),
        )
        .with_lsn(read.lsn.get()));
    };
    let mut response = (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        entry.value,
    )
        .into_response();
    lsn_header(&mut response, read.lsn.get());
    if let Some(at) = entry.expires_ms {
        response
            .headers_mut()
            .insert(EXPIRES_HEADER, HeaderValue::from(at));
    }
    Ok(response)
}

/// Store a value under a key.
#[utoipa::path(
    put,
    path = "/v1/kv/{key}",
    tag = "kv",
    params(
        ("key" = String, Path, description = "The key: percent-encoded bytes"),
        ("ttl_ms" = Option<u64>, Query, description = "Expire the key this many milliseconds from now"),
    ),
    request_body(content = Vec<u8>, description = "The raw value", content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "Committed and durable per the durability mode", body = LsnReply),
        (status = 403, description = "`read_only`: this server is a replica; `forbidden`: the key's role is too low", body = ErrorBody),
        (status = 413, description = "`too_large`: the body is over the server's body_limit", body = ErrorBody),
        (status = 503, description = "`fenced`: another writer took the bucket over; the write was not acknowledged", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub async fn put_key(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ApiError> {
    app.authorize(&headers, KeyRole::Writer)?;
    let key = path_key(&uri)?;
    let params = query(&uri, &["ttl_ms"])?;
    let expires_ms = expiry(number(&params, "ttl_ms")?, "PUT")?;
    let backend = app.serving()?;
    let batch = Batch::new().put_in(DEFAULT_TABLE, key, body.to_vec(), expires_ms);
    Ok(lsn_reply(backend.write(batch).await?))
}

/// Delete a key (a commit even if it is absent).
#[utoipa::path(
    delete,
    path = "/v1/kv/{key}",
    tag = "kv",
    params(("key" = String, Path, description = "The key: percent-encoded bytes")),
    responses(
        (status = 200, description = "Committed and durable per the durability mode", body = LsnReply),
        (status = 403, description = "`read_only` or `forbidden`", body = ErrorBody),
        (status = 503, description = "`fenced`", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub async fn delete_key(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    app.authorize(&headers, KeyRole::Writer)?;
    let key = path_key(&uri)?;
    query(&uri, &[])?;
    let backend = app.serving()?;
    Ok(lsn_reply(backend.write(Batch::new().delete(key)).await?))
}

/// List keys and values in order.
#[utoipa::path(
    get,
    path = "/v1/kv",
    tag = "kv",
    params(
        ("prefix" = Option<String>, Query, description = "Only keys starting with these percent-encoded bytes"),
        ("start" = Option<String>, Query, description = "Only keys at or after this one (percent-encoded)"),
        ("end" = Option<String>, Query, description = "Only keys before this one (percent-encoded)"),
        ("limit" = Option<usize>, Query, description = "At most this many keys (default 100, at most 1000)"),
        ("reverse" = Option<bool>, Query, description = "Descending order"),
        ("cursor" = Option<String>, Query, description = "The `next` of the previous page"),
        ("min_lsn" = Option<u64>, Query, description = "Read at or after this LSN"),
    ),
    responses(
        (status = 200, description = "A page of keys and values (base64) with the next cursor", body = ListReply),
        (status = 400, description = "A malformed parameter", body = ErrorBody),
        (status = 503, description = "`behind` or `starting`", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub async fn list_keys(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    app.authorize(&headers, KeyRole::Reader)?;
    let params = query(
        &uri,
        &[
            "prefix", "start", "end", "limit", "reverse", "cursor", "min_lsn",
        ],
    )?;
    let limit = match number(&params, "limit")? {
        None => LIST_LIMIT_DEFAULT,
        Some(n) if n >= 1 && n <= SCAN_LIMIT_MAX as u64 => n as usize,
        Some(n) => {
            return Err(ApiError::bad_request(
                "bad_query",
                format!("limit {n} is outside 1..={SCAN_LIMIT_MAX}; page with `cursor`"),
            ));
        }
    };
    let after = match param(&params, "cursor") {
        None => None,
        Some(c) => Some(URL_SAFE_NO_PAD.decode(c).map_err(|_| {
            ApiError::bad_request(
                "bad_query",
                "cursor is not a `next` value of this API (base64url)",
            )
        })?),
    };
    let request = ScanRequest {
        prefix: param(&params, "prefix").map(<[u8]>::to_vec),
        start: param(&params, "start").map(<[u8]>::to_vec),
        end: param(&params, "end").map(<[u8]>::to_vec),
        after,
        limit,
        reverse: flag(&params, "reverse")?,
        min_lsn: number(&params, "min_lsn")?.map(Lsn::new),
    };
    let backend = app.serving()?;
    let page = backend.scan(request, min_lsn_wait(&app.config)).await?;
    let reply = ListReply {
        lsn: page.lsn.get(),
        items: page
            .items
            .iter()
            .map(|(k, e)| ListItem {
                key: STANDARD.encode(k),
                value: STANDARD.encode(&e.value),
                expires_ms: e.expires_ms,
                lsn: e.lsn.get(),
            })
            .collect(),
        next: page.next.map(|k| URL_SAFE_NO_PAD.encode(k)),
    };
    let mut response = axum::Json(reply).into_response();
    lsn_header(&mut response, page.lsn.get());
    Ok(response)
}

/// Commit assertions and operations atomically.
#[utoipa::path(
    post,
    path = "/v1/txn",
    tag = "kv",
    request_body(content = TxnRequest, description = "Assertions and operations", content_type = "application/json"),
    responses(
        (status = 200, description = "Committed and durable per the durability mode", body = LsnReply),
        (status = 400, description = "`bad_json` or `bad_request`: the batch is malformed", body = ErrorBody),
        (status = 409, description = "`assertion_failed`: names the assertion (`index`); nothing was written", body = ErrorBody),
        (status = 403, description = "`read_only` or `forbidden`", body = ErrorBody),
        (status = 503, description = "`fenced`", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub async fn post_txn(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Response, ApiError> {
    app.authorize(&headers, KeyRole::Writer)?;
    query(&uri, &[])?;
    let request: TxnRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_json", format!("the batch is not valid: {e}")))?;
    let batch = batch_of(request)?;
    let backend = app.serving()?;
    Ok(lsn_reply(backend.write(batch).await?))
}

/// Exactly one of the text and base64 forms of a field.
fn bytes_of(
    text: Option<String>,
    b64: Option<String>,
    what: &str,
    at: &str,
) -> Result<Option<Vec<u8>>, ApiError> {
    match (text, b64) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "bad_request",
            format!("{at}: give {what} or {what}_b64, not both"),
        )),
        (Some(t), None) => Ok(Some(t.into_bytes())),
        (None, Some(b)) => STANDARD.decode(b.as_bytes()).map(Some).map_err(|e| {
            ApiError::bad_request(
                "bad_request",
                format!("{at}: {what}_b64 is not base64: {e}"),
            )
        }),
        (None, None) => Ok(None),
    }
}

fn required(v: Option<Vec<u8>>, what: &str, at: &str) -> Result<Vec<u8>, ApiError> {
    v.ok_or_else(|| {
        ApiError::bad_request(
            "bad_request",
            format!("{at}: {what} or {what}_b64 is required"),
        )
    })
}

fn refuse_extra(present: bool, what: &str, at: &str) -> Result<(), ApiError> {
    if present {
        return Err(ApiError::bad_request(
            "bad_request",
            format!("{at}: {what} does not apply here"),
        ));
    }
    Ok(())
}

/// Turns a JSON batch into an engine batch, refusing anything ambiguous by position.
fn batch_of(request: TxnRequest) -> Result<Batch, ApiError> {
    if request.ops.is_empty() {
        return Err(ApiError::bad_request(
            "bad_request",
            "ops is empty: a batch needs at least one operation",
        ));
    }
    if request.assert.len() + request.ops.len() > TXN_ITEMS_MAX {
        return Err(ApiError::bad_request(
            "bad_request",
            format!("a batch holds at most {TXN_ITEMS_MAX} assertions and operations together"),
        ));
    }
    let mut batch = Batch::new();
    let table = || DEFAULT_TABLE.to_owned();
    for (i, a) in request.assert.into_iter().enumerate() {
        let at = format!("assert[{i}]");
        let key = required(bytes_of(a.key, a.key_b64, "key", &at)?, "key", &at)?;
        let value = bytes_of(a.value, a.value_b64, "value", &at)?;
        let assertion = match a.check {
            Check::Exists | Check::Absent => {
                refuse_extra(value.is_some(), "value", &at)?;
                refuse_extra(a.lsn.is_some(), "lsn", &at)?;
                if matches!(a.check, Check::Exists) {
                    Assertion::Exists {
                        table: table(),
                        key,
                    }
                } else {
                    Assertion::Absent {
                        table: table(),
                        key,
                    }
                }
            }
            Check::Equals => {
                refuse_extra(a.lsn.is_some(), "lsn", &at)?;
                Assertion::Equals {
                    table: table(),
                    key,
                    value: required(value, "value", &at)?,
                }
            }
            Check::LastWriteAtMost => {
                refuse_extra(value.is_some(), "value", &at)?;
                let lsn = a.lsn.ok_or_else(|| {
                    ApiError::bad_request("bad_request", format!("{at}: lsn is required"))
                })?;
                Assertion::LastWriteAtMost {
                    table: table(),
                    key,
                    lsn: Lsn::new(lsn),
                }
            }
        };
        batch = batch.assert(assertion);
    }
    for (i, op) in request.ops.into_iter().enumerate() {
        let at = format!("ops[{i}]");
        let key = required(bytes_of(op.key, op.key_b64, "key", &at)?, "key", &at)?;
        let value = bytes_of(op.value, op.value_b64, "value", &at)?;
        batch = match op.op {
            OpKind::Put => {
                let expires_ms = expiry(op.ttl_ms, &at)?;
                batch.put_in(
                    DEFAULT_TABLE,
                    key,
                    required(value, "value", &at)?,
                    expires_ms,
                )
            }
            OpKind::Delete => {
                refuse_extra(value.is_some(), "value", &at)?;
                refuse_extra(op.ttl_ms.is_some(), "ttl_ms", &at)?;
                batch.delete(key)
            }
        };
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_is_strict_and_byte_exact() {
        // Proves any byte string round-trips through the path encoding, `+` is literal, and a
        // malformed escape is refused instead of passed through.
        assert_eq!(percent_decode("a%2Fb+c").expect("ok"), b"a/b+c");
        assert_eq!(percent_decode("%00%ff%FF").expect("ok"), vec![0, 255, 255]);
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("abc%4").is_err());
        assert!(percent_decode("%").is_err());
        let every: Vec<u8> = (0..=255).collect();
        assert_eq!(
            percent_decode(&percent_encode(&every)).expect("round trip"),
            every
        );
    }

    #[test]
    fn batches_refuse_ambiguous_fields_by_position() {
        // Proves the JSON batch is checked field by field and errors name the item.
        let parse = |s: &str| -> Result<Batch, ApiError> {
            batch_of(
                serde_json::from_str::<TxnRequest>(s)
                    .map_err(|e| ApiError::bad_request("bad_json", e.to_string()))?,
            )
        };
        let b = parse(
            r#"{"assert":[{"check":"absent","key":"k"}],"ops":[{"op":"put","key_b64":"AAE=","value":"v","ttl_ms":5}]}"#,
        )
        .expect("valid");
        assert_eq!((b.assertions.len(), b.ops.len()), (1, 1));
        let e = parse(r#"{"ops":[{"op":"put","key":"k","key_b64":"aw==","value":"v"}]}"#)
            .expect_err("both forms");
        assert!(e.detail.message.contains("ops[0]"), "{}", e.detail.message);
        let e = parse(r#"{"ops":[{"op":"delete","key":"k","value":"v"}]}"#).expect_err("value");
        assert!(e.detail.message.contains("does not apply"));
        let e =
            parse(r#"{"assert":[{"check":"equals","key":"k"}],"ops":[{"op":"delete","key":"k"}]}"#)
                .expect_err("equals without value");
        assert!(e.detail.message.contains("assert[0]"));
        assert!(parse(r#"{"ops":[]}"#).is_err());
        assert!(parse(r#"{"ops":[{"op":"put","key":"k","value":"v","ttl_ms":0}]}"#).is_err());
    }
}
