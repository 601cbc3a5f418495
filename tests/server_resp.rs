//! End-to-end tests of the Redis-protocol (RESP) front-end of `hadal serve` and `hadal replica`:
//! real processes on free loopback ports (tests/server_process), driven with the `redis` crate as
//! real applications drive them, and with raw TCP where the bytes on the wire are the point
//! (malformed frames, pipelining, QUIT). Every process is killed when its handle drops.

mod server_process;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis::{FromRedisValue, RedisError, Value};
use reqwest::StatusCode;
use server_process::{PROCESS_WAIT, RoleKeys, Server, client, replica, second_writer, writer};

/// How long one RESP reply may take (a bound on waiting, not a performance threshold; the
/// crate's default of 500 ms is too short for a strict write on a loaded machine).
const REPLY_WAIT: Duration = Duration::from_secs(30);
/// How long a raw-TCP exchange waits for the server to answer or close the connection.
const RAW_WAIT: Duration = Duration::from_secs(15);
/// How long a test sleeps past a 50 ms expiry before it expects the key gone.
const EXPIRY_SLACK: Duration = Duration::from_millis(200);

/// Waits until `server` is ready (HTTP `/readyz`; the spec says RESP serves from then on).
async fn started(mut server: Server) -> Server {
    server.ready(&client()).await;
    server
}

/// A new RESP connection to `url` (`redis://…`, optionally with a key and `?protocol=resp3`).
async fn connect(url: &str) -> MultiplexedConnection {
    try_connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url} over RESP: {e}"))
}

async fn try_connect(url: &str) -> redis::RedisResult<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(REPLY_WAIT))
        .set_response_timeout(Some(REPLY_WAIT));
    redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

fn cmd(args: &[&str]) -> redis::Cmd {
    let (name, rest) = args.split_first().expect("a command name");
    let mut cmd = redis::cmd(name);
    for arg in rest {
        cmd.arg(*arg);
    }
    cmd
}

/// Runs `args` and converts the reply; panics naming the command if the reply is an error.
async fn ok<T: FromRedisValue>(con: &mut MultiplexedConnection, args: &[&str]) -> T {
    cmd(args)
        .query_async(con)
        .await
        .unwrap_or_else(|e| panic!("{args:?} failed: {e}"))
}

/// Runs `args`, whose reply must be an integer.
async fn int(con: &mut MultiplexedConnection, args: &[&str]) -> i64 {
    match ok::<Value>(con, args).await {
        Value::Int(n) => n,
        other => panic!("{args:?} answered {other:?}, not an integer"),
    }
}

/// Runs `args`, whose reply must be an error; returns it as `CODE detail`.
async fn err(con: &mut MultiplexedConnection, args: &[&str]) -> String {
    match cmd(args).query_async::<Value>(con).await {
        Ok(v) => panic!("{args:?} answered {v:?}, not an error"),
        Err(e) => error_line(&e),
    }
}

/// An error reply as the server sent it, `CODE detail`; panics on client-side errors.
fn error_line(e: &RedisError) -> String {
    let code = e
        .code()
        .unwrap_or_else(|| panic!("not an error reply from the server: {e}"));
    match e.detail() {
        Some(detail) => format!("{code} {detail}"),
        None => code.to_owned(),
    }
}

fn bulk(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

/// The text of a string-like reply.
fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::VerbatimString { text, .. } => text.clone(),
        Value::Okay => "OK".to_owned(),
        other => panic!("{other:?} is not a string reply"),
    }
}

/// A HELLO or CONFIG GET reply as field → value: a RESP3 map or a RESP2 flat array of pairs.
fn fields(v: Value) -> BTreeMap<String, Value> {
    match v {
        Value::Map(pairs) => pairs.into_iter().map(|(k, v)| (text(&k), v)).collect(),
        Value::Array(items) => {
            assert!(
                items.len().is_multiple_of(2),
                "an odd number of items: {items:?}"
            );
            items
                .chunks_exact(2)
                .map(|pair| (text(&pair[0]), pair[1].clone()))
                .collect()
        }
        other => panic!("{other:?} is neither a map nor an array of pairs"),
    }
}

/// Asserts `info` reads like Redis's INFO: `# Section` headers and `field:value` lines.
fn assert_info_format(info: &str) {
    let mut field_count = 0;
    for line in info.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        assert!(
            line.contains(':'),
            "INFO line {line:?} is not `field:value`:\n{info}"
        );
        field_count += 1;
    }
    assert!(field_count > 0, "INFO has no fields:\n{info}");
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
}

/// Walks a SCAN from cursor 0 to cursor 0 with `options`; returns the keys and the call count.
async fn scan_all(con: &mut MultiplexedConnection, options: &[&str]) -> (Vec<String>, usize) {
    let mut cursor = "0".to_owned();
    let mut keys = Vec::new();
    let mut calls = 0;
    loop {
        let mut args = vec!["SCAN", cursor.as_str()];
        args.extend_from_slice(options);
        let (next, page): (String, Vec<String>) = ok(con, &args).await;
        calls += 1;
        assert!(
            next.parse::<u64>().is_ok(),
            "the cursor {next:?} is not a decimal number"
        );
        keys.extend(page);
        if next == "0" {
            return (keys, calls);
        }
        assert!(calls < 10_000, "SCAN {options:?} does not come back to 0");
        cursor = next;
    }
}

/// How a raw exchange ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The server closed the connection (end of stream or reset).
    Closed,
    /// The reply was complete by the caller's measure; the connection is still open.
    Complete,
    /// `RAW_WAIT` passed with the connection open and the reply incomplete.
    TimedOut,
}

/// Sends `request` on a fresh connection and reads the reply until the server closes the
/// connection, `complete` says the reply is whole, or `RAW_WAIT` passes. The request is written
/// from a second thread, so a server that answers before reading it all cannot deadlock us.
async fn raw(
    addr: SocketAddr,
    request: Vec<u8>,
    complete: fn(&[u8], usize) -> bool,
    expected_len: usize,
) -> (Vec<u8>, End) {
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect_timeout(&addr, RAW_WAIT).expect("connect raw TCP");
        stream
            .set_write_timeout(Some(RAW_WAIT))
            .expect("set_write_timeout");
        let mut sender = stream.try_clone().expect("clone the stream");
        let writer = std::thread::spawn(move || {
            // The server may close mid-request (that is the point of some requests).
            let _ = sender.write_all(&request);
        });
        let reply = read_reply(&mut stream, |r| complete(r, expected_len));
        writer.join().expect("the writer thread");
        reply
    })
    .await
    .expect("the raw exchange")
}

/// Sends `pieces` one write at a time, 20 ms apart, and reads `expected_len` bytes of reply.
async fn raw_in_pieces(addr: SocketAddr, pieces: Vec<Vec<u8>>, expected_len: usize) -> Vec<u8> {
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect_timeout(&addr, RAW_WAIT).expect("connect raw TCP");
        stream.set_nodelay(true).expect("set_nodelay");
        for piece in &pieces {
            stream.write_all(piece).expect("write a piece");
            std::thread::sleep(Duration::from_millis(20));
        }
        let (reply, end) = read_reply(&mut stream, |r| r.len() >= expected_len);
        assert_eq!(
            end,
            End::Complete,
            "reply so far: {:?}",
            String::from_utf8_lossy(&reply)
        );
        reply
    })
    .await
    .expect("the raw exchange")
}

fn read_reply(stream: &mut TcpStream, complete: impl Fn(&[u8]) -> bool) -> (Vec<u8>, End) {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("set_read_timeout");
    let deadline = Instant::now() + RAW_WAIT;
    let mut reply = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if complete(&reply) {
            return (reply, End::Complete);
        }
        match stream.read(&mut buf) {
            Ok(0) => return (reply, End::Closed),
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if Instant::now() > deadline {
                    return (reply, End::TimedOut);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                return (reply, End::Closed);
            }
            Err(e) => panic!("read a raw reply: {e}"),
        }
    }
}

