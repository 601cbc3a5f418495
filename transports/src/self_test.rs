//! The conditional-write self-test (DESIGN.md §3): before a store is trusted with a database,
//! prove on a scratch key that create-if-absent refuses a second create and that CAS refuses a
//! stale version. Stores that ignore conditional headers (F11: Garage, some gateways) fail here,
//! by name, instead of corrupting a log later.
//!
//! Invariant: the scratch key is unique per run (`_hadal/self-test/<nonce>`) and deleted
//! whatever the outcome, so concurrent self-tests never interfere and leave nothing behind.

use bytes::Bytes;

use crate::bucket::{Bucket, Created, Nonce, Swapped, Version};
use crate::error::{Error, Result};

/// Where scratch keys live, relative to the bucket's prefix.
pub const SELF_TEST_PREFIX: &str = "_hadal/self-test/";

/// One primitive the self-test exercised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub primitive: &'static str,
    pub passed: bool,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfTestReport {
    pub store: String,
    pub checks: Vec<Check>,
}

impl SelfTestReport {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// `Ok` if every check passed, else the `Refused` error naming the first broken primitive.
    pub fn into_result(self) -> Result<SelfTestReport> {
        match self.checks.iter().find(|c| !c.passed) {
            None => Ok(self),
            Some(c) => Err(Error::Refused {
                store: self.store.clone(),
                primitive: c.primitive.to_owned(),
                detail: c.detail.clone(),
            }),
        }
    }
}

fn body(label: &str, nonce: Nonce) -> Bytes {
    Bytes::from(format!("hadal self-test {label} {nonce}\n"))
}

/// Runs the self-test and reports each primitive; transport errors (an unreachable store, bad
/// credentials) are returned as errors, not as failed checks.
pub async fn self_test_report(bucket: &dyn Bucket) -> Result<SelfTestReport> {
    let key = format!("{SELF_TEST_PREFIX}{}", Nonce::random());
    let mut checks = Vec::new();
    let outcome = run_checks(bucket, &key, &mut checks).await;
    let cleanup = bucket.delete(&key).await;
    outcome?;
    cleanup?;
    Ok(SelfTestReport {
        store: bucket.name().to_owned(),
        checks,
    })
}

/// Runs the self-test; `Err(Refused)` names the primitive a broken store failed.
pub async fn self_test(bucket: &dyn Bucket) -> Result<SelfTestReport> {
    self_test_report(bucket).await?.into_result()
}

fn check(checks: &mut Vec<Check>, primitive: &'static str, passed: bool, detail: String) -> bool {
    checks.push(Check {
        primitive,
        passed,
        detail,
    });
    passed
}

async fn run_checks(bucket: &dyn Bucket, key: &str, checks: &mut Vec<Check>) -> Result<()> {
    let (n1, n2, n3, n4) = (
        Nonce::random(),
        Nonce::random(),
        Nonce::random(),
        Nonce::random(),
    );
    let first = bucket.put_if_absent(key, body("first", n1), n1).await?;
    let Created::Created(v1) = first else {
        check(
            checks,
            "create-if-absent",
            false,
            "a fresh scratch key reported exists".into(),
        );
        return Ok(());
    };
    let second = bucket.put_if_absent(key, body("second", n2), n2).await?;
    let refused = second == Created::Exists;
    let detail = if refused {
        "second create of the same key answered exists".into()
    } else {
        "a second create of an existing key succeeded: the store ignores If-None-Match".into()
    };
    if !check(checks, "create-if-absent", refused, detail) {
        return Ok(());
    }

    let read = bucket.get(key).await?;
    let ours = read
        .as_ref()
        .is_some_and(|o| o.is_ours(n1, &body("first", n1)));
    let detail = if ours {
        "the object read back is the first write".into()
    } else {
        "the object read back is not the first write: read-after-write or create is broken".into()
    };
    if !check(checks, "read-after-write", ours, detail) {
        return Ok(());
    }

    let swapped = bucket.put_if_match(key, body("third", n3), &v1, n3).await?;
    let Swapped::Swapped(_) = swapped else {
        let detail = "a swap with the current version was refused".into();
        check(checks, "compare-and-swap", false, detail);
        return Ok(());
    };
    let stale = bucket
        .put_if_match(key, body("fourth", n4), &v1, n4)
        .await?;
    let refused = stale == Swapped::Mismatch;
    let detail = if refused {
        "swap with a stale version answered mismatch".into()
    } else {
        "a swap with a stale version succeeded: the store ignores If-Match".into()
    };
    if !check(checks, "compare-and-swap", refused, detail) {
        return Ok(());
    }
    let made_up = Version::new("\"hadal-made-up-version\"");
    let missing = format!("{key}-missing");
    let absent = bucket
        .put_if_match(&missing, body("fifth", n4), &made_up, n4)
        .await?;
    let refused = absent == Swapped::Mismatch;
    if !refused {
        let _ = bucket.delete(&missing).await;
    }
    let detail = if refused {
        "swap on a missing object answered mismatch".into()
    } else {
        "a swap on a missing object created it".into()
    };
    check(checks, "compare-and-swap on missing", refused, detail);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBucket;

    // Proves a correct store passes every check and the scratch key is cleaned up.
    #[tokio::test]
    async fn memory_passes_and_cleans_up() {
        let bucket = MemoryBucket::new();
        let report = self_test(&bucket).await.expect("memory passes");
        assert!(report.passed());
        assert_eq!(report.checks.len(), 4);
        assert_eq!(bucket.object_count(), 0);
    }
}
