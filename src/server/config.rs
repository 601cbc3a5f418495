//! Server settings: one [`Layer`] per source (command-line flags, which clap also fills from
//! `HADAL_*` environment variables, and the `--config` TOML file), stacked so that flags win
//! over the environment and the environment over the file, then [`Layer::resolve`]d into a
//! [`ServerConfig`] with the defaults filled in and every value checked.
//!
//! The file holds the same settings as the flags, with `_` for `-` (`http = "0.0.0.0:7600"`,
//! `shutdown_grace = "10s"`), plus `[[keys]]` tables for API keys:
//!
//! ```toml
//! data = "/var/lib/hadal"
//! bucket = "s3://my-bucket/db"
//! http = "0.0.0.0:7600"
//! durability = "strict"
//!
//! [[keys]]
//! name = "app"
//! role = "writer"
//! sha256 = "<64 hex digits from `hadal key new`>"
//! ```
//!
//! Invariant: a server listening on a non-loopback address has at least one API key, so
//! nothing it serves is reachable without one (see [`ServerConfig::check_exposure`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::database::Durability;
use crate::server::auth::ApiKey;
use crate::server::backend::{Error, Result, Role};

/// `hadal serve`'s default data folder.
pub const SERVE_DATA_DEFAULT: &str = "./hadal-data";
/// `hadal serve`'s default bucket: a folder next to the data folder, no cloud account needed.
pub const SERVE_BUCKET_DEFAULT: &str = "file://./hadal-bucket";
/// `hadal serve`'s default HTTP address.
pub const SERVE_HTTP_DEFAULT: &str = "127.0.0.1:7600";
/// `hadal serve`'s default Redis-protocol address.
pub const SERVE_RESP_DEFAULT: &str = "127.0.0.1:6380";
/// `hadal replica`'s default data folder (its own copy; never the writer's folder).
pub const REPLICA_DATA_DEFAULT: &str = "./hadal-replica-data";
/// `hadal replica`'s default HTTP address: next to the writer's, so both run on one machine.
pub const REPLICA_HTTP_DEFAULT: &str = "127.0.0.1:7601";
/// `hadal replica`'s default Redis-protocol address.
pub const REPLICA_RESP_DEFAULT: &str = "127.0.0.1:6381";
/// How often a writer in `local` or `async` mode ships, by default.
pub const INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// A replica's longest delay between polls of an idle bucket, by default.
pub const POLL_DEFAULT: Duration = Duration::from_secs(1);
/// How long a shutdown may take (finish requests, ship, release), by default.
pub const SHUTDOWN_GRACE_DEFAULT: Duration = Duration::from_secs(30);
/// How long one HTTP request may take, by default (a strict write waits for the bucket).
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// How long a read with `min_lsn` waits for a replica to catch up, by default.
pub const MIN_LSN_WAIT_DEFAULT: Duration = Duration::from_secs(5);
/// The largest request body accepted, by default: a 16 MiB value (the engine takes up to
/// 64 MiB; raise `body_limit` for larger ones).
pub const BODY_LIMIT_DEFAULT: u64 = 16 * 1024 * 1024;
/// The largest `body_limit` allowed: the engine's largest value plus room for a JSON batch.
pub const BODY_LIMIT_MAX: u64 = 2 * hadal_format::limits::VALUE_BYTES_MAX as u64;
/// A config file larger than this is not a config file.
const CONFIG_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per event.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?}: use human or json")),
        }
    }
}

