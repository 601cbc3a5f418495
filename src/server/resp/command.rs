//! The key-value commands: parsed from their arguments into a [`Cmd`] (syntax errors are
//! found here, also for a command queued inside `MULTI`), then run against a [`View`] of one
//! snapshot that collects the writes into one batch. A lone command and a whole `EXEC` run the
//! same code; `EXEC` just runs several commands on one view, so it commits atomically and sees
//! its own writes.

use std::collections::HashMap;

use bytes::Bytes;
use hadal_engine::{Assertion, Batch, DEFAULT_TABLE};

use crate::server::backend::{Reads, Result};
use crate::server::resp::reply::Reply;

/// How a `SET` (or `EXPIRE`) sets the key's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No expiry: the key lives until deleted.
    Never,
    /// This many ms from the command's snapshot time.
    In(u64),
    /// At this time, ms since the Unix epoch.
    At(u64),
    /// Whatever expiry the key has now (`KEEPTTL`).
    Keep,
}

impl Expiry {
    fn resolve(self, now_ms: u64, current: Option<u64>) -> Option<u64> {
        match self {
            Expiry::Never => None,
            Expiry::In(ms) => Some(now_ms.saturating_add(ms)),
            Expiry::At(ms) => Some(ms),
            Expiry::Keep => current,
        }
    }
}

/// `SET`'s condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    /// Always set.
    Always,
    /// Only if the key is absent (`NX`).
    Absent,
    /// Only if the key exists (`XX`).
    Present,
}

/// A parsed key-value command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    /// `GET key`.
    Get(Bytes),
    /// `SET key value …`.
    Set {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
        /// The expiry to give it.
        expiry: Expiry,
        /// When to set.
        cond: Cond,
        /// Reply with the old value (`GET`).
        get: bool,
    },
    /// `SETNX key value`.
    SetNx(Bytes, Bytes),
    /// `GETDEL key`.
    GetDel(Bytes),
    /// `DEL key…`.
    Del(Vec<Bytes>),
    /// `EXISTS key…`.
    Exists(Vec<Bytes>),
    /// `EXPIRE`/`PEXPIRE key amount`, in ms (may be zero or negative: deletes the key).
    Expire(Bytes, i64),
    /// `TTL key` (`ms` false) or `PTTL key` (`ms` true).
    Ttl(Bytes, bool),
    /// `PERSIST key`.
    Persist(Bytes),
    /// `MGET key…`.
    MGet(Vec<Bytes>),
    /// `MSET key value…`.
    MSet(Vec<(Bytes, Bytes)>),
    /// `INCR`/`INCRBY`/`DECR`/`DECRBY key`, as the amount added.
    IncrBy(Bytes, i64),
    /// `APPEND key value`.
    Append(Bytes, Bytes),
    /// `STRLEN key`.
    StrLen(Bytes),
}

/// Why a command's arguments are wrong: the error reply, sent as is.
pub type Syntax = Reply;

fn syntax_error() -> Syntax {
    Reply::error("ERR", "syntax error")
}

fn not_an_integer() -> Reply {
    Reply::error("ERR", "value is not an integer or out of range")
}

/// An integer argument, as Redis reads one.
pub fn integer(arg: &[u8]) -> std::result::Result<i64, Reply> {
    std::str::from_utf8(arg)
        .ok()
        .filter(|s| !s.is_empty() && !s.starts_with('+') && (s == &"0" || !s.starts_with('0')))
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(not_an_integer)
}

fn upper(arg: &[u8]) -> Vec<u8> {
    arg.to_ascii_uppercase()
}

