//! `gs://BUCKET/PREFIX`: Google Cloud Storage through the official google-cloud-storage 1.x
//! crate: object data over the JSON API (`Storage`), metadata, listing and deletion over gRPC
//! (`StorageControl`).
//!
//! Conditional writes: create-if-absent is a write with `ifGenerationMatch=0`; CAS is a write
//! with `ifGenerationMatch=<generation>`; a failed precondition is HTTP 412 or gRPC
//! `FAILED_PRECONDITION`. Versions are generations (decimal strings). Compose exists
//! server-side, so `capabilities().compose` is true. The nonce is stored as object metadata;
//! reads come back without metadata, so "is it ours?" compares bytes (which carry the nonce).
//!
//! The gap, stated plainly: no local server implements GCS preconditions faithfully
//! (gcp-storage-emulator ignores them; fake-gcs-server cannot serve gRPC), so this transport is
//! only compiled and its request-building logic unit-tested in CI; the contract suite runs
//! against real GCS only when `HADAL_TEST_GCS_URL` and credentials are in the environment. To
//! keep the untested surface small, every decision (names, preconditions, ranges, error kinds)
//! is a pure function below, tested here; the SDK calls only carry those values.
//!
//! Invariant: the SDK's own retries are off (`NeverRetry`), for the same reason as on S3: a
//! silently resent conditional write can fail its precondition against our own object.

use async_trait::async_trait;
use bytes::Bytes;
use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::retry_policy::NeverRetry;
use google_cloud_storage::client::{Storage, StorageControl};
use google_cloud_storage::model_ext::ReadRange;

use crate::bucket::{
    Bucket, ByteRange, Capabilities, Created, LIST_PAGE_KEYS, ListStream, NONCE_METADATA_KEY,
    Nonce, Object, ObjectInfo, Swapped, Version, validate_key,
};
use crate::error::{Error, Op, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcsConfig {
    pub bucket: String,
    pub prefix: String,
    /// A test endpoint (anonymous credentials are then used); `None` for Google's.
    pub endpoint: Option<String>,
}

#[derive(Debug, Clone)]
pub struct GcsBucket {
    storage: Storage,
    control: StorageControl,
    bucket_path: String,
    base: String,
    name: String,
}

/// `projects/_/buckets/BUCKET`, the resource name both clients take.
pub fn bucket_path(bucket: &str) -> String {
    format!("projects/_/buckets/{bucket}")
}

/// The generation a conditional write must match: 0 for create-if-absent, the version for CAS.
/// `None` means the version cannot be a GCS generation, so the swap is a mismatch without a
/// request.
pub fn generation_precondition(expected: Option<&Version>) -> Option<i64> {
    match expected {
        None => Some(0),
        Some(version) => version.as_str().parse::<i64>().ok().filter(|g| *g > 0),
    }
}

/// The SDK's range for ours; `None` for a range that `ByteRange::validate` refuses.
pub fn read_range(range: ByteRange) -> Option<ReadRange> {
    match range {
        ByteRange::Bounded { start, end } if start < end => {
            Some(ReadRange::segment(start, end - start))
        }
        ByteRange::From { start } => Some(ReadRange::offset(start)),
        ByteRange::Suffix { len } if len > 0 => Some(ReadRange::tail(len)),
        _ => None,
    }
}

/// What a failed request means, from its HTTP status or gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Precondition,
    NotFound,
    RangeNotSatisfiable,
    Other,
}

pub fn classify(http_status: Option<u16>, grpc: Option<Code>) -> Failure {
    match (http_status, grpc) {
        (Some(412), _) | (_, Some(Code::FailedPrecondition)) => Failure::Precondition,
        (Some(404), _) | (_, Some(Code::NotFound)) => Failure::NotFound,
        (Some(416), _) | (_, Some(Code::OutOfRange)) => Failure::RangeNotSatisfiable,
        _ => Failure::Other,
    }
}

fn grpc_code(e: &google_cloud_storage::Error) -> Option<Code> {
    e.status().map(|s| s.code)
}

fn failure(e: &google_cloud_storage::Error) -> Failure {
    classify(e.http_status_code(), grpc_code(e))
}

fn map_error(op: Op, key: &str, e: &google_cloud_storage::Error) -> Error {
    if e.is_timeout() || e.is_io() || e.is_transport() {
        return Error::transient(op, key, e);
    }
    if let Some(status) = e.http_status_code() {
        return Error::from_status(op, key, status, e);
    }
    match grpc_code(e) {
        Some(
            Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Internal,
        ) => Error::transient(op, key, e),
        Some(Code::NotFound) => Error::not_found(op, key),
        Some(Code::InvalidArgument | Code::OutOfRange) => Error::invalid(op, key, e),
        Some(Code::Aborted) => Error::conflict(op, key, e),
        _ => Error::fatal(op, key, e),
    }
}

