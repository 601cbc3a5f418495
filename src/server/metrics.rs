//! `/metrics`: Prometheus text exposition format (version 0.0.4), written by hand. The server's
//! own series are few and fixed (requests by route, method and status; request latency by
//! route; the node's LSNs, lag and shipper counters), so a metrics crate would add more than it
//! saves.
//!
//! Invariant: label values are routes (the matched pattern, never a request's own path, so a
//! client cannot grow the series set), HTTP methods and RESP command names from the server's
//! own table, escaped per the text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::server::backend::{Backend, Role};

/// Upper bounds of the latency histogram's buckets, in seconds.
const LATENCY_BUCKETS_SECONDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Latency {
    /// Observations at or below each bucket's bound (not cumulative; summed when rendered).
    buckets: [u64; LATENCY_BUCKETS_SECONDS.len()],
    count: u64,
    sum_seconds: f64,
}

/// Request counters and latency histograms of the HTTP front-end.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    /// (route, method, status) → requests.
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// (route, method) → latency.
    latency: Mutex<BTreeMap<(String, String), Latency>>,
}

impl HttpMetrics {
    /// Records one answered request.
    pub fn observe(&self, route: &str, method: &str, status: u16, took: Duration) {
        *self
            .requests
            .lock()
            .entry((route.to_owned(), method.to_owned(), status))
            .or_default() += 1;
        let seconds = took.as_secs_f64();
        let mut latency = self.latency.lock();
        let l = latency
            .entry((route.to_owned(), method.to_owned()))
            .or_default();
        if let Some(i) = LATENCY_BUCKETS_SECONDS.iter().position(|b| seconds <= *b) {
            l.buckets[i] += 1;
        }
        l.count += 1;
        l.sum_seconds += seconds;
    }

    /// Requests answered with `status` so far, over every route (for tests and logs).
    pub fn count_status(&self, status: u16) -> u64 {
        self.requests
            .lock()
            .iter()
            .filter(|((_, _, s), _)| *s == status)
            .map(|(_, n)| n)
            .sum()
    }

    fn render_into(&self, out: &mut String) {
        out.push_str("# HELP hadal_http_requests_total HTTP requests answered, by route, method and status.\n");
        out.push_str("# TYPE hadal_http_requests_total counter\n");
        for ((route, method, status), n) in self.requests.lock().iter() {
            let _ = writeln!(
                out,
                "hadal_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
                escape(route),
                escape(method)
            );
        }
        out.push_str("# HELP hadal_http_request_duration_seconds Time to answer an HTTP request, by route and method.\n");
        out.push_str("# TYPE hadal_http_request_duration_seconds histogram\n");
        for ((route, method), l) in self.latency.lock().iter() {
            let labels = format!("route=\"{}\",method=\"{}\"", escape(route), escape(method));
            let mut cumulative = 0;
            for (bound, n) in LATENCY_BUCKETS_SECONDS.iter().zip(l.buckets) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "hadal_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "hadal_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                l.count
            );
            let _ = writeln!(
                out,
                "hadal_http_request_duration_seconds_sum{{{labels}}} {}",
                l.sum_seconds
            );
            let _ = writeln!(
                out,
                "hadal_http_request_duration_seconds_count{{{labels}}} {}",
                l.count
            );
        }
    }
}

/// Command counters and connections of the RESP front-end.
#[derive(Debug, Default)]
pub struct RespMetrics {
    /// (command, failed) → commands answered. Commands are names from the server's own table
    /// (or `unknown`), so clients cannot grow the series set.
    commands: Mutex<BTreeMap<(&'static str, bool), u64>>,
    connections: AtomicU64,
    connections_total: AtomicU64,
}

impl RespMetrics {
    /// Records one answered command.
    pub fn command(&self, name: &'static str, failed: bool) {
        *self.commands.lock().entry((name, failed)).or_default() += 1;
    }

    /// Commands named `name` answered so far with (`failed`) or without an error.
    pub fn count(&self, name: &'static str, failed: bool) -> u64 {
        self.commands
            .lock()
            .get(&(name, failed))
            .copied()
            .unwrap_or(0)
    }