/// One source of settings. Every field is optional: a missing one falls through to the next
/// layer, then to the default. Durations are humantime strings (`500ms`, `30s`, `1h`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    /// The local data folder.
    pub data: Option<PathBuf>,
    /// The bucket URL (`file://`, `s3://`, `gs://`, `az://`).
    pub bucket: Option<String>,
    /// The HTTP listen address.
    pub http: Option<String>,
    /// The Redis-protocol listen address.
    pub resp: Option<String>,
    /// Writer only: `strict`, `local` or `async`.
    pub durability: Option<String>,
    /// Writer only: how often `local` and `async` modes ship.
    pub interval: Option<String>,
    /// Writer only: how often background GC runs, or `off`.
    pub gc_interval: Option<String>,
    /// Replica only: the longest delay between polls of an idle bucket.
    pub poll: Option<String>,
    /// `human` or `json`.
    pub log_format: Option<String>,
    /// How long a shutdown may take.
    pub shutdown_grace: Option<String>,
    /// How long one HTTP request may take.
    pub request_timeout: Option<String>,
    /// How long a read with `min_lsn` waits for the server to catch up.
    pub min_lsn_wait: Option<String>,
    /// The largest request body, in bytes.
    pub body_limit: Option<u64>,
    /// API keys (stored as SHA-256 hashes). A non-empty list in a higher layer replaces the
    /// lower layer's list.
    #[serde(default)]
    pub keys: Vec<ApiKey>,
}

