//! The `hadal` binary's first slice, run as a user would: `hadal kv` verbs against a local
//! folder and `hadal check` on a healthy and a corrupted folder.

use std::path::Path;
use std::process::{Command, Output};

fn hadal(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hadal"))
        .args(args)
        .env("HADAL_DATA", data)
        .output()
        .expect("run hadal")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn kv_verbs_work_end_to_end() {
    // Proves put/get/del/scan round-trip through real processes and a missing key exits 1.
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("db");
    for (k, v) in [
        ("apple", "red"),
        ("banana", "yellow"),
        ("cherry", "dark red"),
    ] {
        let o = hadal(&data, &["kv", "put", k, v]);
        assert!(o.status.success(), "{o:?}");
    }
    let o = hadal(&data, &["kv", "get", "banana"]);
    assert!(o.status.success());
    assert_eq!(stdout(&o), "yellow");
    let o = hadal(&data, &["kv", "scan", "--reverse", "--limit", "2"]);
    assert_eq!(stdout(&o), "cherry\tdark red\nbanana\tyellow\n");
    let o = hadal(&data, &["kv", "scan", "--prefix", "ap"]);
    assert_eq!(stdout(&o), "apple\tred\n");
    assert!(hadal(&data, &["kv", "del", "apple"]).status.success());
    let o = hadal(&data, &["kv", "get", "apple"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not found"));
    let o = hadal(&data, &["kv", "put", "ephemeral", "x", "--ttl", "1ms"]);
    assert!(o.status.success());
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(
        hadal(&data, &["kv", "get", "ephemeral"]).status.code(),
        Some(1)
    );
    let o = hadal(&data, &["check"]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(stdout(&o).contains("ok: no problems found"));
}

#[test]
fn check_reports_corruption_and_fails() {
    // Proves `hadal check` exits non-zero with a readable report naming the bad page.
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("db");
    {
        let db =
            hadal_engine::Database::open(&data, hadal_engine::Options::default()).expect("open");
        let mut tx = db.begin_write().expect("write");
        for i in 0..2000u32 {
            tx.put("default", format!("k{i:05}").as_bytes(), &[7u8; 50])
                .expect("put");
        }
        tx.commit().expect("commit");
        db.checkpoint().expect("checkpoint");
    }
    let main = data.join(hadal_engine::MAIN_FILE_NAME);
    let mut bytes = std::fs::read(&main).expect("read");
    let offset = 8192 + 4096 * 3 + 100; // inside image page 3
    bytes[offset] ^= 0xff;
    std::fs::write(&main, bytes).expect("write");
    let o = hadal(&data, &["check"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("page 3"), "{}", stdout(&o));
}
