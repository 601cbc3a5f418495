//! The replica benchmark (issue 5, item 6): how far a follower trails a writer under a steady
//! write load, on a latency-injected in-memory store.
//!
//! A [`Writer`] (engine and strict shipper) and a follower (`hadal_replica::Follower`, polling
//! with `poll_min = poll_max = --poll-ms`) share one object_store `InMemory` behind one
//! [`LatencyStore`]. Single-key commits are issued open loop at a fixed rate, each in its own
//! task, each on schedule whatever the others do. For every commit the task notes when the
//! writer acknowledged it (its segment is in the bucket, `Shipper::wait_durable` returned) and
//! then waits on the follower's state (`Follower::wait_for`, a watch on `lsn_applied`) until the
//! follower has applied its LSN: the difference is that commit's replica lag. Commits of the
//! warm-up are not counted.
//!
//! Invariant: the run fails if the follower stops, falls further behind than `LAG_TIMEOUT`, ends
//! at another LSN or state checksum than the writer, or reads back a sampled key wrongly.

pub mod report;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use hadal_engine::{Batch, DEFAULT_TABLE, Lsn, Options};
use hadal_replica::{FollowOptions, Follower};
use hadal_shipper::ShipperOptions;
use hadal_transports::{DynBucket, Op};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::time::Instant;

use crate::restore::request_log::RequestLog;
use crate::shipping::bucket::ObjectStoreBucket;
use crate::shipping::latency::{LatencyModel, LatencyStore};
use crate::shipping::load::{Latencies, Summary};
use crate::shipping::systems::pair;
use crate::writer::Writer;

/// The database's prefix in the store.
const PREFIX: &str = "hadal";
/// A commit the follower has not applied this long after its acknowledgement fails the run.
const LAG_TIMEOUT: Duration = Duration::from_secs(30);
/// Keys read back from the follower after the run.
const CHECK_SAMPLES: u64 = 200;

/// Everything a run does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub model: LatencyModel,
    /// The follower's `poll_min` and `poll_max`.
    pub poll: Duration,
    /// Commits offered per second.
    pub rate: f64,
    /// Commits issued before the measured ones (not counted).
    pub warmup: Duration,
    /// Length of the measured load.
    pub duration: Duration,
    /// Bare GETs measured for the goal's "one GET".
    pub bare_gets: usize,
}

/// Everything measured, before formatting.
#[derive(Debug, Clone)]
pub struct Results {
    pub plan: Plan,
    pub bare_get: Summary,
    /// Per measured commit: acknowledgement to applied on the follower.
    pub lag: Latencies,
    /// Per measured commit: scheduled time to acknowledgement.
    pub commit: Latencies,
    /// Measured commits the follower had applied already when the writer's ack was seen.
    pub applied_at_ack: u64,
    /// Wall time from the first to the last measured commit's schedule, plus its completion.
    pub seconds: f64,
    /// The follower's requests during the measured load, by operation.
    pub follower_requests: Vec<(Op, u64)>,
    /// Of those, GETs that found a segment.
    pub follower_gets_found: u64,
    /// Segments the writer uploaded during the measured load.
    pub segments: u64,
    /// The LSN both ended at.
    pub lsn: Lsn,
    pub run_seconds: f64,
}

/// One commit's figures.
#[derive(Debug, Clone, Copy)]
struct Sample {
    commit: Duration,
    lag: Duration,
}

