//! `file:///PATH`: a bucket in a local folder, with the same conditional-write guarantees as a
//! cloud store, across threads and processes.
//!
//! Layout under the root: `objects/<key>.obj` (key components become folders), `tmp/` for
//! staged writes, `lock` for the writers' lock. Each object file is
//! `b"HADALOBJ" ‖ u32-le header length ‖ JSON {version, metadata} ‖ body`, so an object and its
//! version change together in one rename.
//!
//! Invariants:
//! 1. Create-if-absent stages the whole object in `tmp/`, fsyncs it, then `link(2)`s it into
//!    place: `link` fails with `EEXIST` atomically (the `O_EXCL` of names), so exactly one of
//!    any number of racing creators wins, even across processes; then the folder is fsynced.
//! 2. CAS, plain put and delete hold an exclusive `flock` on `lock` while they read the current
//!    version and rename the staged file over it (or unlink it), so compare-and-replace is
//!    atomic; creates need no lock because `link` never replaces.
//! 3. Readers never see a partial object: objects only appear by `link` or `rename` of a file
//!    that was completely written and fsynced.
//! 4. Versions are random 128-bit tags written inside the object, never reused (no ABA).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind as IoKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::bucket::{
    Bucket, ByteRange, Capabilities, Created, ListStream, NONCE_METADATA_KEY, Nonce, Object,
    ObjectInfo, Swapped, Version, validate_key,
};
use crate::error::{Error, Op, Result};

const MAGIC: &[u8; 8] = b"HADALOBJ";
const OBJECT_SUFFIX: &str = ".obj";
/// Object headers are tiny (a version and a nonce); anything larger is a damaged file.
const HEADER_BYTES_MAX: u32 = 64 * 1024;

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    version: String,
    metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct FileBucket {
    name: String,
    root: Arc<PathBuf>,
}

impl FileBucket {
    /// Opens (creating if needed) the bucket folder at `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<FileBucket> {
        let root = root.as_ref().to_path_buf();
        for dir in [root.join("objects"), root.join("tmp")] {
            fs::create_dir_all(&dir).map_err(|e| Error::io(Op::Connect, "", &dir, e))?;
        }
        let name = format!("file://{}", root.display());
        Ok(FileBucket {
            name,
            root: Arc::new(root),
        })
    }

    fn object_path(&self, op: Op, key: &str) -> Result<PathBuf> {
        validate_key(op, key)?;
        let mut path = self.root.join("objects");
        let mut parts = key.split('/').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_some() {
                if part.ends_with(OBJECT_SUFFIX) {
                    return Err(Error::invalid(op, key, "a folder component ends with .obj"));
                }
                path.push(part);
            } else {
                path.push(format!("{part}{OBJECT_SUFFIX}"));
            }
        }
        Ok(path)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        op: Op,
        key: &str,
        work: impl FnOnce(&Path) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || work(&root))
            .await
            .map_err(|e| Error::fatal(op, key, format!("file worker failed: {e}")))?
    }
}

fn encode(version: &str, metadata: BTreeMap<String, String>, body: &[u8]) -> Result<Vec<u8>> {
    let header = Header {
        version: version.to_owned(),
        metadata,
    };
    let header = serde_json::to_vec(&header)
        .map_err(|e| Error::fatal(Op::Put, "", format!("encoding object header: {e}")))?;
    let header_len = u32::try_from(header.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(12 + header.len() + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
    Ok(out)
}

/// Splits a stored file into header and body offset; damage is `Fatal`, never a panic.
fn decode(op: Op, key: &str, raw: &[u8]) -> Result<(Header, usize)> {
    let damaged = |why: &str| Error::fatal(op, key, format!("object file is damaged: {why}"));
    if raw.len() < 12 || &raw[..8] != MAGIC {
        return Err(damaged("bad magic"));
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&raw[8..12]);
    let len = u32::from_le_bytes(len);
    if len > HEADER_BYTES_MAX || raw.len() < 12 + len as usize {
        return Err(damaged("header length out of bounds"));
    }
    let end = 12 + len as usize;
    let header: Header =
        serde_json::from_slice(&raw[12..end]).map_err(|e| damaged(&format!("header: {e}")))?;
    Ok((header, end))
}

/// Reads only as much of the file as the header needs (for `head` and CAS checks).
fn read_header(op: Op, key: &str, path: &Path) -> Result<Option<(Header, u64)>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == IoKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(op, key, path, e)),
    };
    let size = file
        .metadata()
        .map_err(|e| Error::io(op, key, path, e))?
        .len();
    let mut prefix = [0u8; 12];
    file.read_exact(&mut prefix)
        .map_err(|e| Error::io(op, key, path, e))?;
    let mut len = [0u8; 4];
    len.copy_from_slice(&prefix[8..12]);
    let len = u32::from_le_bytes(len).min(HEADER_BYTES_MAX) as usize;
    let mut raw = prefix.to_vec();
    raw.resize(12 + len, 0);
    file.read_exact(&mut raw[12..])
        .map_err(|e| Error::io(op, key, path, e))?;
    let (header, body_at) = decode(op, key, &raw)?;
    Ok(Some((header, size - body_at as u64)))
}

