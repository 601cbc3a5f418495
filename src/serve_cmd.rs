//! `hadal serve` (the writer) and `hadal replica` (a read-only follower): flags, environment
//! and config file layered into one [`ServerConfig`], logging set up, then the server runs
//! until SIGTERM or SIGINT.
//!
//! Precedence: a flag wins over its `HADAL_*` variable (clap reads both into one layer), which
//! wins over the `--config` file, which wins over the defaults.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use hadal::server::auth::ApiKey;
use hadal::server::{Layer, LogFormat, Role, ServerConfig};

/// Settings both roles take.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// A TOML file with any of these settings (names with `_` for `-`) and `[[keys]]`.
    #[arg(long, env = "HADAL_CONFIG")]
    config: Option<PathBuf>,
    /// The bucket URL (file://, s3://, gs://, az://) [serve default: file://./hadal-bucket].
    #[arg(long, env = "HADAL_BUCKET")]
    bucket: Option<String>,
    /// The local data folder [serve default: ./hadal-data; replica: ./hadal-replica-data].
    #[arg(long, env = "HADAL_DATA")]
    data: Option<PathBuf>,
    /// The HTTP address [serve default: 127.0.0.1:7600; replica: 127.0.0.1:7601].
    #[arg(long, env = "HADAL_HTTP")]
    http: Option<String>,
    /// The Redis-protocol address [serve default: 127.0.0.1:6380; replica: 127.0.0.1:6381].
    #[arg(long, env = "HADAL_RESP")]
    resp: Option<String>,
    /// Log lines as `human` (default) or `json`; the level comes from HADAL_LOG (default info).
    #[arg(long, env = "HADAL_LOG_FORMAT")]
    log_format: Option<String>,
    /// How long a shutdown may take: finish requests, ship, release [default: 30s].
    #[arg(long, env = "HADAL_SHUTDOWN_GRACE")]
    shutdown_grace: Option<String>,
    /// How long one HTTP request may take [default: 30s].
    #[arg(long, env = "HADAL_REQUEST_TIMEOUT")]
    request_timeout: Option<String>,
    /// How long a read with min_lsn waits for this server to catch up [default: 5s].
    #[arg(long, env = "HADAL_MIN_LSN_WAIT")]
    min_lsn_wait: Option<String>,
    /// The largest request body in bytes [default: 16777216].
    #[arg(long, env = "HADAL_BODY_LIMIT")]
    body_limit: Option<u64>,
    /// An API key as ROLE:SHA256 or ROLE:SHA256:NAME (repeatable; in HADAL_API_KEY_HASHES,
    /// comma-separated). Create one with `hadal key new`. Replaces the file's [[keys]].
    #[arg(long = "api-key-hash", env = "HADAL_API_KEY_HASHES", value_delimiter = ',', value_parser = ApiKey::parse_flag)]
    api_key_hashes: Vec<ApiKey>,
}

impl CommonArgs {
    fn layer(&self) -> Layer {
        Layer {
            data: self.data.clone(),
            bucket: self.bucket.clone(),
            http: self.http.clone(),
            resp: self.resp.clone(),
            log_format: self.log_format.clone(),
            shutdown_grace: self.shutdown_grace.clone(),
            request_timeout: self.request_timeout.clone(),
            min_lsn_wait: self.min_lsn_wait.clone(),
            body_limit: self.body_limit,
            keys: self.api_key_hashes.clone(),
            ..Layer::default()
        }
    }
}

/// `hadal serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// When a write is acknowledged: strict (in the bucket), local (fsynced, shipped every
    /// --interval) or async (written, shipped every --interval) [default: strict].
    #[arg(long, env = "HADAL_DURABILITY")]
    durability: Option<String>,
    /// In local and async modes: how often commits are shipped [default: 1s].
    #[arg(long, env = "HADAL_INTERVAL")]
    interval: Option<String>,
    /// How often the writer deletes what the retention window no longer needs, or `off`
    /// [default: 1h].
    #[arg(long, env = "HADAL_GC_INTERVAL")]
    gc_interval: Option<String>,
}

/// `hadal replica`.
#[derive(Debug, clap::Args)]
pub struct ReplicaArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The longest delay between polls of an idle bucket [default: 1s].
    #[arg(long, env = "HADAL_POLL")]
    poll: Option<String>,
}

fn resolve(flags: Layer, file: Option<&PathBuf>, role: Role) -> anyhow::Result<ServerConfig> {
    let file = match file {
        Some(path) => Layer::from_file(path)?,
        None => Layer::default(),
    };
    Ok(flags.over(file).resolve(role)?)
}

/// Runs `hadal serve`.
pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let flags = Layer {
        durability: args.durability.clone(),
        interval: args.interval.clone(),
        gc_interval: args.gc_interval.clone(),
        ..args.common.layer()
    };
    run(resolve(flags, args.common.config.as_ref(), Role::Writer)?)
}

/// Runs `hadal replica`.
pub fn replica(args: ReplicaArgs) -> anyhow::Result<ExitCode> {
    let flags = Layer {
        poll: args.poll.clone(),
        ..args.common.layer()
    };
    run(resolve(flags, args.common.config.as_ref(), Role::Replica)?)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HADAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(config: ServerConfig) -> anyhow::Result<ExitCode> {
    init_logging(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let role = config.role;
    runtime
        .block_on(hadal::server::run(config, hadal::server::shutdown_signal()))
        .with_context(|| {
            format!(
                "hadal {}",
                if role == Role::Writer {
                    "serve"
                } else {
                    "replica"
                }
            )
        })?;
    Ok(ExitCode::SUCCESS)
}
