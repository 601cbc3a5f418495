//! `hadal kv --url http://ADDR …`: the same verbs as the local `hadal kv`, against a running
//! `hadal serve` or `hadal replica` over its HTTP API (reqwest). Output and exit codes match
//! the local verbs: values print raw, `scan` prints `key<TAB>value` lines, a missing key exits 1
//! with a message on stderr.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hadal::server::http::{ErrorBody, ListReply, LsnReply, percent_encode};
use reqwest::StatusCode;

use crate::kv_cmd::Verb;

/// How long one request may take before the client gives up (longer than the server's own
/// default request timeout, so the server's answer wins).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Keys per `scan` page request.
const SCAN_PAGE_KEYS: usize = 1000;

/// A server's base URL and the key to present.
struct Remote {
    client: reqwest::Client,
    base: String,
    api_key: Option<String>,
}

impl Remote {
    fn request(&self, method: reqwest::Method, path_and_query: &str) -> reqwest::RequestBuilder {
        let r = self
            .client
            .request(method, format!("{}{path_and_query}", self.base));
        match &self.api_key {
            Some(key) => r.bearer_auth(key),
            None => r,
        }
    }
}

/// The server's error as a message: `503 fenced: …`.
async fn failure(response: reqwest::Response) -> anyhow::Error {
    let status = response.status();
    match response.json::<ErrorBody>().await {
        Ok(body) => anyhow::anyhow!(
            "the server answered {status} {}: {}",
            body.error.code,
            body.error.message
        ),
        Err(_) => anyhow::anyhow!("the server answered {status}"),
    }
}

async fn send(builder: reqwest::RequestBuilder, base: &str) -> anyhow::Result<reqwest::Response> {
    builder
        .send()
        .await
        .with_context(|| format!("sending the request to {base}"))
}

/// Runs `verb` against the server at `url`.
pub async fn run(
    url: &str,
    api_key: Option<String>,
    table: &str,
    verb: &Verb,
) -> anyhow::Result<ExitCode> {
    if table != hadal::DEFAULT_TABLE {
        bail!(
            "--table {table}: the HTTP API serves the default table only; drop --table or use a local --data folder"
        );
    }
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let remote = Remote {
        client,
        base: url.trim_end_matches('/').to_owned(),
        api_key,
    };
    match verb {
        Verb::Put { key, value, ttl } => {
            let mut path = format!("/v1/kv/{}", percent_encode(key.as_bytes()));
            if let Some(ttl) = ttl {
                let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
                path.push_str(&format!("?ttl_ms={ms}"));
            }
            let response = send(
                remote
                    .request(reqwest::Method::PUT, &path)
                    .body(value.clone().into_bytes()),
                &remote.base,
            )
            .await?;
            report_write(response, &remote.base).await
        }
        Verb::Get { key } => {
            let path = format!("/v1/kv/{}", percent_encode(key.as_bytes()));
            let response = send(remote.request(reqwest::Method::GET, &path), &remote.base).await?;
            match response.status() {
                StatusCode::OK => {
                    let value = response.bytes().await.context("reading the value")?;
                    let mut out = std::io::stdout().lock();
                    out.write_all(&value)?;
                    if std::io::stdout().is_terminal() {
                        out.write_all(b"\n")?;
                    }
                    out.flush()?;
                    Ok(ExitCode::SUCCESS)
                }
                StatusCode::NOT_FOUND => {
                    eprintln!("hadal: key {key:?} not found at {}", remote.base);
                    Ok(ExitCode::from(1))
                }
                _ => Err(failure(response).await),
            }
        }
        Verb::Del { key } => {
            let key_b64 = STANDARD.encode(key.as_bytes());
            let body = serde_json::json!({
                "assert": [{"check": "exists", "key_b64": key_b64}],
                "ops": [{"op": "delete", "key_b64": key_b64}],
            });
            let response = send(
                remote.request(reqwest::Method::POST, "/v1/txn").json(&body),
                &remote.base,
            )
            .await?;
            if response.status() == StatusCode::CONFLICT {
                eprintln!("hadal: key {key:?} not found at {}", remote.base);
                return Ok(ExitCode::from(1));
            }
            report_write(response, &remote.base).await
        }
        Verb::Scan {
            prefix,
            limit,
            reverse,
        } => {
            scan(&remote, prefix, limit.unwrap_or(usize::MAX), *reverse).await?;
            Ok(ExitCode::SUCCESS)
        }
        Verb::Import { .. } => bail!(
            "import commits to a local data folder (--data, optionally --bucket); it does not run over --url"
        ),
    }
}

async fn report_write(response: reqwest::Response, base: &str) -> anyhow::Result<ExitCode> {
    if response.status() != StatusCode::OK {
        return Err(failure(response).await);
    }
    let reply: LsnReply = response
        .json()
        .await
        .context("reading the server's answer")?;
    eprintln!("ok (lsn {} at {base})", reply.lsn);
    Ok(ExitCode::SUCCESS)
}

async fn scan(remote: &Remote, prefix: &str, limit: usize, reverse: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut remaining = limit;
    let mut cursor: Option<String> = None;
    while remaining > 0 {
        let want = remaining.min(SCAN_PAGE_KEYS);
        let mut path = format!("/v1/kv?limit={want}");
        if !prefix.is_empty() {
            path.push_str(&format!("&prefix={}", percent_encode(prefix.as_bytes())));
        }
        if reverse {
            path.push_str("&reverse=true");
        }
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let response = send(remote.request(reqwest::Method::GET, &path), &remote.base).await?;
        if response.status() != StatusCode::OK {
            return Err(failure(response).await);
        }
        let page: ListReply = response.json().await.context("reading a scan page")?;
        for item in &page.items {
            let key = STANDARD.decode(&item.key).context("a key in the answer")?;
            let value = STANDARD
                .decode(&item.value)
                .context("a value in the answer")?;
            out.write_all(&key)?;
            out.write_all(b"\t")?;
            out.write_all(&value)?;
            out.write_all(b"\n")?;
        }
        remaining = remaining.saturating_sub(page.items.len());
        match page.next {
            Some(next) if !page.items.is_empty() => cursor = Some(next),
            _ => break,
        }
    }
    out.flush()?;
    Ok(())
}