impl GcsBucket {
    pub async fn connect(config: GcsConfig) -> Result<GcsBucket> {
        let connect_error = |e: &dyn std::fmt::Display| {
            Error::fatal(Op::Connect, &config.bucket, format!("gcs client: {e}"))
        };
        let mut storage = Storage::builder().with_retry_policy(NeverRetry);
        let mut control = StorageControl::builder().with_retry_policy(NeverRetry);
        if let Some(endpoint) = &config.endpoint {
            let anonymous = google_cloud_auth::credentials::anonymous::Builder::new().build();
            storage = storage
                .with_endpoint(endpoint)
                .with_credentials(anonymous.clone());
            control = control.with_endpoint(endpoint).with_credentials(anonymous);
        }
        let storage = storage.build().await.map_err(|e| connect_error(&e))?;
        let control = control.build().await.map_err(|e| connect_error(&e))?;
        let base = if config.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", config.prefix)
        };
        Ok(GcsBucket {
            storage,
            control,
            bucket_path: bucket_path(&config.bucket),
            name: format!("gs://{}/{}", config.bucket, config.prefix),
            base,
        })
    }

    fn object_name(&self, op: Op, key: &str) -> Result<String> {
        validate_key(op, key)?;
        Ok(format!("{}{key}", self.base))
    }

    /// Writes with an optional generation precondition; `Ok(None)` = precondition failed.
    async fn write(
        &self,
        op: Op,
        key: &str,
        body: Bytes,
        precondition: Option<(i64, Nonce)>,
    ) -> Result<Option<Version>> {
        let name = self.object_name(op, key)?;
        let crc = crc32c::crc32c(&body);
        let mut request = self
            .storage
            .write_object(&self.bucket_path, name, body)
            .with_known_crc32c(crc)
            .with_retry_policy(NeverRetry);
        if let Some((generation, nonce)) = precondition {
            request = request
                .set_if_generation_match(generation)
                .set_metadata([(NONCE_METADATA_KEY, nonce.to_string())]);
        }
        match request.send_buffered().await {
            Ok(object) => Ok(Some(Version::new(object.generation.to_string()))),
            Err(e) if precondition.is_some() && failure(&e) == Failure::Precondition => Ok(None),
            Err(e)
                if precondition.is_some_and(|(g, _)| g > 0) && failure(&e) == Failure::NotFound =>
            {
                Ok(None)
            }
            Err(e) => Err(map_error(op, key, &e)),
        }
    }

    async fn read(
        &self,
        op: Op,
        key: &str,
        range: Option<ReadRange>,
    ) -> Result<Option<(Bytes, Version)>> {
        let name = self.object_name(op, key)?;
        let mut request = self
            .storage
            .read_object(&self.bucket_path, name)
            .with_retry_policy(NeverRetry);
        if let Some(range) = range {
            request = request.set_read_range(range);
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) if failure(&e) == Failure::NotFound => return Ok(None),
            Err(e) if failure(&e) == Failure::RangeNotSatisfiable => {
                return Err(Error::RangeNotSatisfiable {
                    op,
                    key: key.to_owned(),
                    range: "requested".to_owned(),
                    size: "an unknown number of".to_owned(),
                });
            }
            Err(e) => return Err(map_error(op, key, &e)),
        };
        let version = Version::new(response.object().generation.to_string());
        let mut bytes = Vec::new();
        while let Some(chunk) = response.next().await {
            let chunk = chunk.map_err(|e| map_error(op, key, &e))?;
            bytes.extend_from_slice(&chunk);
        }
        Ok(Some((Bytes::from(bytes), version)))
    }
}

