//! `s3://BUCKET/PREFIX`: Amazon S3 and S3-compatible stores (R2, MinIO, moto) through the
//! official aws-sdk-s3.
//!
//! Conditional writes: create-if-absent is `PutObject` with `If-None-Match: *` (412 = exists);
//! CAS is `PutObject` with `If-Match: <ETag>` (412, or 404 when the object is gone = mismatch).
//! `409 ConditionalRequestConflict` (another conditional write to the key was in flight) is
//! retryable. Every upload carries a CRC32C (`x-amz-checksum-crc32c`) that AWS verifies, and
//! conditional writes store their nonce as `x-amz-meta-hadal-nonce`.
//!
//! Invariants:
//! 1. The SDK's own retries are disabled: a PUT the SDK silently resent could come back 412 for
//!    our own write, and only the retry decorator knows to resolve that by nonce.
//! 2. For a loopback endpoint no credential or region provider chain runs (it would probe the
//!    EC2 metadata address); credentials then come only from the URL's caller or the
//!    `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` variables.
//! 3. Checksum trailers (`aws-chunked`) are off (`WhenRequired`): several S3-compatible stores
//!    reject them, and the explicit CRC32C header gives AWS the same end-to-end check.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use base64::Engine;
use bytes::Bytes;

use crate::bucket::{
    Bucket, ByteRange, Capabilities, Created, LIST_PAGE_KEYS, ListStream, NONCE_METADATA_KEY,
    Nonce, Object, ObjectInfo, Swapped, Version, validate_key,
};
use crate::error::{Error, Op, Result};

/// How long to wait for a TCP/TLS connection before calling the attempt transient.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Joined to every key with one `/`; empty for the bucket's root.
    pub prefix: String,
    /// An S3-compatible endpoint (path-style addressing is then used); `None` reads
    /// `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, else real AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Static access key id and secret; `None` uses the environment (see invariant 2).
    pub credentials: Option<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct S3Bucket {
    client: Client,
    bucket: String,
    /// `prefix/` or empty.
    base: String,
    name: String,
}

/// True for `http(s)://127.x.x.x`, `localhost` and `[::1]` endpoints.
pub fn is_loopback(endpoint: &str) -> bool {
    let Ok(url) = url::Url::parse(endpoint) else {
        return false;
    };
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl S3Bucket {
    pub async fn connect(config: S3Config) -> Result<S3Bucket> {
        let endpoint = config
            .endpoint
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"));
        let local = endpoint.as_deref().is_some_and(is_loopback);
        let mut builder = if local || config.credentials.is_some() {
            let (id, secret) = match config.credentials.clone() {
                Some(pair) => pair,
                None => match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
                    (Some(id), Some(secret)) => (id, secret),
                    _ => {
                        return Err(Error::fatal(
                            Op::Connect,
                            &config.bucket,
                            "a loopback endpoint needs AWS_ACCESS_KEY_ID and \
                             AWS_SECRET_ACCESS_KEY in the environment (any value works for moto)",
                        ));
                    }
                },
            };
            let token = env("AWS_SESSION_TOKEN");
            let region = config.region.clone().or_else(|| env("AWS_REGION"));
            aws_sdk_s3::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new(
                    region.unwrap_or_else(|| "us-east-1".to_owned()),
                ))
                .credentials_provider(Credentials::new(id, secret, token, None, "hadal"))
        } else {
            let mut loader = aws_config::defaults(BehaviorVersion::latest());
            if let Some(region) = config.region.clone() {
                loader = loader.region(Region::new(region));
            }
            aws_sdk_s3::config::Builder::from(&loader.load().await)
        };
        if let Some(endpoint) = &endpoint {
            builder = builder.endpoint_url(endpoint).force_path_style(true);
        }
        let sdk_config = builder
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .build(),
            )
            .build();
        let base = if config.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", config.prefix)
        };
        let mut name = format!("s3://{}/{}", config.bucket, config.prefix);
        if let Some(endpoint) = &endpoint {
            name.push_str(&format!("?endpoint={endpoint}"));
        }
        Ok(S3Bucket {
            client: Client::from_conf(sdk_config),
            bucket: config.bucket,
            base,
            name,
        })
    }

    /// The SDK client, for test harnesses that must create the bucket first.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn full_key(&self, op: Op, key: &str) -> Result<String> {
        validate_key(op, key)?;
        Ok(format!("{}{key}", self.base))
    }

    async fn conditional_put(
        &self,
        op: Op,
        key: &str,
        body: Bytes,
        nonce: Nonce,
        if_match: Option<&Version>,
    ) -> Result<std::result::Result<Version, ()>> {
        let full = self.full_key(op, key)?;
        let crc =
            base64::engine::general_purpose::STANDARD.encode(crc32c::crc32c(&body).to_be_bytes());
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(full)
            .checksum_crc32_c(crc)
            .metadata(NONCE_METADATA_KEY, nonce.to_string())
            .body(ByteStream::from(body));
        request = match if_match {
            None => request.if_none_match("*"),
            Some(version) => request.if_match(version.as_str()),
        };
        match request.send().await {
            Ok(out) => Ok(Ok(etag(op, key, out.e_tag())?)),
            Err(e) => {
                let status = status(&e);
                // 412: the precondition failed. 404 on If-Match: the object is gone (as AWS).
                if status == Some(412) || (if_match.is_some() && status == Some(404)) {
                    Ok(Err(()))
                } else {
                    Err(map_error(op, key, &e))
                }
            }
        }
    }
}

