//! `hadal-benches`: benchmarks Hadal against other systems in one process run (methodology in
//! `benches/README.md`):
//!
//! * `engine`: the local engine against redb and LMDB on the four workloads of issue 2, item 5.
//!   Prints the table and writes `target/hadal-bench/engine.json` under the workspace root. Every
//!   engine gets a fresh folder on the same disk as the repository (not tmpfs, so durable commits
//!   really reach the disk), the same generated data, and the same loops; every read result is
//!   checked against the data.
//! * `shipping`: strict shipping against SlateDB on one latency-injected in-memory object store
//!   (issue 4, item 6). Prints the table and writes `target/hadal-bench/shipping.json`.
//! * `restore`: a restore to the head against a raw parallel download of the same objects, on
//!   latency-injected stores and a `file://` bucket (issue 5, item 6). Writes
//!   `target/hadal-bench/restore.json`.
//! * `replica`: a follower's lag behind a strict writer under a steady write load on a
//!   latency-injected store (issue 5, item 6). Writes `target/hadal-bench/replica.json`.
//! * `resp`: `redis-benchmark` SET and GET against `hadal serve`'s Redis-protocol port (`async`
//!   and `strict`) and against Debian's `redis-server` (`appendfsync everysec`), one server at a
//!   time (issue 6, Done-when 5). Writes `target/hadal-bench/resp.json`.

mod engines;
mod meter;
mod replica;
mod report;
mod resp;
mod restore;
mod shipping;
mod workload;
mod writer;

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

use crate::engines::{Engine, Hadal, Lmdb, Redb};
use crate::meter::{Measurement, Meter};
use crate::report::{EngineRun, Report, Target, Workload};
use crate::shipping::latency::LatencyModel;
use crate::shipping::systems::SystemName;
use crate::workload::{BATCH_KEYS, Dataset, SCAN_COUNT, SCAN_KEYS, SINGLE_COMMITS, Tally};

#[derive(Debug, Parser)]
#[command(
    about = "Benchmarks Hadal's engine against redb and LMDB, and its shipping against SlateDB."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Workloads (a)-(d) of issue 2 on Hadal, redb and LMDB.
    Engine(EngineArgs),
    /// Items (a)-(e) of issue 4: strict shipping against SlateDB on one latency-injected store.
    Shipping(ShippingArgs),
    /// Issue 5: a restore to the head against a raw download of the same objects, per store.
    Restore(RestoreArgs),
    /// Issue 5: a follower's lag behind a strict writer under a steady write load.
    Replica(ReplicaArgs),
    /// Issue 6: redis-benchmark SET/GET against Hadal's RESP port (async, strict) and redis-server.
    Resp(RespArgs),
}

