//! One client connection's state and its command dispatch: authentication, the protocol
//! version, `MULTI`/`WATCH`, `SCAN` cursors, and the connection-level commands (`PING`,
//! `HELLO`, `CLIENT`, `CONFIG GET`, `COMMAND`, `INFO`, …). Key-value commands go to
//! `command.rs` and run on the [`Backend`].
//!
//! Invariants:
//! 1. With API keys configured, nothing but `AUTH`, `HELLO` and `QUIT` runs before the
//!    connection authenticated, and every command is checked against the key's role.
//! 2. A replica refuses a write command before running it (`-READONLY`), whatever its
//!    arguments, as a Redis replica does.
//! 3. A write's reply is produced only once the write is durable per the mode: its
//!    [`Answer::Later`] resolves after [`crate::server::Pending::durable`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::future::BoxFuture;
use hadal_engine::Assertion;

use crate::server::auth::{Denied, KeyRole, Principal};
use crate::server::backend::{Backend, Error, Plan, Role, ScanRequest, Ttl};
use crate::server::http::App;
use crate::server::resp::command::{self, Cmd, Cond, Expiry, View};
use crate::server::resp::reply::{Proto, Reply};

/// The `redis_version` Hadal reports (clients pick features by it); its own version is in
/// `INFO` as `hadal_version`.
pub const REDIS_VERSION: &str = "7.2.0";

/// Most `SCAN` cursors one connection keeps open; the oldest is forgotten first.
const CURSORS_MAX: usize = 1024;

/// `SCAN`'s `COUNT` when none is given (as Redis).
const SCAN_COUNT_DEFAULT: usize = 10;

/// A command's reply: ready now, or once a write is durable.
pub enum Answer {
    /// Ready.
    Now(Reply),
    /// Resolves once the write behind it is durable per the mode (invariant 3).
    Later(BoxFuture<'static, Reply>),
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Now(reply) => f.debug_tuple("Now").field(reply).finish(),
            Answer::Later(_) => f.write_str("Later(..)"),
        }
    }
}

/// What a command needs: its arity (as Redis counts it: positive exact, negative at least,
/// both including the command name), the role that may run it, and whether it writes.
#[derive(Debug, Clone, Copy)]
struct Spec {
    name: &'static str,
    arity: i32,
    role: KeyRole,
    write: bool,
    /// Runs without a database (before the backend is open, and while not authenticated
    /// only `auth`, `hello` and `quit`).
    connection: bool,
}

const fn spec(name: &'static str, arity: i32, role: KeyRole, write: bool) -> Spec {
    Spec {
        name,
        arity,
        role,
        write,
        connection: false,
    }
}

const fn conn(name: &'static str, arity: i32) -> Spec {
    Spec {
        name,
        arity,
        role: KeyRole::Reader,
        write: false,
        connection: true,
    }
}

use KeyRole::{Admin, Reader, Writer};

/// Every command this server knows.
const COMMANDS: &[Spec] = &[
    conn("ping", -1),
    conn("echo", 2),
    conn("hello", -1),
    conn("auth", -2),
    conn("select", 2),
    conn("quit", -1),
    conn("reset", 1),
    conn("client", -2),
    conn("command", -1),
    conn("multi", 1),
    conn("discard", 1),
    conn("unwatch", 1),
    spec("config", -2, Admin, false),
    spec("watch", -2, Reader, false),
    spec("exec", 1, Reader, false),
    spec("get", 2, Reader, false),
    spec("mget", -2, Reader, false),
    spec("exists", -2, Reader, false),
    spec("strlen", 2, Reader, false),
    spec("ttl", 2, Reader, false),
    spec("pttl", 2, Reader, false),
    spec("scan", -2, Reader, false),
    spec("dbsize", 1, Reader, false),
    spec("info", -1, Reader, false),
    spec("set", -3, Writer, true),
    spec("setnx", 3, Writer, true),
    spec("getdel", 2, Writer, true),
    spec("del", -2, Writer, true),
    spec("unlink", -2, Writer, true),
    spec("expire", -3, Writer, true),
    spec("pexpire", -3, Writer, true),
    spec("persist", 2, Writer, true),
    spec("mset", -3, Writer, true),
    spec("incr", 2, Writer, true),
    spec("incrby", 3, Writer, true),
    spec("decr", 2, Writer, true),
    spec("decrby", 3, Writer, true),
    spec("append", 3, Writer, true),
];

