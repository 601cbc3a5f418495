//! Drives `hadal serve`'s RESP front-end with the stock Redis tools, redis-cli and
//! redis-benchmark (Debian's `redis-tools`; scripts/redis-tools.sh installs them, scripts/test.sh
//! runs that): the tools users will point at Hadal must work against it unchanged and error-free.
//! A missing tool fails the test: a skipped test would read as a pass.

mod server_process;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use server_process::{client, writer};

/// How long one tool run may take (a bound on waiting, not a performance threshold).
const TOOL_WAIT: Duration = Duration::from_secs(300);

/// Panics with what to run when redis-cli or redis-benchmark is not installed.
fn require_tools() {
    for tool in ["redis-cli", "redis-benchmark"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            let how = if std::env::var("CI").as_deref() == Ok("true") {
                "CI must install it before the tests: run `bash scripts/redis-tools.sh` \
                 (scripts/test.sh does)"
            } else {
                "install it with `bash scripts/redis-tools.sh` (scripts/test.sh runs that)"
            };
            panic!("{tool} is not installed and this test does not skip: {how}");
        }
    }
}

/// What one tool run printed.
struct Run {
    line: String,
    success: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "`{}` (success: {})\n--- stdout\n{}\n--- stderr\n{}",
            self.line, self.success, self.stdout, self.stderr
        )
    }
}

/// Runs `program ARGS` with `stdin`, its output in files under `dir` (no pipe can fill up),
/// killing it after `TOOL_WAIT`.
fn run(dir: &Path, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Run {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, Ordering::SeqCst);
    let line = format!("{program} {}", args.join(" "));
    let (out_path, err_path) = (dir.join(format!("{n}.out")), dir.join(format!("{n}.err")));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(std::fs::File::create(&out_path).expect("create stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("create stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn `{line}`: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("a stdin pipe");
        std::io::Write::write_all(&mut pipe, input)
            .unwrap_or_else(|e| panic!("write stdin of `{line}`: {e}"));
        // Dropping the pipe closes stdin: the tool sees the end of its input.
    }
    let deadline = Instant::now() + TOOL_WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`{line}` did not finish in {TOOL_WAIT:?}; stdout so far:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        line,
        success: status.success(),
        stdout: std::fs::read_to_string(&out_path).expect("read stdout"),
        stderr: std::fs::read_to_string(&err_path).expect("read stderr"),
    }
}

/// Runs `redis-cli -p PORT ARGS` and returns its stdout; the run must succeed.
fn cli(dir: &Path, port: &str, args: &[&str]) -> String {
    let mut all = vec!["-p", port];
    all.extend_from_slice(args);
    let run = run(dir, "redis-cli", &all, None);
    assert!(run.success, "{}", run.describe());
    run.stdout
}

/// Runs `redis-benchmark -p PORT -q ARGS` and returns the requests per second of each of
/// `tests` (the names it prints, such as `SET` or `MSET (10 keys)`); panics on any error, a
/// failed run or a missing result line.
fn benchmark(dir: &Path, port: &str, args: &[&str], tests: &[&str]) -> Vec<f64> {
    let mut all = vec!["-p", port, "-q"];
    all.extend_from_slice(args);
    let run = run(dir, "redis-benchmark", &all, None);
    let output = format!("{}\n{}", run.stdout, run.stderr);
    assert!(run.success, "{}", run.describe());
    // redis-benchmark exits on the first error reply and prints "Error from server: …".
    assert!(
        !output.to_lowercase().contains("error"),
        "an error: {}",
        run.describe()
    );
    // It reads CONFIG GET save/appendonly first; the spec has Hadal answer that.
    assert!(
        !output.contains("Could not fetch server CONFIG"),
        "{}",
        run.describe()
    );
    tests
        .iter()
        .map(|test| {
            // Progress lines end in '\r'; the result line of a test is
            // `NAME: 12345.67 requests per second, p50=… msec`.
            let rate = run
                .stdout
                .split(['\r', '\n'])
                .map(str::trim)
                .find_map(|line| {
                    line.strip_prefix(test)?
                        .strip_prefix(": ")?
                        .split_once(" requests per second")?
                        .0
                        .parse::<f64>()
                        .ok()
                });
            match rate {
                Some(rate) if rate > 0.0 => rate,
                _ => panic!("no result line for {test}: {}", run.describe()),
            }
        })
        .collect()
}

