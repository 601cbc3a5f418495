//! The contract suite against a real S3 API server: moto, started on 127.0.0.1 by this test,
//! driven through the aws-sdk-s3 transport, and stopped by PID when the test ends.
#![cfg(feature = "s3")]

mod common;

use std::sync::Arc;

use hadal_conformance::servers::Moto;
use hadal_conformance::{SuiteOptions, bucket_check, run_suite};
use hadal_transports::{DynBucket, Nonce, self_test};

// Proves the S3 transport honours the whole contract against moto: conditional headers, races
// (32 × 20, with moto's key buffer raised so large bodies take its locked path), 16 MiB objects,
// listing past 1,000 keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moto_passes_the_contract() {
    let Some(moto) = common::started_or_skip(Moto::start().await, "moto_passes_the_contract")
    else {
        return;
    };
    let run = Nonce::random().to_string();
    let factory = |case: &'static str| {
        let (moto, run) = (&moto, run.clone());
        async move {
            let bucket = moto.bucket("hadal-suite", &format!("{run}/{case}")).await?;
            Ok(Arc::new(bucket) as DynBucket)
        }
    };
    let report = run_suite(factory, &SuiteOptions::full()).await;
    println!("{report}");
    assert!(
        report.passed(),
        "contract suite failed against moto:\n{report}\nmoto log:\n{}",
        moto.process.log_tail()
    );
}

// Proves the self-test and `bucket check` pass against moto through a URL with an endpoint
// override, which is what `hadal bucket check s3://…?endpoint=…` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_passes_self_test_and_check() {
    let Some(moto) =
        common::started_or_skip(Moto::start().await, "moto_passes_self_test_and_check")
    else {
        return;
    };
    let bucket = moto.bucket("hadal-check", "db").await.expect("moto bucket");
    self_test(&bucket).await.expect("self-test passes on moto");
    let report = bucket_check(Arc::new(bucket), &SuiteOptions::smoke()).await;
    println!("{report}");
    assert!(report.passed(), "{report}");
}
