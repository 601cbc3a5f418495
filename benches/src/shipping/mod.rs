//! The shipping benchmark (issue 4, item 6): Hadal's strict shipping against SlateDB, each on
//! an in-memory object store behind the same latency-injecting decorator, in one run.
//!
//! Phases, per system, in this order on one database: a short warm-up; closed loops of 1, 16
//! and 64 committers (items (a) and (b)); an open-loop search for the highest offered rate whose
//! p99 stays within 3× a bare PUT (item (c)). Store counters over each phase give items (d) and
//! (e). Afterwards a sample of the commits is read back and checked.

pub mod bucket;
pub mod latency;
pub mod load;
pub mod report;
pub mod systems;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use self::latency::LatencyModel;
use self::load::{ClosedRun, OpenStep, Summary};
use self::systems::{System, SystemName};

/// Open-loop p99 bound, in bare PUTs (issue 4, item 6 (c)).
pub const OPEN_LOOP_P99_PUTS: f64 = 3.0;
/// Commits read back per system after the run.
const CHECK_SAMPLES: u64 = 200;

/// Everything a run does; [`Plan::full`] and [`Plan::quick`] are the two the CLI offers.
#[derive(Debug, Clone)]
pub struct Plan {
    pub model: LatencyModel,
    pub slatedb_flush: Duration,
    pub systems: Vec<SystemName>,
    pub bare_puts: usize,
    /// Closed-loop committer counts; the first run (1 committer) gives item (a).
    pub committers: Vec<usize>,
    /// Length of the single-committer run (longer, for a stable p99).
    pub single_run: Duration,
    /// Length of each other closed-loop run.
    pub closed_run: Duration,
    pub ladder: Vec<f64>,
    pub refine: usize,
    pub warmup: Duration,
    pub step: Duration,
}

impl Plan {
    /// The default run: about a minute and a half per system at 50 ms PUTs.
    pub fn full(model: LatencyModel, slatedb_flush: Duration, systems: Vec<SystemName>) -> Plan {
        Plan {
            model,
            slatedb_flush,
            systems,
            bare_puts: 400,
            committers: vec![1, 16, 64],
            single_run: Duration::from_secs(10),
            closed_run: Duration::from_secs(5),
            ladder: vec![
                1_000.0, 2_000.0, 5_000.0, 10_000.0, 20_000.0, 50_000.0, 100_000.0, 200_000.0,
                500_000.0,
            ],
            refine: 2,
            warmup: Duration::from_secs(1),
            step: Duration::from_secs(3),
        }
    }

    /// A smoke run of a few seconds per system: same phases, short and coarse.
    pub fn quick(model: LatencyModel, slatedb_flush: Duration, systems: Vec<SystemName>) -> Plan {
        Plan {
            bare_puts: 40,
            single_run: Duration::from_secs(1),
            closed_run: Duration::from_secs(1),
            ladder: vec![1_000.0, 5_000.0, 20_000.0, 50_000.0],
            refine: 0,
            warmup: Duration::from_millis(200),
            step: Duration::from_millis(600),
            ..Plan::full(model, slatedb_flush, systems)
        }
    }
}

/// What one system measured.
#[derive(Debug, Clone)]
pub struct SystemRun {
    pub name: SystemName,
    pub closed: Vec<ClosedRun>,
    pub open: Vec<OpenStep>,
    pub commits: u64,
}

/// Everything measured, before formatting.
#[derive(Debug, Clone)]
pub struct Results {
    pub plan: Plan,
    pub bare_put: Summary,
    pub runs: Vec<SystemRun>,
    pub seconds: f64,
}

impl Results {
    /// One bare PUT (its p50): the unit of every latency ratio.
    pub fn put_ms(&self) -> f64 {
        self.bare_put.p50_ms
    }

    pub fn threshold_ms(&self) -> f64 {
        OPEN_LOOP_P99_PUTS * self.put_ms()
    }
}

fn progress(line: &str) {
    eprintln!("[hadal-bench] {line}");
}

/// Runs `plan`; Hadal's local files go under `scratch`.
pub async fn run(plan: &Plan, scratch: &Path) -> Result<Results> {
    let started = Instant::now();
    let bare_put = load::bare_puts(plan.model, plan.bare_puts, 8).await?;
    progress(&format!(
        "bare PUT: p50 {:.1} ms, p99 {:.1} ms over {} PUTs",
        bare_put.p50_ms, bare_put.p99_ms, bare_put.count
    ));
    if bare_put.p50_ms <= 0.0 {
        return Err(anyhow!("the bare PUT measured no latency"));
    }
    let threshold = Duration::from_secs_f64(OPEN_LOOP_P99_PUTS * bare_put.p50_ms / 1000.0);
    let mut runs = Vec::new();
    for &name in &plan.systems {
        runs.push(run_system(plan, name, threshold, scratch).await?);
    }
    Ok(Results {
        plan: plan.clone(),
        bare_put,
        runs,
        seconds: started.elapsed().as_secs_f64(),
    })
}