impl Cmd {
    /// Parses the arguments of command `name` (lowercase; arity already checked), or `None`
    /// if `name` is not a key-value command.
    pub fn parse(name: &str, args: &[Bytes]) -> Option<std::result::Result<Cmd, Syntax>> {
        let key = || args[0].clone();
        let keys = || args.to_vec();
        Some(Ok(match name {
            "get" => Cmd::Get(key()),
            "set" => return Some(parse_set(args)),
            "setnx" => Cmd::SetNx(key(), args[1].clone()),
            "getdel" => Cmd::GetDel(key()),
            "del" | "unlink" => Cmd::Del(keys()),
            "exists" => Cmd::Exists(keys()),
            "expire" | "pexpire" => {
                if args.len() > 2 {
                    return Some(Err(Reply::error(
                        "ERR",
                        format!("'{name}' options (NX, XX, GT, LT) are not supported by Hadal"),
                    )));
                }
                let amount = match integer(&args[1]) {
                    Ok(n) => n,
                    Err(e) => return Some(Err(e)),
                };
                let ms = if name == "expire" {
                    match amount.checked_mul(1000) {
                        Some(ms) => ms,
                        None => {
                            return Some(Err(Reply::error(
                                "ERR",
                                format!("invalid expire time in '{name}' command"),
                            )));
                        }
                    }
                } else {
                    amount
                };
                Cmd::Expire(key(), ms)
            }
            "ttl" => Cmd::Ttl(key(), false),
            "pttl" => Cmd::Ttl(key(), true),
            "persist" => Cmd::Persist(key()),
            "mget" => Cmd::MGet(keys()),
            "mset" => {
                if !args.len().is_multiple_of(2) {
                    return Some(Err(Reply::error(
                        "ERR",
                        "wrong number of arguments for 'mset' command",
                    )));
                }
                Cmd::MSet(
                    args.chunks_exact(2)
                        .map(|kv| (kv[0].clone(), kv[1].clone()))
                        .collect(),
                )
            }
            "incr" => Cmd::IncrBy(key(), 1),
            "decr" => Cmd::IncrBy(key(), -1),
            "incrby" | "decrby" => {
                let by = match integer(&args[1]) {
                    Ok(by) => by,
                    Err(e) => return Some(Err(e)),
                };
                let by = if name == "decrby" {
                    match by.checked_neg() {
                        Some(by) => by,
                        None => {
                            return Some(Err(Reply::error("ERR", "decrement would overflow")));
                        }
                    }
                } else {
                    by
                };
                Cmd::IncrBy(key(), by)
            }
            "append" => Cmd::Append(key(), args[1].clone()),
            "strlen" => Cmd::StrLen(key()),
            _ => return None,
        }))
    }

    /// The one key a single-key read-modify-write works on (it runs under that key's lock),
    /// or `None` for commands on several keys.
    pub fn single_key(&self) -> Option<&Bytes> {
        match self {
            Cmd::Get(k)
            | Cmd::Set { key: k, .. }
            | Cmd::SetNx(k, _)
            | Cmd::GetDel(k)
            | Cmd::Expire(k, _)
            | Cmd::Ttl(k, _)
            | Cmd::Persist(k)
            | Cmd::IncrBy(k, _)
            | Cmd::Append(k, _)
            | Cmd::StrLen(k) => Some(k),
            Cmd::Del(keys) | Cmd::Exists(keys) | Cmd::MGet(keys) if keys.len() == 1 => {
                Some(&keys[0])
            }
            Cmd::MSet(pairs) if pairs.len() == 1 => Some(&pairs[0].0),
            _ => None,
        }
    }