    /// A connection was accepted.
    pub fn connected(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection closed.
    pub fn disconnected(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Connections open now.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    fn render_into(&self, out: &mut String) {
        gauge(
            out,
            "hadal_resp_connections",
            "Redis-protocol connections open now.",
            self.connections(),
        );
        counter(
            out,
            "hadal_resp_connections_total",
            "Redis-protocol connections accepted.",
            self.connections_total.load(Ordering::Relaxed),
        );
        out.push_str("# HELP hadal_resp_commands_total Redis-protocol commands answered, by command and outcome.\n");
        out.push_str("# TYPE hadal_resp_commands_total counter\n");
        for ((name, failed), n) in self.commands.lock().iter() {
            let outcome = if *failed { "error" } else { "ok" };
            let _ = writeln!(
                out,
                "hadal_resp_commands_total{{command=\"{}\",outcome=\"{outcome}\"}} {n}",
                escape(name)
            );
        }
    }
}

/// Escapes a label value: backslash, double quote and newline.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    let _ = writeln!(out, "{name} {value}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    let _ = writeln!(out, "{name} {value}");
}

/// The whole exposition: node state (when the backend is open), then HTTP series.
pub async fn render(
    role: Role,
    backend: Option<&Backend>,
    http: &HttpMetrics,
    resp: &RespMetrics,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP hadal_info The server's role and version.\n# TYPE hadal_info gauge\nhadal_info{{role=\"{role}\",version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    gauge(
        &mut out,
        "hadal_ready",
        "1 when the server serves (restored or took over, not stopped), else 0.",
        u8::from(backend.is_some_and(|b| b.ready().is_ok())),
    );
    if let Some(backend) = backend {
        let info = backend.info().await;
        gauge(
            &mut out,
            "hadal_lsn_committed",
            "Writer: newest local commit. Replica: newest commit seen in the bucket.",
            info.lsn_committed,
        );
        gauge(
            &mut out,
            "hadal_lsn_durable",
            "Newest commit durable in the bucket.",
            info.lsn_durable,
        );
        gauge(
            &mut out,
            "hadal_lsn_applied",
            "Newest commit reads see.",
            info.lsn_applied,
        );
        if let Some(epoch) = info.epoch {
            gauge(&mut out, "hadal_epoch", "Writer epoch.", epoch);
        }
        if let Some(lag) = info.lag {
            gauge(
                &mut out,
                "hadal_replica_lag_lsns",
                "Commits in the bucket the replica has not applied yet.",
                lag.lsns,
            );
            gauge(
                &mut out,
                "hadal_replica_lag_seconds",
                "How stale the replica's reads may be.",
                lag.seconds,
            );
        }
        let counters = backend.counters();
        if let Some(s) = counters.shipper {
            counter(
                &mut out,
                "hadal_shipper_segments_uploaded_total",
                "Segments uploaded.",
                s.segments_uploaded,
            );
            counter(
                &mut out,
                "hadal_shipper_bytes_uploaded_total",
                "Segment bytes uploaded.",
                s.bytes_uploaded,
            );
            counter(
                &mut out,
                "hadal_shipper_commits_shipped_total",
                "Commits shipped.",
                s.commits_shipped,
            );
            counter(
                &mut out,
                "hadal_shipper_segment_puts_total",
                "Segment PUT requests, retries included.",
                s.segment_puts,
            );
            counter(
                &mut out,
                "hadal_shipper_snapshots_published_total",
                "Snapshots published.",
                s.snapshots_published,
            );
            counter(
                &mut out,
                "hadal_shipper_snapshot_bytes_uploaded_total",
                "Snapshot bytes uploaded.",
                s.snapshot_bytes_uploaded,
            );
            counter(
                &mut out,
                "hadal_gc_runs_total",
                "Background GC passes completed.",
                s.gc_runs,
            );
            counter(
                &mut out,
                "hadal_gc_deleted_total",
                "Objects background GC deleted.",
                s.gc_deleted,
            );
            counter(
                &mut out,
                "hadal_gc_errors_total",
                "Background GC passes that failed.",
                s.gc_errors,
            );
            gauge(
                &mut out,
                "hadal_shipper_upload_p50_seconds",
                "Median segment upload latency.",
                s.upload_p50.as_secs_f64(),
            );
            gauge(
                &mut out,
                "hadal_shipper_upload_p99_seconds",
                "99th percentile segment upload latency.",
                s.upload_p99.as_secs_f64(),
            );
        }
        if let Some(n) = counters.rebootstraps {
            counter(
                &mut out,
                "hadal_replica_rebootstraps_total",
                "Times the replica re-bootstrapped from a snapshot after falling behind GC.",
                n,
            );
        }
    }
    http.render_into(&mut out);
    resp.render_into(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        // Proves the rendered histogram buckets are cumulative with a +Inf bucket equal to the
        // count, and that a label value cannot break out of its quotes.
        let m = HttpMetrics::default();
        m.observe("/v1/kv/{key}", "GET", 200, Duration::from_millis(2));
        m.observe("/v1/kv/{key}", "GET", 404, Duration::from_secs(30));
        m.observe("a\"b", "GET", 200, Duration::ZERO);
        let mut out = String::new();
        m.render_into(&mut out);
        assert!(out.contains(
            "hadal_http_request_duration_seconds_bucket{route=\"/v1/kv/{key}\",method=\"GET\",le=\"0.0025\"} 1"
        ));
        assert!(out.contains(
            "hadal_http_request_duration_seconds_bucket{route=\"/v1/kv/{key}\",method=\"GET\",le=\"+Inf\"} 2"
        ));
        assert!(out.contains("route=\"a\\\"b\""));
        assert_eq!(m.count_status(200), 2);
    }

    #[test]
    fn resp_commands_are_counted_by_name_and_outcome() {
        // Proves the RESP series: per-command counters split by outcome, and the connection
        // gauge going up and down.
        let m = RespMetrics::default();
        m.command("get", false);
        m.command("get", false);
        m.command("set", true);
        m.connected();
        m.connected();
        m.disconnected();
        let mut out = String::new();
        m.render_into(&mut out);
        assert!(out.contains("hadal_resp_commands_total{command=\"get\",outcome=\"ok\"} 2"));
        assert!(out.contains("hadal_resp_commands_total{command=\"set\",outcome=\"error\"} 1"));
        assert!(out.contains("hadal_resp_connections 1"));
        assert!(out.contains("hadal_resp_connections_total 2"));
        assert_eq!(m.count("set", true), 1);
    }
}