async fn run_system(
    plan: &Plan,
    name: SystemName,
    threshold: Duration,
    scratch: &Path,
) -> Result<SystemRun> {
    let label = name.as_str();
    let system = Arc::new(System::open(name, plan.model, plan.slatedb_flush, scratch).await?);
    let next = Arc::new(AtomicU64::new(0));
    // Warm-up: the first commits pay for first-segment and first-WAL-object set-up.
    load::closed_loop(&system, &next, 1, Duration::from_millis(300)).await?;

    let mut closed = Vec::new();
    for (i, &committers) in plan.committers.iter().enumerate() {
        let duration = if i == 0 {
            plan.single_run
        } else {
            plan.closed_run
        };
        let run = load::closed_loop(&system, &next, committers, duration).await?;
        progress(&format!(
            "{label}: {committers} committers: {:.1} commits/s, p50 {:.1} ms, p99 {:.1} ms, {} log PUTs ({} in flight at most)",
            run.commits_per_s(),
            run.latency.p50_ms,
            run.latency.p99_ms,
            run.counts.store.log_puts,
            run.counts.log_in_flight_max
        ));
        closed.push(run);
    }

    let open = load::open_loop_search(
        &system,
        &next,
        &plan.ladder,
        plan.refine,
        load::StepShape {
            warmup: plan.warmup,
            duration: plan.step,
            threshold,
        },
        |step| {
            progress(&format!(
                "{label}: open loop {:.0}/s: p50 {:.1} ms, p99 {:.1} ms, {:.0} completed/s{}{}",
                step.offered,
                step.latency.p50_ms,
                step.latency.p99_ms,
                step.completed_per_s,
                if step.stopped_early {
                    ", stopped early"
                } else {
                    ""
                },
                if step.sustained {
                    ""
                } else {
                    ": not sustained"
                }
            ));
        },
    )
    .await?;

    let commits = next.load(std::sync::atomic::Ordering::SeqCst);
    load::check_sample(&system, commits, CHECK_SAMPLES)
        .await
        .with_context(|| format!("{label}: reading back the commits"))?;
    let system = Arc::try_unwrap(system)
        .map_err(|_| anyhow!("{label}: a commit task still holds the database"))?;
    system.close().await?;
    Ok(SystemRun {
        name,
        closed,
        open,
        commits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the whole benchmark runs end to end on both systems over a 1 ms store (every
    // commit read back and checked), that the store's segment-PUT count agrees with the
    // shipper's own metrics, that Hadal never had two segment uploads in flight, and that the
    // report renders every item. No timing is asserted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn smoke_run_on_a_fast_store() {
        let model = LatencyModel {
            mean: Duration::from_millis(2),
            jitter: Duration::from_millis(1),
            seed: 5,
        };
        let plan = Plan {
            bare_puts: 20,
            committers: vec![1, 4],
            single_run: Duration::from_millis(200),
            closed_run: Duration::from_millis(200),
            ladder: vec![200.0, 400.0],
            refine: 1,
            warmup: Duration::from_millis(50),
            step: Duration::from_millis(200),
            ..Plan::full(
                model,
                Duration::from_millis(1),
                vec![SystemName::Hadal, SystemName::Slatedb],
            )
        };
        let scratch = tempfile::tempdir().expect("scratch");
        let results = run(&plan, scratch.path()).await.expect("run");
        assert_eq!(results.runs.len(), 2);
        for system in &results.runs {
            assert_eq!(system.closed.len(), 2, "{:?}", system.name);
            assert!(!system.open.is_empty(), "{:?}", system.name);
            for run in &system.closed {
                assert!(run.commits > 0, "{:?} {}", system.name, run.committers);
                assert!(run.counts.store.log_puts > 0, "{:?}", system.name);
            }
        }
        let hadal = &results.runs[0];
        for run in &hadal.closed {
            assert_eq!(run.counts.store.log_puts, run.counts.own.segment_puts);
            assert!(run.counts.log_in_flight_max <= 1, "{:?}", run.counts);
        }
        let text = report::table(&results);
        for item in ["(a)", "(b)", "(c)", "(d)", "(e)"] {
            assert!(text.contains(item), "{item} missing from\n{text}");
        }
        let json = report::json(&results);
        assert_eq!(json["systems"].as_array().map(Vec::len), Some(2));
    }
}