fn lookup(name: &str) -> Option<&'static Spec> {
    COMMANDS.iter().find(|s| s.name == name)
}

/// The command name for metrics: a known command's name, else `unknown` (so clients cannot
/// grow the series set).
pub fn metric_name(args: &[Bytes]) -> &'static str {
    args.first()
        .and_then(|n| std::str::from_utf8(n).ok())
        .and_then(|n| lookup(&n.to_ascii_lowercase()).map(|s| s.name))
        .unwrap_or("unknown")
}

/// Connection ids, for `CLIENT ID` and `HELLO`.
static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

/// A transaction being queued.
#[derive(Debug)]
struct Multi {
    commands: Vec<Cmd>,
    /// A queued command was refused: `EXEC` answers `EXECABORT`.
    failed: bool,
}

/// One connection.
#[derive(Debug)]
pub struct Session {
    app: Arc<App>,
    /// The protocol replies are encoded in.
    pub proto: Proto,
    /// Who the connection is; `None` until `AUTH` when keys are configured.
    principal: Option<Principal>,
    id: u64,
    name: Option<Bytes>,
    multi: Option<Multi>,
    /// Assertions of `WATCH`ed keys, added to the `EXEC` batch.
    watched: Vec<Assertion>,
    /// A `WATCH`ed key could not be read: `EXEC` aborts.
    watch_failed: bool,
    /// `SCAN` cursors: number → the last key returned.
    cursors: HashMap<u64, Vec<u8>>,
    cursor_order: VecDeque<u64>,
    next_cursor: u64,
    /// Set by `QUIT`: close after replying.
    pub closing: bool,
}

impl Session {
    /// A new connection of `app`'s server.
    pub fn new(app: Arc<App>) -> Session {
        let principal = (!app.keys.enabled()).then_some(Principal {
            name: None,
            role: KeyRole::Admin,
        });
        Session {
            app,
            proto: Proto::Resp2,
            principal,
            id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
            name: None,
            multi: None,
            watched: Vec::new(),
            watch_failed: false,
            cursors: HashMap::new(),
            cursor_order: VecDeque::new(),
            next_cursor: 1,
            closing: false,
        }
    }

    /// Runs one request (`args[0]` is the command name).
    pub async fn execute(&mut self, args: Vec<Bytes>) -> Answer {
        let Some(first) = args.first() else {
            return Answer::Now(Reply::error("ERR", "empty command"));
        };
        let name = String::from_utf8_lossy(first).to_ascii_lowercase();
        let Some(spec) = lookup(&name) else {
            self.fail_multi();
            return Answer::Now(unknown_command(&args));
        };
        let rest = &args[1..];
        let count = args.len() as i32;
        if (spec.arity > 0 && count != spec.arity) || (spec.arity < 0 && count < -spec.arity) {
            self.fail_multi();
            return Answer::Now(Reply::error(
                "ERR",
                format!("wrong number of arguments for '{name}' command"),
            ));
        }
        // Invariant 1.
        let Some(principal) = self.principal.clone() else {
            if !matches!(spec.name, "auth" | "hello" | "quit") {
                self.fail_multi();
                return Answer::Now(Reply::error("NOAUTH", "Authentication required."));
            }
            return Answer::Now(self.connection_command(spec, rest).await);
        };
        if principal.role < spec.role {
            self.fail_multi();
            return Answer::Now(Reply::error(
                "NOPERM",
                format!(
                    "this API key ({}, {}) may not run '{name}': it needs the {} role",
                    principal.name.as_deref().unwrap_or("-"),
                    principal.role,
                    spec.role
                ),
            ));
        }
        if self.multi.is_some() && !matches!(spec.name, "exec" | "discard" | "multi" | "quit") {
            return Answer::Now(self.queue(spec, rest));
        }
        if spec.connection {
            return Answer::Now(self.connection_command(spec, rest).await);
        }
        let Some(backend) = self.app.backend() else {
            return Answer::Now(Reply::error(
                "LOADING",
                format!(
                    "Hadal is starting (restoring from or taking over {}); retry shortly",
                    self.app.config.bucket
                ),
            ));
        };
        // Invariant 2.
        if spec.write && backend.role() == Role::Replica {
            return Answer::Now(read_only(&backend));
        }
        match spec.name {
            "exec" => self.exec(&backend).await,
            "watch" => Answer::Now(self.watch(&backend, rest).await),
            "scan" => Answer::Now(self.scan(&backend, rest).await),
            "dbsize" => Answer::Now(match backend.key_count().await {
                Ok(n) => Reply::Int(i64::try_from(n.value).unwrap_or(i64::MAX)),
                Err(e) => error_reply(&e),
            }),
            "info" => Answer::Now(Reply::text(self.info(&backend, rest).await)),
            "config" => Answer::Now(config(rest)),
            _ => match Cmd::parse(spec.name, rest) {
                Some(Ok(cmd)) => run_one(&backend, cmd).await,
                Some(Err(syntax)) => Answer::Now(syntax),
                None => Answer::Now(unknown_command(&args)),
            },
        }
    }