/// `count` SET commands `pipe:I` → `vI` in the RESP wire format, for `redis-cli --pipe`.
fn mass_insert(count: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..count {
        let (key, value) = (format!("pipe:{i}"), format!("v{i}"));
        out.extend_from_slice(
            format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
                key.len(),
                value.len()
            )
            .as_bytes(),
        );
    }
    out
}

fn check_redis_cli(dir: &Path, port: &str) {
    assert_eq!(cli(dir, port, &["PING"]), "PONG\n");
    assert_eq!(cli(dir, port, &["SET", "greeting", "hello"]), "OK\n");
    assert_eq!(cli(dir, port, &["GET", "greeting"]), "hello\n");
    assert_eq!(cli(dir, port, &["INCR", "visits"]), "1\n");
    assert_eq!(cli(dir, port, &["INCRBY", "visits", "41"]), "42\n");
    assert_eq!(cli(dir, port, &["GET", "visits"]), "42\n");
    // A nil reply prints as an empty line.
    assert_eq!(cli(dir, port, &["GET", "missing"]), "\n");
    let out = cli(dir, port, &["INCR", "greeting"]);
    assert!(
        out.contains("ERR value is not an integer or out of range"),
        "{out}"
    );
    assert_eq!(cli(dir, port, &["-3", "GET", "greeting"]), "hello\n");
    assert_eq!(
        cli(dir, port, &["--scan", "--pattern", "gree*"]),
        "greeting\n"
    );
    assert_eq!(cli(dir, port, &["DBSIZE"]), "2\n");

    // Mass insertion: the raw protocol through `--pipe`, which ends with an ECHO it waits for.
    let run = run(
        dir,
        "redis-cli",
        &["-p", port, "--pipe"],
        Some(&mass_insert(1000)),
    );
    assert!(run.success, "{}", run.describe());
    assert!(
        run.stdout.contains("errors: 0, replies: 1000"),
        "{}",
        run.describe()
    );
    assert_eq!(cli(dir, port, &["GET", "pipe:999"]), "v999\n");
    assert_eq!(cli(dir, port, &["DBSIZE"]), "1002\n");
}

fn check_redis_benchmark(dir: &Path, port: &str) {
    benchmark(
        dir,
        port,
        &["-t", "set,get,incr", "-n", "10000"],
        &["SET", "GET", "INCR"],
    );
    // Every INCR of the run hit the one key `counter:__rand_int__` (no -r): none was lost.
    assert_eq!(cli(dir, port, &["GET", "counter:__rand_int__"]), "10000\n");
    assert_eq!(cli(dir, port, &["STRLEN", "key:__rand_int__"]), "3\n");
    benchmark(
        dir,
        port,
        &["-t", "mset", "-n", "1000"],
        &["MSET (10 keys)"],
    );
    // Pipelined: 16 requests in flight per connection.
    benchmark(
        dir,
        port,
        &["-t", "set", "-n", "10000", "-P", "16"],
        &["SET"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_and_redis_benchmark_work_against_hadal_serve() {
    // Proves redis-cli (commands, RESP3 with -3, --scan, --pipe mass insertion) gets the
    // answers Redis gives, and redis-benchmark's set/get/incr, mset and pipelined runs complete
    // with zero errors and lose no INCR.
    require_tools();
    let dir = tempfile::tempdir().expect("tempdir");
    // Async durability: this test is about the protocol, and the benchmark writes a lot.
    let mut server = writer(dir.path(), &["--durability", "async"]);
    server.ready(&client()).await;
    let port = server.resp_port.to_string();
    let out_dir: PathBuf = dir.path().join("tool-output");
    std::fs::create_dir(&out_dir).expect("create the tool output folder");
    let checks = tokio::task::spawn_blocking(move || {
        check_redis_cli(&out_dir, &port);
        check_redis_benchmark(&out_dir, &port);
    })
    .await;
    if let Err(e) = checks {
        eprintln!("the server's log:\n{}", server.log());
        std::panic::resume_unwind(e.into_panic());
    }
    assert!(server.is_running(), "{}", server.log());
}
