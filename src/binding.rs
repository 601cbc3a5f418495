//! The bucket binding of a data folder: the file `DIR/hadal-bucket` names the bucket whose
//! database the folder holds a copy of.
//!
//! Why it exists: once a folder's commits are shipped to a bucket, a local-only write to the
//! folder (or a write shipped to another bucket) would fork the database's history, and the
//! next takeover would have to discard it. The binding turns that mistake into a clear refusal
//! at open time instead.
//!
//! Invariants:
//! 1. The file is written before the first takeover from the folder, so no commit of the folder
//!    reaches a bucket the folder does not name.
//! 2. It is replaced atomically (temporary file, fsync, rename, fsync of the folder), so a crash
//!    leaves either the old binding or the new one, never a torn URL.
//! 3. Two URLs name the same bucket exactly when they parse to the same location; `file://`
//!    paths are made absolute first, so `file://./b` bound from one working directory is not
//!    mistaken for `./b` from another.
//!
//! Format: one line, the bucket URL in its normalized form, then `\n`.

use std::io::Write;
use std::path::{Path, PathBuf};

use hadal_transports::BucketUrl;

use crate::error::{Error, Result};

/// The binding file's name inside a data folder.
pub const BINDING_FILE_NAME: &str = "hadal-bucket";

/// A binding longer than this is not one of ours (URLs are short).
const BINDING_BYTES_MAX: u64 = 64 * 1024;

fn parse(url: &str) -> Result<BucketUrl> {
    let parsed = BucketUrl::parse(url).map_err(|source| Error::Bucket {
        url: url.to_owned(),
        source: Box::new(source),
    })?;
    Ok(match parsed {
        BucketUrl::File { path } => BucketUrl::File {
            path: absolute(&path)?,
        },
        other => other,
    })
}

/// The canonical path if it exists (symlinks and `..` resolved), else the absolute one.
fn absolute(path: &Path) -> Result<PathBuf> {
    match std::fs::canonicalize(path) {
        Ok(canonical) => Ok(canonical),
        Err(_) => std::path::absolute(path).map_err(|e| Error::io("resolve path", path, e)),
    }
}

/// The form a URL is recorded in: `file://` URLs get an absolute path, others are kept as
/// given (their parsed form is what comparisons use).
pub fn normalize(url: &str) -> Result<String> {
    match parse(url)? {
        BucketUrl::File { path } => Ok(format!("file://{}", path.display())),
        _ => Ok(url.trim().to_owned()),
    }
}

/// Whether two URLs name the same bucket location.
pub fn same_bucket(a: &str, b: &str) -> Result<bool> {
    Ok(parse(a)? == parse(b)?)
}

/// The bucket `dir` is bound to, if any.
pub fn read(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(BINDING_FILE_NAME);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", &path, e)),
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, BINDING_BYTES_MAX), &mut text)
        .map_err(|e| Error::io("read", &path, e))?;
    let url = text.lines().next().unwrap_or("").trim();
    if url.is_empty() {
        return Err(Error::io(
            "read",
            &path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the binding file names no bucket; remove it only if the folder was never shipped",
            ),
        ));
    }
    Ok(Some(url.to_owned()))
}

/// Binds `dir` (which must exist) to `url`, atomically.
pub fn write(dir: &Path, url: &str) -> Result<()> {
    let normalized = normalize(url)?;
    let path = dir.join(BINDING_FILE_NAME);
    let tmp = dir.join(format!(".{BINDING_FILE_NAME}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
    file.write_all(format!("{normalized}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("write", &tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(|e| Error::io("rename", &path, e))?;
    sync_dir(dir)
}

/// Removes the binding of `dir` (used only when a binding made moments ago is refused).
pub fn remove(dir: &Path) -> Result<()> {
    let path = dir.join(BINDING_FILE_NAME);
    match std::fs::remove_file(&path) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", &path, e)),
    }
}

/// Makes directory entries (a rename, a new file) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("sync folder", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves a binding round-trips, replaces the previous one, and is gone after `remove`.
    #[test]
    fn binding_round_trips_and_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(dir.path()).expect("read"), None);
        write(dir.path(), "memory://a").expect("write");
        assert_eq!(
            read(dir.path()).expect("read").as_deref(),
            Some("memory://a")
        );
        write(dir.path(), "s3://b/p?endpoint=http://127.0.0.1:9000").expect("write");
        assert_eq!(
            read(dir.path()).expect("read").as_deref(),
            Some("s3://b/p?endpoint=http://127.0.0.1:9000")
        );
        remove(dir.path()).expect("remove");
        assert_eq!(read(dir.path()).expect("read"), None);
    }

    // Proves URLs are compared by location: a relative file path equals its absolute form,
    // trailing slashes of a prefix do not matter, and different buckets differ.
    #[test]
    fn urls_compare_by_location() {
        let cwd = std::env::current_dir().expect("cwd");
        let abs = format!("file://{}", cwd.join("bkt").display());
        assert!(same_bucket("file://./bkt", &abs).expect("compare"));
        assert_eq!(normalize("file://./bkt").expect("normalize"), abs);
        assert!(same_bucket("s3://b/db/", "s3://b/db").expect("compare"));
        assert!(!same_bucket("s3://b/db1", "s3://b/db2").expect("compare"));
        assert!(!same_bucket("memory://x", "memory://y").expect("compare"));
        assert!(same_bucket("ftp://x", "memory://x").is_err());
    }

    // Proves an empty binding file is an error naming the file, not "unbound".
    #[test]
    fn an_empty_binding_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(BINDING_FILE_NAME), "\n").expect("write");
        let err = read(dir.path()).expect_err("empty");
        assert!(err.to_string().contains(BINDING_FILE_NAME), "{err}");
    }
}