    /// Marks a transaction being queued as failed (a command in it was refused).
    fn fail_multi(&mut self) {
        if let Some(multi) = &mut self.multi {
            multi.failed = true;
        }
    }

    /// Queues a command inside `MULTI`.
    fn queue(&mut self, spec: &Spec, rest: &[Bytes]) -> Reply {
        let refused = match spec.name {
            "watch" => Some(Reply::error("ERR", "WATCH inside MULTI is not allowed")),
            _ => match Cmd::parse(spec.name, rest) {
                Some(Ok(cmd)) => {
                    if let Some(multi) = &mut self.multi {
                        multi.commands.push(cmd);
                    }
                    return Reply::Status("QUEUED".into());
                }
                Some(Err(syntax)) => Some(syntax),
                None => Some(Reply::error(
                    "ERR",
                    format!(
                        "'{}' cannot run inside MULTI on Hadal: only key-value commands can",
                        spec.name
                    ),
                )),
            },
        };
        self.fail_multi();
        refused.unwrap_or_else(|| Reply::error("ERR", "refused"))
    }

    async fn connection_command(&mut self, spec: &Spec, rest: &[Bytes]) -> Reply {
        let arg = |i: usize| rest.get(i).map(|a| a.to_ascii_uppercase());
        match spec.name {
            "ping" => match rest.first() {
                None => Reply::Status("PONG".into()),
                Some(msg) => Reply::Bulk(msg.clone()),
            },
            "echo" => Reply::Bulk(rest[0].clone()),
            "quit" => {
                self.closing = true;
                Reply::Ok
            }
            "reset" => {
                self.multi = None;
                self.watched.clear();
                self.watch_failed = false;
                self.proto = Proto::Resp2;
                Reply::Status("RESET".into())
            }
            "select" => match command::integer(&rest[0]) {
                Ok(0) => Reply::Ok,
                Ok(_) => Reply::error(
                    "ERR",
                    "DB index is out of range (Hadal has one database, 0)",
                ),
                Err(e) => e,
            },
            "auth" => {
                let (user, key) = match rest {
                    [key] => (None, key),
                    [user, key] => (Some(user), key),
                    _ => return Reply::error("ERR", "syntax error"),
                };
                self.auth(user, key)
            }
            "hello" => self.hello(rest),
            "multi" => {
                if self.multi.is_some() {
                    return Reply::error("ERR", "MULTI calls can not be nested");
                }
                self.multi = Some(Multi {
                    commands: Vec::new(),
                    failed: false,
                });
                Reply::Ok
            }
            "discard" => match self.multi.take() {
                Some(_) => {
                    self.watched.clear();
                    self.watch_failed = false;
                    Reply::Ok
                }
                None => Reply::error("ERR", "DISCARD without MULTI"),
            },
            "unwatch" => {
                self.watched.clear();
                self.watch_failed = false;
                Reply::Ok
            }
            "client" => match arg(0).as_deref() {
                Some(b"SETNAME") if rest.len() == 2 => {
                    self.name = (!rest[1].is_empty()).then(|| rest[1].clone());
                    Reply::Ok
                }
                Some(b"GETNAME") => self.name.clone().map_or(Reply::Nil, Reply::Bulk),
                Some(b"ID") => Reply::Int(self.id as i64),
                Some(b"SETINFO") => Reply::Ok,
                Some(b"INFO") => Reply::text(format!(
                    "id={} name={} db=0 resp={}\n",
                    self.id,
                    String::from_utf8_lossy(self.name.as_deref().unwrap_or_default()),
                    if self.proto == Proto::Resp3 { 3 } else { 2 }
                )),
                _ => Reply::error(
                    "ERR",
                    "unknown CLIENT subcommand: Hadal supports SETNAME, GETNAME, ID, INFO, SETINFO",
                ),
            },
            "command" => command_command(rest),
            other => Reply::error("ERR", format!("'{other}' is not a connection command")),
        }
    }

