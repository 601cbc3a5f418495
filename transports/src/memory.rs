//! `memory://NAME`: an in-process bucket. Every open of the same name in one process shares the
//! same objects, so a test can hand one URL to a writer and a replica.
//!
//! Invariants: one mutex guards the whole map, so every operation is linearizable by
//! construction; versions are random 128-bit tags, never reused, so CAS has no ABA. Listing
//! takes the lock once per page of `LIST_PAGE_KEYS`, like a paginated provider: keys created
//! between pages may or may not appear, but order and the `start_after` bound always hold.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;

use crate::bucket::{
    Bucket, ByteRange, Capabilities, Created, LIST_PAGE_KEYS, ListStream, NONCE_METADATA_KEY,
    Nonce, Object, ObjectInfo, Swapped, Version, validate_key,
};
use crate::error::{Error, Op, Result};

#[derive(Debug, Clone)]
struct Stored {
    bytes: Bytes,
    version: Version,
    metadata: BTreeMap<String, String>,
}

type Objects = Arc<Mutex<BTreeMap<String, Stored>>>;

static NAMED: LazyLock<Mutex<HashMap<String, Objects>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

#[derive(Debug, Clone)]
pub struct MemoryBucket {
    name: String,
    objects: Objects,
}

fn new_version() -> Version {
    Version::new(Nonce::random().to_string())
}

fn nonce_metadata(nonce: Nonce) -> BTreeMap<String, String> {
    BTreeMap::from([(NONCE_METADATA_KEY.to_owned(), nonce.to_string())])
}

impl MemoryBucket {
    /// The process-wide bucket called `name` (created empty on first use).
    pub fn named(name: &str) -> MemoryBucket {
        let objects = NAMED.lock().entry(name.to_owned()).or_default().clone();
        MemoryBucket {
            name: format!("memory://{name}"),
            objects,
        }
    }

    /// A private bucket that no URL reaches (tests).
    pub fn new() -> MemoryBucket {
        MemoryBucket {
            name: "memory://(private)".to_owned(),
            objects: Objects::default(),
        }
    }

    pub fn object_count(&self) -> usize {
        self.objects.lock().len()
    }
}

impl Default for MemoryBucket {
    fn default() -> Self {
        MemoryBucket::new()
    }
}

#[async_trait]
impl Bucket for MemoryBucket {
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
        validate_key(Op::PutIfAbsent, key)?;
        let mut objects = self.objects.lock();
        if objects.contains_key(key) {
            return Ok(Created::Exists);
        }
        let version = new_version();
        let stored = Stored {
            bytes: body,
            version: version.clone(),
            metadata: nonce_metadata(nonce),
        };
        objects.insert(key.to_owned(), stored);
        Ok(Created::Created(version))
    }

    async fn put_if_match(
        &self,
        key: &str,
        body: Bytes,
        expected: &Version,
        nonce: Nonce,
    ) -> Result<Swapped> {
        validate_key(Op::PutIfMatch, key)?;
        let mut objects = self.objects.lock();
        match objects.get_mut(key) {
            Some(stored) if &stored.version == expected => {
                let version = new_version();
                *stored = Stored {
                    bytes: body,
                    version: version.clone(),
                    metadata: nonce_metadata(nonce),
                };
                Ok(Swapped::Swapped(version))
            }
            _ => Ok(Swapped::Mismatch),
        }
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<Version> {
        validate_key(Op::Put, key)?;
        let version = new_version();
        let stored = Stored {
            bytes: body,
            version: version.clone(),
            metadata: BTreeMap::new(),
        };
        self.objects.lock().insert(key.to_owned(), stored);
        Ok(version)
    }

    async fn get(&self, key: &str) -> Result<Option<Object>> {
        validate_key(Op::Get, key)?;
        Ok(self.objects.lock().get(key).map(|s| Object {
            bytes: s.bytes.clone(),
            version: s.version.clone(),
            metadata: s.metadata.clone(),
        }))
    }

    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Bytes> {
        validate_key(Op::GetRange, key)?;
        let bytes = match self.objects.lock().get(key) {
            Some(stored) => stored.bytes.clone(),
            None => return Err(Error::not_found(Op::GetRange, key)),
        };
        let r = range.resolve(Op::GetRange, key, bytes.len() as u64)?;
        Ok(bytes.slice(r.start as usize..r.end as usize))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        validate_key(Op::Head, key)?;
        Ok(self.objects.lock().get(key).map(|s| ObjectInfo {
            key: key.to_owned(),
            size_bytes: s.bytes.len() as u64,
            version: Some(s.version.clone()),
        }))
    }

    fn list(&self, prefix: &str, start_after: Option<&str>) -> ListStream<'_> {
        let objects = self.objects.clone();
        let (owned, prefix) = (prefix.to_owned(), prefix.to_owned());
        let start_after = start_after.map(str::to_owned);
        crate::paging::paginate(
            owned,
            start_after.clone(),
            start_after,
            move |after: Option<String>| {
                let lower = match after {
                    Some(after) if after >= prefix => Bound::Excluded(after),
                    _ => Bound::Included(prefix.clone()),
                };
                let page: Vec<ObjectInfo> = objects
                    .lock()
                    .range::<String, _>((lower, Bound::Unbounded))
                    .take_while(|(k, _)| k.starts_with(prefix.as_str()))
                    .take(LIST_PAGE_KEYS)
                    .map(|(k, s)| ObjectInfo {
                        key: k.clone(),
                        size_bytes: s.bytes.len() as u64,
                        version: Some(s.version.clone()),
                    })
                    .collect();
                let next =
                    (page.len() == LIST_PAGE_KEYS).then(|| page.last().map(|i| i.key.clone()));
                async move { Ok((page, next)) }
            },
        )
    }

    async fn delete(&self, key: &str) -> Result<()> {
        validate_key(Op::Delete, key)?;
        self.objects.lock().remove(key);
        Ok(())
    }
}
