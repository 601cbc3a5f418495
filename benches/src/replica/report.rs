//! The replica benchmark's results: the table on stdout and the same figures as JSON
//! (`target/hadal-bench/replica.json`), with the goal "lag p50 ≤ poll interval + one GET".
//!
//! "One GET" is the p50 of bare 1 KiB GETs through a fresh latency store with the same model,
//! measured at the start of the run.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::Results;
use crate::shipping::load::Latencies;

/// The goal's bound in milliseconds: the poll interval plus one bare GET's p50.
pub fn goal_ms(results: &Results) -> f64 {
    results.plan.poll.as_secs_f64() * 1000.0 + results.bare_get.p50_ms
}

pub fn goal_met(results: &Results) -> bool {
    results.lag.quantile_ms(0.5) <= goal_ms(results)
}

fn per_s(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

fn op_name(op: hadal_transports::Op) -> String {
    format!("{op:?}").to_uppercase()
}

fn quantiles(l: &Latencies) -> String {
    format!(
        "{:.1} / {:.1} / {:.1} / {:.1} ms",
        l.quantile_ms(0.5),
        l.quantile_ms(0.9),
        l.quantile_ms(0.99),
        l.max_ms()
    )
}

pub fn table(results: &Results) -> String {
    let plan = &results.plan;
    let m = &plan.model;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "store: object_store InMemory behind LatencyStore, every request {} ms ± {} ms (uniform, seed {}), shared by the writer and the follower",
        m.mean.as_secs_f64() * 1000.0,
        m.jitter.as_secs_f64() * 1000.0,
        m.seed
    );
    let b = &results.bare_get;
    let _ = writeln!(
        out,
        "one bare GET: p50 {:.1} ms, p99 {:.1} ms over {} GETs",
        b.p50_ms, b.p99_ms, b.count
    );
    let _ = writeln!(
        out,
        "writer: strict, {:.0} single-key commits/s offered open loop for {:.1} s after {:.1} s of warm-up: {} commits measured in {} segments",
        plan.rate,
        plan.duration.as_secs_f64(),
        plan.warmup.as_secs_f64(),
        results.lag.count(),
        results.segments
    );
    let _ = writeln!(
        out,
        "follower: poll_min = poll_max = {} ms",
        plan.poll.as_secs_f64() * 1000.0
    );
    let _ = writeln!(
        out,
        "\nreplica lag, from the writer's acknowledgement (segment in the bucket) to the follower's lsn_applied reaching the commit"
    );
    let _ = writeln!(
        out,
        "    p50 / p90 / p99 / max    {}   (mean {:.1} ms; {} of {} applied before the ack was seen)",
        quantiles(&results.lag),
        results.lag.mean_ms(),
        results.applied_at_ack,
        results.lag.count()
    );
    let _ = writeln!(
        out,
        "commit latency, from each commit's scheduled time to its acknowledgement"
    );
    let _ = writeln!(
        out,
        "    p50 / p90 / p99 / max    {}",
        quantiles(&results.commit)
    );
    let requests: Vec<String> = results
        .follower_requests
        .iter()
        .map(|(op, n)| format!("{} {:.1}/s", op_name(*op), per_s(*n, results.seconds)))
        .collect();
    let _ = writeln!(
        out,
        "follower requests during the measured load: {} ({:.1}/s found a segment)",
        requests.join(", "),
        per_s(results.follower_gets_found, results.seconds)
    );
    let _ = writeln!(
        out,
        "\ngoal: lag p50 <= poll interval + one GET ({:.0} + {:.1} = {:.1} ms): p50 {:.1} ms: {}",
        plan.poll.as_secs_f64() * 1000.0,
        b.p50_ms,
        goal_ms(results),
        results.lag.quantile_ms(0.5),
        if goal_met(results) { "yes" } else { "NO" }
    );
    let _ = writeln!(
        out,
        "checked: the follower ended at the writer's lsn {} with its state checksum, sampled commits read back",
        results.lsn.get()
    );
    let _ = writeln!(out, "\ntotal run time {:.0} s", results.run_seconds);
    out
}

fn latencies_json(l: &Latencies) -> Value {
    json!({
        "count": l.count(),
        "p50": l.quantile_ms(0.5),
        "p90": l.quantile_ms(0.9),
        "p99": l.quantile_ms(0.99),
        "max": l.max_ms(),
        "mean": l.mean_ms(),
    })
}

pub fn json(results: &Results) -> Value {
    let plan = &results.plan;
    let m = &plan.model;
    let requests: serde_json::Map<String, Value> = results
        .follower_requests
        .iter()
        .map(|(op, n)| (op_name(*op), json!(n)))
        .collect();
    let b = &results.bare_get;
    json!({
        "benchmark": "replica",
        "settings": {
            "request_mean_ms": m.mean.as_secs_f64() * 1000.0,
            "request_jitter_ms": m.jitter.as_secs_f64() * 1000.0,
            "latency_seed": m.seed,
            "poll_ms": plan.poll.as_secs_f64() * 1000.0,
            "commits_per_s": plan.rate,
            "warmup_seconds": plan.warmup.as_secs_f64(),
            "measured_seconds": plan.duration.as_secs_f64(),
            "durability": "strict",
        },
        "bare_get_ms": {
            "count": b.count,
            "p50": b.p50_ms,
            "p99": b.p99_ms,
            "mean": b.mean_ms,
            "max": b.max_ms,
        },
        "lag_ms": latencies_json(&results.lag),
        "commit_latency_ms": latencies_json(&results.commit),
        "applied_before_ack": results.applied_at_ack,
        "segments": results.segments,
        "follower_requests": requests,
        "follower_gets_found": results.follower_gets_found,
        "measured_wall_seconds": results.seconds,
        "lsn": results.lsn.get(),
        "goal": {
            "lag_p50_at_most_ms": goal_ms(results),
            "met": goal_met(results),
        },
        "seconds": results.run_seconds,
    })
}