#[derive(Debug, clap::Args)]
struct RespArgs {
    /// Requests per test (`redis-benchmark -n`): this many SETs, then this many GETs.
    #[arg(long, default_value_t = 500_000)]
    requests: u64,
    /// Parallel connections (`-c`).
    #[arg(long, default_value_t = 50)]
    clients: u32,
    /// Bytes of every SET value (`-d`).
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Commands per pipeline (`-P`); 1 is one command per round trip.
    #[arg(long, default_value_t = 1)]
    pipeline: u32,
    /// Distinct random keys (`-r`): the SETs and GETs draw from key:000000000000 up.
    #[arg(long, default_value_t = 100_000)]
    keyspace: u64,
    /// Rounds; every round runs each system once, in --only's order (the table shows medians).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Systems to run, in this order within a round.
    #[arg(long, value_delimiter = ',', default_value = "redis,async,strict")]
    only: Vec<resp::System>,
    /// The hadal binary [default: built first with `cargo build --release --bin hadal`].
    #[arg(long)]
    hadal: Option<PathBuf>,
    /// A smoke run: 20,000 requests per test over 10,000 keys, one round.
    #[arg(long)]
    quick: bool,
    /// Folder for the servers' files [default: <workspace>/target/hadal-bench/scratch].
    #[arg(long)]
    scratch: Option<PathBuf>,
    /// Where to write the JSON [default: <workspace>/target/hadal-bench/resp.json].
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct RestoreArgs {
    /// Mean latency of every object-store request, in milliseconds.
    #[arg(long, default_value_t = 50.0)]
    request_ms: f64,
    /// Each request's latency is uniform in request-ms ± jitter-ms.
    #[arg(long, default_value_t = 10.0)]
    jitter_ms: f64,
    /// Seed of the latency draws.
    #[arg(long, default_value_t = 11)]
    seed: u64,
    /// Download bandwidth of one request on the `bandwidth` store, MiB/s.
    #[arg(long, default_value_t = 80.0)]
    bandwidth_mib_s: f64,
    /// MiB of keys and values in the database.
    #[arg(long, default_value_t = 192)]
    mib: u64,
    /// Percent of the data written after the snapshot (the tail of segments).
    #[arg(long, default_value_t = 25)]
    tail_percent: u64,
    /// Bytes of every value (keys are 16 bytes).
    #[arg(long, default_value_t = 900)]
    value_bytes: usize,
    /// Keys per commit while building.
    #[arg(long, default_value_t = 1000)]
    commit_keys: usize,
    /// Restores and raw downloads per store (the table shows medians).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Stores to run on, in this order.
    #[arg(long, value_delimiter = ',', default_value = "latency,bandwidth,file")]
    stores: Vec<restore::StoreName>,
    /// A smoke run of a few seconds: 16 MiB of data, one round.
    #[arg(long)]
    quick: bool,
    /// Folder for local files [default: <workspace>/target/hadal-bench/scratch].
    #[arg(long)]
    scratch: Option<PathBuf>,
    /// Where to write the JSON [default: <workspace>/target/hadal-bench/restore.json].
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ReplicaArgs {
    /// Mean latency of every object-store request, in milliseconds.
    #[arg(long, default_value_t = 50.0)]
    request_ms: f64,
    /// Each request's latency is uniform in request-ms ± jitter-ms.
    #[arg(long, default_value_t = 10.0)]
    jitter_ms: f64,
    /// Seed of the latency draws.
    #[arg(long, default_value_t = 11)]
    seed: u64,
    /// The follower's poll interval (its poll_min and poll_max), in milliseconds.
    #[arg(long, default_value_t = 50.0)]
    poll_ms: f64,
    /// Single-key strict commits offered per second (open loop).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Seconds of measured load (after 2 s of warm-up).
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// A smoke run of a few seconds (0.5 s warm-up, 3 s measured).
    #[arg(long)]
    quick: bool,
    /// Folder for local files [default: <workspace>/target/hadal-bench/scratch].
    #[arg(long)]
    scratch: Option<PathBuf>,
    /// Where to write the JSON [default: <workspace>/target/hadal-bench/replica.json].
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ShippingArgs {
    /// Mean latency of every object-store request, in milliseconds.
    #[arg(long, default_value_t = 50.0)]
    put_ms: f64,
    /// Each request's latency is uniform in put-ms ± jitter-ms.
    #[arg(long, default_value_t = 10.0)]
    jitter_ms: f64,
    /// Seed of the latency draws (both systems get the same sequence).
    #[arg(long, default_value_t = 11)]
    seed: u64,
    /// SlateDB's `flush_interval`, in milliseconds (1 is its best for latency; its default is 100).
    #[arg(long, default_value_t = 1.0)]
    slatedb_flush_ms: f64,
    /// Systems to run, in this order.
    #[arg(long, value_delimiter = ',', default_value = "hadal,slatedb")]
    only: Vec<SystemName>,
    /// A smoke run of a few seconds per system (short phases, coarse open-loop ladder).
    #[arg(long)]
    quick: bool,
    /// Folder for Hadal's local files [default: <workspace>/target/hadal-bench/scratch].
    #[arg(long)]
    scratch: Option<PathBuf>,
    /// Where to write the JSON [default: <workspace>/target/hadal-bench/shipping.json].
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct EngineArgs {
    /// Keys loaded by workload (a) and read by workload (b).
    #[arg(long, default_value_t = 1_000_000)]
    keys: usize,
    /// Engines to run, in this order.
    #[arg(long, value_delimiter = ',', default_value = "hadal,redb,lmdb")]
    only: Vec<EngineName>,
    /// Folder for the engines' scratch databases [default: <workspace>/target/hadal-bench/scratch].
    #[arg(long)]
    scratch: Option<PathBuf>,
    /// Where to write the JSON [default: <workspace>/target/hadal-bench/engine.json].
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EngineName {
    Hadal,
    Redb,
    Lmdb,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Engine(args) => run_engine_benchmark(&args),
        Command::Shipping(args) => run_shipping_benchmark(&args),
        Command::Restore(args) => run_restore_benchmark(&args),
        Command::Replica(args) => run_replica_benchmark(&args),
        Command::Resp(args) => run_resp_benchmark(&args),
    }
}

fn run_resp_benchmark(args: &RespArgs) -> Result<()> {
    ensure!(args.requests > 0, "--requests must be at least 1");
    ensure!(
        (1..=10_000).contains(&args.clients),
        "--clients must be 1 to 10000, not {}",
        args.clients
    );
    ensure!(
        (1..=1024 * 1024).contains(&args.value_bytes),
        "--value-bytes must be 1 to 1048576, not {}",
        args.value_bytes
    );
    ensure!(
        (1..=10_000).contains(&args.pipeline),
        "--pipeline must be 1 to 10000, not {}",
        args.pipeline
    );
    ensure!(args.keyspace > 0, "--keyspace must be at least 1");
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    let mut systems = Vec::new();
    for &system in &args.only {
        if !systems.contains(&system) {
            systems.push(system);
        }
    }
    ensure!(!systems.is_empty(), "--only names no system");
    let plan = resp::Plan {
        requests: if args.quick { 20_000 } else { args.requests },
        clients: args.clients,
        value_bytes: args.value_bytes,
        pipeline: args.pipeline,
        keyspace: if args.quick { 10_000 } else { args.keyspace },
        rounds: if args.quick { 1 } else { args.rounds },
        systems,
    };
    let (scratch, out) = bench_paths(&args.scratch, &args.out, "resp")?;
    let tools = resp::Tools::find(args.hadal.as_deref(), &workspace_root())?;
    progress(&format!(
        "hadal: {} ({}), {}; redis-server: {}; {}",
        tools.hadal_version,
        tools.hadal_commit,
        tools.hadal.display(),
        tools.redis_server_version,
        tools.redis_benchmark_version
    ));
    let results = resp::run(&plan, &tools, &scratch)?;
    print!("{}", resp::report::table(&results));
    write_json(resp::report::json(&results), &out, &["hadal"])
}

/// The latency model of `--request-ms`, `--jitter-ms` and `--seed`, checked.
fn latency_model(request_ms: f64, jitter_ms: f64, seed: u64) -> Result<LatencyModel> {
    let model = LatencyModel {
        mean: millis(request_ms, "--request-ms")?,
        jitter: millis(jitter_ms, "--jitter-ms")?,
        seed,
    };
    ensure!(
        model.jitter <= model.mean,
        "--jitter-ms ({jitter_ms}) must not exceed --request-ms ({request_ms})"
    );
    Ok(model)
}

/// The scratch folder (created) and the JSON path, from the flags or their defaults.
fn bench_paths(
    scratch: &Option<PathBuf>,
    out: &Option<PathBuf>,
    name: &str,
) -> Result<(PathBuf, PathBuf)> {
    let bench_dir = workspace_root().join("target").join("hadal-bench");
    let scratch = scratch.clone().unwrap_or_else(|| bench_dir.join("scratch"));
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("create scratch folder {}", scratch.display()))?;
    let out = out
        .clone()
        .unwrap_or_else(|| bench_dir.join(format!("{name}.json")));
    Ok((scratch, out))
}

/// Adds versions and the machine to `doc` and writes it to `out`.
fn write_json(mut doc: serde_json::Value, out: &Path, packages: &[&str]) -> Result<()> {
    let root = workspace_root();
    let mut versions = serde_json::Map::new();
    for name in packages {
        versions.insert(name.to_string(), json!(locked_version(&root, name)));
    }
    doc["versions"] = serde_json::Value::Object(versions);
    doc["machine"] = machine();
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("write {}", out.display()))?;
    progress(&format!("wrote {}", out.display()));
    Ok(())
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")
}

fn run_restore_benchmark(args: &RestoreArgs) -> Result<()> {
    let model = latency_model(args.request_ms, args.jitter_ms, args.seed)?;
    ensure!(
        args.bandwidth_mib_s.is_finite() && args.bandwidth_mib_s > 0.0,
        "--bandwidth-mib-s must be above 0, not {}",
        args.bandwidth_mib_s
    );
    ensure!(args.mib > 0, "--mib must be at least 1");
    ensure!(
        (1..=90).contains(&args.tail_percent),
        "--tail-percent must be 1 to 90, not {}",
        args.tail_percent
    );
    ensure!(
        (1..=900).contains(&args.value_bytes),
        "--value-bytes must be 1 to 900 (values stay inside leaf pages), not {}",
        args.value_bytes
    );
    ensure!(args.commit_keys > 0, "--commit-keys must be at least 1");
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    let mut stores = Vec::new();
    for &name in &args.stores {
        if !stores.contains(&name) {
            stores.push(name);
        }
    }
    ensure!(!stores.is_empty(), "--stores names no store");
    let plan = restore::Plan {
        model,
        bandwidth_bytes_per_s: args.bandwidth_mib_s * 1024.0 * 1024.0,
        data_bytes: if args.quick { 16 } else { args.mib } * 1024 * 1024,
        tail_percent: args.tail_percent,
        value_bytes: args.value_bytes,
        commit_keys: args.commit_keys,
        rounds: if args.quick { 1 } else { args.rounds },
        stores,
    };
    let (scratch, out) = bench_paths(&args.scratch, &args.out, "restore")?;
    let results = tokio_runtime()?.block_on(restore::run(&plan, &scratch))?;
    print!("{}", restore::report::table(&results));
    write_json(
        restore::report::json(&results),
        &out,
        &["hadal-replica", "hadal-shipper", "object_store"],
    )
}

fn run_replica_benchmark(args: &ReplicaArgs) -> Result<()> {
    let model = latency_model(args.request_ms, args.jitter_ms, args.seed)?;
    let poll = millis(args.poll_ms, "--poll-ms")?;
    ensure!(!poll.is_zero(), "--poll-ms must be above 0");
    ensure!(
        args.rate.is_finite() && (1.0..=100_000.0).contains(&args.rate),
        "--rate must be 1 to 100000 commits/s, not {}",
        args.rate
    );
    ensure!(
        args.seconds.is_finite() && args.seconds > 0.0,
        "--seconds must be above 0, not {}",
        args.seconds
    );
    let plan = replica::Plan {
        model,
        poll,
        rate: args.rate,
        warmup: Duration::from_millis(if args.quick { 500 } else { 2000 }),
        duration: Duration::from_secs_f64(if args.quick { 3.0 } else { args.seconds }),
        bare_gets: if args.quick { 40 } else { 400 },
    };
    let (scratch, out) = bench_paths(&args.scratch, &args.out, "replica")?;
    let results = tokio_runtime()?.block_on(replica::run(&plan, &scratch))?;
    print!("{}", replica::report::table(&results));
    write_json(
        replica::report::json(&results),
        &out,
        &["hadal-replica", "hadal-shipper", "object_store"],
    )
}

fn millis(value: f64, flag: &str) -> Result<Duration> {
    ensure!(
        value.is_finite() && value >= 0.0,
        "{flag} must be a number of milliseconds, not {value}"
    );
    Ok(Duration::from_secs_f64(value / 1000.0))
}

fn run_shipping_benchmark(args: &ShippingArgs) -> Result<()> {
    let model = LatencyModel {
        mean: millis(args.put_ms, "--put-ms")?,
        jitter: millis(args.jitter_ms, "--jitter-ms")?,
        seed: args.seed,
    };
    ensure!(
        model.jitter <= model.mean,
        "--jitter-ms ({}) must not exceed --put-ms ({})",
        args.jitter_ms,
        args.put_ms
    );
    ensure!(args.put_ms >= 1.0, "--put-ms must be at least 1");
    let flush = millis(args.slatedb_flush_ms, "--slatedb-flush-ms")?;
    ensure!(!flush.is_zero(), "--slatedb-flush-ms must be above 0");
    let systems: Vec<SystemName> = {
        let mut out = Vec::new();
        for &name in &args.only {
            if !out.contains(&name) {
                out.push(name);
            }
        }
        out
    };
    ensure!(!systems.is_empty(), "--only names no system");
    let plan = if args.quick {
        shipping::Plan::quick(model, flush, systems)
    } else {
        shipping::Plan::full(model, flush, systems)
    };

    let root = workspace_root();
    let bench_dir = root.join("target").join("hadal-bench");
    let scratch = args
        .scratch
        .clone()
        .unwrap_or_else(|| bench_dir.join("scratch"));
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("create scratch folder {}", scratch.display()))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    let results = runtime.block_on(shipping::run(&plan, &scratch))?;
    print!("{}", shipping::report::table(&results));

    let mut doc = shipping::report::json(&results);
    let mut versions = serde_json::Map::new();
    for name in ["hadal-shipper", "slatedb", "object_store"] {
        versions.insert(name.to_string(), json!(locked_version(&root, name)));
    }
    doc["versions"] = serde_json::Value::Object(versions);
    doc["machine"] = machine();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| bench_dir.join("shipping.json"));
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("write {}", out.display()))?;
    progress(&format!("wrote {}", out.display()));
    Ok(())
}

fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn run_engine_benchmark(args: &EngineArgs) -> Result<()> {
    ensure!(args.keys > 0, "--keys must be at least 1");
    ensure!(!args.only.is_empty(), "--only names no engine");
    let root = workspace_root();
    let bench_dir = root.join("target").join("hadal-bench");
    let scratch = args
        .scratch
        .clone()
        .unwrap_or_else(|| bench_dir.join("scratch"));
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("create scratch folder {}", scratch.display()))?;

    let started = Instant::now();
    let data = Dataset::generate(args.keys);
    let expected = Expected {
        reads: data.expected_reads(),
        scans: data.expected_scans(),
    };
    progress(&format!(
        "generated {} pairs + {} single-commit pairs in {:.1} s; scratch {}",
        data.loaded,
        SINGLE_COMMITS,
        started.elapsed().as_secs_f64(),
        scratch.display()
    ));

    let mut runs = Vec::new();
    for name in dedup(&args.only) {
        let run = match name {
            EngineName::Hadal => run_engine::<Hadal>(&data, &expected, &scratch)?,
            EngineName::Redb => run_engine::<Redb>(&data, &expected, &scratch)?,
            EngineName::Lmdb => run_engine::<Lmdb>(&data, &expected, &scratch)?,
        };
        runs.push(run);
    }

    let report = Report {
        key_count: data.loaded,
        versions: versions(&root),
        workloads: workloads(&data),
        runs,
    };
    print!("{}", report.table());
    let mut doc = report.json();
    doc["machine"] = machine();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| bench_dir.join("engine.json"));
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("write {}", out.display()))?;
    progress(&format!("wrote {}", out.display()));
    Ok(())
}

