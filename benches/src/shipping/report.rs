//! The shipping benchmark's results: the table on stdout and the same figures as JSON
//! (`target/hadal-bench/shipping.json`), items (a)–(e) of issue 4, item 6, each with its goal
//! and a plain "yes" / "NO" where the issue sets one.
//!
//! Units: latencies are milliseconds and, as ratios, multiples of one bare PUT's p50 through the
//! same latency store. "Log PUTs" are the PUTs on the commit path (Hadal's segments, SlateDB's
//! WAL objects); "all PUTs" adds everything else (manifests, SSTs, the self-test).

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::load::{ClosedRun, OpenStep, Summary, highest_sustained};
use super::systems::SystemName;
use super::{OPEN_LOOP_P99_PUTS, Results, SystemRun};

/// Goal (a): Hadal's strict-commit p50 at most this many bare PUTs.
pub const GOAL_P50_PUTS: f64 = 1.05;
/// Goal (c): Hadal sustains at least this many commits per second open-loop.
pub const GOAL_OPEN_LOOP_RATE: f64 = 50_000.0;

fn run(results: &Results, name: SystemName) -> Option<&SystemRun> {
    results.runs.iter().find(|r| r.name == name)
}

fn closed(run: &SystemRun, committers: usize) -> Option<&ClosedRun> {
    run.closed.iter().find(|c| c.committers == committers)
}

fn single(results: &Results, name: SystemName) -> Option<&ClosedRun> {
    let first = *results.plan.committers.first()?;
    closed(run(results, name)?, first)
}

/// Goal (a): Hadal's single-committer p50 within 1.05 bare PUTs.
pub fn goal_a(results: &Results) -> Option<bool> {
    let hadal = single(results, SystemName::Hadal)?;
    Some(hadal.latency.p50_ms / results.put_ms() <= GOAL_P50_PUTS)
}

/// Goal (b) at `committers`: Hadal's commits/s at least SlateDB's.
pub fn goal_b(results: &Results, committers: usize) -> Option<bool> {
    let hadal = closed(run(results, SystemName::Hadal)?, committers)?;
    let slate = closed(run(results, SystemName::Slatedb)?, committers)?;
    Some(hadal.commits_per_s() >= slate.commits_per_s())
}

/// Goal (c): Hadal's highest sustained open-loop rate at least 50,000/s.
pub fn goal_c(results: &Results) -> Option<bool> {
    let hadal = run(results, SystemName::Hadal)?;
    Some(highest_sustained(&hadal.open).unwrap_or(0.0) >= GOAL_OPEN_LOOP_RATE)
}

/// Goal (d): never more than one Hadal segment upload in flight, in any phase.
pub fn goal_d(results: &Results) -> Option<bool> {
    let hadal = run(results, SystemName::Hadal)?;
    Some(max_in_flight(hadal) <= 1)
}

fn max_in_flight(run: &SystemRun) -> u64 {
    run.closed
        .iter()
        .map(|c| c.counts.log_in_flight_max)
        .chain(run.open.iter().map(|s| s.counts.log_in_flight_max))
        .max()
        .unwrap_or(0)
}

fn met(goal: Option<bool>) -> &'static str {
    match goal {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "-",
    }
}

fn per_1k(count: u64, commits: u64) -> f64 {
    if commits == 0 {
        0.0
    } else {
        count as f64 * 1000.0 / commits as f64
    }
}

fn per_commit(bytes: u64, commits: u64) -> f64 {
    if commits == 0 {
        0.0
    } else {
        bytes as f64 / commits as f64
    }
}

use crate::thousands;

/// The highest sustained step of a system, for (d) and (e).
fn top_step(run: &SystemRun) -> Option<&OpenStep> {
    let rate = highest_sustained(&run.open)?;
    run.open.iter().find(|s| s.sustained && s.offered == rate)
}

/// A sustained-load phase of one system: its label, seconds, commits and counters.
struct Phase<'a> {
    label: String,
    seconds: f64,
    commits: u64,
    counts: &'a super::load::PhaseCounts,
}