    /// Runs the command on `view`: its reply (possibly an error reply, such as INCR of a
    /// non-number) and its writes added to the view's batch.
    pub fn run(&self, view: &mut View<'_, '_>) -> Result<Reply> {
        Ok(match self {
            Cmd::Get(key) => match view.get(key)? {
                Some(v) => Reply::Bulk(v.value),
                None => Reply::Nil,
            },
            Cmd::Set {
                key,
                value,
                expiry,
                cond,
                get,
            } => {
                let old = view.get(key)?;
                let go = match cond {
                    Cond::Always => true,
                    Cond::Absent => old.is_none(),
                    Cond::Present => old.is_some(),
                };
                if go {
                    let expires_ms =
                        expiry.resolve(view.now_ms(), old.as_ref().and_then(|v| v.expires_ms));
                    view.put(key, value.clone(), expires_ms);
                }
                match (get, old) {
                    (true, Some(old)) => Reply::Bulk(old.value),
                    (true, None) => Reply::Nil,
                    (false, _) if go => Reply::Ok,
                    (false, _) => Reply::Nil,
                }
            }
            Cmd::SetNx(key, value) => {
                if view.get(key)?.is_some() {
                    Reply::Int(0)
                } else {
                    view.put(key, value.clone(), None);
                    Reply::Int(1)
                }
            }
            Cmd::GetDel(key) => match view.get(key)? {
                Some(old) => {
                    view.delete(key);
                    Reply::Bulk(old.value)
                }
                None => Reply::Nil,
            },
            Cmd::Del(keys) => {
                let mut deleted = 0;
                for key in keys {
                    if view.get(key)?.is_some() {
                        view.delete(key);
                        deleted += 1;
                    }
                }
                Reply::Int(deleted)
            }
            Cmd::Exists(keys) => {
                let mut n = 0;
                for key in keys {
                    n += i64::from(view.get(key)?.is_some());
                }
                Reply::Int(n)
            }
            Cmd::Expire(key, ms) => match view.get(key)? {
                None => Reply::Int(0),
                Some(_) if *ms <= 0 => {
                    view.delete(key);
                    Reply::Int(1)
                }
                Some(old) => {
                    let at = view.now_ms().saturating_add(*ms as u64);
                    view.put(key, old.value, Some(at));
                    Reply::Int(1)
                }
            },
            Cmd::Ttl(key, ms) => match view.get(key)? {
                None => Reply::Int(-2),
                Some(Value {
                    expires_ms: None, ..
                }) => Reply::Int(-1),
                Some(Value {
                    expires_ms: Some(at),
                    ..
                }) => {
                    let left = at.saturating_sub(view.now_ms());
                    Reply::Int(ttl_reply(left, *ms))
                }
            },
            Cmd::Persist(key) => match view.get(key)? {
                Some(Value {
                    value,
                    expires_ms: Some(_),
                }) => {
                    view.put(key, value, None);
                    Reply::Int(1)
                }
                _ => Reply::Int(0),
            },
            Cmd::MGet(keys) => {
                let mut out = Vec::with_capacity(keys.len());
                for key in keys {
                    out.push(match view.get(key)? {
                        Some(v) => Reply::Bulk(v.value),
                        None => Reply::Nil,
                    });
                }
                Reply::Array(out)
            }
            Cmd::MSet(pairs) => {
                for (key, value) in pairs {
                    view.put(key, value.clone(), None);
                }
                Reply::Ok
            }
            Cmd::IncrBy(key, by) => {
                let old = view.get(key)?;
                let current = match &old {
                    None => 0,
                    Some(v) => match integer(&v.value) {
                        Ok(n) => n,
                        Err(e) => return Ok(e),
                    },
                };
                let Some(new) = current.checked_add(*by) else {
                    return Ok(Reply::error("ERR", "increment or decrement would overflow"));
                };
                let expires_ms = old.and_then(|v| v.expires_ms);
                view.put(key, Bytes::from(new.to_string()), expires_ms);
                Reply::Int(new)
            }
            Cmd::Append(key, tail) => {
                let old = view.get(key)?;
                let (mut value, expires_ms) = match old {
                    Some(v) => (v.value.to_vec(), v.expires_ms),
                    None => (Vec::new(), None),
                };
                value.extend_from_slice(tail);
                let len = value.len() as i64;
                view.put(key, Bytes::from(value), expires_ms);
                Reply::Int(len)
            }
            Cmd::StrLen(key) => Reply::Int(view.get(key)?.map_or(0, |v| v.value.len() as i64)),
        })
    }
}

/// `TTL` (seconds, rounded as Redis rounds) or `PTTL` (ms) of `left_ms`.
pub fn ttl_reply(left_ms: u64, ms: bool) -> i64 {
    let n = if ms {
        left_ms
    } else {
        left_ms.saturating_add(500) / 1000
    };
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn parse_set(args: &[Bytes]) -> std::result::Result<Cmd, Syntax> {
    let mut expiry = Expiry::Never;
    let mut cond = Cond::Always;
    let mut get = false;
    let mut i = 2;
    while i < args.len() {
        let option = upper(&args[i]);
        let amount = |i: usize| -> std::result::Result<i64, Reply> {
            let n = integer(args.get(i + 1).ok_or_else(syntax_error)?)?;
            if n <= 0 {
                return Err(Reply::error("ERR", "invalid expire time in 'set' command"));
            }
            Ok(n)
        };
        let set_expiry = |e: &mut Expiry, new: Expiry| {
            if *e != Expiry::Never {
                return Err(syntax_error());
            }
            *e = new;
            Ok(())
        };
        match option.as_slice() {
            b"EX" | b"PX" | b"EXAT" | b"PXAT" => {
                let n = amount(i)? as u64;
                let ms = |n: u64| {
                    n.checked_mul(1000)
                        .ok_or_else(|| Reply::error("ERR", "invalid expire time in 'set' command"))
                };
                let e = match option.as_slice() {
                    b"EX" => Expiry::In(ms(n)?),
                    b"PX" => Expiry::In(n),
                    b"EXAT" => Expiry::At(ms(n)?),
                    _ => Expiry::At(n),
                };
                set_expiry(&mut expiry, e)?;
                i += 2;
            }
            b"KEEPTTL" => {
                set_expiry(&mut expiry, Expiry::Keep)?;
                i += 1;
            }
            b"NX" | b"XX" => {
                if cond != Cond::Always {
                    return Err(syntax_error());
                }
                cond = if option == b"NX" {
                    Cond::Absent
                } else {
                    Cond::Present
                };
                i += 1;
            }
            b"GET" => {
                get = true;
                i += 1;
            }
            _ => return Err(syntax_error()),
        }
    }
    Ok(Cmd::Set {
        key: args[0].clone(),
        value: args[1].clone(),
        expiry,
        cond,
        get,
    })
}

/// A key's visible value, as a command sees it (from the snapshot or from an earlier write of
/// the same transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// The bytes.
    pub value: Bytes,
    /// Absolute expiry, ms since the Unix epoch.
    pub expires_ms: Option<u64>,
}

