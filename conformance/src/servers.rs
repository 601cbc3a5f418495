//! Real object-store servers for the integration tests, started by the test itself on
//! 127.0.0.1 and a free port, health-checked, and killed by PID when the handle drops — also
//! when the test fails or panics. `scripts/object-stores.sh` installs them under
//! `$HADAL_CACHE` (default `~/.cache/hadal`); this module never installs anything.
//!
//! Invariants:
//! 1. Servers listen on loopback only; no code here takes a host from outside.
//! 2. A server that is not installed is `StartError::NotInstalled` naming the script to run;
//!    the test decides whether that fails (CI) or skips (a developer's machine).
//! 3. Every started process is owned by a `ServerProcess`, whose `Drop` kills it by PID and
//!    reaps it, so no server outlives its test.

use std::fmt;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// moto's default key buffer is small; above ~5 MiB its check-then-write races let 2–4 writers
/// win a create (OBJECT-STORES.md). 128 MiB keeps every suite object in the locked path.
pub const MOTO_KEY_BUFFER_BYTES: u64 = 128 << 20;
/// How long a server gets to answer its health check.
pub const SERVER_START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub enum StartError {
    NotInstalled {
        server: &'static str,
        path: PathBuf,
    },
    Failed {
        server: &'static str,
        detail: String,
    },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::NotInstalled { server, path } => write!(
                f,
                "{server} is not installed at {}: run `bash scripts/object-stores.sh` first",
                path.display()
            ),
            StartError::Failed { server, detail } => write!(f, "{server} did not start: {detail}"),
        }
    }
}

impl std::error::Error for StartError {}

/// `$HADAL_CACHE`, else `~/.cache/hadal`: where the install script puts the servers.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HADAL_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("hadal")
}

/// A running server; dropping it kills the process by PID.
#[derive(Debug)]
pub struct ServerProcess {
    server: &'static str,
    child: Child,
    port: u16,
    log: tempfile::NamedTempFile,
}

impl ServerProcess {
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines the server printed (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        tracing::debug!(
            server = self.server,
            pid = self.child.id(),
            "server stopped"
        );
    }
}

