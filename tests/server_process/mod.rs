//! Real `hadal serve` / `hadal replica` processes for the end-to-end tests (`mod server_process;`
//! in tests/server.rs, tests/server_resp.rs and tests/redis_tools.rs): each listens on free
//! loopback ports for HTTP and RESP, writes its log to a file the failure messages quote, and is
//! killed when its handle drops, also when a test fails.

// Each test crate that includes this module uses a different part of it; what one of them leaves
// unused must not fail `cargo clippy --all-targets -- -D warnings`.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

pub const HADAL: &str = env!("CARGO_BIN_EXE_hadal");
/// How long a process may take to become ready or to exit before the test gives up on it
/// (a bound on waiting, not a performance threshold).
pub const PROCESS_WAIT: Duration = Duration::from_secs(60);

/// A loopback port nobody listens on right now (the OS hands out a fresh ephemeral one).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// A running `hadal` server process; killed on drop.
pub struct Server {
    child: Option<Child>,
    /// The HTTP base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    /// The port of the Redis-protocol (RESP) listener on 127.0.0.1.
    pub resp_port: u16,
    log: PathBuf,
}

impl Server {
    /// Starts `hadal ROLE ARGS… --http 127.0.0.1:PORT --resp 127.0.0.1:PORT2`.
    pub fn start(role: &str, args: &[&str], log_dir: &Path) -> Server {
        Server::start_with_env(role, args, &[], log_dir)
    }

    /// [`Server::start`] with extra environment variables (an object store's credentials).
    pub fn start_with_env(
        role: &str,
        args: &[&str],
        env: &[(String, String)],
        log_dir: &Path,
    ) -> Server {
        let port = free_port();
        let resp_port = free_port();
        let log = log_dir.join(format!("{role}-{port}.log"));
        let file = std::fs::File::create(&log).expect("create the log file");
        let child = Command::new(HADAL)
            .arg(role)
            .args(args)
            .args(["--http", &format!("127.0.0.1:{port}")])
            .args(["--resp", &format!("127.0.0.1:{resp_port}")])
            .env("HADAL_LOG", "info")
            .env_remove("HADAL_CONFIG")
            .env_remove("HADAL_API_KEY_HASHES")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn hadal");
        Server {
            child: Some(child),
            url: format!("http://127.0.0.1:{port}"),
            resp_port,
            log,
        }
    }

    /// The RESP listener as a client URL, `redis://127.0.0.1:PORT2`.
    pub fn resp_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.resp_port)
    }

    /// The RESP listener's socket address, for raw TCP clients.
    pub fn resp_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.resp_port))
    }

    /// Everything the process logged so far (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/readyz` answers 200; panics with the server's log if it exits or takes
    /// longer than `PROCESS_WAIT`.
    pub async fn ready(&mut self, client: &reqwest::Client) {
        let deadline = Instant::now() + PROCESS_WAIT;
        loop {
            if let Ok(r) = client.get(format!("{}/readyz", self.url)).send().await
                && r.status() == StatusCode::OK
            {
                return;
            }
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!("hadal exited with {status} before ready:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "hadal not ready in {PROCESS_WAIT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the process is still running (it has not exited, whatever the reason).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit and returns whether it exited successfully.
    pub async fn exit(&mut self) -> bool {
        let deadline = Instant::now() + PROCESS_WAIT;
        let mut child = self.child.take().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("hadal did not exit in {PROCESS_WAIT:?}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process with SIGKILL, as a crash or a vanished instance would end it (no
    /// shutdown, no final ship), and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and returns whether the process then exited successfully.
    pub async fn exit_after_term(&mut self) -> bool {
        self.terminate();
        self.exit().await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An HTTP client whose requests give up after a minute (a bound on waiting).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// The `file://` bucket every server started by these helpers in `dir` shares.
pub fn bucket_url(dir: &Path) -> String {
    format!("file://{}", dir.join("bucket").display())
}

/// A writer on a fresh data folder and bucket inside `dir`.
pub fn writer(dir: &Path, extra: &[&str]) -> Server {
    let data = dir.join("data");
    let bucket = bucket_url(dir);
    let mut args = vec!["--data", data.to_str().expect("utf-8"), "--bucket", &bucket];
    args.extend_from_slice(extra);
    Server::start("serve", &args, dir)
}

/// A replica of the bucket in `dir` (the one `writer` uses), on its own data folder there.
pub fn replica(dir: &Path, extra: &[&str]) -> Server {
    let data = dir.join("replica");
    let bucket = bucket_url(dir);
    let mut args = vec!["--bucket", &bucket, "--data", data.to_str().expect("utf-8")];
    args.extend_from_slice(extra);
    Server::start("replica", &args, dir)
}

/// A second `hadal serve` of `dir`'s bucket with its own data folder: once ready it has taken
/// the bucket over and fenced the first writer, as a rolling deploy does.
pub fn second_writer(dir: &Path) -> Server {
    let data = dir.join("b-data");
    let bucket = bucket_url(dir);
    Server::start(
        "serve",
        &["--data", data.to_str().expect("utf-8"), "--bucket", &bucket],
        dir,
    )
}

/// One API key of each role and the `--api-key-hash` flag value that configures all three.
pub struct RoleKeys {
    pub reader: String,
    pub writer: String,
    pub admin: String,
    /// `reader:SHA:r,writer:SHA:w,admin:SHA:a`.
    pub flag: String,
}

impl RoleKeys {
    pub fn new() -> RoleKeys {
        use hadal::server::auth::{generate_key, hash_key};
        let (reader, writer, admin) = (generate_key(), generate_key(), generate_key());
        let flag = format!(
            "reader:{}:r,writer:{}:w,admin:{}:a",
            hash_key(&reader),
            hash_key(&writer),
            hash_key(&admin)
        );
        RoleKeys {
            reader,
            writer,
            admin,
            flag,
        }
    }
}
