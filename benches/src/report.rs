//! The results of one run: the table on stdout and the same figures as JSON.
//!
//! A ratio is Hadal's time divided by the other engine's, so below 1 means Hadal is faster; a
//! target is met when its ratio is at most the target's bound (issue 2, item 5).

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::meter::Measurement;

/// One of the four workloads.
#[derive(Debug)]
pub struct Workload {
    /// Stable key in the JSON (`a_load`, …).
    pub id: &'static str,
    /// Row label in the table.
    pub label: String,
    /// Operations timed (keys written, gets, commits or scans).
    pub op_count: usize,
    pub target: Option<Target>,
}

/// A bound on Hadal's time relative to another engine's.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub against: &'static str,
    pub ratio_max: f64,
}

/// What one engine measured.
#[derive(Debug)]
pub struct EngineRun {
    pub name: &'static str,
    /// One per workload, in the order of [`Report::workloads`].
    pub measurements: Vec<Measurement>,
    /// Size of the engine's files after the last write workload.
    pub disk_bytes: u64,
}

#[derive(Debug)]
pub struct Report {
    pub key_count: usize,
    pub versions: Vec<(&'static str, String)>,
    pub workloads: Vec<Workload>,
    pub runs: Vec<EngineRun>,
}

impl Report {
    fn seconds(&self, engine: &str, workload: usize) -> Option<f64> {
        self.runs
            .iter()
            .find(|r| r.name == engine)
            .and_then(|r| r.measurements.get(workload))
            .map(|m| m.seconds)
    }

    /// Hadal's time over `other`'s for `workload`, when both ran.
    pub fn ratio(&self, other: &str, workload: usize) -> Option<f64> {
        Some(self.seconds("hadal", workload)? / self.seconds(other, workload)?)
    }

    /// Whether the workload's target is met; `None` without a target or a needed engine.
    pub fn target_met(&self, workload: usize) -> Option<bool> {
        let target = self.workloads[workload].target?;
        Some(self.ratio(target.against, workload)? <= target.ratio_max)
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<44} {:>9} {:>9} {:>9} {:>11} {:>11}  {:<14} met",
            "workload", "hadal", "redb", "lmdb", "hadal/redb", "hadal/lmdb", "target"
        );
        for (w, workload) in self.workloads.iter().enumerate() {
            let time = |e: &str| {
                self.seconds(e, w)
                    .map_or_else(|| "-".to_string(), |s| format!("{s:.2} s"))
            };
            let ratio = |e: &str| {
                self.ratio(e, w)
                    .map_or_else(|| "-".to_string(), |r| format!("{r:.2}x"))
            };
            let target = workload.target.map_or_else(
                || "-".to_string(),
                |t| format!("<= {:.1}x {}", t.ratio_max, t.against),
            );
            let met = match self.target_met(w) {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            };
            let _ = writeln!(
                out,
                "{:<44} {:>9} {:>9} {:>9} {:>11} {:>11}  {:<14} {}",
                workload.label,
                time("hadal"),
                time("redb"),
                time("lmdb"),
                ratio("redb"),
                ratio("lmdb"),
                target,
                met
            );
        }
        out.push_str(
            "\nper engine: cpu seconds (all threads) / MiB passed to write calls, per workload\n",
        );
        for run in &self.runs {
            let _ = write!(
                out,
                "{:<6} files {:>5.0} MiB ",
                run.name,
                mib(run.disk_bytes)
            );
            for (m, workload) in run.measurements.iter().zip(&self.workloads) {
                let id = workload.id.split('_').next().unwrap_or(workload.id);
                let _ = write!(
                    out,
                    " | ({id}) {:.1} s / {:.0} MiB",
                    m.cpu_seconds,
                    mib(m.write_bytes)
                );
            }
            out.push('\n');
        }
        out
    }

    pub fn json(&self) -> Value {
        let workloads: Vec<Value> = self
            .workloads
            .iter()
            .enumerate()
            .map(|(w, workload)| {
                let per_engine = |field: fn(&Measurement) -> Value| {
                    self.runs
                        .iter()
                        .filter_map(|r| Some((r.name.to_string(), field(r.measurements.get(w)?))))
                        .collect::<serde_json::Map<String, Value>>()
                };
                json!({
                    "id": workload.id,
                    "label": workload.label,
                    "op_count": workload.op_count,
                    "seconds": per_engine(|m| json!(m.seconds)),
                    "cpu_seconds": per_engine(|m| json!(m.cpu_seconds)),
                    "write_bytes": per_engine(|m| json!(m.write_bytes)),
                    "write_calls": per_engine(|m| json!(m.write_calls)),
                    "ratio": {
                        "hadal/redb": self.ratio("redb", w),
                        "hadal/lmdb": self.ratio("lmdb", w),
                    },
                    "target": workload.target.map(|t| json!({
                        "against": t.against,
                        "ratio_max": t.ratio_max,
                        "met": self.target_met(w),
                    })),
                })
            })
            .collect();
        let versions: serde_json::Map<String, Value> = self
            .versions
            .iter()
            .map(|(name, version)| (name.to_string(), json!(version)))
            .collect();
        let disk_bytes: serde_json::Map<String, Value> = self
            .runs
            .iter()
            .map(|r| (r.name.to_string(), json!(r.disk_bytes)))
            .collect();
        json!({
            "benchmark": "engine",
            "key_count": self.key_count,
            "versions": versions,
            "workloads": workloads,
            "disk_bytes": disk_bytes,
        })
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