fn free_port() -> Result<u16, StartError> {
    let failed = |e: std::io::Error| StartError::Failed {
        server: "port",
        detail: e.to_string(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").map_err(failed)?;
    Ok(listener.local_addr().map_err(failed)?.port())
}

/// Sends one HTTP/1.1 GET to 127.0.0.1:port and returns the status code.
pub async fn http_status(port: u16, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = vec![0u8; 64];
    let n = stream.read(&mut head).await?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {line:?}")))
}

/// Starts `command` (already pointed at `port`) and waits until `healthy(port)` holds.
async fn start(
    server: &'static str,
    mut command: Command,
    port: u16,
    health_path: &str,
    healthy: fn(u16) -> bool,
) -> Result<ServerProcess, StartError> {
    let failed = |detail: String| StartError::Failed { server, detail };
    let log = tempfile::NamedTempFile::new().map_err(|e| failed(format!("log file: {e}")))?;
    let out = log.reopen().map_err(|e| failed(format!("log file: {e}")))?;
    let err = log.reopen().map_err(|e| failed(format!("log file: {e}")))?;
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .map_err(|e| failed(format!("spawn: {e}")))?;
    let mut process = ServerProcess {
        server,
        child,
        port,
        log,
    };
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = process.child.try_wait() {
            return Err(failed(format!(
                "exited with {status}; log:\n{}",
                process.log_tail()
            )));
        }
        if let Ok(code) = http_status(port, health_path).await
            && healthy(code)
        {
            tracing::info!(server, port, pid = process.pid(), "server up");
            return Ok(process);
        }
        if started.elapsed() > SERVER_START_TIMEOUT {
            return Err(failed(format!(
                "no healthy answer on 127.0.0.1:{port} within {SERVER_START_TIMEOUT:?}; log:\n{}",
                process.log_tail()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// moto's S3 API server (`moto[server]` 5.2.5).
#[derive(Debug)]
pub struct Moto {
    pub process: ServerProcess,
}

impl Moto {
    pub fn binary() -> PathBuf {
        cache_dir()
            .join("moto-venv")
            .join("bin")
            .join("moto_server")
    }

    pub async fn start() -> Result<Moto, StartError> {
        let binary = Moto::binary();
        if !binary.exists() {
            return Err(StartError::NotInstalled {
                server: "moto",
                path: binary,
            });
        }
        let port = free_port()?;
        // moto's conditional PUT is a check-then-write without a lock: with its default
        // threaded server, racing creates can both win under CPU load (OBJECT-STORES.md). The
        // race tests are about our client and the stores we ship to, whose atomicity is the
        // provider's; so moto is started single-threaded (requests serialised) through its own
        // `main`, with werkzeug's `threaded` flag forced off.
        let python = binary.with_file_name("python");
        let launcher = "import sys, moto.server as s; run = s.run_simple; \
                        s.run_simple = lambda *a, **k: run(*a, **{**k, 'threaded': False}); \
                        s.main(sys.argv[1:])";
        let mut command = Command::new(&python);
        command
            .args(["-c", launcher, "-H", "127.0.0.1", "-p", &port.to_string()])
            .env(
                "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE",
                MOTO_KEY_BUFFER_BYTES.to_string(),
            );
        let process = start("moto", command, port, "/moto-api/", |code| code == 200).await?;
        Ok(Moto { process })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.process.port())
    }

    /// Creates `bucket` and returns an S3 transport rooted at `prefix` inside it.
    #[cfg(feature = "s3")]
    pub async fn bucket(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> hadal_transports::Result<hadal_transports::s3::S3Bucket> {
        use hadal_transports::s3::{S3Bucket, S3Config};
        let config = S3Config {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".to_owned()),
            credentials: Some(("moto-access-key".to_owned(), "moto-secret-key".to_owned())),
        };
        let s3 = S3Bucket::connect(config).await?;
        match s3.client().create_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(s3),
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(409) => Ok(s3),
            Err(e) => Err(hadal_transports::Error::fatal(
                hadal_transports::Op::Connect,
                bucket,
                format!("create bucket: {}", aws_error(&e)),
            )),
        }
    }
}

#[cfg(feature = "s3")]
fn aws_error(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    text
}

/// Azurite, Microsoft's Azure Blob emulator (3.35.0).
#[derive(Debug)]
pub struct Azurite {
    pub process: ServerProcess,
}

impl Azurite {
    pub fn binary() -> PathBuf {
        cache_dir()
            .join("azurite")
            .join("node_modules")
            .join(".bin")
            .join("azurite-blob")
    }

    pub async fn start() -> Result<Azurite, StartError> {
        let binary = Azurite::binary();
        if !binary.exists() {
            return Err(StartError::NotInstalled {
                server: "azurite",
                path: binary,
            });
        }
        let port = free_port()?;
        let mut command = Command::new(&binary);
        command.args([
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            &port.to_string(),
            "--inMemoryPersistence",
            "--disableTelemetry",
            "--silent",
            "--skipApiVersionCheck",
            "--loose",
        ]);
        // Any HTTP answer (an unauthenticated request is refused) means the server is up.
        let process = start(
            "azurite",
            command,
            port,
            "/devstoreaccount1?comp=list",
            |_| true,
        )
        .await?;
        Ok(Azurite { process })
    }

    /// The blob endpoint, path-style with the development account.
    pub fn endpoint(&self) -> String {
        format!(
            "http://127.0.0.1:{}/{}",
            self.process.port(),
            azure_emulator_account()
        )
    }

    /// Creates `container` and returns an Azure transport rooted at `prefix` inside it.
    #[cfg(feature = "azure")]
    pub async fn bucket(
        &self,
        container: &str,
        prefix: &str,
    ) -> hadal_transports::Result<hadal_transports::azure::AzureBucket> {
        use hadal_transports::azure::{AzureBucket, AzureConfig};
        create_container(self.process.port(), container)
            .await
            .map_err(|e| {
                hadal_transports::Error::fatal(hadal_transports::Op::Connect, container, e)
            })?;
        AzureBucket::connect(AzureConfig {
            container: container.to_owned(),
            prefix: prefix.to_owned(),
            account: None,
            endpoint: Some(self.endpoint()),
            emulator: true,
        })
    }
}

fn azure_emulator_account() -> &'static str {
    "devstoreaccount1"
}

/// `PUT /devstoreaccount1/CONTAINER?restype=container`, signed with SharedKey (Azurite checks
/// signatures; object_store has no container API).
#[cfg(feature = "azure")]
pub async fn create_container(port: u16, container: &str) -> Result<(), String> {
    use base64::Engine;
    let account = azure_emulator_account();
    let key = base64::engine::general_purpose::STANDARD
        .decode(hadal_transports::azure::EMULATOR_KEY)
        .map_err(|e| e.to_string())?;
    let date = httpdate_now();
    let version = "2021-08-06";
    let string_to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{account}/{account}/{container}\nrestype:container"
    );
    let signature = base64::engine::general_purpose::STANDARD
        .encode(hmac_sha256(&key, string_to_sign.as_bytes()));
    let request = format!(
        "PUT /{account}/{container}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         x-ms-date: {date}\r\nx-ms-version: {version}\r\nContent-Length: 0\r\n\
         Authorization: SharedKey {account}:{signature}\r\nConnection: close\r\n\r\n"
    );
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    let status: u16 = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    match status {
        201 | 409 => Ok(()),
        _ => Err(format!(
            "create container {container}: {}",
            answer.lines().next().unwrap_or("")
        )),
    }
}

/// HMAC-SHA256 (RFC 2104) over sha2, to sign one request without another dependency.
#[cfg(feature = "azure")]
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// The current time in RFC 1123 form (`Sun, 06 Nov 1994 08:49:37 GMT`).
#[cfg(feature = "azure")]
fn httpdate_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let (h, m, s) = ((secs % 86_400) / 3600, (secs % 3600) / 60, secs % 60);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let names = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month_name = names[(month - 1) as usize];
    format!("{weekday}, {day:02} {month_name} {year} {h:02}:{m:02}:{s:02} GMT")
}

#[cfg(all(test, feature = "azure"))]
mod tests {
    use super::*;

    // Proves the hand-rolled HMAC matches RFC 4231 test case 2.
    #[test]
    fn hmac_matches_rfc_4231() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