    fn auth(&mut self, _user: Option<&Bytes>, key: &Bytes) -> Reply {
        if !self.app.keys.enabled() {
            return Reply::error(
                "ERR",
                "AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
            );
        }
        // The user name is not checked: API keys are bearer secrets, as for HTTP.
        let presented = std::str::from_utf8(key).ok();
        match self.app.keys.authorize(presented, KeyRole::Reader) {
            Ok(principal) => {
                self.principal = Some(principal);
                Reply::Ok
            }
            Err(Denied::Unauthenticated(_) | Denied::Forbidden { .. }) => Reply::error(
                "WRONGPASS",
                "invalid username-password pair or user is disabled.",
            ),
        }
    }

    fn hello(&mut self, rest: &[Bytes]) -> Reply {
        let mut proto = self.proto;
        let mut i = 0;
        if let Some(version) = rest.first() {
            proto = match command::integer(version) {
                Ok(2) => Proto::Resp2,
                Ok(3) => Proto::Resp3,
                Ok(_) => {
                    return Reply::error("NOPROTO", "unsupported protocol version");
                }
                Err(_) => {
                    return Reply::error(
                        "ERR",
                        "Protocol version is not an integer or out of range",
                    );
                }
            };
            i = 1;
        }
        let mut setname = None;
        while i < rest.len() {
            match rest[i].to_ascii_uppercase().as_slice() {
                b"AUTH" if i + 2 < rest.len() => {
                    let reply = self.auth(Some(&rest[i + 1]), &rest[i + 2]);
                    if reply.is_error() {
                        return reply;
                    }
                    i += 3;
                }
                b"SETNAME" if i + 1 < rest.len() => {
                    setname = Some(rest[i + 1].clone());
                    i += 2;
                }
                _ => return Reply::error("ERR", "syntax error in HELLO option"),
            }
        }
        if self.principal.is_none() {
            return Reply::error(
                "NOAUTH",
                "HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
            );
        }
        if setname.is_some() {
            self.name = setname;
        }
        self.proto = proto;
        let role = match self.app.role() {
            Role::Writer => "master",
            Role::Replica => "replica",
        };
        Reply::Map(vec![
            (Reply::text("server"), Reply::text("redis")),
            (Reply::text("version"), Reply::text(REDIS_VERSION)),
            (
                Reply::text("proto"),
                Reply::Int(if proto == Proto::Resp3 { 3 } else { 2 }),
            ),
            (Reply::text("id"), Reply::Int(self.id as i64)),
            (Reply::text("mode"), Reply::text("standalone")),
            (Reply::text("role"), Reply::text(role)),
            (Reply::text("modules"), Reply::Array(Vec::new())),
            (
                Reply::text("hadal_version"),
                Reply::text(env!("CARGO_PKG_VERSION")),
            ),
        ])
    }

    async fn watch(&mut self, backend: &Backend, keys: &[Bytes]) -> Reply {
        let keys = keys.iter().map(|k| k.to_vec()).collect();
        match backend.watch(keys).await {
            Ok(read) => {
                self.watched.extend(read.value);
                Reply::Ok
            }
            Err(e) => {
                self.watch_failed = true;
                error_reply(&e)
            }
        }
    }

