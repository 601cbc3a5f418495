//! The contract suite against real Google Cloud Storage, opt-in: no local server implements
//! GCS preconditions faithfully (see docs/design/transports.md), so this runs only when
//! `HADAL_TEST_GCS_URL=gs://BUCKET/PREFIX` and Google credentials are in the environment, and
//! otherwise prints why it was skipped.
#![cfg(feature = "gcs")]

use std::sync::Arc;

use hadal_conformance::{PrefixedBucket, SuiteOptions, run_suite};
use hadal_transports::{DynBucket, Nonce, open, self_test};

// Proves the GCS transport honours the whole contract against real GCS (when configured).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gcs_passes_the_contract_when_configured() {
    let Some(url) = std::env::var("HADAL_TEST_GCS_URL")
        .ok()
        .filter(|u| u.starts_with("gs://"))
    else {
        eprintln!(
            "SKIPPED gcs_passes_the_contract_when_configured: HADAL_TEST_GCS_URL is not set. \
             No local GCS server honours ifGenerationMatch, so the GCS transport is only unit-tested \
             here; set HADAL_TEST_GCS_URL=gs://BUCKET/PREFIX with Google credentials \
             (GOOGLE_APPLICATION_CREDENTIALS) to run the suite against real GCS."
        );
        return;
    };
    let bucket = open(&url).await.expect("open gcs bucket");
    self_test(bucket.as_ref())
        .await
        .expect("self-test passes on gcs");
    let run = format!("_hadal/suite/{}", Nonce::random());
    let factory = |case: &'static str| {
        let (bucket, run) = (bucket.clone(), run.clone());
        async move { Ok(Arc::new(PrefixedBucket::new(bucket, &format!("{run}/{case}"))?) as DynBucket) }
    };
    // GCS throttles rewrites of one object name to about one per second, so the swap race uses
    // fewer rounds than the full suite; creates race on distinct keys and keep the full size.
    let options = SuiteOptions {
        race_rounds: 5,
        ..SuiteOptions::full()
    };
    let report = run_suite(factory, &options).await;
    println!("{report}");
    assert!(report.passed(), "{report}");
}