/// Runs `plan`; local files go under `scratch`.
pub async fn run(plan: &Plan, scratch: &Path) -> Result<Results> {
    let started = Instant::now();
    let bare_get = bare_gets(plan.model, plan.bare_gets, 8).await?;
    crate::progress(&format!(
        "replica: bare GET: p50 {:.1} ms, p99 {:.1} ms over {} GETs",
        bare_get.p50_ms, bare_get.p99_ms, bare_get.count
    ));

    let memory: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let store = LatencyStore::new(memory, plan.model, &format!("{PREFIX}/seg/"));
    let bucket = |who: &str| -> DynBucket {
        Arc::new(ObjectStoreBucket::new(
            Arc::new(store.clone()),
            PREFIX,
            &format!("latency-injected InMemory/{PREFIX} ({who})"),
        ))
    };
    let writer =
        Arc::new(Writer::open(bucket("writer"), scratch, ShipperOptions::default()).await?);
    // The follower starts from a database with one commit in it.
    let (key, value) = pair(0);
    writer.commit(Batch::new().put(key, value)).await?;

    let dir = tempfile::Builder::new()
        .prefix("hadal-replica-")
        .tempdir_in(scratch)
        .with_context(|| format!("create a scratch folder in {}", scratch.display()))?;
    let requests = Arc::new(RequestLog::new(bucket("follower")));
    let options = FollowOptions {
        poll_min: plan.poll,
        poll_max: plan.poll,
        ..FollowOptions::default()
    };
    let follower = Arc::new(
        Follower::start(
            dir.path().join("replica"),
            Options::default(),
            requests.clone(),
            options,
        )
        .await
        .context("start the follower")?,
    );

    let measured = drive(plan, &writer, &follower, &requests).await?;
    let lsn = check(&writer, &follower, measured.commits_total).await?;

    let follower =
        Arc::try_unwrap(follower).map_err(|_| anyhow!("a commit task still holds the follower"))?;
    follower.stop().await;
    let writer =
        Arc::try_unwrap(writer).map_err(|_| anyhow!("a commit task still holds the writer"))?;
    writer.close().await?;
    Ok(Results {
        plan: plan.clone(),
        bare_get,
        lag: measured.lag,
        commit: measured.commit,
        applied_at_ack: measured.applied_at_ack,
        seconds: measured.seconds,
        follower_requests: measured.follower_requests,
        follower_gets_found: measured.follower_gets_found,
        segments: measured.segments,
        lsn,
        run_seconds: started.elapsed().as_secs_f64(),
    })
}

/// What the open loop measured.
struct Measured {
    lag: Latencies,
    commit: Latencies,
    applied_at_ack: u64,
    seconds: f64,
    follower_requests: Vec<(Op, u64)>,
    follower_gets_found: u64,
    segments: u64,
    commits_total: u64,
}

/// Issues the commits on schedule and collects every measured one's figures.
async fn drive(
    plan: &Plan,
    writer: &Arc<Writer>,
    follower: &Arc<Follower>,
    requests: &Arc<RequestLog>,
) -> Result<Measured> {
    let warmup_commits = (plan.warmup.as_secs_f64() * plan.rate).round() as u64;
    let measured_commits = ((plan.duration.as_secs_f64() * plan.rate).round() as u64).max(1);
    let total = warmup_commits + measured_commits;
    let interval = Duration::from_secs_f64(1.0 / plan.rate);
    let mut tasks = Vec::with_capacity(total as usize);
    let start = Instant::now();
    let (mut requests_before, mut segments_before, mut measured_start) = (0, 0, start);
    for i in 0..total {
        let at = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(at).await;
        if i == warmup_commits {
            requests_before = requests.requests().len();
            segments_before = writer.metrics().segments_uploaded;
            measured_start = Instant::now();
        }
        let (writer, follower) = (writer.clone(), follower.clone());
        // Commit numbers start at 1: commit 0 is the one the follower started from.
        tasks.push(tokio::spawn(commit_and_follow(writer, follower, i + 1, at)));
    }
    let mut lag = Latencies::default();
    let mut commit = Latencies::default();
    let mut applied_at_ack = 0;
    for (i, task) in tasks.into_iter().enumerate() {
        let sample = task
            .await
            .context("commit task")?
            .with_context(|| format!("commit {}", i + 1))?;
        if i as u64 >= warmup_commits {
            lag.record(sample.lag);
            commit.record(sample.commit);
            if sample.lag < Duration::from_micros(100) {
                applied_at_ack += 1;
            }
        }
    }
    let seconds = measured_start.elapsed().as_secs_f64();
    let all = requests.requests();
    let during = all.get(requests_before..).unwrap_or_default();
    let mut counts = std::collections::BTreeMap::new();
    for r in during {
        *counts.entry(r.op).or_insert(0u64) += 1;
    }
    Ok(Measured {
        lag,
        commit,
        applied_at_ack,
        seconds,
        follower_requests: counts.into_iter().collect(),
        follower_gets_found: during.iter().filter(|r| r.op == Op::Get && r.found).count() as u64,
        segments: writer.metrics().segments_uploaded - segments_before,
        commits_total: total,
    })
}