    async fn exec(&mut self, backend: &Backend) -> Answer {
        let Some(multi) = self.multi.take() else {
            return Answer::Now(Reply::error("ERR", "EXEC without MULTI"));
        };
        let watched = std::mem::take(&mut self.watched);
        let watch_failed = std::mem::replace(&mut self.watch_failed, false);
        if multi.failed {
            return Answer::Now(Reply::error(
                "EXECABORT",
                "Transaction discarded because of previous errors.",
            ));
        }
        if watch_failed {
            return Answer::Now(Reply::NilArray);
        }
        if multi.commands.is_empty() {
            return Answer::Now(Reply::Array(Vec::new()));
        }
        let writes = multi.commands.iter().any(is_write);
        if writes && backend.role() == Role::Replica {
            return Answer::Now(read_only(backend));
        }
        let commands = Arc::new(multi.commands);
        let own = watched.len();
        let planned = backend
            .atomic_pending(move |reads| {
                let mut view = View::new(reads, watched.clone());
                if !view.watched_hold()? {
                    return Ok(Plan {
                        batch: hadal_engine::Batch::new(),
                        reply: None,
                    });
                }
                let mut replies = Vec::with_capacity(commands.len());
                for cmd in commands.iter() {
                    replies.push(cmd.run(&mut view)?);
                }
                let mut batch = view.into_batch();
                if batch.ops.is_empty() {
                    // Read-only: nothing to commit, so the assertions need not travel.
                    batch.assertions.clear();
                }
                Ok(Plan {
                    batch,
                    reply: Some(replies),
                })
            })
            .await;
        match planned {
            Ok(commit) => Answer::Later(Box::pin(async move {
                match commit.durable().await {
                    Ok(done) => match done.reply {
                        Some(replies) => Reply::Array(replies),
                        None => Reply::NilArray,
                    },
                    Err(e) => error_reply(&e),
                }
            })),
            // A WATCH assertion failed at commit: a watched key changed.
            Err(Error::AssertionFailed { index, .. }) if index < own => {
                Answer::Now(Reply::NilArray)
            }
            Err(e) => Answer::Now(error_reply(&e)),
        }
    }

    async fn scan(&mut self, backend: &Backend, rest: &[Bytes]) -> Reply {
        let cursor = match std::str::from_utf8(&rest[0])
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        {
            Some(c) => c,
            None => return Reply::error("ERR", "invalid cursor"),
        };
        let mut pattern: Option<Bytes> = None;
        let mut count = SCAN_COUNT_DEFAULT;
        let mut i = 1;
        while i < rest.len() {
            match (rest[i].to_ascii_uppercase().as_slice(), rest.get(i + 1)) {
                (b"MATCH", Some(p)) => pattern = Some(p.clone()),
                (b"COUNT", Some(n)) => match command::integer(n) {
                    Ok(n) if n > 0 => count = n as usize,
                    Ok(_) => return Reply::error("ERR", "syntax error"),
                    Err(e) => return e,
                },
                (b"TYPE", Some(t)) => {
                    if !t.eq_ignore_ascii_case(b"string") {
                        // Hadal holds strings only: no key has another type.
                        return Reply::Array(vec![Reply::text("0"), Reply::Array(Vec::new())]);
                    }
                }
                _ => return Reply::error("ERR", "syntax error"),
            }
            i += 2;
        }
        let after = if cursor == 0 {
            None
        } else {
            match self.cursors.get(&cursor) {
                Some(key) => Some(key.clone()),
                None => {
                    return Reply::error(
                        "ERR",
                        format!(
                            "invalid cursor {cursor}: this connection has no such SCAN in progress (cursors live as long as their connection); start again with 0"
                        ),
                    );
                }
            }
        };
        let prefix = pattern
            .as_deref()
            .map(command::literal_prefix)
            .filter(|p| !p.is_empty())
            .map(<[u8]>::to_vec);
        let request = ScanRequest {
            prefix,
            after,
            limit: count,
            ..ScanRequest::default()
        };
        let page = match backend.scan(request, self.app.config.min_lsn_wait).await {
            Ok(page) => page,
            Err(e) => return error_reply(&e),
        };
        let keys = page
            .items
            .into_iter()
            .filter(|(k, _)| pattern.as_deref().is_none_or(|p| command::glob(p, k)))
            .map(|(k, _)| Reply::Bulk(k))
            .collect();
        let next = match page.next {
            Some(last) => self.new_cursor(last),
            None => 0,
        };
        Reply::Array(vec![Reply::text(next.to_string()), Reply::Array(keys)])
    }

