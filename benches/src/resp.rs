//! The RESP benchmark (issue 6, Done-when 5): `redis-benchmark` against Hadal's Redis-protocol
//! port (`hadal serve --resp`, in `async` and in `strict` mode) and against Debian's
//! `redis-server` (append-only file, `appendfsync everysec`), in one run, on loopback.
//!
//! Per round, in the order of `--only` (default redis, async, strict), each system is started
//! on free 127.0.0.1 ports in a fresh folder (Hadal with a fresh `file://` bucket), waited for (a
//! RESP `PING` answered `+PONG`: Hadal answers `-LOADING` until its backend is open), then
//! `redis-benchmark -t set` and `redis-benchmark -t get` run against it one after the other, so
//! the GETs read the keys the SETs wrote. Its contents are then checked (`DBSIZE` against the
//! number of distinct keys the SETs must have made, and sampled keys' value lengths) and it is
//! stopped before the next system starts: only one server runs at a time. Around each
//! `redis-benchmark` the server's CPU time and bytes passed to write calls are read from
//! `/proc/PID/stat` and `/proc/PID/io`.
//!
//! Every process started here is held by a [`Spawned`] guard that stops it by its PID (SIGTERM,
//! then SIGKILL after a grace period) when dropped, so an error stops them too. The child is
//! never reaped before that, so its PID cannot have been reused. On Ctrl-C the terminal's SIGINT
//! reaches the servers as well: they stay in the benchmark's process group.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::ValueEnum;
use serde_json::{Value, json};

use crate::progress;

/// The goal of issue 6, Done-when 5: Hadal in `async` mode reaches this share of redis-server's
/// ops/s, on SET and on GET.
pub const GOAL_ASYNC_OVER_REDIS: f64 = 0.5;
/// How long a server may take to answer `PING` with `+PONG` after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one `redis-benchmark` invocation may take.
const BENCH_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How long a stopped process has between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Keys read back from every system after its run.
const SAMPLED_KEYS: usize = 20;
/// `DBSIZE` may fall this far below the expected number of distinct keys (the draws are random).
const DBSIZE_TOLERANCE: f64 = 0.05;
/// Kernel clock ticks per second in `/proc/PID/stat` (`USER_HZ`, 100 on every Linux target).
const USER_HZ: f64 = 100.0;

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum System {
    /// Debian's redis-server, `appendonly yes`, `appendfsync everysec`, no RDB snapshots.
    Redis,
    /// `hadal serve --durability async`: a write is answered once committed locally.
    Async,
    /// `hadal serve --durability strict`: a write is answered once its segment is in the bucket.
    Strict,
}

impl System {
    /// The name in the JSON and the scratch folders.
    pub fn id(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Async => "hadal-async",
            Self::Strict => "hadal-strict",
        }
    }

    /// The name in the table.
    pub fn label(self) -> &'static str {
        match self {
            Self::Redis => "redis everysec",
            Self::Async => "hadal async",
            Self::Strict => "hadal strict",
        }
    }

    fn durability(self) -> Option<&'static str> {
        match self {
            Self::Redis => None,
            Self::Async => Some("async"),
            Self::Strict => Some("strict"),
        }
    }
}

/// The two `redis-benchmark` tests, run in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Test {
    Set,
    Get,
}

impl Test {
    /// The name `-t` takes and the JSON uses.
    pub fn id(self) -> &'static str {
        match self {
            Self::Set => "set",
            Self::Get => "get",
        }
    }

    /// The name in redis-benchmark's CSV.
    fn csv_name(self) -> &'static str {
        match self {
            Self::Set => "SET",
            Self::Get => "GET",
        }
    }
}

/// Everything a run does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `-n`: requests per test.
    pub requests: u64,
    /// `-c`: parallel connections.
    pub clients: u32,
    /// `-d`: bytes of every value.
    pub value_bytes: usize,
    /// `-P`: commands per pipeline.
    pub pipeline: u32,
    /// `-r`: distinct random keys.
    pub keyspace: u64,
    pub rounds: usize,
    pub systems: Vec<System>,
}

impl Plan {
    /// The keys `requests` SETs over `keyspace` uniformly random keys are expected to leave.
    pub fn expected_keys(&self) -> f64 {
        let k = self.keyspace as f64;
        k * (1.0 - (1.0 - 1.0 / k).powf(self.requests as f64))
    }
}

/// The programs run and their versions.
#[derive(Debug, Clone)]
pub struct Tools {
    pub hadal: PathBuf,
    pub redis_server: PathBuf,
    pub redis_benchmark: PathBuf,
    /// `hadal --version`.
    pub hadal_version: String,
    /// The workspace's commit (`git rev-parse --short=12 HEAD`), `-dirty` if the tree differs.
    pub hadal_commit: String,
    /// `redis-server --version`.
    pub redis_server_version: String,
    /// `redis-benchmark --version`.
    pub redis_benchmark_version: String,
}

impl Tools {
    /// Finds redis-server and redis-benchmark on the `PATH` (failing first, before any build),
    /// then the hadal binary: `hadal` if given, else the output of `cargo build --release --bin
    /// hadal` run in the workspace `root`.
    pub fn find(hadal: Option<&Path>, root: &Path) -> Result<Tools> {
        let redis_server = on_path("redis-server").ok_or_else(|| missing("redis-server"))?;
        let redis_benchmark =
            on_path("redis-benchmark").ok_or_else(|| missing("redis-benchmark"))?;
        let hadal = match hadal {
            Some(path) => {
                ensure!(path.is_file(), "--hadal {}: no such file", path.display());
                path.to_path_buf()
            }
            None => build_hadal(root)?,
        };
        Ok(Tools {
            hadal_version: version_of(&hadal)?,
            hadal_commit: git_commit(root),
            redis_server_version: version_of(&redis_server)?,
            redis_benchmark_version: version_of(&redis_benchmark)?,
            hadal,
            redis_server,
            redis_benchmark,
        })
    }
}

