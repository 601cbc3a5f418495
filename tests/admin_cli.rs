//! `hadal info`, `hadal verify` and `hadal gc` run as a user would, on a `file://` bucket written
//! by `hadal kv --bucket`: info reports the head and objects (text and JSON), verify passes a
//! healthy bucket (also `--deep`) and names a damaged segment with a non-zero exit, gc plans and
//! keeps everything while no snapshot is older than the retention window.

use std::path::Path;
use std::process::{Command, Output};

fn hadal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hadal"))
        .args(args)
        .env_remove("HADAL_DATA")
        .env_remove("HADAL_BUCKET")
        .output()
        .expect("run hadal")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The file holding object `key` in a `file://` bucket rooted at `root`.
fn object_file(root: &Path, key: &str) -> std::path::PathBuf {
    root.join("objects").join(format!("{key}.obj"))
}

#[test]
fn info_verify_and_gc_on_a_file_bucket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("bucket");
    let url = format!("file://{}", root.display());
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8");
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3")] {
        let o = hadal(&["kv", "--data", data, "--bucket", &url, "put", k, v]);
        assert!(o.status.success(), "put: {}", text(&o.stderr));
    }

    let o = hadal(&["info", "--bucket", &url, "--json"]);
    assert!(o.status.success(), "info: {}", text(&o.stderr));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(info["head"]["lsn"], 3, "{info}");
    assert_eq!(info["head"]["kind"], "commits", "{info}");
    assert!(info["writer_epoch"].as_u64().expect("epoch") >= 3, "{info}");
    assert!(info["objects"]["seg"]["count"].as_u64().expect("count") >= 6);
    assert!(info["storage_usd_per_month"].as_f64().is_some());
    let o = hadal(&["info", "--bucket", &url]);
    assert!(o.status.success());
    assert!(text(&o.stdout).contains("lsn 3"), "{}", text(&o.stdout));

    let o = hadal(&["compact", "--bucket", &url, "--min-segments", "1"]);
    assert!(!o.status.success(), "--min-segments 1 is refused");
    let o = hadal(&[
        "compact",
        "--bucket",
        &url,
        "--min-segments",
        "2",
        "--dry-run",
    ]);
    assert!(o.status.success(), "compact: {}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("would fold"),
        "{}",
        text(&o.stdout)
    );
    let o = hadal(&["compact", "--bucket", &url, "--min-segments", "2"]);
    assert!(o.status.success(), "compact: {}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("folded slots 1..="),
        "{}",
        text(&o.stdout)
    );
    let o = hadal(&["verify", "--bucket", &url, "--deep"]);
    assert!(
        o.status.success(),
        "verify: {}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let out = text(&o.stdout);
    assert!(out.contains("3 commits") && out.contains("deep:"), "{out}");

    let o = hadal(&["gc", "--bucket", &url, "--dry-run"]);
    assert!(o.status.success(), "gc: {}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("whole log is kept"),
        "{}",
        text(&o.stdout)
    );

    // Damage the last segment: verify names it and fails.
    let last = (1..100)
        .map(|s| hadal_format::keys::segment(hadal_format::Slot::new(s)))
        .take_while(|k| object_file(&root, k).exists())
        .last()
        .expect("segments");
    let file = object_file(&root, &last);
    let mut bytes = std::fs::read(&file).expect("read");
    let at = bytes.len() - 40;
    bytes[at] ^= 0x01;
    std::fs::write(&file, bytes).expect("write");
    let o = hadal(&["verify", "--bucket", &url]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    assert!(
        text(&o.stdout).contains(&last),
        "names {last}: {}",
        text(&o.stdout)
    );
}

#[test]
fn snapshot_uploads_the_head_and_restores_start_from_it() {
    // Proves `hadal snapshot` publishes a snapshot at the head (info lists it, a restore uses
    // it and holds every key), says so when there is nothing new, and refuses a folder without
    // a bucket with a message naming the flag.
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("bucket");
    let url = format!("file://{}", root.display());
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8");
    for (k, v) in [("a", "1"), ("b", "2")] {
        let o = hadal(&["kv", "--data", data, "--bucket", &url, "put", k, v]);
        assert!(o.status.success(), "put: {}", text(&o.stderr));
    }
    let o = hadal(&["snapshot", "--data", data, "--bucket", &url]);
    assert!(o.status.success(), "snapshot: {}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("snapshot at lsn 2"), "{out}");

    let o = hadal(&["info", "--bucket", &url, "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let snaps = info["snapshots"].as_array().expect("snapshots");
    assert_eq!(snaps.len(), 1, "{info}");
    assert_eq!(snaps[0]["lsn"], 2, "{info}");

    let o = hadal(&["snapshot", "--data", data, "--bucket", &url]);
    assert!(o.status.success(), "snapshot again: {}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("nothing new to snapshot"),
        "{}",
        text(&o.stdout)
    );

    let copy = dir.path().join("copy");
    let copy = copy.to_str().expect("utf-8");
    let o = hadal(&["restore", "--bucket", &url, "--out", copy]);
    assert!(o.status.success(), "restore: {}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("from the snapshot at lsn 2"),
        "{}",
        text(&o.stdout)
    );
    let o = hadal(&["kv", "--data", copy, "get", "b"]);
    assert_eq!(text(&o.stdout).trim(), "2");

    let local = dir.path().join("local");
    let o = hadal(&[
        "snapshot",
        "--data",
        local.to_str().expect("utf-8"),
        "--bucket",
        "",
    ]);
    assert!(!o.status.success(), "an empty bucket URL is refused");
}