fn phases(run: &SystemRun) -> Vec<Phase<'_>> {
    let mut out: Vec<Phase<'_>> = run
        .closed
        .iter()
        .map(|c| Phase {
            label: format!("closed loop, {} committers", c.committers),
            seconds: c.seconds,
            commits: c.commits,
            counts: &c.counts,
        })
        .collect();
    if let Some(step) = top_step(run) {
        out.push(Phase {
            label: format!(
                "open loop {}/s (highest sustained)",
                thousands(step.offered)
            ),
            seconds: step.seconds,
            commits: step.measured,
            counts: &step.counts,
        });
    }
    out
}

pub fn table(results: &Results) -> String {
    let mut out = String::new();
    let plan = &results.plan;
    let put = results.put_ms();
    let names: Vec<SystemName> = results.runs.iter().map(|r| r.name).collect();
    let _ = writeln!(
        out,
        "store: object_store InMemory behind LatencyStore, every request {:.0} ms ± {:.0} ms (uniform, seed {}); slatedb flush_interval {} ms",
        plan.model.mean.as_secs_f64() * 1000.0,
        plan.model.jitter.as_secs_f64() * 1000.0,
        plan.model.seed,
        plan.slatedb_flush.as_secs_f64() * 1000.0
    );
    let _ = writeln!(
        out,
        "one bare PUT (the unit \"x PUT\"): p50 {:.1} ms, p99 {:.1} ms, mean {:.1} ms over {} PUTs",
        results.bare_put.p50_ms,
        results.bare_put.p99_ms,
        results.bare_put.mean_ms,
        results.bare_put.count
    );

    // (a)
    let _ = writeln!(
        out,
        "\n(a) strict-commit latency, 1 committer   {:>20} {:>20}   goal",
        "hadal", "slatedb"
    );
    let cell = |name: SystemName, f: fn(&Summary) -> f64| {
        single(results, name).map_or_else(
            || "-".to_string(),
            |c| {
                let ms = f(&c.latency);
                format!("{ms:.1} ms {:>5.2}x", ms / put)
            },
        )
    };
    let _ = writeln!(
        out,
        "    p50                                  {:>20} {:>20}   hadal <= {GOAL_P50_PUTS:.2}x PUT: {}",
        cell(SystemName::Hadal, |s| s.p50_ms),
        cell(SystemName::Slatedb, |s| s.p50_ms),
        met(goal_a(results))
    );
    let _ = writeln!(
        out,
        "    p99                                  {:>20} {:>20}",
        cell(SystemName::Hadal, |s| s.p99_ms),
        cell(SystemName::Slatedb, |s| s.p99_ms)
    );

    // (b)
    let _ = writeln!(
        out,
        "\n(b) closed loop, commits/s    bound (N / PUT) {:>10} {:>10} {:>14}   goal >= slatedb",
        "hadal", "slatedb", "hadal/slatedb"
    );
    for &n in &plan.committers {
        let rate = |name: SystemName| {
            run(results, name)
                .and_then(|r| closed(r, n))
                .map(ClosedRun::commits_per_s)
        };
        let (h, s) = (rate(SystemName::Hadal), rate(SystemName::Slatedb));
        let show = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
        let ratio = match (h, s) {
            (Some(h), Some(s)) if s > 0.0 => format!("{:.3}x", h / s),
            _ => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "    {:<3} committer{:<2}             {:>15.1} {:>10} {:>10} {:>14}   {}",
            n,
            if n == 1 { "" } else { "s" },
            n as f64 * 1000.0 / results.bare_put.mean_ms,
            show(h),
            show(s),
            ratio,
            met(goal_b(results, n))
        );
    }

    // (c)
    let _ = writeln!(
        out,
        "\n(c) open loop, single-key commits, latency from each commit's scheduled time (sustained: p99 <= {OPEN_LOOP_P99_PUTS:.0}x PUT = {:.1} ms)",
        results.threshold_ms()
    );
    let _ = writeln!(
        out,
        "    {:>12} {}",
        "offered/s",
        names
            .iter()
            .map(|n| format!("{:>32}", format!("{} p50 / p99 (x PUT)", n.as_str())))
            .collect::<String>()
    );
    let mut rates: Vec<f64> = results
        .runs
        .iter()
        .flat_map(|r| r.open.iter().map(|s| s.offered))
        .collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    for rate in rates {
        let mut line = format!("    {:>12}", thousands(rate));
        for r in &results.runs {
            let text = r.open.iter().find(|s| s.offered == rate).map_or_else(
                || "not run".to_string(),
                |s| {
                    format!(
                        "{:.2}x / {:.2}x {}",
                        s.latency.p50_ms / put,
                        s.latency.p99_ms / put,
                        if s.sustained {
                            "ok"
                        } else if s.stopped_early {
                            "NO (cut short)"
                        } else {
                            "NO"
                        }
                    )
                },
            );
            let _ = write!(line, "{text:>32}");
        }
        let _ = writeln!(out, "{line}");
    }
    let highest = |r: &SystemRun| {
        highest_sustained(&r.open).map_or_else(|| "none".to_string(), |v| thousands(v) + "/s")
    };
    let _ = writeln!(
        out,
        "    highest sustained: {}; goal hadal >= {}/s: {}",
        results
            .runs
            .iter()
            .map(|r| format!("{} {}", r.name.as_str(), highest(r)))
            .collect::<Vec<_>>()
            .join(", "),
        thousands(GOAL_OPEN_LOOP_RATE),
        met(goal_c(results))
    );

    // (d)
    let _ = writeln!(
        out,
        "\n(d) log PUTs (hadal segments, slatedb WAL objects) under sustained load; bound 1 per PUT = {:.1}/s",
        1000.0 / results.bare_put.mean_ms
    );
    let _ = writeln!(
        out,
        "    {:<8} {:<40} {:>10} {:>10} {:>22}",
        "system", "phase", "log PUTs/s", "in flight", "PUTs/1k commits log/all"
    );
    for r in &results.runs {
        for p in phases(r) {
            let _ = writeln!(
                out,
                "    {:<8} {:<40} {:>10.1} {:>10} {:>22}",
                r.name.as_str(),
                p.label,
                p.counts.store.log_puts as f64 / p.seconds.max(1e-9),
                p.counts.log_in_flight_max,
                format!(
                    "{:.1} / {:.1}",
                    per_1k(p.counts.store.log_puts, p.commits),
                    per_1k(p.counts.store.puts, p.commits)
                )
            );
        }
    }
    if let Some(hadal) = run(results, SystemName::Hadal) {
        let _ = writeln!(
            out,
            "    goal: never more than one hadal segment upload in flight (most seen: {}): {}",
            max_in_flight(hadal),
            met(goal_d(results))
        );
    }

    // (e)
    let _ = writeln!(
        out,
        "\n(e) bytes uploaded per single-key commit (16 B key, 100 B value): log PUTs / all PUTs"
    );
    for r in &results.runs {
        for p in phases(r) {
            let _ = writeln!(
                out,
                "    {:<8} {:<40} {:>10.0} / {:.0}",
                r.name.as_str(),
                p.label,
                per_commit(p.counts.store.log_put_bytes, p.commits),
                per_commit(p.counts.store.put_bytes, p.commits)
            );
        }
    }
    let _ = writeln!(out, "\ntotal run time {:.0} s", results.seconds);
    out
}

