//! `hadal branch create|list|delete` run as a user would, on `file://` buckets written by
//! `hadal kv --bucket`: the branch starts with the parent's data at the branch point (relative
//! URLs are recorded absolute), writes stay on their side, restore, verify and info see the
//! parent link, and deleting the branch releases the pin.

use std::path::Path;
use std::process::{Command, Output};

fn hadal(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hadal"))
        .args(args)
        .current_dir(cwd)
        .env_remove("HADAL_DATA")
        .env_remove("HADAL_BUCKET")
        .output()
        .expect("run hadal")
}

fn ok(cwd: &Path, args: &[&str]) -> String {
    let o = hadal(cwd, args);
    assert!(
        o.status.success(),
        "hadal {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn branch_create_list_use_and_delete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cwd = dir.path();
    let parent = "file://./parent";
    let child = "file://./child";
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3")] {
        ok(cwd, &["kv", "--data", "p", "--bucket", parent, "put", k, v]);
    }
    let out = ok(
        cwd,
        &[
            "branch", "create", "--from", parent, "--to", child, "--lsn", "2",
        ],
    );
    assert!(
        out.contains("at lsn 2") && out.contains("no data was copied"),
        "{out}"
    );
    // The child takes its own writes and sees the parent at lsn 2 (a and b, not c).
    ok(
        cwd,
        &[
            "kv",
            "--data",
            "c",
            "--bucket",
            child,
            "put",
            "only-child",
            "x",
        ],
    );
    assert_eq!(
        ok(cwd, &["kv", "--data", "c", "--bucket", child, "get", "b"]).trim(),
        "2"
    );
    let o = hadal(cwd, &["kv", "--data", "c", "--bucket", child, "get", "c"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not found"));
    let o = hadal(
        cwd,
        &["kv", "--data", "p", "--bucket", parent, "get", "only-child"],
    );
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not found"));

    let absolute_child = format!(
        "file://{}",
        cwd.canonicalize().expect("path").join("child").display()
    );
    let out = ok(cwd, &["branch", "list", "--bucket", parent]);
    assert!(
        out.contains(&absolute_child) && out.contains("at lsn 2") && out.contains("[exists]"),
        "{out}"
    );
    let out = ok(cwd, &["branch", "list", "--bucket", child]);
    assert!(
        out.contains("parent  file:///") && out.contains("at lsn 2"),
        "{out}"
    );
    let out = ok(cwd, &["verify", "--bucket", child]);
    assert!(out.starts_with("verified"), "{out}");
    let out = ok(cwd, &["info", "--bucket", child, "--json"]);
    let info: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(info["parent"]["lsn"], 2, "{info}");
    let out = ok(cwd, &["restore", "--bucket", child, "--out", "restored"]);
    assert!(out.contains("lsn 3"), "{out}");
    let out = ok(cwd, &["kv", "--data", "restored", "get", "only-child"]);
    assert_eq!(out.trim(), "x");

    // Wrong use: both --lsn and --time; a point beyond the parent's head.
    let o = hadal(
        cwd,
        &[
            "branch",
            "create",
            "--from",
            parent,
            "--to",
            "file://./other",
            "--lsn",
            "99",
        ],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("beyond the end"));

    let out = ok(cwd, &["branch", "delete", "--bucket", child]);
    assert!(out.contains("released the pin"), "{out}");
    let out = ok(cwd, &["branch", "list", "--bucket", parent]);
    assert!(out.contains("pins    none"), "{out}");
}
