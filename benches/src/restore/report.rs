//! The restore benchmark's results: the table on stdout and the same figures as JSON
//! (`target/hadal-bench/restore.json`).
//!
//! Milestones (seconds from the start of a transfer): the first snapshot-part GET sent, the last
//! part received, the first segment GET sent, the last segment received, the end. Between them a
//! restore reads metadata, installs the snapshot, and applies and checkpoints.
//!
//! Throughput is the bytes of the objects the restore read whole (its snapshot parts and
//! segments, as stored) over wall time, for both sides, so "restore/raw" is the raw download's
//! time over the restore's. Figures are medians over the rounds; the JSON keeps every round.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::{Results, StoreRun, Timing, mib};

/// The goal: a restore reaches at least this share of a raw download's throughput.
pub const GOAL_RESTORE_OVER_RAW: f64 = 0.80;

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if !v.len().is_multiple_of(2) {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Median seconds of `timings`.
fn seconds(timings: &[Timing]) -> f64 {
    median(timings.iter().map(|t| t.seconds))
}

/// Median milestones of `timings`: first part sent, last part in, first segment sent, last
/// segment in, done.
fn milestones(timings: &[Timing]) -> [f64; 5] {
    [
        median(timings.iter().map(|t| t.parts.0)),
        median(timings.iter().map(|t| t.parts.1)),
        median(timings.iter().map(|t| t.segments.0)),
        median(timings.iter().map(|t| t.segments.1)),
        seconds(timings),
    ]
}

/// The restore's share of the raw download's throughput (medians).
pub fn ratio(run: &StoreRun) -> f64 {
    let restore = seconds(&run.restore);
    let raw = seconds(&run.raw);
    if restore > 0.0 { raw / restore } else { 0.0 }
}

/// The restore's share of the larger of the raw download's time and the disk floor's (the
/// median time to write and sync the restored image's bytes): what is left of the gap once the
/// disk, which the raw download never touches, is counted.
pub fn ratio_with_disk(run: &StoreRun) -> f64 {
    let restore = seconds(&run.restore);
    let floor = seconds(&run.raw).max(median(run.disk.iter().copied()));
    if restore > 0.0 { floor / restore } else { 0.0 }
}

pub fn goal_met(run: &StoreRun) -> bool {
    ratio(run) >= GOAL_RESTORE_OVER_RAW
}

fn requests(t: &Timing) -> String {
    t.requests
        .iter()
        .map(|(op, n)| format!("{n} {}", op_name(*op)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn op_name(op: hadal_transports::Op) -> &'static str {
    use hadal_transports::Op;
    match op {
        Op::Get => "GET",
        Op::GetRange => "ranged GET",
        Op::Head => "HEAD",
        Op::List => "LIST",
        Op::Put => "PUT",
        Op::PutIfAbsent => "create",
        Op::PutIfMatch => "CAS",
        Op::Delete => "DELETE",
        _ => "other",
    }
}

pub fn table(results: &Results) -> String {
    let (plan, build, objects) = (&results.plan, &results.build, &results.objects);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "database: {} keys ({} B keys, {} B random values: {:.1} MiB) in {} commits of up to {} keys, built through the strict shipper in {:.1} s",
        build.keys,
        crate::workload::KEY_BYTES,
        plan.value_bytes,
        mib(build.keys * plan.pair_bytes()),
        build.commits,
        plan.commit_keys,
        build.seconds
    );
    let _ = writeln!(
        out,
        "  snapshot at lsn {} ({} pages) after {}% of the keys; head lsn {}, checksum {}",
        build.snapshot_lsn.get(),
        build.snapshot_pages,
        100 - plan.tail_percent,
        build.lsn.get(),
        build.checksum
    );
    let _ = writeln!(
        out,
        "  a restore to the head reads {} objects, {:.1} MiB: {} snapshot parts ({:.1} MiB), then {} segments ({:.1} MiB)",
        objects.count(),
        mib(objects.bytes()),
        objects.parts.len(),
        mib(objects.part_bytes()),
        objects.segments.len(),
        mib(objects.segment_bytes())
    );
    let _ = writeln!(
        out,
        "  the raw download GETs the same objects, {} parts then {} segments at a time (restore's limits), and keeps nothing",
        hadal_replica::restore::PARALLEL_PART_DOWNLOADS,
        hadal_replica::restore::FETCH_AHEAD_SEGMENTS
    );
    let _ = writeln!(
        out,
        "\nmedian of {} round(s)             restore             raw download      restore/raw   goal >= {:.2}   disk floor   restore/max(raw, disk)",
        plan.rounds, GOAL_RESTORE_OVER_RAW
    );
    let _ = writeln!(
        out,
        "store        {:>9} {:>9} {:>9} {:>9} {:>26} {:>12}",
        "s", "MiB/s", "s", "MiB/s", "", "s"
    );
    let bytes = objects.bytes();
    for run in &results.stores {
        let (restore, raw) = (seconds(&run.restore), seconds(&run.raw));
        let _ = writeln!(
            out,
            "{:<12} {:>9.2} {:>9.1} {:>9.2} {:>9.1} {:>12.2}   {:<14} {:>10.2} {:>24.2}",
            run.name.as_str(),
            restore,
            mib(bytes) / restore.max(1e-9),
            raw,
            mib(bytes) / raw.max(1e-9),
            ratio(run),
            if goal_met(run) { "yes" } else { "NO" },
            median(run.disk.iter().copied()),
            ratio_with_disk(run)
        );
    }
    if let Some(run) = results.stores.first() {
        let _ = writeln!(
            out,
            "disk floor: writing the restored main file's {:.1} MiB into a new file on the scratch disk and syncing it (a restore writes at least that; the raw download writes nothing)",
            mib(run.image_bytes)
        );
    }
    let _ = writeln!(
        out,
        "\nmilestones, s from the start (median)  1st part sent  last part in  1st segment sent  last segment in    done"
    );
    for run in &results.stores {
        for (side, timings) in [("restore", &run.restore), ("raw", &run.raw)] {
            let m = milestones(timings);
            let _ = writeln!(
                out,
                "{:<12} {:<25} {:>13.2} {:>13.2} {:>17.2} {:>16.2} {:>7.2}",
                run.name.as_str(),
                side,
                m[0],
                m[1],
                m[2],
                m[3],
                m[4]
            );
        }
    }
    let _ = writeln!(out, "\nrequests per transfer (first round)");
    for run in &results.stores {
        let _ = writeln!(
            out,
            "{:<12} restore: {}; raw: {}",
            run.name.as_str(),
            run.restore.first().map(requests).unwrap_or_default(),
            run.raw.first().map(requests).unwrap_or_default()
        );
    }
    let _ = writeln!(out, "\nstores:");
    for run in &results.stores {
        let _ = writeln!(out, "  {:<10} {}", run.name.as_str(), run.description);
    }
    let restores: usize = results.stores.iter().map(|s| s.restore.len()).sum();
    let _ = writeln!(
        out,
        "every restore ({restores}) ended at lsn {} with the writer's checksum, from the snapshot at lsn {}, and read back {} sampled keys",
        build.lsn.get(),
        build.snapshot_lsn.get(),
        super::CHECK_SAMPLES + 1
    );
    let _ = writeln!(out, "\ntotal run time {:.0} s", results.seconds);
    out
}

fn timing_json(t: &Timing, bytes: u64) -> Value {
    let requests: serde_json::Map<String, Value> = t
        .requests
        .iter()
        .map(|(op, n)| (op_name(*op).to_string(), json!(n)))
        .collect();
    json!({
        "seconds": t.seconds,
        "first_part_sent_s": t.parts.0,
        "last_part_received_s": t.parts.1,
        "first_segment_sent_s": t.segments.0,
        "last_segment_received_s": t.segments.1,
        "mib_per_s": mib(bytes) / t.seconds.max(1e-9),
        "requests": requests,
        "bytes_received": t.bytes,
    })
}

pub fn json(results: &Results) -> Value {
    let (plan, build, objects) = (&results.plan, &results.build, &results.objects);
    let bytes = objects.bytes();
    let stores: Vec<Value> = results
        .stores
        .iter()
        .map(|run| {
            let (restore, raw) = (seconds(&run.restore), seconds(&run.raw));
            json!({
                "name": run.name.as_str(),
                "description": run.description,
                "restore": run.restore.iter().map(|t| timing_json(t, bytes)).collect::<Vec<_>>(),
                "raw": run.raw.iter().map(|t| timing_json(t, bytes)).collect::<Vec<_>>(),
                "median": {
                    "restore_seconds": restore,
                    "restore_milestones_s": milestones(&run.restore),
                    "restore_mib_per_s": mib(bytes) / restore.max(1e-9),
                    "raw_seconds": raw,
                    "raw_milestones_s": milestones(&run.raw),
                    "raw_mib_per_s": mib(bytes) / raw.max(1e-9),
                },
                "restore_over_raw": ratio(run),
                "disk_write_seconds": run.disk,
                "image_bytes": run.image_bytes,
                "restore_over_max_raw_disk": ratio_with_disk(run),
                "goal_met": goal_met(run),
            })
        })
        .collect();
    let m = &plan.model;
    json!({
        "benchmark": "restore",
        "settings": {
            "request_mean_ms": m.mean.as_secs_f64() * 1000.0,
            "request_jitter_ms": m.jitter.as_secs_f64() * 1000.0,
            "latency_seed": m.seed,
            "bandwidth_mib_per_s_per_request": mib(plan.bandwidth_bytes_per_s as u64),
            "data_bytes": plan.data_bytes,
            "tail_percent": plan.tail_percent,
            "key_bytes": crate::workload::KEY_BYTES,
            "value_bytes": plan.value_bytes,
            "commit_keys": plan.commit_keys,
            "rounds": plan.rounds,
            "parallel_part_downloads": hadal_replica::restore::PARALLEL_PART_DOWNLOADS,
            "fetch_ahead_segments": hadal_replica::restore::FETCH_AHEAD_SEGMENTS,
        },
        "build": {
            "keys": build.keys,
            "commits": build.commits,
            "seconds": build.seconds,
            "snapshot_lsn": build.snapshot_lsn.get(),
            "snapshot_pages": build.snapshot_pages,
            "lsn": build.lsn.get(),
            "checksum": build.checksum.to_string(),
            "segments_uploaded": build.segments_uploaded,
            "segment_bytes_uploaded": build.segment_bytes_uploaded,
            "snapshot_bytes_uploaded": build.snapshot_bytes_uploaded,
        },
        "objects": {
            "parts": objects.parts.len(),
            "part_bytes": objects.part_bytes(),
            "segments": objects.segments.len(),
            "segment_bytes": objects.segment_bytes(),
        },
        "stores": stores,
        "goal": format!("restore >= {GOAL_RESTORE_OVER_RAW} x raw download throughput, per store"),
        "seconds": results.seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the median takes the middle value, or the mean of the middle two.
    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0].into_iter()), 2.5);
        assert_eq!(median(std::iter::empty()), 0.0);
    }
}
