//! Measures one workload: wall time, and the whole process's CPU time and write syscalls (all
//! threads, so an engine's background checkpoints count against the workload they overlap).
//!
//! CPU and write counters come from `/proc/self/stat` and `/proc/self/io`; where those files
//! are missing (not Linux) they read as zero and only the wall time is meaningful.

use std::time::Instant;

/// Kernel clock ticks per second in `/proc/self/stat` (`USER_HZ`, 100 on every Linux target).
const USER_HZ: f64 = 100.0;

/// What one workload cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct Measurement {
    pub seconds: f64,
    /// User plus system CPU time of every thread of the process.
    pub cpu_seconds: f64,
    /// Bytes passed to write syscalls (`wchar`), whether or not they reached the disk yet.
    pub write_bytes: u64,
    /// Write syscalls (`syscw`).
    pub write_calls: u64,
}

/// A running measurement; [`Meter::finish`] ends it.
#[derive(Debug)]
pub struct Meter {
    started: Instant,
    counters: Counters,
}

impl Meter {
    pub fn start() -> Self {
        Self {
            counters: Counters::read(),
            started: Instant::now(),
        }
    }

    pub fn finish(self) -> Measurement {
        let seconds = self.started.elapsed().as_secs_f64();
        let now = Counters::read();
        Measurement {
            seconds,
            cpu_seconds: now.cpu_ticks.saturating_sub(self.counters.cpu_ticks) as f64 / USER_HZ,
            write_bytes: now.write_bytes.saturating_sub(self.counters.write_bytes),
            write_calls: now.write_calls.saturating_sub(self.counters.write_calls),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    cpu_ticks: u64,
    write_bytes: u64,
    write_calls: u64,
}

impl Counters {
    fn read() -> Self {
        let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
        let io_field = |name: &str| {
            io.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or(0)
        };
        // Fields 14 and 15 (utime, stime) of /proc/self/stat; the command name in field 2 may
        // contain spaces, so count from the closing parenthesis.
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let stat_field =
            |n: usize| -> u64 { fields.get(n - 3).and_then(|f| f.parse().ok()).unwrap_or(0) };
        Self {
            cpu_ticks: stat_field(14) + stat_field(15),
            write_bytes: io_field("wchar:"),
            write_calls: io_field("syscw:"),
        }
    }
}