fn summary_json(s: &Summary, put_ms: f64) -> Value {
    json!({
        "count": s.count,
        "p50_ms": s.p50_ms,
        "p99_ms": s.p99_ms,
        "mean_ms": s.mean_ms,
        "max_ms": s.max_ms,
        "p50_puts": s.p50_ms / put_ms,
        "p99_puts": s.p99_ms / put_ms,
    })
}

fn counts_json(c: &super::load::PhaseCounts, commits: u64, seconds: f64) -> Value {
    json!({
        "puts": c.store.puts,
        "put_bytes": c.store.put_bytes,
        "log_puts": c.store.log_puts,
        "log_put_bytes": c.store.log_put_bytes,
        "gets": c.store.gets,
        "lists": c.store.lists,
        "deletes": c.store.deletes,
        "log_in_flight_max": c.log_in_flight_max,
        "log_puts_per_s": c.store.log_puts as f64 / seconds.max(1e-9),
        "log_puts_per_1k_commits": per_1k(c.store.log_puts, commits),
        "puts_per_1k_commits": per_1k(c.store.puts, commits),
        "log_bytes_per_commit": per_commit(c.store.log_put_bytes, commits),
        "bytes_per_commit": per_commit(c.store.put_bytes, commits),
        "shipper": {
            "segments": c.own.segments,
            "segment_puts": c.own.segment_puts,
            "segment_bytes": c.own.segment_bytes,
            "engine_commits": c.own.engine_commits,
        },
    })
}