/// Reads until the server closes the connection.
fn until_closed(_reply: &[u8], _expected_len: usize) -> bool {
    false
}

/// Reads until `expected_len` bytes arrived.
fn at_least(reply: &[u8], expected_len: usize) -> bool {
    reply.len() >= expected_len
}

/// One RESP request frame: an array of bulk strings.
fn frame(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The value of one Prometheus series (`name{labels}`) in `/metrics` text, if present.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_commands_answer_like_redis() {
    // Proves PING, ECHO, HELLO 2/3 (with SETNAME), SELECT, CLIENT, COMMAND, CONFIG GET, INFO
    // and QUIT answer as Redis does, names are case-insensitive, a RESP3 client works, and
    // unknown commands and wrong arities get Redis's error lines on a connection that lives on.
    let dir = tempfile::tempdir().expect("tempdir");
    let server = started(writer(dir.path(), &[])).await;
    let mut con = connect(&server.resp_url()).await;

    assert_eq!(
        ok::<Value>(&mut con, &["PING"]).await,
        Value::SimpleString("PONG".into())
    );
    assert_eq!(
        ok::<Value>(&mut con, &["pInG", "hello there"]).await,
        bulk("hello there")
    );
    assert_eq!(ok::<Value>(&mut con, &["echo", "x y"]).await, bulk("x y"));
    assert_eq!(ok::<Value>(&mut con, &["ECHO", ""]).await, bulk(""));

    let hello2 = ok::<Value>(&mut con, &["HELLO", "2"]).await;
    assert!(matches!(hello2, Value::Array(_)), "HELLO 2: {hello2:?}");
    let hello2 = fields(hello2);
    assert_eq!(hello2.get("proto"), Some(&Value::Int(2)), "{hello2:?}");
    assert!(hello2.contains_key("server"), "{hello2:?}");

    // HELLO 3 switches this connection to RESP3 and names it.
    let mut con3 = connect(&server.resp_url()).await;
    let hello3 = ok::<Value>(&mut con3, &["HELLO", "3", "SETNAME", "resp3-test"]).await;
    assert!(matches!(hello3, Value::Map(_)), "HELLO 3: {hello3:?}");
    let hello3 = fields(hello3);
    assert_eq!(hello3.get("proto"), Some(&Value::Int(3)), "{hello3:?}");
    assert_eq!(
        ok::<Value>(&mut con3, &["CLIENT", "GETNAME"]).await,
        bulk("resp3-test")
    );
    assert_eq!(
        ok::<Value>(&mut con3, &["GET", "nothing"]).await,
        Value::Nil
    );
    assert_eq!(
        ok::<Value>(&mut con3, &["SET", "r3", "v"]).await,
        Value::Okay
    );
    assert_eq!(ok::<Value>(&mut con3, &["GET", "r3"]).await, bulk("v"));
    // A client that asks for RESP3 when it connects (it sends HELLO 3 itself).
    let mut resp3 = connect(&format!("{}/?protocol=resp3", server.resp_url())).await;
    let hello = fields(ok::<Value>(&mut resp3, &["HELLO"]).await);
    assert_eq!(hello.get("proto"), Some(&Value::Int(3)), "{hello:?}");
    assert_eq!(int(&mut resp3, &["TTL", "r3"]).await, -1);

    assert_eq!(ok::<Value>(&mut con, &["SELECT", "0"]).await, Value::Okay);
    let e = err(&mut con, &["SELECT", "1"]).await;
    assert!(e.starts_with("ERR DB index is out of range"), "{e}");

    let id = int(&mut con, &["CLIENT", "ID"]).await;
    let other_id = int(&mut con3, &["CLIENT", "ID"]).await;
    assert!(id > 0 && other_id > 0 && id != other_id, "{id} {other_id}");
    assert_eq!(
        ok::<Value>(&mut con, &["CLIENT", "GETNAME"]).await,
        Value::Nil
    );
    assert_eq!(
        ok::<Value>(&mut con, &["client", "setname", "plain"]).await,
        Value::Okay
    );
    assert_eq!(
        ok::<Value>(&mut con, &["CLIENT", "GETNAME"]).await,
        bulk("plain")
    );
    assert_eq!(
        ok::<Value>(&mut con, &["CLIENT", "SETINFO", "LIB-NAME", "hadal-tests"]).await,
        Value::Okay
    );

    let count = int(&mut con, &["COMMAND", "COUNT"]).await;
    let Value::Array(commands) = ok::<Value>(&mut con, &["COMMAND"]).await else {
        panic!("COMMAND is not an array");
    };
    assert_eq!(commands.len() as i64, count, "COMMAND COUNT vs COMMAND");
    let names: BTreeSet<String> = commands
        .iter()
        .map(|c| match c {
            Value::Array(entry) if !entry.is_empty() => text(&entry[0]).to_lowercase(),
            other => panic!("a COMMAND entry {other:?} is not [name, …]"),
        })
        .collect();
    for name in ["get", "set", "incr", "scan", "multi", "exec"] {
        assert!(names.contains(name), "COMMAND lacks {name}: {names:?}");
    }
    let docs = ok::<Value>(&mut con, &["COMMAND", "DOCS"]).await;
    assert!(
        matches!(docs, Value::Array(_) | Value::Map(_)),
        "COMMAND DOCS: {docs:?}"
    );

    for name in ["save", "appendonly"] {
        let config = fields(ok::<Value>(&mut con, &["CONFIG", "GET", name]).await);
        assert_eq!(
            config.keys().collect::<Vec<_>>(),
            [name],
            "CONFIG GET {name}"
        );
    }
    let info: String = ok(&mut con, &["INFO"]).await;
    assert_info_format(&info);
    let server_info: String = ok(&mut con, &["info", "server"]).await;
    assert_info_format(&server_info);

    let unknown = err(&mut con, &["FOO", "a", "b"]).await;
    assert!(
        unknown
            .to_lowercase()
            .starts_with("err unknown command 'foo', with args beginning with:"),
        "{unknown}"
    );
    assert!(unknown.contains("'a'"), "{unknown}");
    for (args, name) in [
        (&["GET"][..], "get"),
        (&["get", "a", "b"][..], "get"),
        (&["SET", "k"][..], "set"),
        (&["MSET", "a", "1", "b"][..], "mset"),
        (&["INCRBY", "k"][..], "incrby"),
        (&["ECHO"][..], "echo"),
    ] {
        assert_eq!(
            err(&mut con, args).await,
            format!("ERR wrong number of arguments for '{name}' command"),
            "{args:?}"
        );
    }
    // The connection survived its errors.
    assert_eq!(
        ok::<Value>(&mut con, &["PING"]).await,
        Value::SimpleString("PONG".into())
    );

    // QUIT answers OK and the server closes the connection.
    let (reply, end) = raw(server.resp_addr(), frame(&[b"quit"]), until_closed, 0).await;
    assert_eq!(String::from_utf8_lossy(&reply), "+OK\r\n");
    assert_eq!(end, End::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_commands_follow_redis_semantics() {
    // Proves GET/SET with EX/PX/EXAT/PXAT/KEEPTTL/NX/XX/GET, SETNX, GETDEL, DEL, EXISTS, MGET,
    // MSET, the INCR family with its non-integer and overflow errors, APPEND, STRLEN, EXPIRE,
    // PEXPIRE, TTL, PTTL and PERSIST, binary-safe keys and values, and that a key set with
    // PX 50 (or given PEXPIRE 50) is gone afterwards.
    let dir = tempfile::tempdir().expect("tempdir");
    let server = started(writer(dir.path(), &[])).await;
    let mut con = connect(&server.resp_url()).await;

    // GET, SET, SET … GET.
    assert_eq!(ok::<Value>(&mut con, &["GET", "k"]).await, Value::Nil);
    assert_eq!(
        ok::<Value>(&mut con, &["SET", "k", "v1"]).await,
        Value::Okay
    );
    assert_eq!(ok::<Value>(&mut con, &["GET", "k"]).await, bulk("v1"));
    assert_eq!(
        ok::<Value>(&mut con, &["SET", "k", "v2", "GET"]).await,
        bulk("v1")
    );
    assert_eq!(
        ok::<Value>(&mut con, &["SET", "fresh", "f", "GET"]).await,
        Value::Nil
    );
    assert_eq!(ok::<Value>(&mut con, &["GET", "k"]).await, bulk("v2"));
    assert_eq!(ok::<Value>(&mut con, &["GET", "fresh"]).await, bulk("f"));

    // NX and XX.
    assert_eq!(
        ok::<Value>(&mut con, &["SET", "nx", "a", "NX"]).await,
        Value::Okay
    );
    assert_eq!(
        ok::<Value>(&mut con, &["SET", "nx", "b", "nx"]).await,
        Value::Nil
    );
    assert_eq!(ok::<Value>(&mut con, &["GET", "nx"]).await, bulk("a"));
    assert_eq!(
        ok::<Value>(&mut con, &["SET", "xx", "a", "XX"]).await,
        Value::Nil
    );
    assert_eq!(int(&mut con, &["EXISTS", "xx"]).await, 0);
    assert_eq!(
        ok::<Value>(&mut con, &["SET", "nx", "c", "XX"]).await,
        Value::Okay
    );
    assert_eq!(ok::<Value>(&mut con, &["GET", "nx"]).await, bulk("c"));
    let e = err(&mut con, &["SET", "nx", "d", "NX", "XX"]).await;
    assert!(e.starts_with("ERR "), "{e}");
    assert_eq!(ok::<Value>(&mut con, &["GET", "nx"]).await, bulk("c"));

    // TTL and PTTL: -2 missing, -1 without expiry.
    assert_eq!(int(&mut con, &["TTL", "missing"]).await, -2);
    assert_eq!(int(&mut con, &["PTTL", "missing"]).await, -2);
    assert_eq!(int(&mut con, &["TTL", "k"]).await, -1);
    assert_eq!(int(&mut con, &["PTTL", "k"]).await, -1);

    // EX, PX, EXAT, PXAT, KEEPTTL; a plain SET drops the expiry.
    assert_eq!(
        ok::<Value>(&mut con, &["SET", "ex", "v", "EX", "100"]).await,
        Value::Okay
    );
    let ttl = int(&mut con, &["TTL", "ex"]).await;
    assert!((1..=100).contains(&ttl), "TTL after EX 100: {ttl}");
    let pttl = int(&mut con, &["PTTL", "ex"]).await;
    assert!((1..=100_000).contains(&pttl), "PTTL after EX 100: {pttl}");
    assert_eq!(
        ok::<Value>(&mut con, &["SET", "px", "v", "PX", "100000"]).await,
        Value::Okay
    );
    let pttl = int(&mut con, &["PTTL", "px"]).await;
    assert!(
        (1..=100_000).contains(&pttl),
        "PTTL after PX 100000: {pttl}"
    );
    let exat = (unix_now().as_secs() + 100).to_string();
    assert_eq!(
        ok::<Value>(&mut con, &["SET", "exat", "v", "EXAT", &exat]).await,
        Value::Okay
    );
    let ttl = int(&mut con, &["TTL", "exat"]).await;
    assert!((50..=100).contains(&ttl), "TTL after EXAT now+100: {ttl}");
    let pxat = (unix_now().as_millis() + 100_000).to_string();
    assert_eq!(
        ok::<Value>(&mut con, &["SET", "pxat", "v", "PXAT", &pxat]).await,
        Value::Okay
    );
    let pttl = int(&mut con, &["PTTL", "pxat"]).await;
    assert!(
        (50_000..=100_000).contains(&pttl),
        "PTTL after PXAT now+100s: {pttl}"
    );
    assert_eq!(
        ok::<Value>(&mut con, &["SET", "ex", "v2", "KEEPTTL"]).await,
        Value::Okay
    );
    let ttl = int(&mut con, &["TTL", "ex"]).await;
    assert!((1..=100).contains(&ttl), "TTL after KEEPTTL: {ttl}");
    assert_eq!(ok::<Value>(&mut con, &["GET", "ex"]).await, bulk("v2"));
    assert_eq!(
        ok::<Value>(&mut con, &["SET", "ex", "v3"]).await,
        Value::Okay
    );
    assert_eq!(int(&mut con, &["TTL", "ex"]).await, -1);
    for bad in [
        &["SET", "k", "v", "EX", "0"][..],
        &["SET", "k", "v", "EX", "soon"][..],
        &["SET", "k", "v", "PX", "-5"][..],
    ] {
        let e = err(&mut con, bad).await;
        assert!(e.starts_with("ERR "), "{bad:?}: {e}");
    }
    assert_eq!(ok::<Value>(&mut con, &["GET", "k"]).await, bulk("v2"));

    // EXPIRE, PEXPIRE, PERSIST.
    assert_eq!(int(&mut con, &["EXPIRE", "k", "100"]).await, 1);
    let ttl = int(&mut con, &["TTL", "k"]).await;
    assert!((1..=100).contains(&ttl), "TTL after EXPIRE 100: {ttl}");
    assert_eq!(int(&mut con, &["EXPIRE", "missing", "100"]).await, 0);
    assert_eq!(int(&mut con, &["PEXPIRE", "k", "200000"]).await, 1);
    let pttl = int(&mut con, &["PTTL", "k"]).await;
    assert!(
        (100_001..=200_000).contains(&pttl),
        "PTTL after PEXPIRE 200000: {pttl}"
    );
    assert_eq!(int(&mut con, &["PEXPIRE", "missing", "100"]).await, 0);
    assert_eq!(int(&mut con, &["PERSIST", "k"]).await, 1);
    assert_eq!(int(&mut con, &["TTL", "k"]).await, -1);
    assert_eq!(int(&mut con, &["PERSIST", "k"]).await, 0);
    assert_eq!(int(&mut con, &["PERSIST", "missing"]).await, 0);
    assert_eq!(ok::<Value>(&mut con, &["GET", "k"]).await, bulk("v2"));

    // Expiry: PX 50 and PEXPIRE 50 make keys vanish.
    assert_eq!(
        ok::<Value>(&mut con, &["SET", "flash", "v", "PX", "50"]).await,
        Value::Okay
    );
    assert_eq!(
        ok::<Value>(&mut con, &["SET", "fade", "v"]).await,
        Value::Okay
    );
    assert_eq!(int(&mut con, &["PEXPIRE", "fade", "50"]).await, 1);
    tokio::time::sleep(Duration::from_millis(50) + EXPIRY_SLACK).await;
    for key in ["flash", "fade"] {
        assert_eq!(
            ok::<Value>(&mut con, &["GET", key]).await,
            Value::Nil,
            "{key}"
        );
        assert_eq!(int(&mut con, &["EXISTS", key]).await, 0, "{key}");
        assert_eq!(int(&mut con, &["TTL", key]).await, -2, "{key}");
        assert_eq!(int(&mut con, &["PTTL", key]).await, -2, "{key}");
        assert_eq!(int(&mut con, &["STRLEN", key]).await, 0, "{key}");
    }
    assert_eq!(
        ok::<Value>(&mut con, &["MGET", "flash", "k"]).await,
        Value::Array(vec![Value::Nil, bulk("v2")])
    );

    // SETNX and GETDEL.
    assert_eq!(int(&mut con, &["SETNX", "s", "a"]).await, 1);
    assert_eq!(int(&mut con, &["SETNX", "s", "b"]).await, 0);
    assert_eq!(ok::<Value>(&mut con, &["GET", "s"]).await, bulk("a"));
    assert_eq!(ok::<Value>(&mut con, &["GETDEL", "s"]).await, bulk("a"));
    assert_eq!(ok::<Value>(&mut con, &["GET", "s"]).await, Value::Nil);
    assert_eq!(ok::<Value>(&mut con, &["GETDEL", "s"]).await, Value::Nil);

    // MSET, MGET, DEL and EXISTS over several keys (EXISTS counts a repeated key each time).
    assert_eq!(
        ok::<Value>(&mut con, &["MSET", "d1", "1", "d2", "2", "d3", "3"]).await,
        Value::Okay
    );
    assert_eq!(
        ok::<Value>(&mut con, &["MGET", "d1", "missing", "d3"]).await,
        Value::Array(vec![bulk("1"), Value::Nil, bulk("3")])
    );
    assert_eq!(
        int(&mut con, &["EXISTS", "d1", "d2", "d3", "missing", "d1"]).await,
        4
    );
    assert_eq!(
        int(&mut con, &["DEL", "d1", "d2", "missing", "d1"]).await,
        2
    );
    assert_eq!(int(&mut con, &["EXISTS", "d1", "d2", "d3"]).await, 1);
    assert_eq!(int(&mut con, &["DEL", "d1"]).await, 0);
    assert_eq!(
        ok::<Value>(&mut con, &["MSET", "d3", "three"]).await,
        Value::Okay
    );
    assert_eq!(ok::<Value>(&mut con, &["GET", "d3"]).await, bulk("three"));

    // INCR, INCRBY, DECR, DECRBY.
    assert_eq!(int(&mut con, &["INCR", "n"]).await, 1);
    assert_eq!(int(&mut con, &["INCRBY", "n", "10"]).await, 11);
    assert_eq!(int(&mut con, &["DECR", "n"]).await, 10);
    assert_eq!(int(&mut con, &["DECRBY", "n", "15"]).await, -5);
    assert_eq!(int(&mut con, &["INCRBY", "n", "-5"]).await, -10);
    assert_eq!(int(&mut con, &["DECR", "new-counter"]).await, -1);
    assert_eq!(ok::<Value>(&mut con, &["GET", "n"]).await, bulk("-10"));
    assert_eq!(
        ok::<Value>(&mut con, &["SET", "text", "abc"]).await,
        Value::Okay
    );
    assert_eq!(
        ok::<Value>(&mut con, &["SET", "float", "1.5"]).await,
        Value::Okay
    );
    let not_integer = "ERR value is not an integer or out of range";
    for args in [
        &["INCR", "text"][..],
        &["INCRBY", "text", "1"][..],
        &["DECR", "text"][..],
        &["DECRBY", "text", "1"][..],
        &["INCR", "float"][..],
        &["INCRBY", "n", "abc"][..],
        &["DECRBY", "n", "1.5"][..],
    ] {
        assert_eq!(err(&mut con, args).await, not_integer, "{args:?}");
    }
    assert_eq!(ok::<Value>(&mut con, &["GET", "text"]).await, bulk("abc"));
    assert_eq!(ok::<Value>(&mut con, &["GET", "n"]).await, bulk("-10"));
    let max = i64::MAX.to_string();
    assert_eq!(
        ok::<Value>(&mut con, &["SET", "big", &max]).await,
        Value::Okay
    );
    let e = err(&mut con, &["INCR", "big"]).await;
    assert!(e.starts_with("ERR "), "{e}");
    assert_eq!(ok::<Value>(&mut con, &["GET", "big"]).await, bulk(&max));

    // APPEND and STRLEN.
    assert_eq!(int(&mut con, &["APPEND", "a", "abc"]).await, 3);
    assert_eq!(int(&mut con, &["APPEND", "a", "de"]).await, 5);
    assert_eq!(ok::<Value>(&mut con, &["GET", "a"]).await, bulk("abcde"));
    assert_eq!(int(&mut con, &["STRLEN", "a"]).await, 5);
    assert_eq!(int(&mut con, &["STRLEN", "missing"]).await, 0);

    // INCR and APPEND keep the key's expiry, as in Redis.
    assert_eq!(
        ok::<Value>(&mut con, &["SET", "c", "10", "EX", "100"]).await,
        Value::Okay
    );
    assert_eq!(int(&mut con, &["INCR", "c"]).await, 11);
    let ttl = int(&mut con, &["TTL", "c"]).await;
    assert!((1..=100).contains(&ttl), "TTL after INCR: {ttl}");
    assert_eq!(int(&mut con, &["APPEND", "c", "0"]).await, 3);
    let ttl = int(&mut con, &["TTL", "c"]).await;
    assert!((1..=100).contains(&ttl), "TTL after APPEND: {ttl}");
    assert_eq!(ok::<Value>(&mut con, &["GET", "c"]).await, bulk("110"));

    // Binary-safe keys and values.
    let key: &[u8] = b"\x00\xffbin\r\nkey";
    let value: &[u8] = b"\x00\r\n\xff";
    let set: Value = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(&mut con)
        .await
        .expect("SET binary");
    assert_eq!(set, Value::Okay);
    let got: Vec<u8> = redis::cmd("GET")
        .arg(key)
        .query_async(&mut con)
        .await
        .expect("GET binary");
    assert_eq!(got, value);
    let len: i64 = redis::cmd("STRLEN")
        .arg(key)
        .query_async(&mut con)
        .await
        .expect("STRLEN binary");
    assert_eq!(len, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_walks_every_key_and_dbsize_counts_them() {
    // Proves SCAN with decimal cursors visits every live key exactly once across many pages,
    // with MATCH (glob `*`, `?`, `[…]`) and COUNT, skips expired keys, and DBSIZE counts keys.
    let dir = tempfile::tempdir().expect("tempdir");
    let server = started(writer(dir.path(), &[])).await;
    let mut con = connect(&server.resp_url()).await;

    assert_eq!(int(&mut con, &["DBSIZE"]).await, 0);
    let (keys, _) = scan_all(&mut con, &[]).await;
    assert!(keys.is_empty(), "{keys:?}");

    let scan_keys: Vec<String> = (0..250).map(|i| format!("scan:{i:03}")).collect();
    let other_keys: Vec<String> = (0..10).map(|i| format!("other:{i}")).collect();
    let mut mset = redis::cmd("MSET");
    for key in scan_keys.iter().chain(&other_keys) {
        mset.arg(key).arg(format!("value of {key}"));
    }
    assert_eq!(
        mset.query_async::<Value>(&mut con)
            .await
            .expect("MSET 260 keys"),
        Value::Okay
    );
    assert_eq!(int(&mut con, &["DBSIZE"]).await, 260);

    let all: BTreeSet<String> = scan_keys.iter().chain(&other_keys).cloned().collect();
    for (options, expected, pages_min) in [
        (
            &["MATCH", "scan:*", "COUNT", "50"][..],
            scan_keys.clone(),
            2,
        ),
        (&["COUNT", "7"][..], all.iter().cloned().collect(), 2),
        (&[][..], all.iter().cloned().collect(), 2),
        (
            &["MATCH", "scan:00?"][..],
            (0..10).map(|i| format!("scan:00{i}")).collect(),
            1,
        ),
        (
            &["MATCH", "scan:1[0-1]*", "COUNT", "1000"][..],
            (100..120).map(|i| format!("scan:{i}")).collect(),
            1,
        ),
        (&["MATCH", "nothing*"][..], Vec::new(), 1),
    ] {
        let (keys, pages) = scan_all(&mut con, options).await;
        let unique: BTreeSet<String> = keys.iter().cloned().collect();
        assert_eq!(unique.len(), keys.len(), "SCAN {options:?} repeated a key");
        let expected: BTreeSet<String> = expected.into_iter().collect();
        assert_eq!(unique, expected, "SCAN {options:?}");
        assert!(
            pages >= pages_min,
            "SCAN {options:?} took {pages} pages, expected at least {pages_min}"
        );
    }
    let e = err(&mut con, &["SCAN", "not-a-cursor"]).await;
    assert!(e.starts_with("ERR "), "{e}");

    // Deleted and expired keys are neither counted by SCAN nor returned.
    let mut del = redis::cmd("DEL");
    for key in &other_keys {
        del.arg(key);
    }
    assert_eq!(
        del.query_async::<Value>(&mut con).await.expect("DEL"),
        Value::Int(10)
    );
    assert_eq!(int(&mut con, &["DBSIZE"]).await, 250);
    assert_eq!(
        ok::<Value>(&mut con, &["SET", "gone", "v", "PX", "50"]).await,
        Value::Okay
    );
    tokio::time::sleep(Duration::from_millis(50) + EXPIRY_SLACK).await;
    let (keys, _) = scan_all(&mut con, &["MATCH", "gone*"]).await;
    assert!(keys.is_empty(), "SCAN returned an expired key: {keys:?}");
    let (keys, _) = scan_all(&mut con, &["COUNT", "100"]).await;
    assert_eq!(
        keys.into_iter().collect::<BTreeSet<_>>(),
        scan_keys.iter().cloned().collect::<BTreeSet<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_exec_discard_and_watch_behave_like_redis() {
    // Proves MULTI queues commands that only EXEC applies (all replies in one array), DISCARD
    // drops them, a queueing error aborts the whole transaction, and WATCH makes EXEC return
    // nil when another connection changed (or created) a watched key, but not after UNWATCH.
    let dir = tempfile::tempdir().expect("tempdir");
    let server = started(writer(dir.path(), &[])).await;
    let mut con = connect(&server.resp_url()).await;
    let mut other = connect(&server.resp_url()).await;
    let queued = Value::SimpleString("QUEUED".into());

    // MULTI … EXEC: nothing is visible before EXEC; EXEC answers every command in order.
    assert_eq!(ok::<Value>(&mut con, &["MULTI"]).await, Value::Okay);
    assert_eq!(ok::<Value>(&mut con, &["SET", "t1", "a"]).await, queued);
    assert_eq!(ok::<Value>(&mut con, &["INCR", "t2"]).await, queued);
    assert_eq!(ok::<Value>(&mut con, &["GET", "t1"]).await, queued);
    assert_eq!(ok::<Value>(&mut other, &["GET", "t1"]).await, Value::Nil);
    assert_eq!(
        ok::<Value>(&mut con, &["EXEC"]).await,
        Value::Array(vec![Value::Okay, Value::Int(1), bulk("a")])
    );
    assert_eq!(ok::<Value>(&mut other, &["GET", "t1"]).await, bulk("a"));
    assert_eq!(ok::<Value>(&mut other, &["GET", "t2"]).await, bulk("1"));

    // DISCARD drops the queue.
    assert_eq!(ok::<Value>(&mut con, &["MULTI"]).await, Value::Okay);
    assert_eq!(ok::<Value>(&mut con, &["SET", "d", "x"]).await, queued);
    let e = err(&mut con, &["MULTI"]).await;
    assert!(e.starts_with("ERR "), "nested MULTI: {e}");
    assert_eq!(ok::<Value>(&mut con, &["DISCARD"]).await, Value::Okay);
    assert_eq!(ok::<Value>(&mut con, &["GET", "d"]).await, Value::Nil);
    let e = err(&mut con, &["EXEC"]).await;
    assert!(e.starts_with("ERR "), "EXEC without MULTI: {e}");
    let e = err(&mut con, &["DISCARD"]).await;
    assert!(e.starts_with("ERR "), "DISCARD without MULTI: {e}");

    // A command that cannot be queued (wrong arity) aborts the transaction at EXEC.
    assert_eq!(ok::<Value>(&mut con, &["MULTI"]).await, Value::Okay);
    assert_eq!(ok::<Value>(&mut con, &["SET", "half", "x"]).await, queued);
    let e = err(&mut con, &["GET"]).await;
    assert_eq!(e, "ERR wrong number of arguments for 'get' command");
    let e = err(&mut con, &["EXEC"]).await;
    assert!(e.starts_with("EXECABORT "), "{e}");
    assert_eq!(ok::<Value>(&mut con, &["GET", "half"]).await, Value::Nil);

    // WATCH: another connection's change makes EXEC return nil and apply nothing.
    assert_eq!(ok::<Value>(&mut con, &["SET", "w", "1"]).await, Value::Okay);
    assert_eq!(ok::<Value>(&mut con, &["WATCH", "w"]).await, Value::Okay);
    assert_eq!(
        ok::<Value>(&mut other, &["SET", "w", "2"]).await,
        Value::Okay
    );
    assert_eq!(ok::<Value>(&mut con, &["MULTI"]).await, Value::Okay);
    assert_eq!(ok::<Value>(&mut con, &["SET", "w", "3"]).await, queued);
    assert_eq!(ok::<Value>(&mut con, &["SET", "w-side", "x"]).await, queued);
    assert_eq!(ok::<Value>(&mut con, &["EXEC"]).await, Value::Nil);
    assert_eq!(ok::<Value>(&mut con, &["GET", "w"]).await, bulk("2"));
    assert_eq!(ok::<Value>(&mut con, &["GET", "w-side"]).await, Value::Nil);

    // A watched key that another connection creates counts as changed too.
    assert_eq!(ok::<Value>(&mut con, &["WATCH", "born"]).await, Value::Okay);
    assert_eq!(
        ok::<Value>(&mut other, &["SET", "born", "x"]).await,
        Value::Okay
    );
    assert_eq!(ok::<Value>(&mut con, &["MULTI"]).await, Value::Okay);
    assert_eq!(ok::<Value>(&mut con, &["SET", "born", "y"]).await, queued);
    assert_eq!(ok::<Value>(&mut con, &["EXEC"]).await, Value::Nil);
    assert_eq!(ok::<Value>(&mut con, &["GET", "born"]).await, bulk("x"));

    // An unchanged watched key lets EXEC through; EXEC ends the watch.
    assert_eq!(ok::<Value>(&mut con, &["WATCH", "w"]).await, Value::Okay);
    assert_eq!(ok::<Value>(&mut con, &["MULTI"]).await, Value::Okay);
    assert_eq!(ok::<Value>(&mut con, &["SET", "w", "4"]).await, queued);
    assert_eq!(
        ok::<Value>(&mut con, &["EXEC"]).await,
        Value::Array(vec![Value::Okay])
    );
    assert_eq!(ok::<Value>(&mut con, &["GET", "w"]).await, bulk("4"));

    // UNWATCH forgets the watch: a later change no longer aborts.
    assert_eq!(ok::<Value>(&mut con, &["WATCH", "w"]).await, Value::Okay);
    assert_eq!(ok::<Value>(&mut con, &["UNWATCH"]).await, Value::Okay);
    assert_eq!(
        ok::<Value>(&mut other, &["SET", "w", "5"]).await,
        Value::Okay
    );
    assert_eq!(ok::<Value>(&mut con, &["MULTI"]).await, Value::Okay);
    assert_eq!(ok::<Value>(&mut con, &["SET", "w", "6"]).await, queued);
    assert_eq!(
        ok::<Value>(&mut con, &["EXEC"]).await,
        Value::Array(vec![Value::Okay])
    );
    assert_eq!(ok::<Value>(&mut other, &["GET", "w"]).await, bulk("6"));

    // WATCH inside MULTI is refused.
    assert_eq!(ok::<Value>(&mut con, &["MULTI"]).await, Value::Okay);
    let e = err(&mut con, &["WATCH", "w"]).await;
    assert!(e.starts_with("ERR "), "WATCH inside MULTI: {e}");
    assert_eq!(ok::<Value>(&mut con, &["DISCARD"]).await, Value::Okay);

    // The redis crate's own transaction helper (MULTI … EXEC in one pipeline) works too.
    let (a, n): (String, i64) = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("p")
        .arg("q")
        .ignore()
        .cmd("GET")
        .arg("p")
        .cmd("INCRBY")
        .arg("t2")
        .arg(5)
        .query_async(&mut con)
        .await
        .expect("an atomic pipeline");
    assert_eq!((a.as_str(), n), ("q", 6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp_and_http_share_one_keyspace_and_metrics_count_commands() {
    // Proves a value written over RESP is read over HTTP GET /v1/kv/{key} and the other way
    // round (binary keys, 1 MiB values, TTLs, INCR on an HTTP value, DEL), and /metrics counts
    // RESP commands by outcome and open RESP connections.
    let dir = tempfile::tempdir().expect("tempdir");
    let server = started(writer(dir.path(), &[])).await;
    let c = client();
    let url = &server.url;
    let mut con = connect(&server.resp_url()).await;

    // RESP → HTTP.
    assert_eq!(
        ok::<Value>(&mut con, &["SET", "user:1", "alice"]).await,
        Value::Okay
    );
    let r = c
        .get(format!("{url}/v1/kv/user:1"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.expect("body").as_ref(), b"alice");
    let set: Value = redis::cmd("SET")
        .arg(&b"\x00\xff/ k"[..])
        .arg(&[0u8, 1, 2][..])
        .query_async(&mut con)
        .await
        .expect("SET a binary key");
    assert_eq!(set, Value::Okay);
    let r = c
        .get(format!("{url}/v1/kv/%00%FF%2F%20k"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.expect("body").as_ref(), &[0u8, 1, 2]);
    let big: Vec<u8> = (0..1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    let set: Value = redis::cmd("SET")
        .arg("big-resp")
        .arg(&big[..])
        .query_async(&mut con)
        .await
        .expect("SET 1 MiB");
    assert_eq!(set, Value::Okay);
    let r = c
        .get(format!("{url}/v1/kv/big-resp"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.bytes().await.expect("body").as_ref(), &big[..]);
    assert_eq!(
        ok::<Value>(&mut con, &["SET", "session", "s", "EX", "600"]).await,
        Value::Okay
    );
    let r = c
        .get(format!("{url}/v1/kv/session"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers().contains_key("hadal-expires-ms"),
        "a RESP expiry is not visible over HTTP: {:?}",
        r.headers()
    );

    // HTTP → RESP.
    let r = c
        .put(format!("{url}/v1/kv/from-http"))
        .body("bob")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        ok::<Value>(&mut con, &["GET", "from-http"]).await,
        bulk("bob")
    );
    let r = c
        .put(format!("{url}/v1/kv/big-http"))
        .body(big.clone())
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::OK);
    let got: Vec<u8> = ok(&mut con, &["GET", "big-http"]).await;
    assert!(got == big, "the 1 MiB value read over RESP differs");
    let r = c
        .put(format!("{url}/v1/kv/ttl-http?ttl_ms=600000"))
        .body("t")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::OK);
    let pttl = int(&mut con, &["PTTL", "ttl-http"]).await;
    assert!(
        (1..=600_000).contains(&pttl),
        "PTTL of an HTTP ttl_ms=600000 write: {pttl}"
    );
    let r = c
        .put(format!("{url}/v1/kv/counter"))
        .body("41")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(int(&mut con, &["INCR", "counter"]).await, 42);
    let r = c
        .get(format!("{url}/v1/kv/counter"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.bytes().await.expect("body").as_ref(), b"42");

    // A RESP DEL is an HTTP 404; an HTTP DELETE is a RESP nil.
    assert_eq!(int(&mut con, &["DEL", "user:1"]).await, 1);
    let r = c
        .get(format!("{url}/v1/kv/user:1"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c
        .delete(format!("{url}/v1/kv/from-http"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        ok::<Value>(&mut con, &["GET", "from-http"]).await,
        Value::Nil
    );

    // Metrics: this test ran 3 GETs that succeeded over RESP, 5 SETs, and now fails an INCR.
    assert_eq!(
        ok::<Value>(&mut con, &["SET", "word", "w"]).await,
        Value::Okay
    );
    assert_eq!(
        err(&mut con, &["INCR", "word"]).await,
        "ERR value is not an integer or out of range"
    );
    let metrics = c
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let series = |command: &str, outcome: &str| {
        format!("hadal_resp_commands_total{{command=\"{command}\",outcome=\"{outcome}\"}}")
    };
    let get_ok = metric(&metrics, &series("get", "ok"));
    assert!(
        get_ok.is_some_and(|n| n >= 3.0),
        "get ok {get_ok:?}:\n{metrics}"
    );
    let set_ok = metric(&metrics, &series("set", "ok"));
    assert!(
        set_ok.is_some_and(|n| n >= 5.0),
        "set ok {set_ok:?}:\n{metrics}"
    );
    let incr_error = metric(&metrics, &series("incr", "error"));
    assert!(
        incr_error.is_some_and(|n| n >= 1.0),
        "incr error {incr_error:?}:\n{metrics}"
    );
    let connections = metric(&metrics, "hadal_resp_connections");
    assert!(
        connections.is_some_and(|n| n >= 1.0),
        "hadal_resp_connections {connections:?} with one connection open:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_gate_resp_commands_by_role() {
    // Proves that with API keys configured a connection must AUTH (NOAUTH before, WRONGPASS for
    // a bad key), a reader key reads (INFO too) but gets NOPERM for writes and CONFIG, a writer key
    // writes, an admin runs INFO and CONFIG GET, clients that authenticate on connect (AUTH or
    // HELLO 3 AUTH) work, QUIT needs no key, and no key reaches the log.
    let dir = tempfile::tempdir().expect("tempdir");
    let RoleKeys {
        reader,
        writer: writer_key,
        admin,
        flag: hashes,
    } = RoleKeys::new();
    let mut server = started(writer(dir.path(), &["--api-key-hash", &hashes])).await;
    let port = server.resp_port;
    let mut con = connect(&server.resp_url()).await;

    // Without a key, as Redis with a password: every command but AUTH, HELLO … AUTH and QUIT
    // is NOAUTH, PING included; HELLO without AUTH is NOAUTH too.
    let e = err(&mut con, &["HELLO", "2"]).await;
    assert!(e.starts_with("NOAUTH "), "HELLO without AUTH: {e}");
    for args in [
        &["GET", "k"][..],
        &["SET", "k", "v"][..],
        &["DBSIZE"][..],
        &["INFO"][..],
        &["MULTI"][..],
        &["PING"][..],
    ] {
        assert_eq!(
            err(&mut con, args).await,
            "NOAUTH Authentication required.",
            "{args:?}"
        );
    }
    assert_eq!(
        err(&mut con, &["AUTH", "hadal_wrong"]).await,
        "WRONGPASS invalid username-password pair or user is disabled."
    );
    let e = err(&mut con, &["HELLO", "2", "AUTH", "default", "hadal_wrong"]).await;
    assert!(e.starts_with("WRONGPASS "), "{e}");
    assert_eq!(
        err(&mut con, &["GET", "k"]).await,
        "NOAUTH Authentication required."
    );

    // A reader reads and may not write or run admin commands.
    assert_eq!(ok::<Value>(&mut con, &["AUTH", &reader]).await, Value::Okay);
    assert_eq!(ok::<Value>(&mut con, &["GET", "k"]).await, Value::Nil);
    assert_eq!(int(&mut con, &["DBSIZE"]).await, 0);
    for (args, name) in [
        (&["SET", "k", "v"][..], "set"),
        (&["INCR", "n"][..], "incr"),
        (&["DEL", "k"][..], "del"),
    ] {
        let e = err(&mut con, args).await;
        assert!(
            e.starts_with("NOPERM ")
                && e.contains("reader")
                && e.contains(&format!("'{name}'"))
                && e.contains("writer"),
            "{args:?}: {e}"
        );
    }
    let e = err(&mut con, &["CONFIG", "GET", "save"]).await;
    assert!(
        e.starts_with("NOPERM ") && e.contains("admin"),
        "CONFIG GET as a reader: {e}"
    );
    // INFO is a read, as GET /v1/info is over HTTP.
    let info: String = ok(&mut con, &["INFO"]).await;
    assert_info_format(&info);

    // AUTH again on the same connection: now a writer (the two-argument form, as Redis 6+).
    assert_eq!(
        ok::<Value>(&mut con, &["AUTH", "default", &writer_key]).await,
        Value::Okay
    );
    assert_eq!(ok::<Value>(&mut con, &["SET", "k", "v"]).await, Value::Okay);
    assert_eq!(ok::<Value>(&mut con, &["GET", "k"]).await, bulk("v"));
    assert_eq!(int(&mut con, &["INCR", "n"]).await, 1);
    let e = err(&mut con, &["CONFIG", "GET", "save"]).await;
    assert!(
        e.starts_with("NOPERM ") && e.contains("admin"),
        "CONFIG GET as a writer: {e}"
    );

    // Clients that authenticate when they connect: AUTH (RESP2) and HELLO 3 AUTH (RESP3).
    let mut admin_con = connect(&format!("redis://:{admin}@127.0.0.1:{port}")).await;
    let info: String = ok(&mut admin_con, &["INFO"]).await;
    assert_info_format(&info);
    let config = fields(ok::<Value>(&mut admin_con, &["CONFIG", "GET", "save"]).await);
    assert!(config.contains_key("save"), "{config:?}");
    assert_eq!(
        ok::<Value>(&mut admin_con, &["SET", "by-admin", "a"]).await,
        Value::Okay
    );
    let mut resp3 = connect(&format!(
        "redis://:{writer_key}@127.0.0.1:{port}/?protocol=resp3"
    ))
    .await;
    assert_eq!(ok::<Value>(&mut resp3, &["GET", "k"]).await, bulk("v"));
    assert_eq!(
        ok::<Value>(&mut resp3, &["SET", "by-resp3", "b"]).await,
        Value::Okay
    );
    let mut reader_con = connect(&format!("redis://:{reader}@127.0.0.1:{port}")).await;
    assert_eq!(
        ok::<Value>(&mut reader_con, &["GET", "by-resp3"]).await,
        bulk("b")
    );
    let refused = try_connect(&format!("redis://:hadal_wrong@127.0.0.1:{port}")).await;
    assert!(
        refused.is_err(),
        "a connection with a wrong key was accepted"
    );

    // QUIT needs no key.
    let (reply, end) = raw(server.resp_addr(), frame(&[b"QUIT"]), until_closed, 0).await;
    assert_eq!(String::from_utf8_lossy(&reply), "+OK\r\n");
    assert_eq!(end, End::Closed);

    drop((con, admin_con, resp3, reader_con));
    assert!(server.exit_after_term().await, "{}", server.log());
    let log = server.log();
    for key in [&reader, &writer_key, &admin] {
        assert!(!log.contains(key.as_str()), "a key reached the log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_serves_resp_reads_and_answers_readonly_to_writes() {
    // Proves `hadal replica` over RESP: it comes to serve the writer's writes (GET, MGET,
    // EXISTS, DBSIZE, SCAN, TTL) and answers every write command with READONLY, changing
    // nothing on either side.
    let dir = tempfile::tempdir().expect("tempdir");
    let primary = started(writer(dir.path(), &[])).await;
    let mut w = connect(&primary.resp_url()).await;
    assert_eq!(ok::<Value>(&mut w, &["SET", "k", "one"]).await, Value::Okay);

    let replica = started(replica(dir.path(), &["--poll", "50ms"])).await;
    let mut r = connect(&replica.resp_url()).await;
    assert_eq!(ok::<Value>(&mut w, &["SET", "k", "two"]).await, Value::Okay);
    assert_eq!(
        ok::<Value>(&mut w, &["MSET", "a", "1", "b", "2"]).await,
        Value::Okay
    );
    for _ in 0..3 {
        int(&mut w, &["INCR", "n"]).await;
    }
    assert_eq!(
        ok::<Value>(&mut w, &["SET", "t", "x", "EX", "600"]).await,
        Value::Okay
    );

    // Poll until the replica applied the last write (the replica follows the bucket).
    let deadline = Instant::now() + PROCESS_WAIT;
    while ok::<Value>(&mut r, &["GET", "t"]).await != bulk("x") {
        assert!(
            Instant::now() < deadline,
            "the replica did not catch up in {PROCESS_WAIT:?}:\n{}",
            replica.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        ok::<Value>(&mut r, &["MGET", "k", "a", "b", "n", "missing"]).await,
        Value::Array(vec![
            bulk("two"),
            bulk("1"),
            bulk("2"),
            bulk("3"),
            Value::Nil
        ])
    );
    assert_eq!(int(&mut r, &["EXISTS", "k", "a", "missing"]).await, 2);
    assert_eq!(int(&mut r, &["DBSIZE"]).await, 5);
    assert_eq!(int(&mut r, &["TTL", "k"]).await, -1);
    let ttl = int(&mut r, &["TTL", "t"]).await;
    assert!((1..=600).contains(&ttl), "TTL on the replica: {ttl}");
    let (keys, _) = scan_all(&mut r, &[]).await;
    assert_eq!(
        keys.into_iter().collect::<BTreeSet<_>>(),
        ["a", "b", "k", "n", "t"]
            .map(String::from)
            .into_iter()
            .collect::<BTreeSet<String>>()
    );

    for args in [
        &["SET", "k", "three"][..],
        &["SET", "new", "x", "EX", "10"][..],
        &["SETNX", "new", "x"][..],
        &["GETDEL", "k"][..],
        &["DEL", "k"][..],
        &["MSET", "a", "9"][..],
        &["INCR", "n"][..],
        &["INCRBY", "n", "2"][..],
        &["DECR", "n"][..],
        &["DECRBY", "n", "2"][..],
        &["APPEND", "k", "x"][..],
        &["EXPIRE", "k", "10"][..],
        &["PEXPIRE", "k", "10000"][..],
        &["PERSIST", "t"][..],
    ] {
        let e = err(&mut r, args).await;
        assert!(
            e.starts_with("READONLY ") && e.contains("read only replica"),
            "{args:?} on the replica: {e}"
        );
    }
    for con in [&mut r, &mut w] {
        assert_eq!(
            ok::<Value>(con, &["MGET", "k", "a", "n", "new"]).await,
            Value::Array(vec![bulk("two"), bulk("1"), bulk("3"), Value::Nil])
        );
        let ttl = int(con, &["TTL", "t"]).await;
        assert!((1..=600).contains(&ttl), "TTL of t: {ttl}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_incr_and_pipelines_lose_nothing() {
    // Proves 20 connections doing 50 INCRs each on one key get 1000 distinct answers 1..=1000
    // with no error and leave exactly 1000, and pipelined commands (100 SETs then their GETs
    // in one pipeline, and concurrent INCR pipelines) are all answered, in order.
    let dir = tempfile::tempdir().expect("tempdir");
    let server = started(writer(dir.path(), &[])).await;
    let url = server.resp_url();

    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut con = connect(&url).await;
            let mut seen = Vec::new();
            let mut errors = Vec::new();
            for _ in 0..50 {
                match redis::cmd("INCR")
                    .arg("hits")
                    .query_async::<Value>(&mut con)
                    .await
                {
                    Ok(Value::Int(n)) => seen.push(n),
                    Ok(other) => errors.push(format!("not an integer: {other:?}")),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (seen, errors)
        }));
    }
    let mut seen = Vec::new();
    let mut errors = Vec::new();
    for task in tasks {
        let (s, e) = task.await.expect("an INCR task");
        seen.extend(s);
        errors.extend(e);
    }
    assert!(errors.is_empty(), "{} errors: {errors:?}", errors.len());
    seen.sort_unstable();
    assert_eq!(seen, (1..=1000).collect::<Vec<i64>>(), "INCR answers");
    let mut con = connect(&url).await;
    assert_eq!(ok::<Value>(&mut con, &["GET", "hits"]).await, bulk("1000"));

    // One pipeline: 100 SETs, then a GET of each, answered in order.
    let mut pipe = redis::pipe();
    for i in 0..100 {
        pipe.cmd("SET").arg(format!("p:{i}")).arg(format!("v{i}"));
    }
    for i in 0..100 {
        pipe.cmd("GET").arg(format!("p:{i}"));
    }
    let replies: Vec<Value> = pipe.query_async(&mut con).await.expect("a pipeline");
    let expected: Vec<Value> = std::iter::repeat_n(Value::Okay, 100)
        .chain((0..100).map(|i| bulk(&format!("v{i}"))))
        .collect();
    assert_eq!(replies, expected);

    // Concurrent pipelines of INCRs: each one's answers increase in order, none is lost.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut con = connect(&url).await;
            let mut pipe = redis::pipe();
            for _ in 0..250 {
                pipe.cmd("INCR").arg("piped");
            }
            pipe.query_async::<Vec<i64>>(&mut con)
                .await
                .expect("an INCR pipeline")
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let answers = task.await.expect("a pipeline task");
        assert_eq!(answers.len(), 250);
        assert!(
            answers.windows(2).all(|w| w[0] < w[1]),
            "a pipeline's INCR answers are out of order: {answers:?}"
        );
        all.extend(answers);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=1000).collect::<Vec<i64>>(), "pipelined INCRs");
    assert_eq!(ok::<Value>(&mut con, &["GET", "piped"]).await, bulk("1000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_protocol_errors_and_the_server_stays_up() {
    // Proves garbage lengths, 100000 nested arrays, a 10 GB bulk length, a huge argument count
    // and a request over the body limit + 64 KiB each get one `-ERR Protocol error` line and a
    // closed connection, while the server keeps serving old and new connections; and valid
    // frames split across writes or pipelined in one write are answered in order.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = started(writer(dir.path(), &["--body-limit", "1024"])).await;
    let addr = server.resp_addr();
    let mut old = connect(&server.resp_url()).await;

    let too_big = vec![b'x'; 1024 + 64 * 1024 + 1024];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("an array length that is not a number", b"*abc\r\n".to_vec()),
        ("100000 nested arrays", b"*1\r\n".repeat(100_000)),
        ("a 10 GB bulk length", b"*1\r\n$10000000000\r\n".to_vec()),
        (
            "a bulk length that is not a number",
            b"*1\r\n$x\r\n".to_vec(),
        ),
        ("an argument count of 10^11", b"*99999999999\r\n".to_vec()),
        (
            "a request over the body limit + 64 KiB",
            frame(&[b"SET", b"k", &too_big]),
        ),
    ];
    for (what, request) in cases {
        let (reply, end) = raw(addr, request, until_closed, 0).await;
        let line = String::from_utf8_lossy(&reply);
        assert!(
            line.starts_with("-ERR Protocol error"),
            "{what}: the reply was {line:?} ({end:?})"
        );
        assert!(
            line.ends_with("\r\n") && line.matches("\r\n").count() == 1,
            "{what}: the reply is not one error line: {line:?}"
        );
        assert_eq!(end, End::Closed, "{what}: the connection stayed open");
        assert!(
            server.is_running(),
            "{what} stopped the server:\n{}",
            server.log()
        );
        let mut fresh = connect(&server.resp_url()).await;
        assert_eq!(
            ok::<Value>(&mut fresh, &["PING"]).await,
            Value::SimpleString("PONG".into()),
            "{what}"
        );
    }
    assert_eq!(
        ok::<Value>(&mut old, &["PING"]).await,
        Value::SimpleString("PONG".into())
    );
    let under_limit = "y".repeat(1000);
    assert_eq!(
        ok::<Value>(&mut old, &["SET", "k", &under_limit]).await,
        Value::Okay
    );
    assert_eq!(
        ok::<Value>(&mut old, &["GET", "k"]).await,
        bulk(&under_limit)
    );

    // Pipelined in one write: answered in order, connection kept open.
    let mut request = frame(&[b"PING"]);
    request.extend(frame(&[b"SET", b"rk", b"v1"]));
    request.extend(frame(&[b"GET", b"rk"]));
    request.extend(frame(&[b"ECHO", b""]));
    request.extend(frame(&[b"GET", b"nothing"]));
    let expected = b"+PONG\r\n+OK\r\n$2\r\nv1\r\n$0\r\n\r\n$-1\r\n";
    let (reply, end) = raw(addr, request, at_least, expected.len()).await;
    assert_eq!(
        String::from_utf8_lossy(&reply),
        String::from_utf8_lossy(expected)
    );
    assert_eq!(end, End::Complete);

    // One frame split across several writes.
    let pieces = [&b"*2\r\n$3"[..], b"\r\nGE", b"T\r\n$2\r\nr", b"k\r\n"]
        .map(<[u8]>::to_vec)
        .to_vec();
    let reply = raw_in_pieces(addr, pieces, b"$2\r\nv1\r\n".len()).await;
    assert_eq!(String::from_utf8_lossy(&reply), "$2\r\nv1\r\n");
    assert!(server.is_running(), "{}", server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_writer_answers_fenced_over_resp() {
    // Proves a RESP write to a writer that another writer took the bucket over from is answered
    // FENCED (never OK), and the new writer serves the last acknowledged value over RESP.
    let dir = tempfile::tempdir().expect("tempdir");
    let a = started(writer(dir.path(), &[])).await;
    let mut a_con = connect(&a.resp_url()).await;
    assert_eq!(
        ok::<Value>(&mut a_con, &["SET", "k", "a"]).await,
        Value::Okay
    );

    let b = started(second_writer(dir.path())).await;

    let e = err(&mut a_con, &["SET", "k", "stale"]).await;
    assert!(e.starts_with("FENCED"), "a write to the fenced writer: {e}");
    let mut b_con = connect(&b.resp_url()).await;
    assert_eq!(ok::<Value>(&mut b_con, &["GET", "k"]).await, bulk("a"));
    assert_eq!(
        ok::<Value>(&mut b_con, &["SET", "k", "b"]).await,
        Value::Okay
    );
    assert_eq!(ok::<Value>(&mut b_con, &["GET", "k"]).await, bulk("b"));
}