    fn new_cursor(&mut self, last: Vec<u8>) -> u64 {
        let id = self.next_cursor;
        self.next_cursor += 1;
        self.cursors.insert(id, last);
        self.cursor_order.push_back(id);
        while self.cursor_order.len() > CURSORS_MAX {
            if let Some(old) = self.cursor_order.pop_front() {
                self.cursors.remove(&old);
            }
        }
        id
    }

    async fn info(&self, backend: &Backend, rest: &[Bytes]) -> String {
        let info = backend.info().await;
        let keys = backend.key_count().await.map(|r| r.value).unwrap_or(0);
        let wanted: Vec<String> = rest
            .iter()
            .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
            .collect();
        let show = |section: &str| {
            wanted.is_empty()
                || wanted
                    .iter()
                    .any(|w| w == section || w == "all" || w == "everything" || w == "default")
        };
        let mut out = String::new();
        if show("server") {
            out.push_str(&format!(
                "# Server\r\nredis_version:{REDIS_VERSION}\r\nhadal_version:{}\r\nredis_mode:standalone\r\nos:{}\r\ntcp_port:{}\r\n\r\n",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::OS,
                self.app.config.resp.port()
            ));
        }
        if show("clients") {
            out.push_str(&format!(
                "# Clients\r\nconnected_clients:{}\r\n\r\n",
                self.app.resp_metrics.connections()
            ));
        }
        if show("persistence") {
            out.push_str(&format!(
                "# Persistence\r\nloading:0\r\naof_enabled:0\r\nhadal_durability:{}\r\nhadal_bucket:{}\r\n\r\n",
                info.durability.as_deref().unwrap_or("-"),
                info.bucket.as_deref().unwrap_or("-"),
            ));
        }
        if show("replication") {
            let role = match info.role {
                Role::Writer => "master",
                Role::Replica => "slave",
            };
            out.push_str(&format!(
                "# Replication\r\nrole:{role}\r\nhadal_role:{}\r\nhadal_epoch:{}\r\nhadal_lsn_committed:{}\r\nhadal_lsn_durable:{}\r\nhadal_lsn_applied:{}\r\n",
                info.role,
                info.epoch.map_or("-".to_owned(), |e| e.to_string()),
                info.lsn_committed,
                info.lsn_durable,
                info.lsn_applied,
            ));
            if let Some(lag) = info.lag {
                out.push_str(&format!(
                    "hadal_lag_lsns:{}\r\nhadal_lag_seconds:{:.3}\r\n",
                    lag.lsns, lag.seconds
                ));
            }
            out.push_str("\r\n");
        }
        if show("keyspace") {
            out.push_str(&format!(
                "# Keyspace\r\ndb0:keys={keys},expires=0,avg_ttl=0\r\n"
            ));
        }
        out
    }
}

fn is_write(cmd: &Cmd) -> bool {
    !matches!(
        cmd,
        Cmd::Get(_) | Cmd::MGet(_) | Cmd::Exists(_) | Cmd::StrLen(_) | Cmd::Ttl(..)
    )
}