fn read_object(op: Op, key: &str, path: &Path) -> Result<Option<Object>> {
    let raw = match fs::read(path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == IoKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(op, key, path, e)),
    };
    let (header, body_at) = decode(op, key, &raw)?;
    let bytes = Bytes::from(raw).slice(body_at..);
    Ok(Some(Object {
        bytes,
        version: Version::new(header.version),
        metadata: header.metadata,
    }))
}

fn fsync_dir(op: Op, key: &str, dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(op, key, dir, e))
}

/// Creates the folders above an object, fsyncing each parent whose entries changed.
fn ensure_parent(op: Op, key: &str, root: &Path, path: &Path) -> Result<()> {
    let objects = root.join("objects");
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    let Ok(relative) = parent.strip_prefix(&objects) else {
        return Ok(());
    };
    let mut dir = objects;
    for part in relative.components() {
        let next = dir.join(part);
        match fs::create_dir(&next) {
            Ok(()) => fsync_dir(op, key, &dir)?,
            Err(e) if e.kind() == IoKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(op, key, &next, e)),
        }
        dir = next;
    }
    Ok(())
}

/// Writes the whole object to a fresh file in `tmp/` and fsyncs it.
fn stage(op: Op, key: &str, root: &Path, contents: &[u8]) -> Result<PathBuf> {
    let tmp = root.join("tmp").join(format!("{}.tmp", Nonce::random()));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| Error::io(op, key, &tmp, e))?;
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(op, key, &tmp, e));
    }
    Ok(tmp)
}

/// Holds the bucket-wide writers' lock until dropped (the file closes, `flock` is released).
struct WriterLock(#[allow(dead_code)] File);

fn lock(op: Op, key: &str, root: &Path) -> Result<WriterLock> {
    let path = root.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(op, key, &path, e))?;
    file.lock().map_err(|e| Error::io(op, key, &path, e))?;
    Ok(WriterLock(file))
}

/// Renames a staged file over `path` and makes the new name durable.
fn replace(op: Op, key: &str, tmp: &Path, path: &Path) -> Result<()> {
    if let Err(e) = fs::rename(tmp, path) {
        let _ = fs::remove_file(tmp);
        return Err(Error::io(op, key, path, e));
    }
    match path.parent() {
        Some(dir) => fsync_dir(op, key, dir),
        None => Ok(()),
    }
}

fn nonce_metadata(nonce: Nonce) -> BTreeMap<String, String> {
    BTreeMap::from([(NONCE_METADATA_KEY.to_owned(), nonce.to_string())])
}

/// Every object key under `objects/` whose key starts with `prefix`, sorted.
fn walk(root: &Path, prefix: &str, start_after: Option<&str>) -> Result<Vec<ObjectInfo>> {
    let objects = root.join("objects");
    // Start at the deepest folder the prefix fully names.
    let (dir_key, mut dir) = match prefix.rfind('/') {
        Some(i) => (&prefix[..=i], objects.join(&prefix[..i])),
        None => ("", objects.clone()),
    };
    let mut pending = vec![(dir_key.to_owned(), std::mem::take(&mut dir))];
    let mut found = Vec::new();
    while let Some((key_prefix, dir)) = pending.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == IoKind::NotFound => continue,
            Err(e) => return Err(Error::io(Op::List, prefix, &dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(Op::List, prefix, &dir, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let file_type = entry
                .file_type()
                .map_err(|e| Error::io(Op::List, prefix, &dir, e))?;
            if file_type.is_dir() {
                let sub = format!("{key_prefix}{name}/");
                if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                    pending.push((sub, entry.path()));
                }
            } else if let Some(stem) = name.strip_suffix(OBJECT_SUFFIX) {
                let key = format!("{key_prefix}{stem}");
                let after = start_after.is_none_or(|a| key.as_str() > a);
                if key.starts_with(prefix) && after {
                    found.push((key, entry.path()));
                }
            }
        }
    }
    found.sort();
    let mut infos = Vec::with_capacity(found.len());
    for (key, path) in found {
        // An object deleted since the folder was read is simply not listed.
        if let Some((header, size_bytes)) = read_header(Op::List, &key, &path)? {
            infos.push(ObjectInfo {
                key,
                size_bytes,
                version: Some(Version::new(header.version)),
            });
        }
    }
    Ok(infos)
}