fn missing(name: &str) -> anyhow::Error {
    anyhow!(
        "{name} not found on PATH: this benchmark runs Debian's redis-benchmark and redis-server; \
         install both with `bash scripts/redis-tools.sh --server` (apt packages redis-tools and \
         redis-server)"
    )
}

/// The first `name` in the `PATH`'s folders (then /usr/sbin and /usr/local/bin).
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/bin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Builds the `hadal` binary with the cargo running this benchmark and returns its path, as
/// cargo reports it (so `CARGO_TARGET_DIR` and `build.target-dir` are honoured).
fn build_hadal(root: &Path) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    progress("building hadal: cargo build --release --bin hadal (--hadal PATH skips this)");
    let output = Process::new(&cargo)
        .current_dir(root)
        .args([
            "build",
            "--release",
            "-p",
            "hadal",
            "--bin",
            "hadal",
            "--message-format=json-render-diagnostics",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("run {}", Path::new(&cargo).display()))?;
    ensure!(
        output.status.success(),
        "cargo build --release --bin hadal failed ({}); fix the build or pass --hadal PATH",
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    if let Some(path) = stdout.lines().find_map(hadal_executable) {
        return Ok(path);
    }
    // Not reported (it should be): the default location.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_relative() {
                root.join(dir)
            } else {
                dir
            }
        })
        .unwrap_or_else(|| root.join("target"));
    let path = target.join("release").join("hadal");
    ensure!(
        path.is_file(),
        "cargo built hadal but did not say where, and {} does not exist; pass --hadal PATH",
        path.display()
    );
    Ok(path)
}

/// The executable of a `compiler-artifact` message for the `hadal` binary, if `line` is one.
fn hadal_executable(line: &str) -> Option<PathBuf> {
    let message: Value = serde_json::from_str(line).ok()?;
    if message["reason"] != "compiler-artifact" || message["target"]["name"] != "hadal" {
        return None;
    }
    let kinds = message["target"]["kind"].as_array()?;
    if !kinds.iter().any(|kind| kind == "bin") {
        return None;
    }
    message["executable"].as_str().map(PathBuf::from)
}

/// The first line `program --version` prints.
fn version_of(program: &Path) -> Result<String> {
    let output = Process::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {} --version", program.display()))?;
    ensure!(
        output.status.success(),
        "{} --version failed ({})",
        program.display(),
        output.status
    );
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string())
}

fn git_commit(root: &Path) -> String {
    let git = |args: &[&str]| {
        Process::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(commit) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{commit}-dirty")
            } else {
                commit
            }
        }
        None => "unknown".to_string(),
    }
}

/// One row of `redis-benchmark --csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvRow {
    pub test: String,
    pub rps: f64,
    pub avg_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Parses `redis-benchmark --csv` output. Since Redis 7 it starts with a header,
/// `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",...`; earlier versions print
/// rows of `"TEST","rps"` with no header. Lines that are not CSV rows are skipped.
pub fn parse_csv(text: &str) -> Result<Vec<CsvRow>> {
    let mut header: Option<Vec<String>> = None;
    let mut rows = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| l.starts_with('"')) {
        let fields = csv_fields(line);
        if fields.first().is_some_and(|f| f == "test") {
            header = Some(fields);
            continue;
        }
        let column = |name: &str| -> Option<&str> {
            let index = match &header {
                Some(h) => h.iter().position(|c| c == name)?,
                None if name == "test" => 0,
                None if name == "rps" => 1,
                None => return None,
            };
            fields.get(index).map(String::as_str)
        };
        let number = |name: &str| column(name).and_then(|v| v.parse::<f64>().ok());
        let test = column("test").context("a CSV row with no test name")?;
        let rps = number("rps").with_context(|| format!("CSV row {line:?}: no rps"))?;
        rows.push(CsvRow {
            test: test.to_string(),
            rps,
            avg_ms: number("avg_latency_ms"),
            p50_ms: number("p50_latency_ms"),
            p99_ms: number("p99_latency_ms"),
        });
    }
    ensure!(
        !rows.is_empty(),
        "no result rows in redis-benchmark's CSV: {text:?}"
    );
    Ok(rows)
}

/// The fields of one CSV line: `"a","b",c` → a, b, c (`""` inside quotes is a quote).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    fields.push(field);
    fields
}

/// One `redis-benchmark` invocation's figures.
#[derive(Debug, Clone)]
pub struct TestRun {
    /// Requests per second, as redis-benchmark reports them.
    pub rps: f64,
    pub avg_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Wall time of the whole invocation (connecting included).
    pub seconds: f64,
    /// The server's user + system CPU time (all threads) during the invocation.
    pub server_cpu_seconds: f64,
    /// Bytes the server caused to be written to storage during the invocation (`write_bytes`
    /// of `/proc/PID/io`: pages it dirtied, counted when dirtied, whenever they reach the disk).
    pub server_disk_bytes: u64,
    /// Bytes the server passed to `write`-family calls (`wchar`). Redis answers its sockets with
    /// `write`, which counts; Rust's standard library and tokio use `send`, which does not.
    pub server_wchar_bytes: u64,
}