/// One snapshot plus the writes of the commands run on it so far: what a command reads, and
/// the batch they will commit together.
#[derive(Debug)]
pub struct View<'r, 'a> {
    reads: &'r mut Reads<'a>,
    /// Keys written by earlier commands of this view (`None`: deleted).
    written: HashMap<Bytes, Option<Value>>,
    batch: Batch,
}

impl<'r, 'a> View<'r, 'a> {
    /// A view of `reads` whose batch starts with `assertions` (a `WATCH`'s).
    pub fn new(reads: &'r mut Reads<'a>, assertions: Vec<Assertion>) -> View<'r, 'a> {
        let mut batch = Batch::new();
        batch.assertions = assertions;
        View {
            reads,
            written: HashMap::new(),
            batch,
        }
    }

    /// The visible value of `key`.
    pub fn get(&mut self, key: &Bytes) -> Result<Option<Value>> {
        if let Some(written) = self.written.get(key) {
            return Ok(written.clone());
        }
        let now = self.reads.now_ms();
        Ok(self.reads.get(key)?.and_then(|e| {
            // The engine hides expired keys; the snapshot's clock agrees with it.
            (e.expires_ms.is_none_or(|at| at > now)).then_some(Value {
                value: e.value,
                expires_ms: e.expires_ms,
            })
        }))
    }