#[async_trait]
impl Bucket for GcsBucket {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            compose: true,
            append: false,
            user_metadata: true,
        }
    }

    async fn put_if_absent(&self, key: &str, body: Bytes, nonce: Nonce) -> Result<Created> {
        let generation = generation_precondition(None).unwrap_or(0);
        Ok(
            match self
                .write(Op::PutIfAbsent, key, body, Some((generation, nonce)))
                .await?
            {
                Some(version) => Created::Created(version),
                None => Created::Exists,
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
        let Some(generation) = generation_precondition(Some(expected)) else {
            validate_key(Op::PutIfMatch, key)?;
            return Ok(Swapped::Mismatch);
        };
        Ok(
            match self
                .write(Op::PutIfMatch, key, body, Some((generation, nonce)))
                .await?
            {
                Some(version) => Swapped::Swapped(version),
                None => Swapped::Mismatch,
            },
        )
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<Version> {
        self.write(Op::Put, key, body, None).await?.ok_or_else(|| {
            Error::fatal(Op::Put, key, "an unconditional write failed a precondition")
        })
    }

    async fn get(&self, key: &str) -> Result<Option<Object>> {
        Ok(self
            .read(Op::Get, key, None)
            .await?
            .map(|(bytes, version)| Object {
                bytes,
                version,
                metadata: Default::default(),
            }))
    }

    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes> {
        range.validate(Op::GetRange, key)?;
        let Some(gcs_range) = read_range(range) else {
            return Err(Error::invalid(
                Op::GetRange,
                key,
                format!("malformed range {range}"),
            ));
        };
        match self.read(Op::GetRange, key, Some(gcs_range)).await? {
            Some((bytes, _)) => Ok(bytes),
            None => Err(Error::not_found(Op::GetRange, key)),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let name = self.object_name(Op::Head, key)?;
        let request = self
            .control
            .get_object()
            .set_bucket(&self.bucket_path)
            .set_object(name);
        match request.send().await {
            Ok(object) => Ok(Some(ObjectInfo {
                key: key.to_owned(),
                size_bytes: object.size.max(0) as u64,
                version: Some(Version::new(object.generation.to_string())),
            })),
            Err(e) if failure(&e) == Failure::NotFound => Ok(None),
            Err(e) => Err(map_error(Op::Head, key, &e)),
        }
    }

    fn list(&self, prefix: &str, start_after: Option<&str>) -> ListStream<'_> {
        let full_prefix = format!("{}{prefix}", self.base);
        // lexicographicStart is inclusive; the key equal to start_after is dropped below.
        let full_after = start_after.map(|a| format!("{}{a}", self.base));
        let prefix = prefix.to_owned();
        let start_after = start_after.map(str::to_owned);
        crate::paging::paginate(
            prefix.clone(),
            String::new(),
            start_after,
            move |token: String| {
                let mut request = self
                    .control
                    .list_objects()
                    .set_parent(&self.bucket_path)
                    .set_prefix(&full_prefix)
                    .set_page_size(LIST_PAGE_KEYS as i32)
                    .set_page_token(token);
                if let Some(after) = &full_after {
                    request = request.set_lexicographic_start(after);
                }
                let (full_after, prefix) = (full_after.clone(), prefix.clone());
                async move {
                    let page = request
                        .send()
                        .await
                        .map_err(|e| map_error(Op::List, &prefix, &e))?;
                    let infos = page
                        .objects
                        .iter()
                        .filter(|o| Some(&o.name) != full_after.as_ref())
                        .filter_map(|o| {
                            Some(ObjectInfo {
                                key: o.name.strip_prefix(&self.base)?.to_owned(),
                                size_bytes: o.size.max(0) as u64,
                                version: Some(Version::new(o.generation.to_string())),
                            })
                        })
                        .collect();
                    let next = (!page.next_page_token.is_empty()).then_some(page.next_page_token);
                    Ok((infos, next))
                }
            },
        )
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let name = self.object_name(Op::Delete, key)?;
        let request = self
            .control
            .delete_object()
            .set_bucket(&self.bucket_path)
            .set_object(name);
        match request.send().await {
            Ok(()) => Ok(()),
            Err(e) if failure(&e) == Failure::NotFound => Ok(()),
            Err(e) => Err(map_error(Op::Delete, key, &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves creates send ifGenerationMatch=0 and swaps send the parsed generation, while a
    // version that cannot be a generation (an S3 ETag) never reaches the wire.
    #[test]
    fn preconditions() {
        assert_eq!(generation_precondition(None), Some(0));
        assert_eq!(
            generation_precondition(Some(&Version::new("1712345678901234"))),
            Some(1712345678901234)
        );
        assert_eq!(
            generation_precondition(Some(&Version::new("\"d41d8cd98f\""))),
            None
        );
        assert_eq!(generation_precondition(Some(&Version::new("0"))), None);
        assert_eq!(bucket_path("b"), "projects/_/buckets/b");
    }

    // Proves our ranges map to the SDK's (segment = offset + length, suffix = tail).
    #[test]
    fn ranges() {
        assert_eq!(
            read_range(ByteRange::Bounded { start: 10, end: 15 }),
            Some(ReadRange::segment(10, 5))
        );
        assert_eq!(
            read_range(ByteRange::From { start: 7 }),
            Some(ReadRange::offset(7))
        );
        assert_eq!(
            read_range(ByteRange::Suffix { len: 3 }),
            Some(ReadRange::tail(3))
        );
        assert_eq!(read_range(ByteRange::Suffix { len: 0 }), None);
        assert_eq!(read_range(ByteRange::Bounded { start: 5, end: 5 }), None);
    }

    // Proves 412 and FAILED_PRECONDITION both mean "precondition failed", and 404/416 too.
    #[test]
    fn failures() {
        assert_eq!(classify(Some(412), None), Failure::Precondition);
        assert_eq!(
            classify(None, Some(Code::FailedPrecondition)),
            Failure::Precondition
        );
        assert_eq!(classify(Some(404), None), Failure::NotFound);
        assert_eq!(classify(None, Some(Code::NotFound)), Failure::NotFound);
        assert_eq!(classify(Some(416), None), Failure::RangeNotSatisfiable);
        assert_eq!(classify(Some(503), None), Failure::Other);
    }
}