/// Runs one key-value command outside `MULTI`. Plain reads and blind writes go straight to
/// the backend; read-modify-writes run on a snapshot and commit with assertions (under the
/// key's lock when they touch one key).
async fn run_one(backend: &Backend, cmd: Cmd) -> Answer {
    let now = |r: Result<Reply, Error>| Answer::Now(r.unwrap_or_else(|e| error_reply(&e)));
    let wait = std::time::Duration::ZERO;
    match cmd {
        Cmd::Get(key) => now(backend
            .get(key.to_vec(), None, wait)
            .await
            .map(|r| r.value.map_or(Reply::Nil, |e| Reply::Bulk(e.value)))),
        Cmd::StrLen(key) => now(backend
            .get(key.to_vec(), None, wait)
            .await
            .map(|r| Reply::Int(r.value.map_or(0, |e| e.value.len() as i64)))),
        Cmd::MGet(keys) => {
            let keys = keys.iter().map(|k| k.to_vec()).collect();
            now(backend.get_many(keys, None, wait).await.map(|r| {
                Reply::Array(
                    r.value
                        .into_iter()
                        .map(|e| e.map_or(Reply::Nil, |e| Reply::Bulk(e.value)))
                        .collect(),
                )
            }))
        }
        Cmd::Exists(keys) => {
            let keys = keys.iter().map(|k| k.to_vec()).collect();
            now(backend
                .get_many(keys, None, wait)
                .await
                .map(|r| Reply::Int(r.value.iter().filter(|e| e.is_some()).count() as i64)))
        }
        Cmd::Ttl(key, ms) => now(backend.ttl(key.to_vec()).await.map(|r| match r.value {
            Ttl::Missing => Reply::Int(-2),
            Ttl::Persistent => Reply::Int(-1),
            Ttl::Expires { remaining, .. } => Reply::Int(command::ttl_reply(
                u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX),
                ms,
            )),
        })),
        Cmd::Set {
            key,
            value,
            expiry: expiry @ (Expiry::Never | Expiry::In(_) | Expiry::At(_)),
            cond: Cond::Always,
            get: false,
        } => {
            let expires_ms = match expiry {
                Expiry::In(ms) => Some(unix_ms().saturating_add(ms)),
                Expiry::At(ms) => Some(ms),
                _ => None,
            };
            let batch = hadal_engine::Batch::new().put_in(
                hadal_engine::DEFAULT_TABLE,
                key.to_vec(),
                value.to_vec(),
                expires_ms,
            );
            blind_write(backend, batch).await
        }
        Cmd::MSet(pairs) => {
            let mut batch = hadal_engine::Batch::new();
            for (key, value) in pairs {
                batch = batch.put(key.to_vec(), value.to_vec());
            }
            blind_write(backend, batch).await
        }
        cmd => {
            let key = cmd.single_key().cloned();
            let plan = move |reads: &mut crate::server::Reads<'_>| {
                let mut view = View::new(reads, Vec::new());
                let reply = cmd.run(&mut view)?;
                Ok(Plan {
                    batch: view.into_batch(),
                    reply,
                })
            };
            let planned = match key {
                Some(key) => backend.atomic_pending_keyed(key.to_vec(), plan).await,
                None => backend.atomic_pending(plan).await,
            };
            match planned {
                Ok(commit) => Answer::Later(Box::pin(async move {
                    match commit.durable().await {
                        Ok(done) => done.reply,
                        Err(e) => error_reply(&e),
                    }
                })),
                Err(e) => Answer::Now(error_reply(&e)),
            }
        }
    }
}