    /// Whether the `WATCH` assertions this view started with still hold in its snapshot (the
    /// commit checks them again, so a change after the snapshot is caught too).
    pub fn watched_hold(&mut self) -> Result<bool> {
        let assertions = self.batch.assertions.clone();
        for a in &assertions {
            let holds = match a {
                Assertion::Exists { key, .. } => self.reads.get(key)?.is_some(),
                Assertion::Absent { key, .. } => self.reads.get(key)?.is_none(),
                Assertion::LastWriteAtMost { key, lsn, .. } => {
                    self.reads.get(key)?.is_none_or(|e| e.lsn <= *lsn)
                }
                Assertion::Equals { key, value, .. } => self
                    .reads
                    .get(key)?
                    .is_some_and(|e| e.value.as_ref() == value.as_slice()),
            };
            if !holds {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn put(&mut self, key: &Bytes, value: Bytes, expires_ms: Option<u64>) {
        let batch = std::mem::take(&mut self.batch);
        self.batch = batch.put_in(DEFAULT_TABLE, key.to_vec(), value.to_vec(), expires_ms);
        self.written
            .insert(key.clone(), Some(Value { value, expires_ms }));
    }

    fn delete(&mut self, key: &Bytes) {
        let batch = std::mem::take(&mut self.batch);
        self.batch = batch.delete(key.to_vec());
        self.written.insert(key.clone(), None);
    }

    /// The snapshot's time, ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.reads.now_ms()
    }

    /// The batch of every write made on this view.
    pub fn into_batch(self) -> Batch {
        self.batch
    }
}

/// Whether `key` matches the glob `pattern` as Redis matches `SCAN … MATCH`: `*`, `?`,
/// `[abc]`, `[^a-z]` and `\` escapes. Linear in the key for each `*` (no backtracking blowup).
pub fn glob(pattern: &[u8], key: &[u8]) -> bool {
    let (mut p, mut k) = (0, 0);
    // The last `*` seen and the key position it is currently standing for.
    let mut star: Option<(usize, usize)> = None;
    while k < key.len() {
        if p < pattern.len() {
            if pattern[p] == b'*' {
                star = Some((p, k));
                p += 1;
                continue;
            }
            if let Some(next) = one(pattern, p, key[k]) {
                p = next;
                k += 1;
                continue;
            }
        }
        match star {
            Some((sp, sk)) => {
                p = sp + 1;
                k = sk + 1;
                star = Some((sp, sk + 1));
            }
            None => return false,
        }
    }
    while pattern.get(p) == Some(&b'*') {
        p += 1;
    }
    p == pattern.len()
}

/// Matches one key byte `c` against the pattern token at `p` (not `*`): the position after the
/// token if it matches.
fn one(pattern: &[u8], p: usize, c: u8) -> Option<usize> {
    match pattern[p] {
        b'?' => Some(p + 1),
        b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == c).then_some(p + 2),
        b'[' => {
            let mut i = p + 1;
            let negate = pattern.get(i) == Some(&b'^');
            if negate {
                i += 1;
            }
            let mut matched = false;
            while i < pattern.len() {
                match pattern[i] {
                    b']' => {
                        i += 1;
                        return (matched != negate).then_some(i);
                    }
                    b'\\' if i + 1 < pattern.len() => {
                        matched |= pattern[i + 1] == c;
                        i += 2;
                    }
                    lo if i + 2 < pattern.len()
                        && pattern[i + 1] == b'-'
                        && pattern[i + 2] != b']' =>
                    {
                        let hi = pattern[i + 2];
                        let (lo, hi) = (lo.min(hi), lo.max(hi));
                        matched |= (lo..=hi).contains(&c);
                        i += 3;
                    }
                    other => {
                        matched |= other == c;
                        i += 1;
                    }
                }
            }
            // An unterminated class ends with the pattern, as in Redis.
            (matched != negate).then_some(i)
        }
        literal => (literal == c).then_some(p + 1),
    }
}

/// The bytes every key matching `pattern` starts with (up to its first special character), to
/// narrow a scan.
pub fn literal_prefix(pattern: &[u8]) -> &[u8] {
    let end = pattern
        .iter()
        .position(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'))
        .unwrap_or(pattern.len());
    &pattern[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Bytes> {
        words.iter().map(|w| Bytes::from(w.to_string())).collect()
    }

    #[test]
    fn set_options_parse_and_conflicts_are_syntax_errors() {
        // Proves SET's option grammar: one expiry, one condition, GET, in any order.
        let set = |w: &[&str]| Cmd::parse("set", &args(w)).expect("a kv command");
        assert_eq!(
            set(&["k", "v", "px", "50", "NX", "get"]),
            Ok(Cmd::Set {
                key: Bytes::from("k"),
                value: Bytes::from("v"),
                expiry: Expiry::In(50),
                cond: Cond::Absent,
                get: true,
            })
        );
        assert!(matches!(
            set(&["k", "v", "EX", "2"]),
            Ok(Cmd::Set {
                expiry: Expiry::In(2000),
                ..
            })
        ));
        assert!(set(&["k", "v", "EX", "1", "PX", "5"]).is_err());
        assert!(set(&["k", "v", "NX", "XX"]).is_err());
        assert!(set(&["k", "v", "EX"]).is_err());
        assert!(set(&["k", "v", "EX", "0"]).is_err());
        assert!(set(&["k", "v", "EX", "x"]).is_err());
        assert!(set(&["k", "v", "BOGUS"]).is_err());
        assert!(Cmd::parse("ping", &[]).is_none());
    }

    #[test]
    fn integers_parse_as_redis_parses_them() {
        // Proves INCR's number rules: no sign plus, no leading zeros, no spaces, i64 range.
        assert_eq!(integer(b"-12"), Ok(-12));
        assert_eq!(integer(b"0"), Ok(0));
        for bad in [
            &b""[..],
            b"+1",
            b"01",
            b" 1",
            b"1.5",
            b"9223372036854775808",
            b"x",
        ] {
            assert!(integer(bad).is_err(), "{bad:?}");
        }
        assert_eq!(ttl_reply(1499, false), 1);
        assert_eq!(ttl_reply(1500, false), 2);
        assert_eq!(ttl_reply(1500, true), 1500);
    }

    #[test]
    fn glob_matches_as_redis_match_does() {
        // Proves `*`, `?`, classes, ranges, negation and escapes, and a pathological pattern
        // that stays fast.
        assert!(glob(b"user:*", b"user:42"));
        assert!(!glob(b"user:*", b"users"));
        assert!(glob(b"h?llo", b"hello"));
        assert!(glob(b"h[ae]llo", b"hallo"));
        assert!(!glob(b"h[^e]llo", b"hello"));
        assert!(glob(b"h[a-b]llo", b"hbllo"));
        assert!(glob(b"a\\*b", b"a*b"));
        assert!(!glob(b"a\\*b", b"axb"));
        assert!(glob(b"*", b""));
        assert!(glob(b"*a*b*c", b"xxaxxbxxc"));
        assert!(!glob(b"*a*a*a*a*a*a*b", &[b'a'; 5000]));
        assert_eq!(literal_prefix(b"user:*:x"), b"user:");
        assert_eq!(literal_prefix(b"plain"), b"plain");
    }
}
