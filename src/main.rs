//! The `hadal` command: a key-value shell over the embedded facade (`hadal kv`, optionally
//! shipping to a bucket), restores, an integrity checker (`hadal check`), bucket qualification
//! and the server: `hadal serve` (the writer) and `hadal replica` (a read-only follower), with
//! `hadal key` for their API keys and `hadal kv --url` as their client.

#![forbid(unsafe_code)]

mod admin_cmd;
mod branch_cmd;
mod bucket_cmd;
mod key_cmd;
mod kv_cmd;
mod kv_import;
mod kv_remote;
mod restore_cmd;
mod serve_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "hadal",
    version,
    about = "A bottomless key-value database",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the writer: take the bucket over, serve the HTTP API, ship every commit. With no
    /// flags: ./hadal-data, file://./hadal-bucket, http on 127.0.0.1:7600.
    Serve(serve_cmd::ServeArgs),
    /// Run a read-only replica that follows a bucket and serves reads over HTTP (writes are
    /// refused with 403).
    Replica(serve_cmd::ReplicaArgs),
    /// API keys for the server: `key new` creates one, `key hash` hashes one for the config.
    Key {
        #[command(subcommand)]
        cmd: key_cmd::KeyCommand,
    },
    /// Read and write keys in a data folder; with --bucket, every write is shipped to the
    /// bucket, the database's durable home.
    Kv(kv_cmd::KvArgs),
    /// Qualify an object store before trusting it with data: conditional-write self-test and a
    /// short contract smoke, printed as a pass/fail table.
    Bucket {
        #[command(subcommand)]
        cmd: bucket_cmd::BucketCommand,
    },
    /// Rebuild a database from its bucket alone: at its head, an LSN (--lsn) or a time (--time),
    /// into a new folder.
    Restore(restore_cmd::RestoreArgs),
    /// Prove a bucket's history intact: manifests, every segment's hash and chain link, dense
    /// slots, epochs and fences, checksum continuity, snapshots against the log. Names the first
    /// damaged object and exits non-zero.
    Verify(admin_cmd::VerifyArgs),
    /// Fold runs of small segments after the newest snapshot into one object each, so restores
    /// of later points read far fewer objects (exact restores inside a run still use segments).
    Compact(admin_cmd::CompactArgs),
    /// Zero-copy branches: a new database whose history starts at a point of another's.
    Branch {
        #[command(subcommand)]
        cmd: branch_cmd::BranchCommand,
    },
    /// Upload a snapshot of a database now and publish it, with a progress bar: restores,
    /// takeovers and replicas start from the newest snapshot. Takes the writer role over the
    /// bucket (as `kv put --bucket` does), so run it on the writer's folder while no server
    /// runs; a running `hadal serve` takes snapshots by itself when restores would get slow.
    Snapshot(admin_cmd::SnapshotArgs),
    /// Delete what no restore inside the retention window, no pin and the head need.
    Gc(admin_cmd::GcArgs),
    /// What is in a bucket: head, epoch, snapshots, retention, pins, objects and their cost.
    Info(admin_cmd::InfoArgs),
    /// Check a data folder's integrity: page checksums, tree order, free-list accounting and
    /// the state checksum. Exits non-zero if anything is wrong.
    Check {
        #[arg(long, env = "HADAL_DATA", default_value = "./hadal-data")]
        data: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The servers set up logging themselves, from their resolved settings (--log-format).
    if !matches!(cli.command, Command::Serve(_) | Command::Replica(_)) {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("HADAL_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    let result = match cli.command {
        Command::Serve(args) => serve_cmd::serve(args),
        Command::Replica(args) => serve_cmd::replica(args),
        Command::Key { cmd } => key_cmd::run(cmd),
        Command::Kv(args) => kv_cmd::run(args),
        Command::Check { data } => kv_cmd::check(&data),
        Command::Bucket { cmd } => bucket_cmd::run(cmd),
        Command::Restore(args) => restore_cmd::run(args),
        Command::Verify(args) => admin_cmd::verify(args),
        Command::Gc(args) => admin_cmd::gc(args),
        Command::Snapshot(args) => admin_cmd::snapshot(args),
        Command::Branch { cmd } => branch_cmd::run(cmd),
        Command::Compact(args) => admin_cmd::compact(args),
        Command::Info(args) => admin_cmd::info(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hadal: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
