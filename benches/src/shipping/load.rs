//! The load generators: bare PUTs (the unit every latency is expressed in), closed loops of N
//! committers, and open-loop steps at a fixed offered rate.
//!
//! Open-loop latency is measured from each commit's *scheduled* time, not from when the driver
//! got round to issuing it, so a driver or a system that falls behind shows up in the latency
//! instead of silently lowering the offered rate (no coordinated omission).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use hdrhistogram::Histogram;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use super::latency::{LatencyModel, LatencyStore, StoreCounts};
use super::systems::{OwnCounts, System};

/// Latencies above this are recorded as this (µs): ten minutes.
const LATENCY_US_MAX: u64 = 600_000_000;
/// How long the last commits of an open-loop step may take to finish before the step fails.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// A latency distribution in microseconds.
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Self(
            Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
                .expect("valid histogram bounds: 1 µs to 10 min, 3 significant digits"),
        )
    }
}

impl Latencies {
    pub fn record(&mut self, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, LATENCY_US_MAX);
        self.0.saturating_record(us);
    }

    pub fn merge(&mut self, other: &Latencies) {
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.0.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn mean_ms(&self) -> f64 {
        self.0.mean() / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.0.max() as f64 / 1000.0
    }
}

/// Summary figures of a latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub max_ms: f64,
}

impl From<&Latencies> for Summary {
    fn from(l: &Latencies) -> Self {
        Summary {
            count: l.count(),
            p50_ms: l.quantile_ms(0.5),
            p99_ms: l.quantile_ms(0.99),
            mean_ms: l.mean_ms(),
            max_ms: l.max_ms(),
        }
    }
}