/// One system's round.
#[derive(Debug, Clone)]
pub struct Round {
    pub set: TestRun,
    pub get: TestRun,
    /// `DBSIZE` after the run.
    pub keys: u64,
    /// From spawning the server to its `+PONG`.
    pub ready_seconds: f64,
}

impl Round {
    pub fn test(&self, test: Test) -> &TestRun {
        match test {
            Test::Set => &self.set,
            Test::Get => &self.get,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SystemRuns {
    pub system: System,
    pub rounds: Vec<Round>,
}

#[derive(Debug)]
pub struct Results {
    pub plan: Plan,
    pub tools: Tools,
    pub runs: Vec<SystemRuns>,
    pub seconds: f64,
}

/// Runs every round of every system; local files go to a folder under `scratch` that is
/// deleted afterwards.
pub fn run(plan: &Plan, tools: &Tools, scratch: &Path) -> Result<Results> {
    let started = Instant::now();
    let scratch = std::fs::canonicalize(scratch)
        .with_context(|| format!("resolve scratch folder {}", scratch.display()))?;
    let dir = tempfile::Builder::new()
        .prefix("resp-")
        .tempdir_in(&scratch)?;
    progress(&format!(
        "redis-benchmark {} against {} for {} round(s); expected distinct keys after the SETs: {:.0}; scratch {}",
        command_line(plan, None, None),
        plan.systems
            .iter()
            .map(|s| s.label())
            .collect::<Vec<_>>()
            .join(", "),
        plan.rounds,
        plan.expected_keys(),
        dir.path().display()
    ));
    let mut runs: Vec<SystemRuns> = plan
        .systems
        .iter()
        .map(|&system| SystemRuns {
            system,
            rounds: Vec::new(),
        })
        .collect();
    for round in 1..=plan.rounds {
        for entry in &mut runs {
            let system = entry.system;
            let folder = dir.path().join(format!("{}-{round}", system.id()));
            let result = run_one(plan, tools, system, &folder)
                .with_context(|| format!("{} (round {round})", system.label()))?;
            progress(&format!(
                "{} round {round}: SET {:.0}/s, GET {:.0}/s, {} keys",
                system.label(),
                result.set.rps,
                result.get.rps,
                result.keys
            ));
            entry.rounds.push(result);
            // Keep the disk from filling over many rounds; the folder goes anyway at the end.
            let _ = std::fs::remove_dir_all(&folder);
        }
    }
    dir.close()?;
    Ok(Results {
        plan: plan.clone(),
        tools: tools.clone(),
        runs,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// One system, one round: start it in `folder`, run SET then GET, check, stop.
fn run_one(plan: &Plan, tools: &Tools, system: System, folder: &Path) -> Result<Round> {
    std::fs::create_dir_all(folder)
        .with_context(|| format!("create folder {}", folder.display()))?;
    let (resp_port, http_port) = free_ports()?;
    let log = folder.join("server.log");
    let command = match system.durability() {
        None => {
            let dir = folder.join("redis");
            std::fs::create_dir_all(&dir)?;
            let mut command = Process::new(&tools.redis_server);
            command
                .args(["--bind", "127.0.0.1", "--port"])
                .arg(resp_port.to_string())
                .args(REDIS_SETTINGS)
                .arg("--dir")
                .arg(&dir)
                .args(["--daemonize", "no", "--logfile", ""]);
            command
        }
        Some(durability) => {
            let bucket = folder.join("bucket");
            std::fs::create_dir_all(&bucket)?;
            let mut command = Process::new(&tools.hadal);
            command
                .arg("serve")
                .arg("--data")
                .arg(folder.join("data"))
                .arg("--bucket")
                .arg(format!("file://{}", bucket.display()))
                .args(["--durability", durability, "--http"])
                .arg(format!("127.0.0.1:{http_port}"))
                .arg("--resp")
                .arg(format!("127.0.0.1:{resp_port}"));
            // No settings from the caller's environment (API keys would turn auth on).
            for (name, _) in std::env::vars_os() {
                if name.to_string_lossy().starts_with("HADAL_") {
                    command.env_remove(name);
                }
            }
            command
        }
    };
    let started = Instant::now();
    let mut server = Spawned::spawn(system.label(), command, &log, None)?;
    wait_ready(&mut server, resp_port)?;
    let ready_seconds = started.elapsed().as_secs_f64();
    if system == System::Redis {
        check_redis_settings(resp_port)?;
    }
    let set = bench(plan, tools, &mut server, resp_port, Test::Set, folder)?;
    let get = bench(plan, tools, &mut server, resp_port, Test::Get, folder)?;
    let keys = check_contents(plan, resp_port).map_err(|e| server.with_log(e))?;
    match server.stop(STOP_GRACE) {
        Some(status) if status.success() => {}
        Some(status) => progress(&format!(
            "warning: {} exited with {status} when stopped; last lines of its log:\n{}",
            system.label(),
            server.log_tail(10)
        )),
        None => progress(&format!(
            "warning: {} did not stop within {} s of SIGTERM and was killed",
            system.label(),
            STOP_GRACE.as_secs()
        )),
    }
    Ok(Round {
        set,
        get,
        keys,
        ready_seconds,
    })
}

/// redis-server's settings besides address and folder: an append-only file fsynced once a
/// second, no RDB snapshots.
const REDIS_SETTINGS: [&str; 6] = [
    "--appendonly",
    "yes",
    "--appendfsync",
    "everysec",
    "--save",
    "",
];

/// Two loopback ports that were free a moment ago.
fn free_ports() -> Result<(u16, u16)> {
    let a = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("find a free port")?;
    let b = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("find a free port")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

/// Waits until the server on `port` answers `PING` with `+PONG`.
fn wait_ready(server: &mut Spawned, port: u16) -> Result<()> {
    let started = Instant::now();
    loop {
        if let Some(status) = server.exited()? {
            bail!(
                "{} exited ({status}) before it was ready; last lines of its log:\n{}",
                server.name,
                server.log_tail(20)
            );
        }
        let last = match Conn::connect(port).and_then(|mut c| c.call(&[b"PING"])) {
            Ok(Reply::Simple(s)) if s == "PONG" => return Ok(()),
            Ok(reply) => format!("{reply:?}"),
            Err(e) => format!("{e:#}"),
        };
        if started.elapsed() > READY_TIMEOUT {
            bail!(
                "{} did not answer PING with +PONG within {} s (last: {last}); last lines of its log:\n{}",
                server.name,
                READY_TIMEOUT.as_secs(),
                server.log_tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks that redis-server took the settings (`CONFIG GET`).
fn check_redis_settings(port: u16) -> Result<()> {
    let mut conn = Conn::connect(port)?;
    for (name, want) in [
        ("appendonly", "yes"),
        ("appendfsync", "everysec"),
        ("save", ""),
    ] {
        let reply = conn.call(&[b"CONFIG", b"GET", name.as_bytes()])?;
        let got = match &reply {
            Reply::Array(Some(items)) => items.get(1).and_then(Reply::text),
            _ => None,
        };
        ensure!(
            got.as_deref() == Some(want),
            "redis-server's {name} is {reply:?}, not {want:?}"
        );
    }
    Ok(())
}

/// The `redis-benchmark` arguments of one test (`port` and `test` left out: `<port>`, `set|get`).
pub fn benchmark_args(plan: &Plan, port: Option<u16>, test: Option<Test>) -> Vec<String> {
    let mut args: Vec<String> = vec!["-h".into(), "127.0.0.1".into(), "-p".into()];
    args.push(port.map_or_else(|| "<port>".to_string(), |p| p.to_string()));
    args.push("-t".into());
    args.push(test.map_or("set|get", Test::id).to_string());
    for (flag, value) in [
        ("-n", plan.requests),
        ("-c", u64::from(plan.clients)),
        ("-d", plan.value_bytes as u64),
        ("-r", plan.keyspace),
        ("-P", u64::from(plan.pipeline)),
    ] {
        args.push(flag.into());
        args.push(value.to_string());
    }
    args.push("--csv".into());
    args
}

/// `benchmark_args` as one line.
pub fn command_line(plan: &Plan, port: Option<u16>, test: Option<Test>) -> String {
    benchmark_args(plan, port, test).join(" ")
}

/// Runs one `redis-benchmark` test against the server on `port`.
fn bench(
    plan: &Plan,
    tools: &Tools,
    server: &mut Spawned,
    port: u16,
    test: Test,
    folder: &Path,
) -> Result<TestRun> {
    let out = folder.join(format!("{}.csv", test.id()));
    let err = folder.join(format!("{}.stderr", test.id()));
    let mut command = Process::new(&tools.redis_benchmark);
    command.args(benchmark_args(plan, Some(port), Some(test)));
    let before = ProcCounters::read(server.pid());
    let started = Instant::now();
    let mut client = Spawned::spawn("redis-benchmark", command, &out, Some(&err))?;
    let status = client.wait(BENCH_TIMEOUT)?;
    let seconds = started.elapsed().as_secs_f64();
    let after = ProcCounters::read(server.pid());
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    if let Some(exit) = server.exited()? {
        bail!(
            "{} exited ({exit}) during redis-benchmark -t {}; last lines of its log:\n{}",
            server.name,
            test.id(),
            server.log_tail(20)
        );
    }
    ensure!(
        status.success(),
        "redis-benchmark -t {} against {} failed ({status}): {}",
        test.id(),
        server.name,
        stderr.trim()
    );
    let stderr = stderr.trim();
    if !stderr.is_empty() {
        progress(&format!(
            "redis-benchmark -t {} against {} said on stderr: {stderr}",
            test.id(),
            server.name
        ));
    }
    let row = parse_csv(&stdout)?
        .into_iter()
        .find(|row| row.test.eq_ignore_ascii_case(test.csv_name()))
        .with_context(|| format!("no {} row in redis-benchmark's CSV: {stdout:?}", test.id()))?;
    ensure!(
        row.rps.is_finite() && row.rps > 0.0,
        "redis-benchmark reported {} requests/s",
        row.rps
    );
    Ok(TestRun {
        rps: row.rps,
        avg_ms: row.avg_ms,
        p50_ms: row.p50_ms,
        p99_ms: row.p99_ms,
        seconds,
        server_cpu_seconds: after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / USER_HZ,
        server_disk_bytes: after.disk_bytes.saturating_sub(before.disk_bytes),
        server_wchar_bytes: after.wchar_bytes.saturating_sub(before.wchar_bytes),
    })
}

/// Checks what the SETs left: `DBSIZE` between the expected distinct keys (less a margin) and
/// the most possible, and sampled keys (`SCAN`, then `GET`) hold values of `--value-bytes`.
/// redis-benchmark exits on the first error reply, so an error never counts as throughput; this
/// catches writes that were acknowledged and then lost.
fn check_contents(plan: &Plan, port: u16) -> Result<u64> {
    let mut conn = Conn::connect(port)?;
    let keys = match conn.call(&[b"DBSIZE"])? {
        Reply::Int(n) if n >= 0 => n as u64,
        other => bail!("DBSIZE answered {other:?}"),
    };
    let most = plan.keyspace.min(plan.requests);
    let least = (plan.expected_keys() * (1.0 - DBSIZE_TOLERANCE)).floor() as u64;
    ensure!(
        (least.max(1)..=most).contains(&keys),
        "DBSIZE is {keys} after {} SETs over {} random keys: expected {least} to {most} (about {:.0})",
        plan.requests,
        plan.keyspace,
        plan.expected_keys()
    );
    let mut cursor = b"0".to_vec();
    let mut sampled = 0;
    for _ in 0..1000 {
        let reply = conn.call(&[b"SCAN", cursor.as_slice(), b"COUNT", b"100"])?;
        let Reply::Array(Some(parts)) = &reply else {
            bail!("SCAN answered {reply:?}");
        };
        let (Some(Reply::Bulk(Some(next))), Some(Reply::Array(Some(found)))) =
            (parts.first(), parts.get(1))
        else {
            bail!("SCAN answered {reply:?}");
        };
        for key in found.iter().take(SAMPLED_KEYS - sampled) {
            let Reply::Bulk(Some(key)) = key else {
                bail!("SCAN returned the key {key:?}");
            };
            ensure!(
                key.starts_with(b"key:"),
                "SCAN returned {:?}, not a redis-benchmark key",
                String::from_utf8_lossy(key)
            );
            match conn.call(&[b"GET", key.as_slice()])? {
                Reply::Bulk(Some(value)) if value.len() == plan.value_bytes => sampled += 1,
                other => bail!(
                    "GET {} answered {other:?}, not a {}-byte value",
                    String::from_utf8_lossy(key),
                    plan.value_bytes
                ),
            }
        }
        if sampled >= SAMPLED_KEYS || next.as_slice() == b"0" {
            break;
        }
        cursor = next.clone();
    }
    ensure!(sampled > 0, "SCAN found no key, yet DBSIZE is {keys}");
    Ok(keys)
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    fn text(&self) -> Option<String> {
        match self {
            Reply::Simple(s) => Some(s.clone()),
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// Reads one reply; nested arrays are read whole.
pub fn read_reply(reader: &mut impl BufRead) -> Result<Reply> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    ensure!(!line.is_empty(), "the connection was closed");
    let body = line.strip_suffix(b"\r\n").with_context(|| {
        format!(
            "a reply line without CRLF: {:?}",
            String::from_utf8_lossy(&line)
        )
    })?;
    let (&kind, rest) = body.split_first().context("an empty reply line")?;
    let text = String::from_utf8_lossy(rest).into_owned();
    let length = |text: &str| -> Result<i64> {
        text.parse()
            .with_context(|| format!("a bad length in {:?}", String::from_utf8_lossy(&line)))
    };
    Ok(match kind {
        b'+' => Reply::Simple(text),
        b'-' => Reply::Error(text),
        b':' => Reply::Int(length(&text)?),
        b'_' => Reply::Bulk(None),
        b'$' => match usize::try_from(length(&text)?) {
            Err(_) => Reply::Bulk(None),
            Ok(len) => {
                let mut data = vec![0; len + 2];
                reader.read_exact(&mut data)?;
                ensure!(data.ends_with(b"\r\n"), "a bulk string without CRLF");
                data.truncate(len);
                Reply::Bulk(Some(data))
            }
        },
        b'*' => match usize::try_from(length(&text)?) {
            Err(_) => Reply::Array(None),
            Ok(n) => Reply::Array(Some(
                (0..n).map(|_| read_reply(reader)).collect::<Result<_>>()?,
            )),
        },
        other => bail!(
            "an unknown reply type {:?} in {:?}",
            other as char,
            String::from_utf8_lossy(&line)
        ),
    })
}

/// One RESP connection, one command at a time.
#[derive(Debug)]
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn connect(port: u16) -> Result<Self> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connect to {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    fn call(&mut self, args: &[&[u8]]) -> Result<Reply> {
        let mut frame = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            frame.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            frame.extend_from_slice(arg);
            frame.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&frame)?;
        read_reply(&mut self.reader)
    }
}

/// A process's CPU ticks, `write_bytes` and `wchar`, from `/proc` (zero where unreadable).
#[derive(Debug, Clone, Copy, Default)]
struct ProcCounters {
    cpu_ticks: u64,
    disk_bytes: u64,
    wchar_bytes: u64,
}

impl ProcCounters {
    fn read(pid: u32) -> Self {
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
        let io_field = |name: &str| {
            io.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or(0)
        };
        // Fields 14 and 15 (utime, stime), counted from the end of the command name.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let field =
            |n: usize| -> u64 { fields.get(n - 3).and_then(|f| f.parse().ok()).unwrap_or(0) };
        Self {
            cpu_ticks: field(14) + field(15),
            disk_bytes: io_field("write_bytes:"),
            wchar_bytes: io_field("wchar:"),
        }
    }
}

/// A process this benchmark started, stopped by its PID when dropped.
#[derive(Debug)]
struct Spawned {
    name: String,
    child: Child,
    log: PathBuf,
    reaped: Option<ExitStatus>,
}

impl Spawned {
    /// Starts `command` with stdout to `stdout` and stderr to `stderr` (or `stdout` too).
    fn spawn(
        name: &str,
        mut command: Process,
        stdout: &Path,
        stderr: Option<&Path>,
    ) -> Result<Self> {
        let out = File::create(stdout).with_context(|| format!("create {}", stdout.display()))?;
        let err = match stderr {
            Some(path) => {
                File::create(path).with_context(|| format!("create {}", path.display()))?
            }
            None => out.try_clone()?,
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {name} ({:?})", command.get_program()))?;
        Ok(Self {
            name: name.to_string(),
            child,
            log: stderr.unwrap_or(stdout).to_path_buf(),
            reaped: None,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status if it has exited.
    fn exited(&mut self) -> Result<Option<ExitStatus>> {
        if self.reaped.is_none() {
            self.reaped = self.child.try_wait()?;
        }
        Ok(self.reaped)
    }

    /// Waits for it to exit by itself, at most `timeout`.
    fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.exited()? {
                return Ok(status);
            }
            if started.elapsed() > timeout {
                bail!("{} still running after {} s", self.name, timeout.as_secs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM, waits up to `grace`, then SIGKILL. The exit status if it exited by
    /// itself or on SIGTERM; `None` if it had to be killed.
    fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.exited() {
            return Some(status);
        }
        // Not reaped yet, so the PID is still this child's.
        let _ = Process::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Ok(status) = self.wait(grace) {
            return Some(status);
        }
        let _ = self.child.kill();
        self.reaped = self.child.wait().ok();
        None
    }

    /// The last `lines` lines of its log.
    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `error` with the end of the server's log attached.
    fn with_log(&self, error: anyhow::Error) -> anyhow::Error {
        error.context(format!(
            "{}; last lines of its log:\n{}",
            self.name,
            self.log_tail(20)
        ))
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.stop(STOP_GRACE).is_none() {
            progress(&format!("killed {} (PID {})", self.name, self.pid()));
        }
    }
}

pub mod report {
    //! The RESP benchmark's results: the table on stdout and the same figures as JSON
    //! (`target/hadal-bench/resp.json`). Figures are medians over the rounds; the JSON keeps
    //! every round.

    use std::fmt::Write as _;

    use super::*;

    fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
        let mut v: Vec<f64> = values.collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        Some(if v.len().is_multiple_of(2) {
            (v[mid - 1] + v[mid]) / 2.0
        } else {
            v[mid]
        })
    }

    /// Medians of one system's test over its rounds.
    #[derive(Debug, Clone, Copy)]
    pub struct Summary {
        pub rps: f64,
        pub p50_ms: Option<f64>,
        pub p99_ms: Option<f64>,
        /// Server CPU microseconds per request.
        pub cpu_us_per_op: f64,
        /// Bytes the server wrote to storage per request (`write_bytes`).
        pub disk_bytes_per_op: f64,
    }

    pub fn summary(runs: &SystemRuns, test: Test, requests: u64) -> Summary {
        let tests = || runs.rounds.iter().map(move |r| r.test(test));
        let per_op = requests.max(1) as f64;
        Summary {
            rps: median(tests().map(|t| t.rps)).unwrap_or(0.0),
            p50_ms: median(tests().filter_map(|t| t.p50_ms)),
            p99_ms: median(tests().filter_map(|t| t.p99_ms)),
            cpu_us_per_op: median(tests().map(|t| t.server_cpu_seconds * 1e6 / per_op))
                .unwrap_or(0.0),
            disk_bytes_per_op: median(tests().map(|t| t.server_disk_bytes as f64 / per_op))
                .unwrap_or(0.0),
        }
    }

    /// `system`'s median ops/s over redis-server's, if both ran.
    pub fn ratio(results: &Results, system: System, test: Test) -> Option<f64> {
        let find = |s: System| results.runs.iter().find(|r| r.system == s);
        let requests = results.plan.requests;
        let redis = summary(find(System::Redis)?, test, requests).rps;
        let this = summary(find(system)?, test, requests).rps;
        (redis > 0.0).then(|| this / redis)
    }

    /// The goal's verdict per test, if async and redis both ran.
    fn goal(results: &Results, test: Test) -> Option<(f64, bool)> {
        ratio(results, System::Async, test).map(|r| (r, r >= GOAL_ASYNC_OVER_REDIS))
    }

    use crate::thousands;

    fn ms(value: Option<f64>) -> String {
        value.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"))
    }

    fn yes(met: bool) -> &'static str {
        if met { "yes" } else { "NO" }
    }

    pub fn table(results: &Results) -> String {
        let plan = &results.plan;
        let tools = &results.tools;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}: {}, on loopback; {} round(s), one server at a time, medians",
            tools.redis_benchmark_version,
            command_line(plan, None, None),
            plan.rounds
        );
        let _ = writeln!(
            out,
            "redis: {} with {}",
            tools.redis_server_version,
            REDIS_SETTINGS
                .chunks(2)
                .map(|kv| format!(
                    "{} {}",
                    kv[0].trim_start_matches('-'),
                    if kv[1].is_empty() { "''" } else { kv[1] }
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            out,
            "hadal: {} (commit {}), `hadal serve --durability async|strict` with a file:// bucket on the scratch disk\n",
            tools.hadal_version, tools.hadal_commit
        );
        let _ = writeln!(
            out,
            "{:<16} {:>11} {:>7} {:>7} {:>11} {:>7} {:>7} {:>10} {:>10}",
            "system",
            "SET ops/s",
            "p50 ms",
            "p99 ms",
            "GET ops/s",
            "p50 ms",
            "p99 ms",
            "SET/redis",
            "GET/redis"
        );
        for runs in &results.runs {
            let set = summary(runs, Test::Set, plan.requests);
            let get = summary(runs, Test::Get, plan.requests);
            let r = |test| match (runs.system, ratio(results, runs.system, test)) {
                (System::Redis, _) | (_, None) => "-".to_string(),
                (_, Some(r)) => format!("{r:.2}x"),
            };
            let _ = writeln!(
                out,
                "{:<16} {:>11} {:>7} {:>7} {:>11} {:>7} {:>7} {:>10} {:>10}",
                runs.system.label(),
                thousands(set.rps),
                ms(set.p50_ms),
                ms(set.p99_ms),
                thousands(get.rps),
                ms(get.p50_ms),
                ms(get.p99_ms),
                r(Test::Set),
                r(Test::Get)
            );
        }
        let _ = writeln!(
            out,
            "\nserver cost per request (medians): CPU µs of all its threads, bytes it wrote to storage (/proc/PID/io write_bytes)"
        );
        for runs in &results.runs {
            let set = summary(runs, Test::Set, plan.requests);
            let get = summary(runs, Test::Get, plan.requests);
            let ready = median(runs.rounds.iter().map(|r| r.ready_seconds)).unwrap_or(0.0);
            let _ = writeln!(
                out,
                "{:<16} SET {:>6.1} µs {:>7.0} B | GET {:>6.1} µs {:>7.0} B | ready {:.2} s after start",
                runs.system.label(),
                set.cpu_us_per_op,
                set.disk_bytes_per_op,
                get.cpu_us_per_op,
                get.disk_bytes_per_op,
                ready
            );
        }
        if plan.rounds > 1 {
            let _ = writeln!(out, "\nper round, SET / GET ops/s");
            for round in 0..plan.rounds {
                let cells: Vec<String> = results
                    .runs
                    .iter()
                    .filter_map(|runs| {
                        let r = runs.rounds.get(round)?;
                        Some(format!(
                            "{} {} / {}",
                            runs.system.label(),
                            thousands(r.set.rps),
                            thousands(r.get.rps)
                        ))
                    })
                    .collect();
                let _ = writeln!(out, "round {}: {}", round + 1, cells.join(" | "));
            }
        }
        let _ = writeln!(out);
        match (goal(results, Test::Set), goal(results, Test::Get)) {
            (Some((set, set_met)), Some((get, get_met))) => {
                let _ = writeln!(
                    out,
                    "goal: hadal async >= {GOAL_ASYNC_OVER_REDIS}x redis-server (appendfsync everysec) ops/s: SET {set:.2}x {}, GET {get:.2}x {}",
                    yes(set_met),
                    yes(get_met)
                );
            }
            _ => {
                let _ = writeln!(out, "goal: not judged (needs redis and async in --only)");
            }
        }
        let keys: Vec<String> = results
            .runs
            .iter()
            .map(|runs| {
                let k: Vec<String> = runs.rounds.iter().map(|r| r.keys.to_string()).collect();
                format!("{} {}", runs.system.label(), k.join("/"))
            })
            .collect();
        let _ = writeln!(
            out,
            "checked: DBSIZE after the SETs (expected about {:.0}): {}; {SAMPLED_KEYS} SCANned keys per run hold {}-byte values",
            plan.expected_keys(),
            keys.join(", "),
            plan.value_bytes
        );
        let _ = writeln!(out, "\ntotal run time {:.0} s", results.seconds);
        out
    }

    fn test_json(t: &TestRun) -> Value {
        json!({
            "rps": t.rps,
            "avg_ms": t.avg_ms,
            "p50_ms": t.p50_ms,
            "p99_ms": t.p99_ms,
            "seconds": t.seconds,
            "server_cpu_seconds": t.server_cpu_seconds,
            "server_disk_bytes": t.server_disk_bytes,
            "server_wchar_bytes": t.server_wchar_bytes,
        })
    }

    fn summary_json(s: &Summary) -> Value {
        json!({
            "rps": s.rps,
            "p50_ms": s.p50_ms,
            "p99_ms": s.p99_ms,
            "server_cpu_us_per_op": s.cpu_us_per_op,
            "server_disk_bytes_per_op": s.disk_bytes_per_op,
        })
    }

    pub fn json(results: &Results) -> Value {
        let plan = &results.plan;
        let tools = &results.tools;
        let systems: Vec<Value> = results
            .runs
            .iter()
            .map(|runs| {
                let medians = |test| summary_json(&summary(runs, test, plan.requests));
                let ratios = (runs.system != System::Redis).then(|| {
                    json!({
                        "set": ratio(results, runs.system, Test::Set),
                        "get": ratio(results, runs.system, Test::Get),
                    })
                });
                json!({
                    "system": runs.system.id(),
                    "label": runs.system.label(),
                    "median": { "set": medians(Test::Set), "get": medians(Test::Get) },
                    "ratio_to_redis": ratios,
                    "rounds": runs.rounds.iter().map(|r| json!({
                        "set": test_json(&r.set),
                        "get": test_json(&r.get),
                        "keys": r.keys,
                        "ready_seconds": r.ready_seconds,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let verdict =
            |test| goal(results, test).map(|(ratio, met)| json!({ "ratio": ratio, "met": met }));
        json!({
            "benchmark": "resp",
            "settings": {
                "requests": plan.requests,
                "clients": plan.clients,
                "value_bytes": plan.value_bytes,
                "pipeline": plan.pipeline,
                "keyspace": plan.keyspace,
                "rounds": plan.rounds,
                "systems": plan.systems.iter().map(|s| s.id()).collect::<Vec<_>>(),
                "redis_benchmark": command_line(plan, None, None),
                "redis_server": REDIS_SETTINGS
                    .map(|s| if s.is_empty() { "''" } else { s })
                    .join(" "),
                "hadal": "serve --durability async|strict --bucket file://<scratch>/bucket",
                "expected_keys": plan.expected_keys(),
            },
            "tools": {
                "hadal": tools.hadal_version,
                "hadal_commit": tools.hadal_commit,
                "redis_server": tools.redis_server_version,
                "redis_benchmark": tools.redis_benchmark_version,
            },
            "systems": systems,
            "goal": {
                "system": System::Async.id(),
                "against": System::Redis.id(),
                "ratio_min": GOAL_ASYNC_OVER_REDIS,
                "set": verdict(Test::Set),
                "get": verdict(Test::Get),
            },
            "seconds": results.seconds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REDIS_7: &str = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
        \"SET\",\"74906.37\",\"0.468\",\"0.096\",\"0.319\",\"0.903\",\"4.895\",\"8.535\"\n\
        \"GET\",\"99009.90\",\"0.315\",\"0.080\",\"0.295\",\"0.447\",\"0.711\",\"6.247\"\n";

    #[test]
    fn parses_redis_7_csv_with_header() -> Result<()> {
        let rows = parse_csv(REDIS_7)?;
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            CsvRow {
                test: "SET".into(),
                rps: 74906.37,
                avg_ms: Some(0.468),
                p50_ms: Some(0.319),
                p99_ms: Some(4.895),
            }
        );
        assert_eq!(rows[1].test, "GET");
        assert_eq!(rows[1].rps, 99009.90);
        assert_eq!(rows[1].p50_ms, Some(0.295));
        Ok(())
    }

    #[test]
    fn parses_headerless_csv_and_skips_noise() -> Result<()> {
        let text = "WARNING: something\r\n\"SET\",\"1000.00\"\r\n\"MSET (10 keys)\",\"12.5\"\n";
        let rows = parse_csv(text)?;
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].test, "SET");
        assert_eq!(rows[0].rps, 1000.0);
        assert_eq!(rows[0].p50_ms, None);
        assert_eq!(rows[1].test, "MSET (10 keys)");
        Ok(())
    }

    #[test]
    fn rejects_csv_without_rows() {
        assert!(parse_csv("").is_err());
        assert!(parse_csv("\"test\",\"rps\"\n").is_err());
        assert!(parse_csv("\"SET\",\"fast\"\n").is_err());
    }

    #[test]
    fn csv_fields_unquote() {
        assert_eq!(csv_fields(r#""a","b ""c""",3"#), ["a", "b \"c\"", "3"]);
        assert_eq!(csv_fields(r#""x,y","""#), ["x,y", ""]);
    }

    #[test]
    fn reads_nested_replies() -> Result<()> {
        let wire = b"*2\r\n$1\r\n0\r\n*2\r\n$5\r\nkey:1\r\n$-1\r\n:7\r\n-ERR no\r\n+PONG\r\n";
        let mut reader = &wire[..];
        assert_eq!(
            read_reply(&mut reader)?,
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"0".to_vec())),
                Reply::Array(Some(vec![
                    Reply::Bulk(Some(b"key:1".to_vec())),
                    Reply::Bulk(None)
                ])),
            ]))
        );
        assert_eq!(read_reply(&mut reader)?, Reply::Int(7));
        assert_eq!(read_reply(&mut reader)?, Reply::Error("ERR no".into()));
        assert_eq!(read_reply(&mut reader)?, Reply::Simple("PONG".into()));
        assert!(read_reply(&mut reader).is_err());
        Ok(())
    }

    #[test]
    fn expected_keys_follow_the_occupancy_formula() {
        let plan = Plan {
            requests: 20_000,
            clients: 50,
            value_bytes: 100,
            pipeline: 1,
            keyspace: 10_000,
            rounds: 1,
            systems: vec![System::Redis],
        };
        // 10,000 × (1 − e^−2) ≈ 8,647.
        assert!((plan.expected_keys() - 8647.0).abs() < 2.0);
        assert_eq!(
            command_line(&plan, Some(6379), Some(Test::Get)),
            "-h 127.0.0.1 -p 6379 -t get -n 20000 -c 50 -d 100 -r 10000 -P 1 --csv"
        );
    }

    #[test]
    fn finds_the_hadal_artifact() {
        let line = r#"{"reason":"compiler-artifact","target":{"name":"hadal","kind":["bin"]},"executable":"/t/release/hadal"}"#;
        assert_eq!(
            hadal_executable(line),
            Some(PathBuf::from("/t/release/hadal"))
        );
        let lib = r#"{"reason":"compiler-artifact","target":{"name":"hadal","kind":["lib"]},"executable":null}"#;
        assert_eq!(hadal_executable(lib), None);
        assert_eq!(hadal_executable("not json"), None);
    }
}