async fn blind_write(backend: &Backend, batch: hadal_engine::Batch) -> Answer {
    match backend.write_pending(batch).await {
        Ok(pending) => Answer::Later(Box::pin(async move {
            match pending.durable().await {
                Ok(_) => Reply::Ok,
                Err(e) => error_reply(&e),
            }
        })),
        Err(e) => Answer::Now(error_reply(&e)),
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn read_only(backend: &Backend) -> Reply {
    Reply::error(
        "READONLY",
        format!(
            "You can't write against a read only replica (hadal replica of {}): send writes to the writer",
            backend.bucket_url().unwrap_or("its bucket")
        ),
    )
}

/// A server error as a RESP error: `-CODE message`, with Hadal's codes upper-cased
/// (`FENCED`, `UNAVAILABLE`, …) and `ERR` for a bad request.
pub fn error_reply(e: &Error) -> Reply {
    let code = match e {
        Error::Invalid(_) => "ERR".to_owned(),
        Error::ReadOnly { .. } => "READONLY".to_owned(),
        other => other.code().to_ascii_uppercase(),
    };
    Reply::error(&code, e)
}

fn unknown_command(args: &[Bytes]) -> Reply {
    let name = String::from_utf8_lossy(&args[0]);
    let mut message = format!(
        "unknown command '{}', with args beginning with: ",
        clip(&name)
    );
    for arg in args.iter().skip(1).take(8) {
        message.push_str(&format!("'{}' ", clip(&String::from_utf8_lossy(arg))));
    }
    Reply::error("ERR", message)
}

fn clip(s: &str) -> String {
    s.chars().take(128).collect()
}

/// `CONFIG GET pattern…`: the few settings clients ask about (`redis-benchmark` reads `save`
/// and `appendonly`), as a Redis without RDB or AOF would answer. `CONFIG SET` and the rest
/// are refused: Hadal is configured by its flags and config file.
fn config(rest: &[Bytes]) -> Reply {
    if !rest[0].eq_ignore_ascii_case(b"GET") || rest.len() < 2 {
        return Reply::error(
            "ERR",
            "Hadal supports only CONFIG GET; it is configured by `hadal serve` flags, HADAL_* variables or its config file",
        );
    }
    let known = [("save", ""), ("appendonly", "no"), ("databases", "1")];
    let mut pairs = Vec::new();
    for (name, value) in known {
        if rest[1..]
            .iter()
            .any(|p| command::glob(&p.to_ascii_lowercase(), name.as_bytes()))
        {
            pairs.push((Reply::text(name), Reply::text(value)));
        }
    }
    Reply::Map(pairs)
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND INFO name…`, `COMMAND DOCS`.
fn command_command(rest: &[Bytes]) -> Reply {
    let info = |s: &Spec| {
        let mut flags = vec![Reply::Status(
            if s.write { "write" } else { "readonly" }.into(),
        )];
        if s.connection {
            flags = vec![Reply::Status("fast".into())];
        }
        let keyed =
            !s.connection && !matches!(s.name, "scan" | "dbsize" | "info" | "config" | "exec");
        let (first, last, step) = match s.name {
            "mset" => (1, -1, 2),
            "mget" | "del" | "unlink" | "exists" | "watch" => (1, -1, 1),
            _ if keyed => (1, 1, 1),
            _ => (0, 0, 0),
        };
        Reply::Array(vec![
            Reply::text(s.name),
            Reply::Int(i64::from(s.arity)),
            Reply::Array(flags),
            Reply::Int(first),
            Reply::Int(last),
            Reply::Int(step),
        ])
    };
    match rest.first().map(|a| a.to_ascii_uppercase()).as_deref() {
        None => Reply::Array(COMMANDS.iter().map(info).collect()),
        Some(b"COUNT") => Reply::Int(COMMANDS.len() as i64),
        Some(b"INFO") => Reply::Array(
            rest[1..]
                .iter()
                .map(|n| {
                    lookup(&String::from_utf8_lossy(n).to_ascii_lowercase())
                        .map_or(Reply::Nil, info)
                })
                .collect(),
        ),
        Some(b"DOCS") => Reply::Map(Vec::new()),
        Some(_) => Reply::error(
            "ERR",
            "unknown COMMAND subcommand: Hadal supports COUNT, INFO and DOCS",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_of_the_table_has_a_unique_lowercase_name() {
        // Proves the dispatch table is consistent (lookups are by lowercase name).
        for (i, s) in COMMANDS.iter().enumerate() {
            assert_eq!(s.name, s.name.to_ascii_lowercase());
            assert!(
                COMMANDS[i + 1..].iter().all(|o| o.name != s.name),
                "{}",
                s.name
            );
            if s.write {
                assert_eq!(s.role, Writer, "{}", s.name);
            }
        }
        assert_eq!(metric_name(&[Bytes::from("GeT")]), "get");
        assert_eq!(metric_name(&[Bytes::from("nope")]), "unknown");
    }

    #[test]
    fn errors_carry_hadal_codes() {
        // Proves the error prefixes clients see.
        assert_eq!(
            error_reply(&Error::Fenced("by epoch 3".into())),
            Reply::Error("FENCED fenced: by epoch 3".into())
        );
        assert!(
            matches!(error_reply(&Error::Invalid("bad".into())), Reply::Error(e) if e == "ERR bad")
        );
        let unknown = unknown_command(&[Bytes::from("FOO"), Bytes::from("a")]);
        assert_eq!(
            unknown,
            Reply::Error("ERR unknown command 'FOO', with args beginning with: 'a' ".into())
        );
    }
}