pub fn json(results: &Results) -> Value {
    let put = results.put_ms();
    let plan = &results.plan;
    let systems: Vec<Value> = results
        .runs
        .iter()
        .map(|r| {
            let closed: Vec<Value> = r
                .closed
                .iter()
                .map(|c| {
                    json!({
                        "committers": c.committers,
                        "commits": c.commits,
                        "seconds": c.seconds,
                        "commits_per_s": c.commits_per_s(),
                        "bound_commits_per_s": c.committers as f64 * 1000.0 / results.bare_put.mean_ms,
                        "latency": summary_json(&c.latency, put),
                        "counts": counts_json(&c.counts, c.commits, c.seconds),
                    })
                })
                .collect();
            let open: Vec<Value> = r
                .open
                .iter()
                .map(|s| {
                    json!({
                        "offered_per_s": s.offered,
                        "measured_commits": s.measured,
                        "seconds": s.seconds,
                        "completed_per_s": s.completed_per_s,
                        "latency": summary_json(&s.latency, put),
                        "stopped_early": s.stopped_early,
                        "sustained": s.sustained,
                        "counts": counts_json(&s.counts, s.measured, s.seconds),
                    })
                })
                .collect();
            json!({
                "name": r.name.as_str(),
                "commits": r.commits,
                "closed_loop": closed,
                "open_loop": open,
                "highest_sustained_per_s": highest_sustained(&r.open),
                "log_in_flight_max": max_in_flight(r),
            })
        })
        .collect();
    let committers_b: serde_json::Map<String, Value> = plan
        .committers
        .iter()
        .map(|&n| (n.to_string(), json!(goal_b(results, n))))
        .collect();
    json!({
        "benchmark": "shipping",
        "settings": {
            "put_mean_ms": plan.model.mean.as_secs_f64() * 1000.0,
            "put_jitter_ms": plan.model.jitter.as_secs_f64() * 1000.0,
            "latency_seed": plan.model.seed,
            "latency_distribution": "uniform, every request (PUT, GET/HEAD, LIST, DELETE, COPY)",
            "slatedb_flush_interval_ms": plan.slatedb_flush.as_secs_f64() * 1000.0,
            "committers": plan.committers,
            "single_committer_seconds": plan.single_run.as_secs_f64(),
            "closed_loop_seconds": plan.closed_run.as_secs_f64(),
            "open_loop_ladder_per_s": plan.ladder,
            "open_loop_refinements": plan.refine,
            "open_loop_warmup_seconds": plan.warmup.as_secs_f64(),
            "open_loop_step_seconds": plan.step.as_secs_f64(),
            "open_loop_p99_bound_puts": OPEN_LOOP_P99_PUTS,
        },
        "bare_put": summary_json(&results.bare_put, put),
        "systems": systems,
        "goals": {
            "a_hadal_p50_within_1_05_puts": goal_a(results),
            "b_hadal_commits_per_s_at_least_slatedb": committers_b,
            "c_hadal_open_loop_at_least_50000_per_s": goal_c(results),
            "d_at_most_one_segment_upload_in_flight": goal_d(results),
        },
        "seconds": results.seconds,
    })
}
