//! `hadal restore` run as a user would: a database shipped to a `file://` bucket is restored at
//! its head and at an LSN by the binary, and `hadal kv` reads the result.

use std::process::Command;
use std::sync::Arc;

use hadal_engine::{Batch, Database, Durability, Options};
use hadal_shipper::{Shipper, ShipperOptions, commit_hook};

fn hadal(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hadal"))
        .args(args)
        .output()
        .expect("run hadal")
}

#[test]
fn restore_from_a_file_bucket_then_read_with_kv() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().join("bucket").display());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let bucket = hadal_transports::open(&url).await.expect("bucket");
        let wake = Arc::new(tokio::sync::Notify::new());
        let options = Options {
            retain_unshipped: true,
            on_commit: Some(commit_hook(&wake)),
            ..Options::default()
        };
        let db = Database::open(dir.path().join("primary"), options).expect("open");
        let shipper = Shipper::start(
            db.clone(),
            Arc::new(bucket),
            ShipperOptions::default(),
            wake,
        )
        .await
        .expect("start");
        for i in 0..5 {
            let lsn = db
                .apply(
                    Batch::new()
                        .put(format!("k{i}"), format!("v{i}"))
                        .durability(Durability::NoSync),
                )
                .expect("apply");
            shipper.wait_durable(lsn).await.expect("durable");
        }
        shipper.shutdown().await.expect("shutdown");
    });
    let head = dir.path().join("head");
    let o = hadal(&[
        "restore",
        "--bucket",
        &url,
        "--out",
        head.to_str().expect("utf8"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("at lsn 5"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = hadal(&["kv", "--data", head.to_str().expect("utf8"), "get", "k4"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "v4");

    let at2 = dir.path().join("at2");
    let o = hadal(&[
        "restore",
        "--bucket",
        &url,
        "--out",
        at2.to_str().expect("utf8"),
        "--lsn",
        "2",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        hadal(&["kv", "--data", at2.to_str().expect("utf8"), "get", "k1"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        hadal(&["kv", "--data", at2.to_str().expect("utf8"), "get", "k2"])
            .status
            .code(),
        Some(1)
    );

    let o = hadal(&[
        "restore",
        "--bucket",
        &url,
        "--out",
        head.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
