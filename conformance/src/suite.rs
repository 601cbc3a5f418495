//! The `Bucket` contract suite: one function, `run_suite`, that takes a bucket factory and checks
//! every promise of the trait against it — "test the primitive, not the docs".
//!
//! Each case gets a fresh, empty bucket from the factory (a new store, or a new prefix on a
//! shared server) and returns `Err(why)` naming what it saw. Cases never panic, so one broken
//! primitive shows up as one failed row, and the report lists them all.
//!
//! Invariants:
//! 1. Every conditional write in the suite carries a fresh nonce in its body, as the protocol
//!    requires, so "whose object is this?" is always decidable.
//! 2. Race cases release all racers at once (a barrier) and count winners from the answers
//!    *and* check the stored object is the winner's: a store that lets two writers believe
//!    they won fails even if the last write happens to be one of theirs.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use hadal_transports::{
    Bucket, ByteRange, Created, DynBucket, ErrorKind, Fault, FaultConfig, FaultRule, FaultyBucket,
    Nonce, Op, RetryPolicy, RetryingBucket, Swapped, Version, list_all,
};
use tokio::sync::Barrier;

/// How big the suite's workloads are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuiteOptions {
    /// Concurrent writers per race round.
    pub racers: usize,
    pub race_rounds: usize,
    /// The size of the large-object case.
    pub big_object_bytes: usize,
    /// Keys written for the listing case; past `LIST_PAGE_KEYS` to exercise pagination.
    pub list_keys: usize,
    /// Only run cases whose name is listed (`None`: all).
    pub only: Option<Vec<String>>,
}

impl SuiteOptions {
    /// The full contract (issue 3): 32 racers × 20 rounds, 16 MiB, 1,050 keys.
    pub fn full() -> SuiteOptions {
        SuiteOptions {
            racers: 32,
            race_rounds: 20,
            big_object_bytes: 16 << 20,
            list_keys: 1_050,
            only: None,
        }
    }

    /// A short run for `hadal bucket check`: every primitive, small workloads.
    pub fn smoke() -> SuiteOptions {
        SuiteOptions {
            racers: 8,
            race_rounds: 3,
            big_object_bytes: 1 << 20,
            list_keys: 40,
            only: None,
        }
    }

    pub fn only(mut self, cases: &[&str]) -> SuiteOptions {
        self.only = Some(cases.iter().map(|c| (*c).to_owned()).collect());
        self
    }
}

/// The outcome of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
    pub elapsed: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuiteReport {
    pub store: String,
    pub cases: Vec<CaseResult>,
}

impl SuiteReport {
    pub fn passed(&self) -> bool {
        self.cases.iter().all(|c| c.passed)
    }

    pub fn failed(&self) -> Vec<&CaseResult> {
        self.cases.iter().filter(|c| !c.passed).collect()
    }

    pub fn case(&self, name: &str) -> Option<&CaseResult> {
        self.cases.iter().find(|c| c.name == name)
    }
}

impl fmt::Display for SuiteReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "contract suite against {}", self.store)?;
        for case in &self.cases {
            let mark = if case.passed { "pass" } else { "FAIL" };
            writeln!(
                f,
                "  {mark}  {:<24} {:>8.2}s  {}",
                case.name,
                case.elapsed.as_secs_f64(),
                case.detail
            )?;
        }
        let passed = self.cases.iter().filter(|c| c.passed).count();
        write!(f, "  {passed} of {} cases passed", self.cases.len())
    }
}

type CaseFuture = std::pin::Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;
type CaseFn = fn(DynBucket, SuiteOptions) -> CaseFuture;

/// Every case, in the order they run.
pub const CASES: [(&str, CaseFn); 11] = [
    ("create-if-absent", |b, o| Box::pin(create_if_absent(b, o))),
    ("compare-and-swap", |b, o| Box::pin(compare_and_swap(b, o))),
    ("aba-nonce", |b, o| Box::pin(aba_nonce(b, o))),
    ("read-after-write", |b, o| Box::pin(read_after_write(b, o))),
    ("list-order-pagination", |b, o| {
        Box::pin(list_order_pagination(b, o))
    }),
    ("range-reads", |b, o| Box::pin(range_reads(b, o))),
    ("large-objects", |b, o| Box::pin(large_objects(b, o))),
    ("delete", |b, o| Box::pin(delete(b, o))),
    ("ambiguous-writes", |b, o| Box::pin(ambiguous_writes(b, o))),
    ("race-create", |b, o| Box::pin(race_create(b, o))),
    ("race-swap", |b, o| Box::pin(race_swap(b, o))),
];

