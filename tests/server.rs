//! End-to-end tests of `hadal serve` and `hadal replica`: real processes on free loopback
//! ports, driven over HTTP with reqwest, and `hadal kv --url` as the client. Every process is
//! killed when its handle drops, also when a test fails.

mod server_process;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::StatusCode;
use serde_json::{Value, json};
use server_process::{
    HADAL, PROCESS_WAIT, RoleKeys, bucket_url, client, replica, second_writer, writer,
};

async fn json_of(r: reqwest::Response) -> Value {
    r.json().await.expect("a JSON body")
}

/// Asserts `r` is an error answer with `status` and `code`, in the JSON error shape.
async fn expect_error(r: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(r.status(), status, "status");
    let body = json_of(r).await;
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

fn lsn_header(r: &reqwest::Response) -> u64 {
    r.headers()
        .get("hadal-lsn")
        .expect("Hadal-Lsn header")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kv_endpoint_answers_as_documented() {
    // Proves the HTTP surface: PUT/GET/DELETE by percent-encoded byte key with Hadal-Lsn,
    // ttl_ms, listings with base64 and a working cursor, batches with 200/409, info, probes,
    // metrics and the OpenAPI document.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = writer(dir.path(), &[]);
    let c = client();
    server.ready(&c).await;
    let url = &server.url;

    let r = c
        .put(format!("{url}/v1/kv/user%3A1"))
        .body("alice")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::OK);
    let put_lsn = json_of(r).await["lsn"].as_u64().expect("lsn");
    let r = c
        .get(format!("{url}/v1/kv/user:1"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(lsn_header(&r) >= put_lsn);
    assert_eq!(
        r.headers()["content-type"].to_str().expect("ascii"),
        "application/octet-stream"
    );
    assert_eq!(r.bytes().await.expect("body").as_ref(), b"alice");

    // Byte keys: NUL, 0xFF and an encoded slash.
    let r = c
        .put(format!("{url}/v1/kv/%00%FFa%2Fb"))
        .body(vec![0u8, 1, 2])
        .send()
        .await
        .expect("put bytes");
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(format!("{url}/v1/kv/%00%ffa%2fb"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.bytes().await.expect("body").as_ref(), &[0u8, 1, 2]);

    // Absent: 404 in the JSON error shape, with the LSN read at.
    let r = c
        .get(format!("{url}/v1/kv/nope"))
        .send()
        .await
        .expect("get");
    let body = expect_error(r, StatusCode::NOT_FOUND, "not_found").await;
    assert!(body["error"]["lsn"].as_u64().is_some(), "{body}");

    // TTL: the expiry is reported; an expired key is gone.
    let r = c
        .put(format!("{url}/v1/kv/session?ttl_ms=600000"))
        .body("t")
        .send()
        .await
        .expect("put ttl");
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(format!("{url}/v1/kv/session"))
        .send()
        .await
        .expect("get");
    assert!(r.headers().contains_key("hadal-expires-ms"));
    let r = c
        .put(format!("{url}/v1/kv/flash?ttl_ms=1"))
        .body("x")
        .send()
        .await
        .expect("put short ttl");
    assert_eq!(r.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let r = c
        .get(format!("{url}/v1/kv/flash"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Listings: base64, prefix, paging by cursor, reverse.
    for i in 0..5 {
        let r = c
            .put(format!("{url}/v1/kv/page:{i}"))
            .body(format!("v{i}"))
            .send()
            .await
            .expect("put");
        assert_eq!(r.status(), StatusCode::OK);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = format!("{url}/v1/kv?prefix=page%3A&limit=2");
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let page = json_of(c.get(q).send().await.expect("list")).await;
        for item in page["items"].as_array().expect("items") {
            let k = STANDARD
                .decode(item["key"].as_str().expect("key"))
                .expect("b64");
            let v = STANDARD
                .decode(item["value"].as_str().expect("value"))
                .expect("b64");
            seen.push((
                String::from_utf8(k).expect("utf8"),
                String::from_utf8(v).expect("utf8"),
            ));
        }
        match page["next"].as_str() {
            Some(n) => cursor = Some(n.to_owned()),
            None => break,
        }
    }
    let expected: Vec<_> = (0..5)
        .map(|i| (format!("page:{i}"), format!("v{i}")))
        .collect();
    assert_eq!(seen, expected);
    let page = json_of(
        c.get(format!("{url}/v1/kv?prefix=page%3A&reverse=true&limit=1"))
            .send()
            .await
            .expect("list"),
    )
    .await;
    assert_eq!(page["items"][0]["key"], STANDARD.encode("page:4"), "{page}");
    assert_eq!(
        page["next"],
        URL_SAFE_NO_PAD.encode("page:4"),
        "the cursor is the last key"
    );

    // Batches: all or nothing; a failed assertion is named.
    let r = c
        .post(format!("{url}/v1/txn"))
        .json(&json!({
            "assert": [{"check": "absent", "key": "lock"}],
            "ops": [{"op": "put", "key": "lock", "value": "me"}, {"op": "delete", "key": "page:0"}]
        }))
        .send()
        .await
        .expect("txn");
    assert_eq!(r.status(), StatusCode::OK);
    let txn_lsn = json_of(r).await["lsn"].as_u64().expect("lsn");
    let r = c
        .post(format!("{url}/v1/txn"))
        .json(&json!({
            "assert": [{"check": "exists", "key": "lock"}, {"check": "absent", "key": "lock"}],
            "ops": [{"op": "put", "key": "lock", "value": "you"}]
        }))
        .send()
        .await
        .expect("txn");
    let body = expect_error(r, StatusCode::CONFLICT, "assertion_failed").await;
    assert_eq!(body["error"]["index"], 1, "{body}");
    let r = c
        .get(format!("{url}/v1/kv/lock"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.bytes().await.expect("body").as_ref(), b"me");
    let r = c
        .delete(format!("{url}/v1/kv/lock"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(json_of(r).await["lsn"].as_u64().expect("lsn") > txn_lsn);
    let r = c
        .get(format!("{url}/v1/kv/lock"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Info, probes, metrics, OpenAPI.
    let info = json_of(c.get(format!("{url}/v1/info")).send().await.expect("info")).await;
    assert_eq!(info["role"], "writer", "{info}");
    assert_eq!(info["ready"], true, "{info}");
    assert_eq!(info["node"]["durability"], "strict", "{info}");
    assert!(
        info["node"]["epoch"].as_u64().is_some_and(|e| e >= 1),
        "{info}"
    );
    let committed = info["node"]["lsn_committed"].as_u64().expect("committed");
    assert_eq!(
        info["node"]["lsn_durable"].as_u64(),
        Some(committed),
        "{info}"
    );
    assert!(info["node"]["retention"].is_string(), "{info}");
    for probe in ["healthz", "readyz"] {
        let r = c.get(format!("{url}/{probe}")).send().await.expect("probe");
        assert_eq!(r.status(), StatusCode::OK, "{probe}");
    }
    let metrics = c
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("hadal_lsn_durable "), "{metrics}");
    assert!(
        metrics.contains(
            "hadal_http_requests_total{route=\"/v1/kv/{key}\",method=\"PUT\",status=\"200\"}"
        ),
        "{metrics}"
    );
    let doc = json_of(
        c.get(format!("{url}/v1/openapi.json"))
            .send()
            .await
            .expect("openapi"),
    )
    .await;
    for path in [
        "/v1/kv/{key}",
        "/v1/kv",
        "/v1/txn",
        "/v1/info",
        "/metrics",
        "/readyz",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(server.exit_after_term().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_clear_json_errors_and_the_server_stays_up() {
    // Proves bad percent-encoding, oversize bodies, bad JSON, unknown parameters, routes and
    // methods each get a JSON error with the right status, and the server keeps serving.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = writer(dir.path(), &["--body-limit", "1024"]);
    let c = client();
    server.ready(&c).await;
    let url = &server.url;

    let r = c
        .get(format!("{url}/v1/kv/a%zz"))
        .send()
        .await
        .expect("get");
    let body = expect_error(r, StatusCode::BAD_REQUEST, "bad_key").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("m")
            .contains("percent"),
        "{body}"
    );
    let r = c
        .put(format!("{url}/v1/kv/big"))
        .body(vec![7u8; 4096])
        .send()
        .await
        .expect("put");
    expect_error(r, StatusCode::PAYLOAD_TOO_LARGE, "too_large").await;
    let r = c
        .post(format!("{url}/v1/txn"))
        .body("{\"ops\": [")
        .send()
        .await
        .expect("txn");
    expect_error(r, StatusCode::BAD_REQUEST, "bad_json").await;
    let r = c
        .post(format!("{url}/v1/txn"))
        .json(&json!({"ops": [{"op": "explode", "key": "k"}]}))
        .send()
        .await
        .expect("txn");
    expect_error(r, StatusCode::BAD_REQUEST, "bad_json").await;
    let r = c
        .get(format!("{url}/v1/kv/k?colour=blue"))
        .send()
        .await
        .expect("get");
    expect_error(r, StatusCode::BAD_REQUEST, "bad_query").await;
    let r = c
        .get(format!("{url}/v1/kv?limit=0"))
        .send()
        .await
        .expect("list");
    expect_error(r, StatusCode::BAD_REQUEST, "bad_query").await;
    let r = c
        .get(format!("{url}/v1/kv?cursor=!!"))
        .send()
        .await
        .expect("list");
    expect_error(r, StatusCode::BAD_REQUEST, "bad_query").await;
    let r = c.get(format!("{url}/v1/kv/a/b")).send().await.expect("get");
    let body = expect_error(r, StatusCode::NOT_FOUND, "not_found").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("m")
            .contains("%2F"),
        "{body}"
    );
    let r = c.post(format!("{url}/v1/kv/k")).send().await.expect("post");
    expect_error(r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    let r = c
        .put(format!("{url}/v1/kv/k?ttl_ms=0"))
        .body("v")
        .send()
        .await
        .expect("put");
    expect_error(r, StatusCode::BAD_REQUEST, "bad_request").await;
    let r = c
        .put(format!("{url}/v1/kv/{}", "k".repeat(2000)))
        .body("v")
        .send()
        .await
        .expect("put");
    expect_error(r, StatusCode::BAD_REQUEST, "invalid").await;

    // Still serving.
    let r = c
        .put(format!("{url}/v1/kv/after"))
        .body("ok")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::OK);
    let r = c.get(format!("{url}/readyz")).send().await.expect("readyz");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(server.exit_after_term().await, "{}", server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_roles_gate_every_route() {
    // Proves Bearer keys and roles: no key → 401, a reader cannot write, a writer cannot read
    // metrics, an admin can; probes need no key; keys never reach the log; a public address
    // without keys refuses to start.
    let dir = tempfile::tempdir().expect("tempdir");
    let RoleKeys {
        reader,
        writer: writer_key,
        admin,
        flag: hashes,
    } = RoleKeys::new();
    let mut server = writer(dir.path(), &["--api-key-hash", &hashes]);
    let c = client();
    server.ready(&c).await;
    let url = &server.url;

    let r = c.get(format!("{url}/v1/kv/k")).send().await.expect("get");
    expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let r = c
        .get(format!("{url}/v1/kv/k"))
        .bearer_auth("hadal_wrong")
        .send()
        .await
        .expect("get");
    expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let r = c
        .put(format!("{url}/v1/kv/k"))
        .bearer_auth(&reader)
        .body("v")
        .send()
        .await
        .expect("put");
    let body = expect_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("m")
            .contains("writer"),
        "{body}"
    );
    let r = c
        .put(format!("{url}/v1/kv/k"))
        .bearer_auth(&writer_key)
        .body("v")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(format!("{url}/v1/kv/k"))
        .bearer_auth(&reader)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(format!("{url}/metrics"))
        .bearer_auth(&writer_key)
        .send()
        .await
        .expect("metrics");
    expect_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    let r = c
        .get(format!("{url}/metrics"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("metrics");
    assert_eq!(r.status(), StatusCode::OK);
    for probe in ["healthz", "readyz", "v1/openapi.json"] {
        let r = c.get(format!("{url}/{probe}")).send().await.expect("probe");
        assert_eq!(r.status(), StatusCode::OK, "{probe}");
    }

    // The client verbs present a key too.
    let out = Command::new(HADAL)
        .args(["kv", "--url", url, "--api-key", &reader, "get", "k"])
        .output()
        .expect("hadal kv --url");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"v");

    assert!(server.exit_after_term().await);
    let log = server.log();
    for key in [&reader, &writer_key, &admin] {
        assert!(!log.contains(key.as_str()), "a key reached the log");
    }

    let out = Command::new(HADAL)
        .args(["serve", "--data"])
        .arg(dir.path().join("exposed"))
        .args(["--http", "0.0.0.0:0"])
        .env_remove("HADAL_API_KEY_HASHES")
        .output()
        .expect("hadal serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("without API keys"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_follows_refuses_writes_and_honours_min_lsn() {
    // Proves `hadal replica`: it serves the writer's data read-only, answers 403 naming its
    // role to writes, waits for min_lsn and otherwise answers 503 with its LSN.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut primary = writer(dir.path(), &[]);
    let c = client();
    primary.ready(&c).await;
    let r = c
        .put(format!("{}/v1/kv/k", primary.url))
        .body("one")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::OK);

    let mut replica = replica(dir.path(), &["--poll", "50ms", "--min-lsn-wait", "300ms"]);
    replica.ready(&c).await;
    let r = c
        .put(format!("{}/v1/kv/k", primary.url))
        .body("two")
        .send()
        .await
        .expect("put");
    let lsn = json_of(r).await["lsn"].as_u64().expect("lsn");

    // Read-your-writes: the replica waits until it applied the writer's LSN.
    let r = c
        .get(format!("{}/v1/kv/k?min_lsn={lsn}", replica.url))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(lsn_header(&r) >= lsn);
    assert_eq!(r.bytes().await.expect("body").as_ref(), b"two");

    let r = c
        .get(format!("{}/v1/kv/k?min_lsn={}", replica.url, lsn + 1000))
        .send()
        .await
        .expect("get");
    let body = expect_error(r, StatusCode::SERVICE_UNAVAILABLE, "behind").await;
    assert!(
        body["error"]["lsn"].as_u64().is_some_and(|l| l >= lsn),
        "{body}"
    );

    let r = c
        .put(format!("{}/v1/kv/k", replica.url))
        .body("three")
        .send()
        .await
        .expect("put");
    let body = expect_error(r, StatusCode::FORBIDDEN, "read_only").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("m")
            .contains("replica"),
        "{body}"
    );
    let r = c
        .post(format!("{}/v1/txn", replica.url))
        .json(&json!({"ops": [{"op": "delete", "key": "k"}]}))
        .send()
        .await
        .expect("txn");
    expect_error(r, StatusCode::FORBIDDEN, "read_only").await;

    let info = json_of(
        c.get(format!("{}/v1/info", replica.url))
            .send()
            .await
            .expect("info"),
    )
    .await;
    assert_eq!(info["role"], "replica", "{info}");
    assert!(info["node"]["lag"]["lsns"].is_u64(), "{info}");
    assert!(
        info["node"]["lsn_applied"]
            .as_u64()
            .is_some_and(|l| l >= lsn),
        "{info}"
    );

    // The scan verb against the replica.
    let out = Command::new(HADAL)
        .args(["kv", "--url", &replica.url, "scan"])
        .output()
        .expect("hadal kv --url scan");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "k\ttwo\n");

    assert!(replica.exit_after_term().await, "{}", replica.log());
    assert!(primary.exit_after_term().await, "{}", primary.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_writer_answers_503_fenced() {
    // Proves a write to a writer that another took the bucket over from is answered 503 with
    // code `fenced` (never 200), and /readyz then reports it stopped.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = writer(dir.path(), &[]);
    let c = client();
    a.ready(&c).await;
    let r = c
        .put(format!("{}/v1/kv/k", a.url))
        .body("a")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::OK);

    let mut b = second_writer(dir.path());
    b.ready(&c).await;

    let r = c
        .put(format!("{}/v1/kv/k", a.url))
        .body("stale")
        .send()
        .await
        .expect("put");
    expect_error(r, StatusCode::SERVICE_UNAVAILABLE, "fenced").await;
    let r = c
        .get(format!("{}/readyz", a.url))
        .send()
        .await
        .expect("readyz");
    expect_error(r, StatusCode::SERVICE_UNAVAILABLE, "stopped").await;
    let r = c
        .get(format!("{}/v1/kv/k", b.url))
        .send()
        .await
        .expect("get");
    assert_eq!(r.bytes().await.expect("body").as_ref(), b"a");
    assert!(b.exit_after_term().await, "{}", b.log());
    // A fenced writer cannot ship its unacknowledged commit: its shutdown reports that.
    let _ = a.exit_after_term().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_writes_loses_no_acknowledged_write() {
    // Proves graceful shutdown: under a concurrent write load, SIGTERM stops the server
    // cleanly and every write answered 200 is in the bucket (restored with `hadal restore`).
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = writer(dir.path(), &[]);
    let c = client();
    server.ready(&c).await;
    let acked: Arc<parking_lot::Mutex<BTreeMap<String, String>>> = Arc::default();
    let total = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (c, url, acked, total) = (c.clone(), server.url.clone(), acked.clone(), total.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..2000 {
                let (k, v) = (format!("t{t}-{i}"), format!("value-{t}-{i}"));
                let r = c
                    .put(format!("{url}/v1/kv/{k}"))
                    .body(v.clone())
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == StatusCode::OK => {
                        acked.lock().insert(k, v);
                        total.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    _ => return,
                }
            }
        }));
    }
    let deadline = Instant::now() + PROCESS_WAIT;
    while total.load(std::sync::atomic::Ordering::SeqCst) < 200 {
        assert!(
            Instant::now() < deadline,
            "the write load did not start:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.terminate();
    for t in tasks {
        t.await.expect("writer task");
    }
    assert!(server.exit().await, "unclean shutdown:\n{}", server.log());

    let out_dir = dir.path().join("restored");
    let bucket = bucket_url(dir.path());
    let out = Command::new(HADAL)
        .args(["restore", "--bucket", &bucket, "--out"])
        .arg(&out_dir)
        .output()
        .expect("hadal restore");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = hadal::Database::open(hadal::Options::new(&out_dir).read_only(true))
        .await
        .expect("open the restored copy");
    let all: BTreeMap<String, String> = restored
        .scan(hadal::Scan::all())
        .await
        .expect("scan")
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8(k.to_vec()).expect("utf8"),
                String::from_utf8(v.to_vec()).expect("utf8"),
            )
        })
        .collect();
    let acked = acked.lock().clone();
    assert!(acked.len() >= 200);
    for (k, v) in &acked {
        assert_eq!(
            all.get(k),
            Some(v),
            "acknowledged write {k} is not in the bucket"
        );
    }
    restored.close().await.expect("close");
}