impl Layer {
    /// Reads a TOML config file.
    pub fn from_file(path: &Path) -> Result<Layer> {
        let shown = path.display();
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::Invalid(format!("reading config file {shown}: {e}")))?;
        if meta.len() > CONFIG_FILE_BYTES_MAX {
            return Err(Error::Invalid(format!(
                "config file {shown} is {} bytes, more than a config file's limit of {CONFIG_FILE_BYTES_MAX}",
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Invalid(format!("reading config file {shown}: {e}")))?;
        Layer::from_toml(&text).map_err(|e| Error::Invalid(format!("config file {shown}: {e}")))
    }

    /// Parses TOML text (see the module comment for the layout).
    pub fn from_toml(text: &str) -> std::result::Result<Layer, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// This layer with every unset field taken from `lower`.
    pub fn over(self, lower: Layer) -> Layer {
        Layer {
            data: self.data.or(lower.data),
            bucket: self.bucket.or(lower.bucket),
            http: self.http.or(lower.http),
            resp: self.resp.or(lower.resp),
            durability: self.durability.or(lower.durability),
            interval: self.interval.or(lower.interval),
            gc_interval: self.gc_interval.or(lower.gc_interval),
            poll: self.poll.or(lower.poll),
            log_format: self.log_format.or(lower.log_format),
            shutdown_grace: self.shutdown_grace.or(lower.shutdown_grace),
            request_timeout: self.request_timeout.or(lower.request_timeout),
            min_lsn_wait: self.min_lsn_wait.or(lower.min_lsn_wait),
            body_limit: self.body_limit.or(lower.body_limit),
            keys: if self.keys.is_empty() {
                lower.keys
            } else {
                self.keys
            },
        }
    }

    /// Fills in the defaults for `role`, checks every value and returns the settings to run
    /// with. Errors name the setting and what it accepts.
    pub fn resolve(self, role: Role) -> Result<ServerConfig> {
        let (data, http, resp) = match role {
            Role::Writer => (SERVE_DATA_DEFAULT, SERVE_HTTP_DEFAULT, SERVE_RESP_DEFAULT),
            Role::Replica => (
                REPLICA_DATA_DEFAULT,
                REPLICA_HTTP_DEFAULT,
                REPLICA_RESP_DEFAULT,
            ),
        };
        let bucket = match (self.bucket, role) {
            (Some(b), _) => b,
            (None, Role::Writer) => SERVE_BUCKET_DEFAULT.to_owned(),
            (None, Role::Replica) => {
                return Err(Error::Invalid(
                    "a replica needs the bucket to follow: pass --bucket URL (or set HADAL_BUCKET, or `bucket` in the config file)".into(),
                ));
            }
        };
        let durability = match self.durability.as_deref() {
            None => Durability::Strict,
            Some(s) => s
                .parse()
                .map_err(|e: String| Error::Invalid(format!("durability: {e}")))?,
        };
        let gc_interval = match self.gc_interval.as_deref() {
            None => Some(hadal_shipper::GC_INTERVAL_DEFAULT),
            Some("off") => None,
            Some(s) => Some(positive("gc_interval", s)?),
        };
        let body_limit = self.body_limit.unwrap_or(BODY_LIMIT_DEFAULT);
        if body_limit == 0 || body_limit > BODY_LIMIT_MAX {
            return Err(Error::Invalid(format!(
                "body_limit: {body_limit} bytes is outside 1..={BODY_LIMIT_MAX}"
            )));
        }
        let config = ServerConfig {
            role,
            data: self.data.unwrap_or_else(|| PathBuf::from(data)),
            bucket,
            http: address("http", self.http.as_deref().unwrap_or(http))?,
            resp: address("resp", self.resp.as_deref().unwrap_or(resp))?,
            durability,
            interval: duration_or("interval", self.interval, INTERVAL_DEFAULT)?,
            gc_interval,
            poll: duration_or("poll", self.poll, POLL_DEFAULT)?,
            log_format: match self.log_format.as_deref() {
                None => LogFormat::Human,
                Some(s) => s
                    .parse()
                    .map_err(|e: String| Error::Invalid(format!("log_format: {e}")))?,
            },
            shutdown_grace: duration_or(
                "shutdown_grace",
                self.shutdown_grace,
                SHUTDOWN_GRACE_DEFAULT,
            )?,
            request_timeout: duration_or(
                "request_timeout",
                self.request_timeout,
                REQUEST_TIMEOUT_DEFAULT,
            )?,
            min_lsn_wait: duration_or("min_lsn_wait", self.min_lsn_wait, MIN_LSN_WAIT_DEFAULT)?,
            body_limit,
            keys: self.keys,
        };
        for key in &config.keys {
            key.check()?;
        }
        config.check_exposure()?;
        Ok(config)
    }
}

/// Everything a server runs with, resolved and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Writer (`hadal serve`) or replica (`hadal replica`).
    pub role: Role,
    /// The local data folder.
    pub data: PathBuf,
    /// The bucket shipped to (writer) or followed (replica).
    pub bucket: String,
    /// The HTTP listen address.
    pub http: SocketAddr,
    /// The Redis-protocol listen address, for the RESP front-end (see `run.rs`).
    pub resp: SocketAddr,
    /// Writer: when a write counts as done.
    pub durability: Durability,
    /// Writer: how often `local` and `async` modes ship.
    pub interval: Duration,
    /// Writer: how often background GC runs (`None`: off, left to `hadal gc`).
    pub gc_interval: Option<Duration>,
    /// Replica: the longest delay between polls of an idle bucket.
    pub poll: Duration,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// How long a shutdown may take before the process gives up on it.
    pub shutdown_grace: Duration,
    /// How long one HTTP request may take.
    pub request_timeout: Duration,
    /// How long a read with `min_lsn` waits for this server to catch up.
    pub min_lsn_wait: Duration,
    /// The largest request body, in bytes.
    pub body_limit: u64,
    /// API keys; empty: authentication is off (allowed on loopback addresses only).
    pub keys: Vec<ApiKey>,
}

impl ServerConfig {
    /// Refuses to expose the database without keys: with no API key configured, every listen
    /// address must be a loopback address (module invariant).
    pub fn check_exposure(&self) -> Result<()> {
        if !self.keys.is_empty() {
            return Ok(());
        }
        for (what, addr) in [("http", self.http), ("resp", self.resp)] {
            if !addr.ip().is_loopback() {
                return Err(Error::Invalid(format!(
                    "refusing to listen on {addr} ({what}) without API keys: anyone who can reach that address could read and change the database; create a key with `hadal key new --role admin` and add it to the config file's [[keys]] (or pass --api-key-hash ROLE:SHA256), or listen on a loopback address such as 127.0.0.1"
                )));
            }
        }
        Ok(())
    }

    /// Whether requests must carry an API key.
    pub fn auth_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The configured keys' names and roles, for the startup log (never their hashes).
    pub fn key_names(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| format!("{} ({})", k.name, k.role))
            .collect()
    }
}