/// Runs the suite. `factory(case)` must return an empty bucket for that case.
pub async fn run_suite<F, Fut>(factory: F, options: &SuiteOptions) -> SuiteReport
where
    F: Fn(&'static str) -> Fut,
    Fut: Future<Output = hadal_transports::Result<DynBucket>>,
{
    let mut cases = Vec::new();
    let mut store = String::new();
    for (name, case) in CASES {
        if options
            .only
            .as_ref()
            .is_some_and(|only| !only.iter().any(|o| o == name))
        {
            continue;
        }
        let started = Instant::now();
        let outcome = match factory(name).await {
            Ok(bucket) => {
                store = bucket.name().to_owned();
                case(bucket, options.clone()).await
            }
            Err(e) => Err(format!("could not get a bucket: {e}")),
        };
        let (passed, detail) = match outcome {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
        cases.push(CaseResult {
            name,
            passed,
            detail,
            elapsed: started.elapsed(),
        });
    }
    SuiteReport { store, cases }
}

/// A body that carries its nonce, as every conditional write in the protocol does.
fn body(label: &str, nonce: Nonce) -> Bytes {
    Bytes::from(format!("{label} nonce={nonce}"))
}

fn ensure(condition: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if condition { Ok(()) } else { Err(why()) }
}

fn e(what: &str) -> impl FnOnce(hadal_transports::Error) -> String + '_ {
    move |err| format!("{what}: {err}")
}

async fn create(bucket: &dyn Bucket, key: &str, label: &str) -> Result<(Version, Nonce), String> {
    let nonce = Nonce::random();
    match bucket
        .put_if_absent(key, body(label, nonce), nonce)
        .await
        .map_err(e("create"))?
    {
        Created::Created(version) => Ok((version, nonce)),
        Created::Exists => Err(format!("create of fresh key {key} answered exists")),
    }
}

async fn create_if_absent(bucket: DynBucket, _: SuiteOptions) -> Result<String, String> {
    let (_, n1) = create(bucket.as_ref(), "c/one", "first").await?;
    let n2 = Nonce::random();
    let second = bucket
        .put_if_absent("c/one", body("second", n2), n2)
        .await
        .map_err(e("second create"))?;
    ensure(second == Created::Exists, || {
        "a second create of an existing key succeeded".into()
    })?;
    let object = bucket
        .get("c/one")
        .await
        .map_err(e("get"))?
        .ok_or("created key is missing")?;
    ensure(object.is_ours(n1, &body("first", n1)), || {
        "the stored object is not the first write".into()
    })?;
    ensure(object.nonce().is_none_or(|n| n == n1), || {
        "the stored nonce is not the first write's".into()
    })?;
    // An empty body is a valid object.
    let n3 = Nonce::random();
    let empty = bucket
        .put_if_absent("c/empty", Bytes::new(), n3)
        .await
        .map_err(e("empty create"))?;
    ensure(matches!(empty, Created::Created(_)), || {
        "create of an empty object failed".into()
    })?;
    let got = bucket
        .get("c/empty")
        .await
        .map_err(e("get empty"))?
        .ok_or("empty object missing")?;
    ensure(got.bytes.is_empty(), || {
        "the empty object came back non-empty".into()
    })?;
    Ok("second create answered exists; first write kept".into())
}

async fn compare_and_swap(bucket: DynBucket, _: SuiteOptions) -> Result<String, String> {
    let (v1, _) = create(bucket.as_ref(), "cas/k", "v1").await?;
    let n2 = Nonce::random();
    let Swapped::Swapped(v2) = bucket
        .put_if_match("cas/k", body("v2", n2), &v1, n2)
        .await
        .map_err(e("swap"))?
    else {
        return Err("swap with the current version answered mismatch".into());
    };
    ensure(v2 != v1, || "a swap did not change the version".into())?;
    let n3 = Nonce::random();
    let stale = bucket
        .put_if_match("cas/k", body("v3", n3), &v1, n3)
        .await
        .map_err(e("stale swap"))?;
    ensure(stale == Swapped::Mismatch, || {
        "a swap with a stale version succeeded".into()
    })?;
    let object = bucket
        .get("cas/k")
        .await
        .map_err(e("get"))?
        .ok_or("swapped key missing")?;
    ensure(
        object.is_ours(n2, &body("v2", n2)) && object.version == v2,
        || "the object after a refused swap is not the last successful one".into(),
    )?;
    let missing = bucket
        .put_if_match("cas/missing", body("x", n3), &v1, n3)
        .await
        .map_err(e("swap missing"))?;
    ensure(missing == Swapped::Mismatch, || {
        "a swap on a missing key succeeded".into()
    })?;
    ensure(
        bucket.get("cas/missing").await.map_err(e("get"))?.is_none(),
        || "a refused swap on a missing key created it".into(),
    )?;
    let made_up = Version::new("\"00000000000000000000000000000000\"");
    let bogus = bucket
        .put_if_match("cas/k", body("v4", n3), &made_up, n3)
        .await
        .map_err(e("bogus swap"))?;
    ensure(bogus == Swapped::Mismatch, || {
        "a swap with a made-up version succeeded".into()
    })?;
    Ok("current version swaps; stale, made-up and missing refuse".into())
}

async fn aba_nonce(bucket: DynBucket, _: SuiteOptions) -> Result<String, String> {
    // A → B → A again (same label, new nonce): the first version must stay stale. Stores whose
    // versions are content hashes (S3 ETags) are protected only because bodies carry nonces.
    let (v1, _) = create(bucket.as_ref(), "aba/k", "A").await?;
    let n2 = Nonce::random();
    let Swapped::Swapped(v2) = bucket
        .put_if_match("aba/k", body("B", n2), &v1, n2)
        .await
        .map_err(e("swap to B"))?
    else {
        return Err("swap A→B refused".into());
    };
    let n3 = Nonce::random();
    let Swapped::Swapped(v3) = bucket
        .put_if_match("aba/k", body("A", n3), &v2, n3)
        .await
        .map_err(e("swap to A"))?
    else {
        return Err("swap B→A refused".into());
    };
    ensure(v3 != v1, || {
        "A written again got A's first version back (ABA)".into()
    })?;
    let n4 = Nonce::random();
    let stale = bucket
        .put_if_match("aba/k", body("C", n4), &v1, n4)
        .await
        .map_err(e("stale swap"))?;
    ensure(stale == Swapped::Mismatch, || {
        "a swap with A's first version succeeded after A→B→A".into()
    })?;
    Ok("A→B→A leaves the first version stale".into())
}

async fn read_after_write(bucket: DynBucket, _: SuiteOptions) -> Result<String, String> {
    let v1 = bucket
        .put("raw/k", Bytes::from_static(b"one"))
        .await
        .map_err(e("put"))?;
    let got = bucket
        .get("raw/k")
        .await
        .map_err(e("get"))?
        .ok_or("written key missing")?;
    ensure(got.bytes.as_ref() == b"one" && got.version == v1, || {
        "get after put saw other bytes or version".into()
    })?;
    let head = bucket
        .head("raw/k")
        .await
        .map_err(e("head"))?
        .ok_or("head missed a written key")?;
    ensure(
        head.size_bytes == 3 && head.version.as_ref() == Some(&v1),
        || format!("head reported {head:?} after put"),
    )?;
    let v2 = bucket
        .put("raw/k", Bytes::from_static(b"second"))
        .await
        .map_err(e("overwrite"))?;
    let got = bucket
        .get("raw/k")
        .await
        .map_err(e("get"))?
        .ok_or("overwritten key missing")?;
    ensure(got.bytes.as_ref() == b"second" && got.version == v2, || {
        "get after overwrite saw the old object".into()
    })?;
    let listed = list_all(bucket.as_ref(), "raw/", None)
        .await
        .map_err(e("list"))?;
    ensure(
        listed.len() == 1 && listed[0].key == "raw/k" && listed[0].size_bytes == 6,
        || format!("list after write saw {listed:?}"),
    )?;
    ensure(
        bucket
            .get("raw/none")
            .await
            .map_err(e("get missing"))?
            .is_none(),
        || "a missing key was found".into(),
    )?;
    ensure(
        bucket
            .head("raw/none")
            .await
            .map_err(e("head missing"))?
            .is_none(),
        || "head found a missing key".into(),
    )?;
    Ok("get, head and list see every write at once".into())
}

/// Key names whose byte order differs from naive orders ('-' < '/' < '0' < 'A' < '_' < 'a').
const TRICKY_NAMES: [&str; 8] = ["a", "a-b", "a/b", "a0", "aA", "a_", "b", "B"];

async fn list_order_pagination(bucket: DynBucket, o: SuiteOptions) -> Result<String, String> {
    let mut expected: Vec<String> = (0..o.list_keys).map(|i| format!("l/n/{i:05}")).collect();
    expected.extend(TRICKY_NAMES.iter().map(|n| format!("l/t/{n}")));
    let others = ["l", "k/x", "m/x", "l_/x"];
    let all: Vec<String> = expected
        .iter()
        .cloned()
        .chain(others.iter().map(|s| (*s).to_owned()))
        .collect();
    futures::stream::iter(all.into_iter().rev())
        .map(|key| {
            let bucket = bucket.clone();
            async move { bucket.put(&key, Bytes::from(key.clone())).await.map(|_| ()) }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .map_err(e("writing keys"))?;
    expected.sort();
    let keys = |infos: Vec<hadal_transports::ObjectInfo>| {
        infos.into_iter().map(|i| i.key).collect::<Vec<_>>()
    };
    let listed = keys(
        list_all(bucket.as_ref(), "l/", None)
            .await
            .map_err(e("list"))?,
    );
    ensure(listed == expected, || {
        first_difference("list l/", &listed, &expected)
    })?;
    let middle = expected[expected.len() / 2].clone();
    let after = keys(
        list_all(bucket.as_ref(), "l/", Some(&middle))
            .await
            .map_err(e("list after"))?,
    );
    let tail: Vec<String> = expected.iter().filter(|k| **k > middle).cloned().collect();
    ensure(after == tail, || {
        first_difference("list after the middle", &after, &tail)
    })?;
    let boundary = expected[999.min(expected.len() - 1)].clone();
    let past_page = keys(
        list_all(bucket.as_ref(), "l/", Some(&boundary))
            .await
            .map_err(e("list"))?,
    );
    let tail: Vec<String> = expected
        .iter()
        .filter(|k| **k > boundary)
        .cloned()
        .collect();
    ensure(past_page == tail, || {
        first_difference("list after key 1000", &past_page, &tail)
    })?;
    let narrow = keys(
        list_all(bucket.as_ref(), "l/t/a", None)
            .await
            .map_err(e("list narrow"))?,
    );
    let want: Vec<String> = expected
        .iter()
        .filter(|k| k.starts_with("l/t/a"))
        .cloned()
        .collect();
    ensure(narrow == want, || {
        first_difference("list l/t/a (not a folder)", &narrow, &want)
    })?;
    let beyond = list_all(bucket.as_ref(), "l/", Some("l/z"))
        .await
        .map_err(e("list beyond"))?;
    ensure(beyond.is_empty(), || {
        "a listing after the last key was not empty".into()
    })?;
    let before = keys(
        list_all(bucket.as_ref(), "l/", Some("a"))
            .await
            .map_err(e("list before"))?,
    );
    ensure(before == expected, || {
        "start_after below the prefix dropped keys".into()
    })?;
    let some = bucket
        .list("l/", None)
        .take(3)
        .try_collect::<Vec<_>>()
        .await
        .map_err(e("list take"))?;
    ensure(some.len() == 3, || "a listing stopped early".into())?;
    Ok(format!(
        "{} keys in byte order across pages; start_after and prefixes exact",
        expected.len()
    ))
}

fn first_difference(what: &str, got: &[String], want: &[String]) -> String {
    let at = got
        .iter()
        .zip(want)
        .position(|(g, w)| g != w)
        .unwrap_or(got.len().min(want.len()));
    format!(
        "{what}: {} keys instead of {}; first difference at {at}: got {:?}, want {:?}",
        got.len(),
        want.len(),
        got.get(at),
        want.get(at)
    )
}

async fn range_reads(bucket: DynBucket, _: SuiteOptions) -> Result<String, String> {
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    bucket
        .put("r/k", Bytes::from(data.clone()))
        .await
        .map_err(e("put"))?;
    bucket
        .put("r/empty", Bytes::new())
        .await
        .map_err(e("put empty"))?;
    let read = |range| {
        let bucket = bucket.clone();
        async move { bucket.get_range("r/k", range).await }
    };
    let cases: [(ByteRange, std::ops::Range<usize>); 6] = [
        (ByteRange::Bounded { start: 10, end: 20 }, 10..20),
        (ByteRange::Bounded { start: 0, end: 1 }, 0..1),
        (
            ByteRange::Bounded {
                start: 990,
                end: 5000,
            },
            990..1000,
        ),
        (ByteRange::From { start: 995 }, 995..1000),
        (ByteRange::Suffix { len: 7 }, 993..1000),
        (ByteRange::Suffix { len: 5000 }, 0..1000),
    ];
    for (range, want) in cases {
        let got = read(range)
            .await
            .map_err(|err| format!("range {range}: {err}"))?;
        ensure(got.as_ref() == &data[want.clone()], || {
            format!("range {range}: got {} bytes, want {:?}", got.len(), want)
        })?;
    }
    for range in [
        ByteRange::Bounded {
            start: 1000,
            end: 1001,
        },
        ByteRange::From { start: 1000 },
    ] {
        match read(range).await {
            Err(err) if err.kind() == ErrorKind::Invalid => {}
            other => return Err(format!("unsatisfiable range {range} answered {other:?}")),
        }
    }
    match bucket
        .get_range("r/empty", ByteRange::From { start: 0 })
        .await
    {
        Err(err) if err.kind() == ErrorKind::Invalid => {}
        other => return Err(format!("a range of an empty object answered {other:?}")),
    }
    match bucket
        .get_range("r/missing", ByteRange::From { start: 0 })
        .await
    {
        Err(err) if err.kind() == ErrorKind::NotFound => {}
        other => return Err(format!("a range of a missing object answered {other:?}")),
    }
    Ok("bounded, open, suffix, past-end and unsatisfiable ranges as HTTP says".into())
}

async fn large_objects(bucket: DynBucket, o: SuiteOptions) -> Result<String, String> {
    let mut data = vec![0u8; o.big_object_bytes];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    let nonce = Nonce::random();
    let data = Bytes::from(data);
    let created = bucket
        .put_if_absent("big/k", data.clone(), nonce)
        .await
        .map_err(e("create"))?;
    ensure(matches!(created, Created::Created(_)), || {
        "create of a large object answered exists".into()
    })?;
    let got = bucket
        .get("big/k")
        .await
        .map_err(e("get"))?
        .ok_or("large object missing")?;
    ensure(got.bytes == data, || {
        format!(
            "read back {} bytes that differ from the {} written",
            got.bytes.len(),
            data.len()
        )
    })?;
    let mid = (data.len() / 2) as u64;
    let part = bucket
        .get_range(
            "big/k",
            ByteRange::Bounded {
                start: mid,
                end: mid + 4096,
            },
        )
        .await
        .map_err(e("range"))?;
    ensure(
        part.as_ref() == &data[mid as usize..mid as usize + 4096],
        || "a range of a large object differs".into(),
    )?;
    let n2 = Nonce::random();
    let again = bucket
        .put_if_absent("big/k", data.clone(), n2)
        .await
        .map_err(e("second create"))?;
    ensure(again == Created::Exists, || {
        "a second create of a large object succeeded".into()
    })?;
    Ok(format!(
        "{} MiB round-trips byte for byte",
        o.big_object_bytes >> 20
    ))
}

async fn delete(bucket: DynBucket, _: SuiteOptions) -> Result<String, String> {
    bucket
        .delete("d/missing")
        .await
        .map_err(e("delete missing"))?;
    let (v1, _) = create(bucket.as_ref(), "d/k", "first").await?;
    bucket.delete("d/k").await.map_err(e("delete"))?;
    ensure(bucket.get("d/k").await.map_err(e("get"))?.is_none(), || {
        "a deleted key is still readable".into()
    })?;
    ensure(
        bucket.head("d/k").await.map_err(e("head"))?.is_none(),
        || "head still sees a deleted key".into(),
    )?;
    let listed = list_all(bucket.as_ref(), "d/", None)
        .await
        .map_err(e("list"))?;
    ensure(listed.is_empty(), || {
        format!("list still shows deleted keys: {listed:?}")
    })?;
    let (_, _) = create(bucket.as_ref(), "d/k", "second")
        .await
        .map_err(|w| format!("recreate after delete: {w}"))?;
    let n = Nonce::random();
    let stale = bucket
        .put_if_match("d/k", body("third", n), &v1, n)
        .await
        .map_err(e("swap"))?;
    ensure(stale == Swapped::Mismatch, || {
        "a version from before the delete still swaps".into()
    })?;
    bucket.delete("d/k").await.map_err(e("delete again"))?;
    bucket.delete("d/k").await.map_err(e("delete twice"))?;
    Ok("deletes are idempotent; a deleted key can be created again".into())
}

/// A retrying bucket over a faulty one over `bucket`, fast enough for tests.
fn faulty(
    bucket: DynBucket,
    rules: Vec<FaultRule>,
) -> (
    Arc<FaultyBucket<DynBucket>>,
    RetryingBucket<Arc<FaultyBucket<DynBucket>>>,
) {
    let faults = Arc::new(FaultyBucket::new(
        bucket,
        FaultConfig {
            seed: 3,
            rules,
            ..FaultConfig::default()
        },
    ));
    let retrying = RetryingBucket::new(faults.clone(), RetryPolicy::fast());
    (faults, retrying)
}

async fn ambiguous_writes(bucket: DynBucket, _: SuiteOptions) -> Result<String, String> {
    // F2: our create is applied but its answer lost; the retry sees "exists"; the object is ours.
    let lost = vec![
        FaultRule::always(&[Op::PutIfAbsent], Fault::LostResponse).times(1),
        FaultRule::always(&[Op::PutIfMatch], Fault::LostResponse).times(1),
    ];
    let (faults, retrying) = faulty(bucket.clone(), lost);
    let n1 = Nonce::random();
    let created = retrying
        .put_if_absent("amb/ours", body("ours", n1), n1)
        .await
        .map_err(e("create"))?;
    ensure(matches!(created, Created::Created(_)), || {
        format!("a lost create resolved to {created:?}")
    })?;
    ensure(faults.calls(Op::PutIfAbsent) == 2, || {
        "the lost create was not resent exactly once".into()
    })?;
    let current = bucket
        .get("amb/ours")
        .await
        .map_err(e("get"))?
        .ok_or("created object missing")?;
    let n2 = Nonce::random();
    let swapped = retrying
        .put_if_match("amb/ours", body("ours2", n2), &current.version, n2)
        .await
        .map_err(e("swap"))?;
    ensure(matches!(swapped, Swapped::Swapped(_)), || {
        format!("a lost swap resolved to {swapped:?}")
    })?;
    ensure(faults.calls(Op::PutIfMatch) == 2, || {
        "the lost swap was not resent exactly once".into()
    })?;

    // Someone else's object is there: our create answers exists once, and is never resent.
    let (_, _) = create(bucket.as_ref(), "amb/theirs", "theirs").await?;
    let (faults, retrying) = faulty(bucket.clone(), Vec::new());
    let n3 = Nonce::random();
    let lost_race = retrying
        .put_if_absent("amb/theirs", body("mine", n3), n3)
        .await
        .map_err(e("create"))?;
    ensure(lost_race == Created::Exists, || {
        "a create over another writer's object succeeded".into()
    })?;
    ensure(faults.calls(Op::PutIfAbsent) == 1, || {
        "a conflict was retried".into()
    })?;

    // A 503 refuses our create; meanwhile another writer wins; the retry's "exists" is theirs.
    let busy = FaultRule::always(&[Op::PutIfAbsent], Fault::Status(503)).times(1);
    let (_, retrying) = faulty(bucket.clone(), vec![busy]);
    let (_, _) = create(bucket.as_ref(), "amb/raced", "winner").await?;
    let n4 = Nonce::random();
    let raced = retrying
        .put_if_absent("amb/raced", body("loser", n4), n4)
        .await
        .map_err(e("create"))?;
    ensure(raced == Created::Exists, || {
        "an ambiguous create claimed another writer's object".into()
    })?;

    // The write lands after the client gave up; the resent write resolves either way to ours.
    let late = FaultRule::always(
        &[Op::PutIfAbsent],
        Fault::AppliedLate {
            delay: Duration::from_millis(30),
        },
    )
    .times(1);
    let (_, retrying) = faulty(bucket.clone(), vec![late]);
    let n5 = Nonce::random();
    let landed = retrying
        .put_if_absent("amb/late", body("late", n5), n5)
        .await
        .map_err(e("create"))?;
    ensure(matches!(landed, Created::Created(_)), || {
        format!("a late create resolved to {landed:?}")
    })?;
    tokio::time::sleep(Duration::from_millis(60)).await;
    let object = bucket
        .get("amb/late")
        .await
        .map_err(e("get"))?
        .ok_or("late object missing")?;
    ensure(object.is_ours(n5, &body("late", n5)), || {
        "the late object is not ours".into()
    })?;
    Ok(
        "lost answers resolve to ours, others' objects to conflict, without resending conflicts"
            .into(),
    )
}

async fn race_create(bucket: DynBucket, o: SuiteOptions) -> Result<String, String> {
    for round in 0..o.race_rounds {
        let key = format!("race/create/{round:03}");
        let barrier = Arc::new(Barrier::new(o.racers));
        let tasks: Vec<_> = (0..o.racers)
            .map(|racer| {
                let (bucket, barrier, key) = (bucket.clone(), barrier.clone(), key.clone());
                tokio::spawn(async move {
                    let nonce = Nonce::random();
                    let body = body(&format!("racer {racer}"), nonce);
                    barrier.wait().await;
                    let outcome = bucket.put_if_absent(&key, body.clone(), nonce).await;
                    (outcome, nonce, body)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            let (outcome, nonce, body) =
                task.await.map_err(|err| format!("racer panicked: {err}"))?;
            if let Created::Created(_) = outcome.map_err(e("racing create"))? {
                winners.push((nonce, body));
            }
        }
        ensure(winners.len() == 1, || {
            format!(
                "round {round}: {} of {} racers won a create",
                winners.len(),
                o.racers
            )
        })?;
        let stored = bucket
            .get(&key)
            .await
            .map_err(e("get"))?
            .ok_or("raced key missing")?;
        let (nonce, body) = &winners[0];
        ensure(stored.is_ours(*nonce, body), || {
            format!("round {round}: the stored object is not the winner's")
        })?;
    }
    Ok(format!(
        "{} rounds × {} racers: exactly one winner each",
        o.race_rounds, o.racers
    ))
}

async fn race_swap(bucket: DynBucket, o: SuiteOptions) -> Result<String, String> {
    let key = "race/swap";
    let (mut version, _) = create(bucket.as_ref(), key, "start").await?;
    for round in 0..o.race_rounds {
        let barrier = Arc::new(Barrier::new(o.racers));
        let tasks: Vec<_> = (0..o.racers)
            .map(|racer| {
                let (bucket, barrier, version) = (bucket.clone(), barrier.clone(), version.clone());
                tokio::spawn(async move {
                    let nonce = Nonce::random();
                    let body = body(&format!("round {round} racer {racer}"), nonce);
                    barrier.wait().await;
                    let outcome = bucket
                        .put_if_match(key, body.clone(), &version, nonce)
                        .await;
                    (outcome, nonce, body)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            let (outcome, nonce, body) =
                task.await.map_err(|err| format!("racer panicked: {err}"))?;
            if let Swapped::Swapped(v) = outcome.map_err(e("racing swap"))? {
                winners.push((nonce, body, v));
            }
        }
        ensure(winners.len() == 1, || {
            format!(
                "round {round}: {} of {} racers won a swap",
                winners.len(),
                o.racers
            )
        })?;
        let stored = bucket
            .get(key)
            .await
            .map_err(e("get"))?
            .ok_or("raced key missing")?;
        let (nonce, body, won) = &winners[0];
        ensure(
            stored.is_ours(*nonce, body) && &stored.version == won,
            || format!("round {round}: the stored object is not the winner's"),
        )?;
        version = won.clone();
    }
    Ok(format!(
        "{} rounds × {} racers: exactly one swap each",
        o.race_rounds, o.racers
    ))
}