/// Commits pair `n` (scheduled at `at`), then waits for the follower to apply it.
async fn commit_and_follow(
    writer: Arc<Writer>,
    follower: Arc<Follower>,
    n: u64,
    at: Instant,
) -> Result<Sample> {
    let (key, value) = pair(n);
    let lsn = writer.commit(Batch::new().put(key, value)).await?;
    let acked = Instant::now();
    follower
        .wait_for(lsn, LAG_TIMEOUT)
        .await
        .with_context(|| format!("the follower did not apply lsn {}", lsn.get()))?;
    let applied = Instant::now();
    Ok(Sample {
        commit: acked.duration_since(at),
        lag: applied.duration_since(acked),
    })
}

/// The follower must end where the writer is, byte for byte, and hold sampled commits.
async fn check(writer: &Writer, follower: &Follower, commits: u64) -> Result<Lsn> {
    let (lsn, checksum) = writer.head();
    follower
        .wait_for(lsn, LAG_TIMEOUT)
        .await
        .with_context(|| format!("the follower did not reach the writer's lsn {}", lsn.get()))?;
    if let Some((kind, why)) = follower.state().stopped {
        bail!("the follower stopped ({kind:?}): {why}");
    }
    let read = follower.db().begin_read();
    ensure!(
        read.lsn() == lsn && read.checksum() == checksum,
        "the follower is at lsn {} with checksum {}; the writer at lsn {} with {}",
        read.lsn().get(),
        read.checksum(),
        lsn.get(),
        checksum
    );
    let step = (commits / CHECK_SAMPLES).max(1);
    for n in (0..=commits).step_by(step as usize).chain([commits]) {
        let (key, value) = pair(n);
        match read
            .get(DEFAULT_TABLE, &key)
            .with_context(|| format!("read commit {n} on the follower"))?
        {
            Some(got) if got.as_ref() == value.as_slice() => {}
            Some(_) => bail!("commit {n} reads back a different value on the follower"),
            None => bail!("commit {n} is missing on the follower"),
        }
    }
    Ok(lsn)
}

/// `count` GETs of one 1 KiB object through a fresh latency store with `model`, `parallel` at
/// a time: the "one GET" of the goal.
pub async fn bare_gets(model: LatencyModel, count: usize, parallel: usize) -> Result<Summary> {
    let store = LatencyStore::new(Arc::new(object_store::memory::InMemory::new()), model, "");
    let path = StorePath::from("bare/object");
    store
        .put(&path, PutPayload::from(vec![0u8; 1024]))
        .await
        .context("bare GET: put the object")?;
    let per_worker = count.div_ceil(parallel.max(1));
    let mut workers = Vec::new();
    for _ in 0..parallel.max(1) {
        let (store, path) = (store.clone(), path.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Latencies::default();
            for _ in 0..per_worker {
                let started = Instant::now();
                store
                    .get(&path)
                    .await
                    .context("bare GET")?
                    .bytes()
                    .await
                    .context("bare GET body")?;
                latencies.record(started.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Latencies::default();
    for worker in workers {
        all.merge(&worker.await.context("bare GET worker")??);
    }
    Ok(Summary::from(&all))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the benchmark runs end to end over a 2 ms store: every measured commit is counted,
    // the follower ends at the writer's LSN and checksum (checked inside the run), it polled
    // the store, and the report renders the goal line. No timing is asserted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn smoke_run_on_a_fast_store() {
        let plan = Plan {
            model: LatencyModel {
                mean: Duration::from_millis(2),
                jitter: Duration::from_millis(1),
                seed: 5,
            },
            poll: Duration::from_millis(5),
            rate: 100.0,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(500),
            bare_gets: 20,
        };
        let scratch = tempfile::tempdir().expect("scratch");
        let results = run(&plan, scratch.path()).await.expect("run");
        assert_eq!(results.lag.count(), 50);
        assert_eq!(results.commit.count(), 50);
        assert!(results.lsn.get() > 1, "{:?}", results.lsn);
        assert!(results.follower_gets_found > 0);
        let text = report::table(&results);
        assert!(text.contains("poll interval + one GET"), "{text}");
        let json = report::json(&results);
        assert!(json["lag_ms"]["p50"].is_number(), "{json}");
    }
}