fn address(what: &str, s: &str) -> Result<SocketAddr> {
    s.trim().parse().map_err(|e| {
        Error::Invalid(format!(
            "{what}: {s:?} is not an address to listen on ({e}); use IP:PORT, e.g. 127.0.0.1:7600 or 0.0.0.0:7600"
        ))
    })
}

/// A humantime duration that must not be zero.
fn positive(what: &str, s: &str) -> Result<Duration> {
    match humantime::parse_duration(s.trim()) {
        Ok(d) if d.is_zero() => Err(Error::Invalid(format!("{what}: must be longer than zero"))),
        Ok(d) => Ok(d),
        Err(e) => Err(Error::Invalid(format!(
            "{what}: {s:?} is not a duration ({e}); use e.g. 500ms, 30s, 5m, 1h"
        ))),
    }
}

fn duration_or(what: &str, s: Option<String>, default: Duration) -> Result<Duration> {
    match s {
        Some(s) => positive(what, &s),
        None => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_surface() {
        // Proves a bare `hadal serve` gets exactly the defaults the issue fixes.
        let c = Layer::default().resolve(Role::Writer).expect("defaults");
        assert_eq!(c.data, PathBuf::from("./hadal-data"));
        assert_eq!(c.bucket, "file://./hadal-bucket");
        assert_eq!(c.http.to_string(), "127.0.0.1:7600");
        assert_eq!(c.resp.to_string(), "127.0.0.1:6380");
        assert_eq!(c.durability, Durability::Strict);
        assert!(!c.auth_enabled());
    }

    #[test]
    fn flags_win_over_env_and_env_over_the_file() {
        // Proves the layering: the higher layer's set fields win, unset ones fall through.
        let file = Layer::from_toml(
            "data = \"/file\"\nbucket = \"file:///file-bucket\"\nhttp = \"127.0.0.1:1\"\nshutdown_grace = \"3s\"\n",
        )
        .expect("toml");
        let env = Layer {
            bucket: Some("file:///env-bucket".into()),
            http: Some("127.0.0.1:2".into()),
            ..Layer::default()
        };
        let flags = Layer {
            http: Some("127.0.0.1:3".into()),
            ..Layer::default()
        };
        let c = flags
            .over(env.over(file))
            .resolve(Role::Writer)
            .expect("resolve");
        assert_eq!(c.data, PathBuf::from("/file"));
        assert_eq!(c.bucket, "file:///env-bucket");
        assert_eq!(c.http.to_string(), "127.0.0.1:3");
        assert_eq!(c.shutdown_grace, Duration::from_secs(3));
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        // Proves a wrong setting is an error naming the setting, not a silent default.
        let e = Layer {
            durability: Some("fast".into()),
            ..Layer::default()
        }
        .resolve(Role::Writer)
        .expect_err("bad durability");
        assert!(e.to_string().contains("durability"), "{e}");
        let e = Layer::from_toml("colour = \"blue\"").expect_err("unknown field");
        assert!(e.contains("colour"), "{e}");
        let e = Layer {
            interval: Some("0s".into()),
            ..Layer::default()
        }
        .resolve(Role::Writer)
        .expect_err("zero interval");
        assert!(e.to_string().contains("interval"), "{e}");
        let e = Layer::default()
            .resolve(Role::Replica)
            .expect_err("replica without bucket");
        assert!(e.to_string().contains("--bucket"), "{e}");
    }

    #[test]
    fn a_public_address_without_keys_is_refused() {
        // Proves the exposure rule: non-loopback needs keys; loopback does not.
        let e = Layer {
            http: Some("0.0.0.0:7600".into()),
            ..Layer::default()
        }
        .resolve(Role::Writer)
        .expect_err("exposed");
        assert!(e.to_string().contains("without API keys"), "{e}");
        let with_key = Layer::from_toml(&format!(
            "http = \"0.0.0.0:7600\"\n[[keys]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"{}\"\n",
            "ab".repeat(32)
        ))
        .expect("toml");
        let c = with_key.resolve(Role::Writer).expect("keys given");
        assert!(c.auth_enabled());
    }
}
