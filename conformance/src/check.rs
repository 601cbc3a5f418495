//! `hadal bucket check URL`: qualify a store before trusting it with data. Runs the
//! conditional-write self-test, then — only if it passed — a smoke run of the contract suite
//! under a scratch prefix, and renders one readable pass/fail table.
//!
//! Invariant: everything the check writes lives under `_hadal/check/<nonce>/` (plus the
//! self-test's own scratch key) and is deleted afterwards, pass or fail.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hadal_transports::{DynBucket, Nonce, list_all, self_test_report};

use crate::prefixed::PrefixedBucket;
use crate::suite::{SuiteOptions, run_suite};

/// Where the smoke run's cases live, relative to the bucket's prefix.
pub const CHECK_PREFIX: &str = "_hadal/check/";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRow {
    pub stage: &'static str,
    pub name: String,
    pub passed: bool,
    pub detail: String,
    pub elapsed: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub store: String,
    pub rows: Vec<CheckRow>,
    /// The self-test's refusal, naming the broken primitive and the store (`None` if it passed
    /// or could not run at all; the rows then say why).
    pub refused: Option<String>,
}

impl CheckReport {
    pub fn passed(&self) -> bool {
        self.refused.is_none() && self.rows.iter().all(|r| r.passed)
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "bucket check: {}", self.store)?;
        writeln!(f)?;
        let width = self
            .rows
            .iter()
            .map(|r| r.name.len())
            .max()
            .unwrap_or(10)
            .max(10);
        writeln!(
            f,
            "  {:<6}  {:<10}  {:<width$}  {:>7}  detail",
            "result", "stage", "check", "time"
        )?;
        writeln!(
            f,
            "  {:-<6}  {:-<10}  {:-<width$}  {:->7}  {:-<6}",
            "", "", "", "", ""
        )?;
        for row in &self.rows {
            let result = if row.passed { "pass" } else { "FAIL" };
            writeln!(
                f,
                "  {result:<6}  {:<10}  {:<width$}  {:>6.2}s  {}",
                row.stage,
                row.name,
                row.elapsed.as_secs_f64(),
                row.detail
            )?;
        }
        writeln!(f)?;
        let passed = self.rows.iter().filter(|r| r.passed).count();
        match &self.refused {
            Some(message) => write!(f, "REFUSED: {message}"),
            None if self.passed() => {
                write!(
                    f,
                    "OK: {passed} of {} checks passed; this store can hold a Hadal database",
                    self.rows.len()
                )
            }
            None => write!(f, "FAILED: {passed} of {} checks passed", self.rows.len()),
        }
    }
}

/// Runs the self-test and the smoke suite against `bucket`.
pub async fn bucket_check(bucket: DynBucket, options: &SuiteOptions) -> CheckReport {
    let store = bucket.name().to_owned();
    let mut rows = Vec::new();
    let started = Instant::now();
    let report = match self_test_report(bucket.as_ref()).await {
        Ok(report) => report,
        Err(e) => {
            rows.push(CheckRow {
                stage: "self-test",
                name: "reach the store".into(),
                passed: false,
                detail: e.to_string(),
                elapsed: started.elapsed(),
            });
            return CheckReport {
                store,
                rows,
                refused: None,
            };
        }
    };
    let elapsed = started.elapsed();
    for check in &report.checks {
        rows.push(CheckRow {
            stage: "self-test",
            name: check.primitive.to_owned(),
            passed: check.passed,
            detail: check.detail.clone(),
            elapsed,
        });
    }
    if let Err(refusal) = report.into_result() {
        return CheckReport {
            store,
            rows,
            refused: Some(refusal.to_string()),
        };
    }

    let scratch = format!("{CHECK_PREFIX}{}", Nonce::random());
    let factory = |case: &'static str| {
        let (bucket, scratch) = (bucket.clone(), scratch.clone());
        async move {
            let scoped = PrefixedBucket::new(bucket, &format!("{scratch}/{case}"))?;
            Ok(Arc::new(scoped) as DynBucket)
        }
    };
    let suite = run_suite(factory, options).await;
    for case in suite.cases {
        rows.push(CheckRow {
            stage: "contract",
            name: case.name.to_owned(),
            passed: case.passed,
            detail: case.detail,
            elapsed: case.elapsed,
        });
    }
    let cleanup = Instant::now();
    let cleaned = clean_up(&bucket, &scratch).await;
    rows.push(CheckRow {
        stage: "cleanup",
        name: "delete scratch keys".into(),
        passed: cleaned.is_ok(),
        detail: match cleaned {
            Ok(count) => format!("{count} keys under {scratch}/ deleted"),
            Err(e) => e.to_string(),
        },
        elapsed: cleanup.elapsed(),
    });
    CheckReport {
        store,
        rows,
        refused: None,
    }
}

async fn clean_up(bucket: &DynBucket, scratch: &str) -> hadal_transports::Result<usize> {
    let keys = list_all(bucket.as_ref(), &format!("{scratch}/"), None).await?;
    for info in &keys {
        bucket.delete(&info.key).await?;
    }
    Ok(keys.len())
}
