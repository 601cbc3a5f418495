//! Bucket URLs and `open`, which picks the implementation from the scheme.
//!
//! ```text
//! memory://NAME
//! file:///ABSOLUTE/PATH   file://./relative/path
//! s3://BUCKET[/PREFIX][?endpoint=http://127.0.0.1:9000&region=us-east-1]
//! gs://BUCKET[/PREFIX][?endpoint=URL]
//! az://CONTAINER[/PREFIX][?account=NAME&endpoint=http://127.0.0.1:10000/devstoreaccount1&emulator=true]
//! ```
//!
//! Invariants: a prefix never starts or ends with `/` (it is joined to keys with exactly one);
//! unknown query parameters are refused rather than ignored, so a typo in `endpoint` cannot
//! silently send traffic to the real cloud.

use std::path::PathBuf;

use crate::bucket::DynBucket;
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketUrl {
    Memory {
        name: String,
    },
    File {
        path: PathBuf,
    },
    S3 {
        bucket: String,
        prefix: String,
        endpoint: Option<String>,
        region: Option<String>,
    },
    Gcs {
        bucket: String,
        prefix: String,
        endpoint: Option<String>,
    },
    Azure {
        container: String,
        prefix: String,
        account: Option<String>,
        endpoint: Option<String>,
        emulator: bool,
    },
}

fn url_error(url: &str, reason: impl Into<String>) -> Error {
    Error::Url {
        url: url.to_owned(),
        reason: reason.into(),
    }
}

/// Splits `BUCKET/PREFIX` and normalises the prefix.
fn bucket_and_prefix(url: &str, rest: &str) -> Result<(String, String)> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(url_error(url, "the bucket name is empty"));
    }
    let prefix = prefix.trim_matches('/').to_owned();
    if prefix.split('/').any(|c| c == "." || c == "..") || prefix.contains("//") {
        return Err(url_error(
            url,
            "the prefix has an empty, '.' or '..' component",
        ));
    }
    Ok((bucket.to_owned(), prefix))
}

struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    fn parse(query: &str) -> Query {
        let pairs = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        Query { pairs }
    }

    fn take(&mut self, name: &str) -> Option<String> {
        let i = self.pairs.iter().position(|(k, _)| k == name)?;
        Some(self.pairs.remove(i).1)
    }

    fn finish(self, url: &str) -> Result<()> {
        match self.pairs.first() {
            Some((k, _)) => Err(url_error(url, format!("unknown query parameter {k:?}"))),
            None => Ok(()),
        }
    }
}

impl BucketUrl {
    pub fn parse(url: &str) -> Result<BucketUrl> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| url_error(url, "expected SCHEME://…"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut query = Query::parse(query);
        let parsed = match scheme {
            "memory" => {
                if rest.is_empty() || rest.contains('/') {
                    return Err(url_error(url, "expected memory://NAME"));
                }
                BucketUrl::Memory {
                    name: rest.to_owned(),
                }
            }
            "file" => {
                if rest.is_empty() {
                    return Err(url_error(url, "expected file:///PATH or file://./PATH"));
                }
                BucketUrl::File {
                    path: PathBuf::from(rest),
                }
            }
            "s3" => {
                let (bucket, prefix) = bucket_and_prefix(url, rest)?;
                let endpoint = query.take("endpoint");
                let region = query.take("region");
                BucketUrl::S3 {
                    bucket,
                    prefix,
                    endpoint,
                    region,
                }
            }
            "gs" => {
                let (bucket, prefix) = bucket_and_prefix(url, rest)?;
                BucketUrl::Gcs {
                    bucket,
                    prefix,
                    endpoint: query.take("endpoint"),
                }
            }
            "az" => {
                let (container, prefix) = bucket_and_prefix(url, rest)?;
                let account = query.take("account");
                let endpoint = query.take("endpoint");
                let emulator = match query.take("emulator").as_deref() {
                    None | Some("false") => false,
                    Some("true") => true,
                    Some(other) => {
                        return Err(url_error(url, format!("emulator={other}: expected true")));
                    }
                };
                BucketUrl::Azure {
                    container,
                    prefix,
                    account,
                    endpoint,
                    emulator,
                }
            }
            other => {
                return Err(url_error(
                    url,
                    format!("unknown scheme {other:?}: expected memory, file, s3, gs or az"),
                ));
            }
        };
        query.finish(url)?;
        Ok(parsed)
    }
}

/// Opens the bucket a URL names, without decorators (wrap it in `RetryingBucket` for use).
pub async fn open(url: &str) -> Result<DynBucket> {
    match BucketUrl::parse(url)? {
        BucketUrl::Memory { name } => Ok(std::sync::Arc::new(crate::MemoryBucket::named(&name))),
        BucketUrl::File { path } => Ok(std::sync::Arc::new(crate::FileBucket::open(path)?)),
        #[cfg(feature = "s3")]
        BucketUrl::S3 {
            bucket,
            prefix,
            endpoint,
            region,
        } => {
            let config = crate::s3::S3Config {
                bucket,
                prefix,
                endpoint,
                region,
                credentials: None,
            };
            Ok(std::sync::Arc::new(
                crate::s3::S3Bucket::connect(config).await?,
            ))
        }
        #[cfg(feature = "gcs")]
        BucketUrl::Gcs {
            bucket,
            prefix,
            endpoint,
        } => {
            let config = crate::gcs::GcsConfig {
                bucket,
                prefix,
                endpoint,
            };
            Ok(std::sync::Arc::new(
                crate::gcs::GcsBucket::connect(config).await?,
            ))
        }
        #[cfg(feature = "azure")]
        BucketUrl::Azure {
            container,
            prefix,
            account,
            endpoint,
            emulator,
        } => {
            let config = crate::azure::AzureConfig {
                container,
                prefix,
                account,
                endpoint,
                emulator,
            };
            Ok(std::sync::Arc::new(crate::azure::AzureBucket::connect(
                config,
            )?))
        }
        #[allow(unreachable_patterns)]
        other => Err(url_error(
            url,
            format!(
                "support for {other:?} is not compiled in: build with the s3, gcs or azure feature"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves every scheme parses into the parts its transport needs, prefixes normalised.
    #[test]
    fn schemes_parse() {
        assert_eq!(
            BucketUrl::parse("s3://b/db/one/?endpoint=http://127.0.0.1:9000").expect("s3"),
            BucketUrl::S3 {
                bucket: "b".into(),
                prefix: "db/one".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: None
            }
        );
        assert_eq!(
            BucketUrl::parse("file://./scratch-bucket").expect("file"),
            BucketUrl::File {
                path: PathBuf::from("./scratch-bucket")
            }
        );
        assert_eq!(
            BucketUrl::parse("memory://t1").expect("memory"),
            BucketUrl::Memory { name: "t1".into() }
        );
        assert!(matches!(
            BucketUrl::parse("az://c?emulator=true").expect("az"),
            BucketUrl::Azure { emulator: true, .. }
        ));
        assert!(matches!(
            BucketUrl::parse("gs://b/p").expect("gs"),
            BucketUrl::Gcs { .. }
        ));
    }

    // Proves typos and unsupported schemes are refused instead of silently ignored.
    #[test]
    fn bad_urls_are_refused() {
        for bad in [
            "s3://b?endpiont=x",
            "ftp://x",
            "nothing",
            "s3:///p",
            "memory://",
            "s3://b/../x",
        ] {
            let err = BucketUrl::parse(bad).expect_err(bad);
            assert!(err.to_string().starts_with("bucket url"), "{err}");
        }
    }
}