fn etag(op: Op, key: &str, etag: Option<&str>) -> Result<Version> {
    etag.map(Version::new).ok_or_else(|| {
        Error::fatal(
            op,
            key,
            "the store returned no ETag: cannot compare-and-swap",
        )
    })
}

fn status<E, R: HttpStatus>(e: &SdkError<E, R>) -> Option<u16> {
    e.raw_response().map(HttpStatus::status_code)
}

/// The HTTP status of a raw SDK response (a trait so `status` works for any operation).
trait HttpStatus {
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

fn map_error<E>(op: Op, key: &str, e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let detail = aws_smithy_types::error::display::DisplayErrorContext(e).to_string();
    match e {
        SdkError::ConstructionFailure(_) => Error::invalid(op, key, detail),
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => {
            Error::transient(op, key, detail)
        }
        _ => {
            let code = e.code().unwrap_or_default();
            // The service's own code and message say it all; the full context (headers, raw
            // body) stays for the cases without them.
            let detail = match e.message() {
                Some(message) => format!("{code}: {message}"),
                None => detail,
            };
            match status(e) {
                // AWS: another conditional write to this key was in flight; resend.
                Some(409) if code == "ConditionalRequestConflict" => {
                    Error::transient(op, key, detail)
                }
                Some(404) if code == "NoSuchBucket" => Error::fatal(op, key, detail),
                Some(status) => Error::from_status(op, key, status, detail),
                None => Error::transient(op, key, detail),
            }
        }
    }
}

#[async_trait]
impl Bucket for S3Bucket {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            compose: false,
            append: false,
            user_metadata: true,
        }
    }

    async fn put_if_absent(&self, key: &str, body: Bytes, nonce: Nonce) -> Result<Created> {
        Ok(
            match self
                .conditional_put(Op::PutIfAbsent, key, body, nonce, None)
                .await?
            {
                Ok(version) => Created::Created(version),
                Err(()) => Created::Exists,
            },
        )
    }

    async fn put_if_match(
        &self,
        key: &str,
        body: Bytes,
        expected: &Version,
        nonce: Nonce,
    ) -> Result<Swapped> {
        Ok(
            match self
                .conditional_put(Op::PutIfMatch, key, body, nonce, Some(expected))
                .await?
            {
                Ok(version) => Swapped::Swapped(version),
                Err(()) => Swapped::Mismatch,
            },
        )
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<Version> {
        let full = self.full_key(Op::Put, key)?;
        let crc =
            base64::engine::general_purpose::STANDARD.encode(crc32c::crc32c(&body).to_be_bytes());
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(full)
            .checksum_crc32_c(crc)
            .body(ByteStream::from(body));
        match request.send().await {
            Ok(out) => etag(Op::Put, key, out.e_tag()),
            Err(e) => Err(map_error(Op::Put, key, &e)),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Object>> {
        let full = self.full_key(Op::Get, key)?;
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(full)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if status(&e) == Some(404) && e.code() != Some("NoSuchBucket") => {
                return Ok(None);
            }
            Err(e) => return Err(map_error(Op::Get, key, &e)),
        };
        let version = etag(Op::Get, key, out.e_tag())?;
        let metadata = out
            .metadata()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| Error::transient(Op::Get, key, format!("reading the body: {e}")))?
            .into_bytes();
        Ok(Some(Object {
            bytes,
            version,
            metadata,
        }))
    }

    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes> {
        const OP: Op = Op::GetRange;
        let full = self.full_key(OP, key)?;
        range.validate(OP, key)?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(full)
            .range(range.to_http());
        let out = match request.send().await {
            Ok(out) => out,
            Err(e) if status(&e) == Some(416) => {
                return Err(Error::RangeNotSatisfiable {
                    op: OP,
                    key: key.to_owned(),
                    range: range.to_http(),
                    size: "an unknown number of".to_owned(),
                });
            }
            Err(e) if status(&e) == Some(404) => return Err(Error::not_found(OP, key)),
            Err(e) => return Err(map_error(OP, key, &e)),
        };
        let partial = out.content_range().is_some();
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| Error::transient(OP, key, format!("reading the body: {e}")))?
            .into_bytes();
        if partial {
            return Ok(bytes);
        }
        // A store that ignored the Range header sent the whole object: cut it ourselves.
        let r = range.resolve(OP, key, bytes.len() as u64)?;
        Ok(bytes.slice(r.start as usize..r.end as usize))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let full = self.full_key(Op::Head, key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(full)
            .send()
            .await
        {
            Ok(out) => Ok(Some(ObjectInfo {
                key: key.to_owned(),
                size_bytes: out.content_length().unwrap_or(0).max(0) as u64,
                version: Some(etag(Op::Head, key, out.e_tag())?),
            })),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(map_error(Op::Head, key, &e)),
        }
    }

    fn list(&self, prefix: &str, start_after: Option<&str>) -> ListStream<'_> {
        let full_prefix = format!("{}{prefix}", self.base);
        let full_after = start_after.map(|a| format!("{}{a}", self.base));
        let prefix = prefix.to_owned();
        let start_after = start_after.map(str::to_owned);
        crate::paging::paginate(
            prefix.clone(),
            None,
            start_after,
            move |token: Option<String>| {
                let mut request = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(&full_prefix)
                    .max_keys(LIST_PAGE_KEYS as i32);
                request = match &token {
                    Some(token) => request.continuation_token(token),
                    None => match &full_after {
                        Some(after) => request.start_after(after),
                        None => request,
                    },
                };
                let prefix = prefix.clone();
                async move {
                    let out = request
                        .send()
                        .await
                        .map_err(|e| map_error(Op::List, &prefix, &e))?;
                    let mut infos = Vec::with_capacity(out.contents().len());
                    for object in out.contents() {
                        let Some(key) = object.key().and_then(|k| k.strip_prefix(&self.base))
                        else {
                            continue;
                        };
                        infos.push(ObjectInfo {
                            key: key.to_owned(),
                            size_bytes: object.size().unwrap_or(0).max(0) as u64,
                            version: object.e_tag().map(Version::new),
                        });
                    }
                    let next = match (out.is_truncated(), out.next_continuation_token()) {
                        (Some(true), Some(token)) => Some(Some(token.to_owned())),
                        _ => None,
                    };
                    Ok((infos, next))
                }
            },
        )
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let full = self.full_key(Op::Delete, key)?;
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(full)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) && e.code() != Some("NoSuchBucket") => Ok(()),
            Err(e) => Err(map_error(Op::Delete, key, &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves only loopback endpoints skip the credential chain (and so the metadata probe).
    #[test]
    fn loopback_detection() {
        for local in [
            "http://127.0.0.1:9000",
            "http://localhost:9000",
            "http://[::1]:1",
        ] {
            assert!(is_loopback(local), "{local}");
        }
        for remote in [
            "https://s3.amazonaws.com",
            "http://10.0.0.1:9000",
            "not a url",
        ] {
            assert!(!is_loopback(remote), "{remote}");
        }
    }
}