/// `count` PUTs of 1 KiB through a fresh latency store with `model`, `parallel` at a time.
pub async fn bare_puts(model: LatencyModel, count: usize, parallel: usize) -> Result<Summary> {
    let store = LatencyStore::new(Arc::new(object_store::memory::InMemory::new()), model, "");
    let per_worker = count.div_ceil(parallel.max(1));
    let mut workers = Vec::new();
    for w in 0..parallel.max(1) {
        let store = store.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Latencies::default();
            for i in 0..per_worker {
                let path = Path::from(format!("bare/{w}/{i}"));
                let started = Instant::now();
                store
                    .put(&path, PutPayload::from(vec![0u8; 1024]))
                    .await
                    .with_context(|| format!("bare PUT {path}"))?;
                latencies.record(started.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Latencies::default();
    for worker in workers {
        all.merge(&worker.await.context("bare PUT worker")??);
    }
    Ok(Summary::from(&all))
}

/// Store and system counters over a phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseCounts {
    pub store: StoreCounts,
    pub own: OwnCounts,
    /// The most log PUTs (segments / WAL objects) in flight at once during the phase.
    pub log_in_flight_max: u64,
}

/// Counter snapshots at the start of a phase.
struct PhaseStart {
    store: StoreCounts,
    own: OwnCounts,
}

impl PhaseStart {
    fn now(system: &System) -> Self {
        system.store.take_log_in_flight_max();
        PhaseStart {
            store: system.counts(),
            own: system.own_counts(),
        }
    }

    fn finish(self, system: &System) -> PhaseCounts {
        PhaseCounts {
            store: system.counts().since(&self.store),
            own: system.own_counts().since(&self.own),
            log_in_flight_max: system.store.take_log_in_flight_max(),
        }
    }
}

/// One closed-loop run: `committers` tasks each committing back to back.
#[derive(Debug, Clone)]
pub struct ClosedRun {
    pub committers: usize,
    pub commits: u64,
    pub seconds: f64,
    pub latency: Summary,
    pub counts: PhaseCounts,
}

impl ClosedRun {
    pub fn commits_per_s(&self) -> f64 {
        self.commits as f64 / self.seconds
    }
}

/// Runs `committers` tasks that commit back to back until `duration` has passed (each finishes
/// the commit it is in); commit numbers come from `next`.
pub async fn closed_loop(
    system: &Arc<System>,
    next: &Arc<AtomicU64>,
    committers: usize,
    duration: Duration,
) -> Result<ClosedRun> {
    let phase = PhaseStart::now(system);
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..committers {
        let (system, next) = (system.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Latencies::default();
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let t0 = Instant::now();
                system.commit(n).await?;
                latencies.record(t0.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Latencies::default();
    for task in tasks {
        all.merge(&task.await.context("committer task")??);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(ClosedRun {
        committers,
        commits: all.count(),
        seconds,
        latency: Summary::from(&all),
        counts: phase.finish(system),
    })
}

/// One open-loop step at a fixed offered rate.
#[derive(Debug, Clone)]
pub struct OpenStep {
    /// Commits per second scheduled.
    pub offered: f64,
    /// Commits issued in the measured window (after the warm-up).
    pub measured: u64,
    /// Length of the measured window as issued (shorter if the step stopped early).
    pub seconds: f64,
    /// Measured commits that finished, per second of the window plus the drain.
    pub completed_per_s: f64,
    pub latency: Summary,
    /// The step was cut short because its p99 was already certain to exceed the threshold.
    pub stopped_early: bool,
    /// p99 at most the threshold, and not stopped early.
    pub sustained: bool,
    /// Counters over the measured window (issue start to issue end, not the drain).
    pub counts: PhaseCounts,
}

/// Shared state of one open-loop step.
#[derive(Debug, Default)]
struct StepState {
    latencies: Mutex<Latencies>,
    late: AtomicU64,
    outstanding: AtomicU64,
    outstanding_measured: AtomicU64,
    error: Mutex<Option<anyhow::Error>>,
}

/// How each open-loop step runs.
#[derive(Debug, Clone, Copy)]
pub struct StepShape {
    /// Issued at the step's rate first, not measured.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// A commit slower than this (from its scheduled time) is late.
    pub threshold: Duration,
}

/// Offers `rate` single-key commits per second for `shape.warmup` (not measured), then
/// `shape.duration`. The step stops issuing once more than 1% of its planned measured commits
/// are certain to be late.
pub async fn open_loop_step(
    system: &Arc<System>,
    next: &Arc<AtomicU64>,
    rate: f64,
    shape: StepShape,
) -> Result<OpenStep> {
    let StepShape {
        warmup,
        duration,
        threshold,
    } = shape;
    if rate <= 0.0 || !rate.is_finite() {
        bail!("offered rate {rate} must be a positive number of commits per second");
    }
    let state = Arc::new(StepState::default());
    let warm = (rate * warmup.as_secs_f64()).floor() as u64;
    let planned = (rate * duration.as_secs_f64()).ceil().max(1.0) as u64;
    let total = warm + planned;
    let allowed_late = planned / 100;
    let on_time_in_flight = (rate * threshold.as_secs_f64()).ceil() as u64 + 1;

    let start = Instant::now();
    let at = |i: u64| start + Duration::from_secs_f64(i as f64 / rate);
    let mut issued = 0u64;
    let mut phase: Option<PhaseStart> = None;
    let mut window_started = start;
    let mut stopped_early = false;
    while issued < total {
        let elapsed = start.elapsed().as_secs_f64();
        let due = ((elapsed * rate).floor() as u64 + 1).min(total);
        while issued < due {
            if issued == warm {
                phase = Some(PhaseStart::now(system));
                window_started = Instant::now();
            }
            let measured = issued >= warm;
            let intended = at(issued);
            let n = next.fetch_add(1, Ordering::Relaxed);
            let (system, state) = (system.clone(), state.clone());
            state.outstanding.fetch_add(1, Ordering::SeqCst);
            if measured {
                state.outstanding_measured.fetch_add(1, Ordering::SeqCst);
            }
            tokio::spawn(async move {
                let outcome = system.commit(n).await;
                let latency = intended.elapsed();
                if measured {
                    if latency > threshold {
                        state.late.fetch_add(1, Ordering::SeqCst);
                    }
                    lock(&state.latencies).record(latency);
                    state.outstanding_measured.fetch_sub(1, Ordering::SeqCst);
                }
                if let Err(e) = outcome {
                    lock(&state.error).get_or_insert(e);
                }
                state.outstanding.fetch_sub(1, Ordering::SeqCst);
            });
            issued += 1;
        }
        if lock(&state.error).is_some() {
            break;
        }
        // Commits in flight beyond those issued within the last `threshold` are already late.
        let in_flight = state.outstanding_measured.load(Ordering::SeqCst);
        let certainly_late =
            state.late.load(Ordering::SeqCst) + in_flight.saturating_sub(on_time_in_flight);
        if issued > warm && certainly_late > allowed_late {
            stopped_early = true;
            break;
        }
        if issued < total {
            tokio::time::sleep_until(at(issued).into()).await;
        }
    }
    let issue_end = Instant::now();
    let phase = phase.unwrap_or_else(|| PhaseStart::now(system));
    let counts = phase.finish(system);
    let measured = issued.saturating_sub(warm);

    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    while state.outstanding.load(Ordering::SeqCst) > 0 {
        if Instant::now() > drain_deadline {
            bail!(
                "{}: {} commits still not durable {DRAIN_TIMEOUT:?} after the {rate:.0}/s step ended",
                system.name.as_str(),
                state.outstanding.load(Ordering::SeqCst)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if let Some(e) = lock(&state.error).take() {
        return Err(e.context(format!("open loop at {rate:.0} commits/s")));
    }
    let drained = Instant::now();
    let latency = Summary::from(&*lock(&state.latencies));
    let seconds = issue_end.duration_since(window_started).as_secs_f64();
    let threshold_ms = threshold.as_secs_f64() * 1000.0;
    Ok(OpenStep {
        offered: rate,
        measured,
        seconds,
        completed_per_s: measured as f64
            / drained
                .duration_since(window_started)
                .as_secs_f64()
                .max(1e-9),
        sustained: !stopped_early && measured > 0 && latency.p99_ms <= threshold_ms,
        latency,
        stopped_early,
        counts,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Steps up `ladder` until the first rate that is not sustained, then bisects (geometrically)
/// `refine` times between the last sustained rate and the first unsustained one. Returns the
/// steps in the order run.
pub async fn open_loop_search(
    system: &Arc<System>,
    next: &Arc<AtomicU64>,
    ladder: &[f64],
    refine: usize,
    shape: StepShape,
    mut on_step: impl FnMut(&OpenStep),
) -> Result<Vec<OpenStep>> {
    let mut steps = Vec::new();
    let mut passed: Option<f64> = None;
    let mut failed: Option<f64> = None;
    for &rate in ladder {
        let step = open_loop_step(system, next, rate, shape).await?;
        on_step(&step);
        let ok = step.sustained;
        steps.push(step);
        if ok {
            passed = Some(rate);
        } else {
            failed = Some(rate);
            break;
        }
    }
    for _ in 0..refine {
        let (Some(lo), Some(hi)) = (passed, failed) else {
            break;
        };
        let mid = round_rate((lo * hi).sqrt());
        if mid <= lo || mid >= hi {
            break;
        }
        let step = open_loop_step(system, next, mid, shape).await?;
        on_step(&step);
        if step.sustained {
            passed = Some(mid);
        } else {
            failed = Some(mid);
        }
        steps.push(step);
    }
    Ok(steps)
}

/// Rounds to two significant digits (17,320 -> 17,000), so rates read well in the table.
fn round_rate(rate: f64) -> f64 {
    if rate <= 0.0 {
        return rate;
    }
    let scale = 10f64.powf(rate.log10().floor() - 1.0);
    (rate / scale).round() * scale
}

/// The highest sustained offered rate among `steps`.
pub fn highest_sustained(steps: &[OpenStep]) -> Option<f64> {
    steps
        .iter()
        .filter(|s| s.sustained)
        .map(|s| s.offered)
        .fold(None, |best, r| Some(best.map_or(r, |b: f64| b.max(r))))
}

/// Reads back `samples` commits spread over `0..committed` and checks their values.
pub async fn check_sample(system: &System, committed: u64, samples: u64) -> Result<()> {
    if committed == 0 {
        return Err(anyhow!("{}: nothing was committed", system.name.as_str()));
    }
    let step = (committed / samples.max(1)).max(1);
    let mut n = 0;
    while n < committed {
        system.check(n).await?;
        n += step;
    }
    system.check(committed - 1).await
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves rates are rounded to two significant digits and the search's midpoints land
    // strictly between their bounds.
    #[test]
    fn rates_round_to_two_digits() {
        assert_eq!(round_rate(17_320.5), 17_000.0);
        assert_eq!(round_rate(31_623.0), 32_000.0);
        assert_eq!(round_rate(7_071.0), 7_100.0);
        assert_eq!(round_rate(950.0), 950.0);
        let mid = round_rate((20_000f64 * 50_000.0).sqrt());
        assert!(mid > 20_000.0 && mid < 50_000.0, "{mid}");
    }
}