fn dedup(names: &[EngineName]) -> Vec<EngineName> {
    let mut out: Vec<EngineName> = Vec::new();
    for &name in names {
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// What the read workloads must return, computed from the data alone.
#[derive(Debug)]
struct Expected {
    reads: Tally,
    scans: Tally,
}

fn workloads(data: &Dataset) -> Vec<Workload> {
    let txn_count = data.loaded.div_ceil(BATCH_KEYS);
    vec![
        Workload {
            id: "a_load",
            label: format!(
                "(a) load {} keys, {} durable txns",
                thousands(data.loaded as f64),
                thousands(txn_count as f64)
            ),
            op_count: data.loaded,
            target: Some(Target {
                against: "redb",
                ratio_max: 0.5,
            }),
        },
        Workload {
            id: "b_point_reads",
            label: format!(
                "(b) {} random point reads",
                thousands(data.read_order.len() as f64)
            ),
            op_count: data.read_order.len(),
            target: Some(Target {
                against: "lmdb",
                ratio_max: 1.1,
            }),
        },
        Workload {
            id: "c_single_commits",
            label: format!(
                "(c) {} single-key durable commits",
                thousands(SINGLE_COMMITS as f64)
            ),
            op_count: SINGLE_COMMITS,
            target: Some(Target {
                against: "redb",
                ratio_max: 1.0,
            }),
        },
        Workload {
            id: "d_range_scans",
            label: format!(
                "(d) {} range scans of {SCAN_KEYS} keys",
                thousands(SCAN_COUNT as f64)
            ),
            op_count: SCAN_COUNT,
            target: None,
        },
    ]
}

/// `1234567` as `1,234,567`.
/// `1234567.0` as `1,234,567` (rounded), for the benchmarks' tables.
pub(crate) fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Runs the four workloads, in order, on one engine in a fresh folder, then deletes it.
fn run_engine<E: Engine>(data: &Dataset, expected: &Expected, scratch: &Path) -> Result<EngineRun> {
    let name = E::NAME;
    // Start every engine with no other engine's dirty pages still being written back.
    flush_page_cache();
    let dir = tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir_in(scratch)?;
    let mut engine = E::open(dir.path()).with_context(|| format!("{name}: open"))?;
    let mut measurements = Vec::new();

    let meter = Meter::start();
    let started = Instant::now();
    let batches: Vec<_> = data.load_batches().collect();
    let report_every = (batches.len() / 10).max(1);
    for (n, batch) in batches.into_iter().enumerate() {
        engine
            .commit(data, batch)
            .with_context(|| format!("{name}: (a) commit {n}"))?;
        if (n + 1) % report_every == 0 {
            progress(&format!(
                "{name}: (a) {} txns committed, {:.1} s",
                n + 1,
                started.elapsed().as_secs_f64()
            ));
        }
    }
    measurements.push(finish(name, "a", meter));

    let meter = Meter::start();
    let tally = engine.get_all(data, &data.read_order)?;
    measurements.push(finish(name, "b", meter));
    check(name, "(b) point reads", tally, expected.reads)?;

    let meter = Meter::start();
    for i in data.single_commits() {
        engine
            .commit(data, i..i + 1)
            .with_context(|| format!("{name}: (c) commit"))?;
    }
    measurements.push(finish(name, "c", meter));

    let meter = Meter::start();
    let tally = engine.scan_all(data, &data.scan_starts, SCAN_KEYS)?;
    measurements.push(finish(name, "d", meter));
    check(name, "(d) range scans", tally, expected.scans)?;

    let disk_bytes = folder_bytes(dir.path())?;
    drop(engine);
    dir.close()?;
    Ok(EngineRun {
        name,
        measurements,
        disk_bytes,
    })
}

fn finish(engine: &str, workload: &str, meter: Meter) -> Measurement {
    let m = meter.finish();
    progress(&format!(
        "{engine}: ({workload}) done in {:.2} s (cpu {:.2} s, {:.0} MiB written in {} calls)",
        m.seconds,
        m.cpu_seconds,
        m.write_bytes as f64 / (1024.0 * 1024.0),
        m.write_calls
    ));
    m
}

fn check(engine: &str, workload: &str, got: Tally, want: Tally) -> Result<()> {
    if got != want {
        bail!("{engine}: {workload} returned {got:?}, the data says {want:?}");
    }
    Ok(())
}

fn progress(line: &str) {
    eprintln!("[hadal-bench] {line}");
}

/// Asks the kernel to write back all dirty pages (best effort: `sync` may be missing).
fn flush_page_cache() {
    let _ = Process::new("sync").status();
}

/// Apparent size of every file under `dir`.
fn folder_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            folder_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// The version of package `name` in the workspace's `Cargo.lock` ("unknown" if absent).
fn locked_version(root: &Path, name: &str) -> String {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
    let header = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == header {
            let version = lines.next().unwrap_or_default();
            return version
                .trim_start_matches("version = \"")
                .trim_end_matches('"')
                .to_string();
        }
    }
    "unknown".to_string()
}

/// Exact versions of the engines under test, from the workspace's `Cargo.lock`.
fn versions(root: &Path) -> Vec<(&'static str, String)> {
    let locked = |name: &str| locked_version(root, name);
    vec![
        ("hadal-engine", locked("hadal-engine")),
        ("redb", locked("redb")),
        ("heed", locked("heed")),
        ("lmdb", heed::lmdb_version().string.to_string()),
    ]
}

fn machine() -> serde_json::Value {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let unix_seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": read("/proc/sys/kernel/osrelease"),
        "unix_seconds": unix_seconds,
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}