#[async_trait]
impl Bucket for FileBucket {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            compose: false,
            append: false,
            user_metadata: true,
        }
    }

    async fn put_if_absent(&self, key: &str, body: Bytes, nonce: Nonce) -> Result<Created> {
        const OP: Op = Op::PutIfAbsent;
        let path = self.object_path(OP, key)?;
        let k = key.to_owned();
        self.blocking(OP, key, move |root| {
            let version = Nonce::random().to_string();
            let contents = encode(&version, nonce_metadata(nonce), &body)?;
            ensure_parent(OP, &k, root, &path)?;
            let tmp = stage(OP, &k, root, &contents)?;
            let linked = fs::hard_link(&tmp, &path);
            let _ = fs::remove_file(&tmp);
            match linked {
                Ok(()) => {}
                Err(e) if e.kind() == IoKind::AlreadyExists => return Ok(Created::Exists),
                Err(e) => return Err(Error::io(OP, &k, &path, e)),
            }
            if let Some(dir) = path.parent() {
                fsync_dir(OP, &k, dir)?;
            }
            Ok(Created::Created(Version::new(version)))
        })
        .await
    }

    async fn put_if_match(
        &self,
        key: &str,
        body: Bytes,
        expected: &Version,
        nonce: Nonce,
    ) -> Result<Swapped> {
        const OP: Op = Op::PutIfMatch;
        let path = self.object_path(OP, key)?;
        let (k, expected) = (key.to_owned(), expected.clone());
        self.blocking(OP, key, move |root| {
            let _lock = lock(OP, &k, root)?;
            match read_header(OP, &k, &path)? {
                Some((header, _)) if header.version == expected.as_str() => {}
                _ => return Ok(Swapped::Mismatch),
            }
            let version = Nonce::random().to_string();
            let tmp = stage(
                OP,
                &k,
                root,
                &encode(&version, nonce_metadata(nonce), &body)?,
            )?;
            replace(OP, &k, &tmp, &path)?;
            Ok(Swapped::Swapped(Version::new(version)))
        })
        .await
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<Version> {
        const OP: Op = Op::Put;
        let path = self.object_path(OP, key)?;
        let k = key.to_owned();
        self.blocking(OP, key, move |root| {
            let version = Nonce::random().to_string();
            let contents = encode(&version, BTreeMap::new(), &body)?;
            let _lock = lock(OP, &k, root)?;
            ensure_parent(OP, &k, root, &path)?;
            let tmp = stage(OP, &k, root, &contents)?;
            replace(OP, &k, &tmp, &path)?;
            Ok(Version::new(version))
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<Object>> {
        let path = self.object_path(Op::Get, key)?;
        let k = key.to_owned();
        self.blocking(Op::Get, key, move |_| read_object(Op::Get, &k, &path))
            .await
    }

    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes> {
        const OP: Op = Op::GetRange;
        let path = self.object_path(OP, key)?;
        range.validate(OP, key)?;
        let k = key.to_owned();
        self.blocking(OP, key, move |_| {
            let object = read_object(OP, &k, &path)?.ok_or_else(|| Error::not_found(OP, &k))?;
            let r = range.resolve(OP, &k, object.bytes.len() as u64)?;
            Ok(object.bytes.slice(r.start as usize..r.end as usize))
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let path = self.object_path(Op::Head, key)?;
        let k = key.to_owned();
        self.blocking(Op::Head, key, move |_| {
            Ok(
                read_header(Op::Head, &k, &path)?.map(|(header, size_bytes)| ObjectInfo {
                    key: k.clone(),
                    size_bytes,
                    version: Some(Version::new(header.version)),
                }),
            )
        })
        .await
    }

    fn list(&self, prefix: &str, start_after: Option<&str>) -> ListStream<'_> {
        let (prefix, start_after) = (prefix.to_owned(), start_after.map(str::to_owned));
        crate::paging::paginate(prefix.clone(), (), start_after.clone(), move |()| {
            let (after, prefix) = (start_after.clone(), prefix.clone());
            async move {
                let infos = self
                    .blocking(Op::List, &prefix.clone(), move |root| {
                        walk(root, &prefix, after.as_deref())
                    })
                    .await?;
                Ok((infos, None))
            }
        })
    }

    async fn delete(&self, key: &str) -> Result<()> {
        const OP: Op = Op::Delete;
        let path = self.object_path(OP, key)?;
        let k = key.to_owned();
        self.blocking(OP, key, move |root| {
            let _lock = lock(OP, &k, root)?;
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == IoKind::NotFound => return Ok(()),
                Err(e) => return Err(Error::io(OP, &k, &path, e)),
            }
            match path.parent() {
                Some(dir) => fsync_dir(OP, &k, dir),
                None => Ok(()),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves a damaged object file is reported as a fatal error naming the key, never a panic.
    #[test]
    fn damaged_files_are_errors() {
        for raw in [
            &b""[..],
            b"HADALOBJ",
            b"HADALOBJ\xff\xff\xff\xff{}",
            b"NOTMAGIC\0\0\0\0",
        ] {
            let err = decode(Op::Get, "db/k", raw).expect_err("damaged");
            assert!(err.to_string().contains("db/k"), "{err}");
        }
        let good = encode("v1", BTreeMap::new(), b"body").expect("encode");
        let (header, at) = decode(Op::Get, "k", &good).expect("decode");
        assert_eq!((header.version.as_str(), &good[at..]), ("v1", &b"body"[..]));
    }

    // Proves keys map to folders and a folder named like an object file is refused.
    #[test]
    fn keys_map_to_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bucket = FileBucket::open(dir.path()).expect("open");
        let path = bucket.object_path(Op::Put, "db/seg/1").expect("path");
        assert!(path.ends_with("objects/db/seg/1.obj"));
        assert!(bucket.object_path(Op::Put, "x.obj/y").is_err());
    }
}
