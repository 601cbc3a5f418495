//! `hadal bucket check URL`: qualify an object store before trusting it with a database. Runs
//! the conditional-write self-test (a store that ignores If-None-Match / If-Match is refused by
//! name) and, if it passes, a short run of the `Bucket` contract suite under a scratch prefix
//! that is deleted afterwards; prints one pass/fail table. Exit status 0 = the store qualifies.
//!
//! Invariant: the check goes through the same retry decorator the database uses, so transient
//! errors are retried as they would be in production, and a conflict is never retried.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hadal_conformance::{CheckReport, SuiteOptions, bucket_check};
use hadal_transports::{DynBucket, RetryPolicy, RetryingBucket};

#[derive(Debug, clap::Subcommand)]
pub enum BucketCommand {
    /// Check that a bucket honours create-if-absent, compare-and-swap, listing and ranges.
    ///
    /// URL is one of memory://NAME, file:///PATH (or file://./PATH), s3://BUCKET/PREFIX
    /// (add ?endpoint=http://127.0.0.1:9000 for S3-compatible stores), gs://BUCKET/PREFIX,
    /// az://CONTAINER/PREFIX. Writes only under _hadal/ in that prefix and cleans up.
    Check { url: String },
}

pub fn run(cmd: BucketCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BucketCommand::Check { url } => {
            let report = check_report(&url)?;
            println!("{report}");
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// The policy for a check: production backoff, but a user waits at the terminal.
fn check_policy() -> RetryPolicy {
    RetryPolicy {
        attempt_timeout: Duration::from_secs(30),
        op_deadline: Duration::from_secs(60),
        ..RetryPolicy::default()
    }
}

/// Opens `url` and runs the check on its own runtime (the CLI is otherwise synchronous).
pub fn check_report(url: &str) -> anyhow::Result<CheckReport> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let bucket = hadal_transports::open(url)
            .await
            .with_context(|| format!("opening {url}"))?;
        let bucket: DynBucket = Arc::new(RetryingBucket::new(bucket, check_policy()));
        Ok(bucket_check(bucket, &SuiteOptions::smoke()).await)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves `bucket check` qualifies a local folder given as a URL and leaves only the
    // folder's own layout behind.
    #[test]
    fn check_passes_on_a_local_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}", dir.path().join("scratch-bucket").display());
        let report = check_report(&url).expect("check runs");
        let table = report.to_string();
        assert!(report.passed(), "{table}");
        assert!(
            table.contains("compare-and-swap") && table.contains("race-create"),
            "{table}"
        );
    }

    // Proves a bad URL is an error that names it, not a failed table.
    #[test]
    fn bad_url_is_an_error() {
        let err = check_report("ftp://nowhere").expect_err("unknown scheme");
        assert!(format!("{err:#}").contains("ftp://nowhere"), "{err:#}");
    }
}
