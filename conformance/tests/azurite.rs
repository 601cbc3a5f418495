//! The contract suite against a real Azure Blob API server: Azurite, started on 127.0.0.1 by
//! this test, driven through the object_store-based Azure transport, stopped by PID at the end.
#![cfg(feature = "azure")]

mod common;

use std::sync::Arc;

use hadal_conformance::servers::Azurite;
use hadal_conformance::{SuiteOptions, run_suite};
use hadal_transports::{DynBucket, Nonce, self_test};

// Proves the Azure transport honours the whole contract against Azurite, where an existing
// blob answers 409 (not Azure's 412) to create-if-absent and both must mean "exists".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn azurite_passes_the_contract() {
    let Some(azurite) =
        common::started_or_skip(Azurite::start().await, "azurite_passes_the_contract")
    else {
        return;
    };
    let run = Nonce::random().to_string();
    let factory = |case: &'static str| {
        let (azurite, run) = (&azurite, run.clone());
        async move {
            let bucket = azurite
                .bucket("hadal-suite", &format!("{run}/{case}"))
                .await?;
            Ok(Arc::new(bucket) as DynBucket)
        }
    };
    let report = run_suite(factory, &SuiteOptions::full()).await;
    println!("{report}");
    assert!(
        report.passed(),
        "contract suite failed against azurite:\n{report}\nazurite log:\n{}",
        azurite.process.log_tail()
    );
}

// Proves the conditional-write self-test passes against Azurite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_passes_self_test() {
    let Some(azurite) = common::started_or_skip(Azurite::start().await, "azurite_passes_self_test")
    else {
        return;
    };
    let bucket = azurite
        .bucket("hadal-self-test", "db")
        .await
        .expect("azurite container");
    self_test(&bucket)
        .await
        .expect("self-test passes on azurite");
}
